import { mkdtempSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ConfigError, loadConfig } from '../src/config/load.js';
import { FIXED_SECTIONS, TIER_FIELDS } from '../src/config/schema.js';

const EMPTY_DIR = mkdtempSync(join(tmpdir(), 'rl-config-'));

function problemsOf(env: Record<string, string>, cwd = EMPTY_DIR): string[] {
  try {
    loadConfig(env, cwd);
  } catch (err) {
    if (err instanceof ConfigError) return err.problems;
    throw err;
  }
  return [];
}

function yamlDir(yaml: string): string {
  const dir = mkdtempSync(join(tmpdir(), 'rl-config-'));
  mkdirSync(join(dir, 'config'));
  writeFileSync(join(dir, 'config', 'rate-limiting-api.yaml'), yaml);
  return dir;
}

describe('configuration', () => {
  it('defaults to the seed\'s values with no Redis and no database configured', () => {
    const { config, file } = loadConfig({}, EMPTY_DIR);
    expect(file).toBeNull();
    expect(config.service).toMatchObject({ port: 9098, workers: 2, decision_timeout: 1 });
    expect(config.rate_limits.premium).toEqual({
      requests_per_minute: 300, requests_per_hour: 5000, requests_per_day: 50000, burst_limit: 50, throttle_requests_per_minute: 30,
    });
    expect(config.redis.endpoint).toBe('');
    expect(config.monitoring.sql_database_endpoint).toBe('');
    expect(config.quota_management).toEqual({ enabled: true, overage_handling: 'block', reset_interval: 86400, grace_period: 300 });
  });

  it('layers defaults < YAML < environment', () => {
    const dir = yamlDir('service:\n  port: 7000\nrate_limits:\n  basic:\n    requests_per_minute: 120\n    burst_limit: 20\n');
    const fromYaml = loadConfig({}, dir).config;
    expect(fromYaml.service.port).toBe(7000);
    expect(fromYaml.rate_limits.basic).toMatchObject({ requests_per_minute: 120, burst_limit: 20, requests_per_hour: 1000 });
    const fromEnv = loadConfig({ RATE_LIMITING_API_PORT: '7100', RATE_LIMIT_BASIC_REQUESTS_PER_MINUTE: '90' }, dir).config;
    expect(fromEnv.service.port).toBe(7100);
    expect(fromEnv.rate_limits.basic).toMatchObject({ requests_per_minute: 90, burst_limit: 20, throttle_requests_per_minute: 9 });
  });

  it('reads the file named by RATE_LIMITING_CONFIG and reports a missing one', () => {
    const dir = yamlDir('quota_management:\n  overage_handling: allow\n');
    const named = join(dir, 'config', 'rate-limiting-api.yaml');
    expect(loadConfig({ RATE_LIMITING_CONFIG: named }, EMPTY_DIR).config.quota_management.overage_handling).toBe('allow');
    expect(problemsOf({ RATE_LIMITING_CONFIG: '/no/such/file.yaml' })).toEqual(['RATE_LIMITING_CONFIG: file /no/such/file.yaml does not exist']);
  });

  it('honours every environment variable of the seed', () => {
    const env: Record<string, string> = {
      RATE_LIMITING_API_PORT: '9100', RATE_LIMITING_API_MEMORY_GB: '2', RATE_LIMITING_API_CPU_CORES: '4', RATE_LIMITING_DECISION_TIMEOUT: '0.05',
      USER_TIER_BASIC_ENABLED: 'true', USER_TIER_PREMIUM_ENABLED: 'false', USER_TIER_ENTERPRISE_ENABLED: 'true', USER_TIER_DEFAULT: 'enterprise',
      RATE_LIMIT_BASIC_REQUESTS_PER_MINUTE: '61', RATE_LIMIT_BASIC_REQUESTS_PER_HOUR: '1001', RATE_LIMIT_BASIC_REQUESTS_PER_DAY: '10001',
      RATE_LIMIT_PREMIUM_REQUESTS_PER_MINUTE: '301', RATE_LIMIT_PREMIUM_REQUESTS_PER_HOUR: '5001', RATE_LIMIT_PREMIUM_REQUESTS_PER_DAY: '50001',
      RATE_LIMIT_ENTERPRISE_REQUESTS_PER_MINUTE: '1001', RATE_LIMIT_ENTERPRISE_REQUESTS_PER_HOUR: '20001', RATE_LIMIT_ENTERPRISE_REQUESTS_PER_DAY: '200001',
      REDIS_ENDPOINT: '127.0.0.1:6390', REDIS_DATABASE: '3', REDIS_PASSWORD: 'pw', REDIS_CONNECTION_POOL_SIZE: '4', REDIS_CONNECTION_TIMEOUT: '2',
      QUOTA_MANAGEMENT_ENABLED: 'false', QUOTA_OVERAGE_HANDLING: 'throttle', QUOTA_RESET_INTERVAL: '3600', QUOTA_GRACE_PERIOD: '0',
      API_KEY_MANAGEMENT_ENABLED: 'false', API_KEY_GENERATION_ENABLED: 'false', API_KEY_VALIDATION_ENABLED: 'false', API_KEY_ROTATION_ENABLED: 'false',
      USAGE_ANALYTICS_ENABLED: 'false', USAGE_PATTERN_ANALYSIS_ENABLED: 'false', USAGE_REPORTING_ENABLED: 'false', USAGE_RETENTION_DAYS: '30',
      API_GATEWAY_ENDPOINT: 'http://127.0.0.1:8000', SQL_DATABASE_ENDPOINT: '127.0.0.1:5432', CUSTOM_METRICS_ENDPOINT: 'http://127.0.0.1:9091',
    };
    const { config } = loadConfig(env, EMPTY_DIR);
    expect(config.service).toMatchObject({ port: 9100, decision_timeout: 0.05 });
    expect(config.performance).toMatchObject({ memory_limit_gb: 2, cpu_cores: 4 });
    expect(config.user_tiers).toMatchObject({ basic_enabled: true, premium_enabled: false, enterprise_enabled: true, default_tier: 'enterprise' });
    expect(config.rate_limits.basic).toMatchObject({ requests_per_minute: 61, requests_per_hour: 1001, requests_per_day: 10001 });
    expect(config.rate_limits.premium).toMatchObject({ requests_per_minute: 301, requests_per_hour: 5001, requests_per_day: 50001 });
    expect(config.rate_limits.enterprise).toMatchObject({ requests_per_minute: 1001, requests_per_hour: 20001, requests_per_day: 200001 });
    expect(config.redis).toMatchObject({ endpoint: '127.0.0.1:6390', database: 3, password: 'pw', connection_pool_size: 4, connection_timeout: 2 });
    expect(config.quota_management).toEqual({ enabled: false, overage_handling: 'throttle', reset_interval: 3600, grace_period: 0 });
    expect(config.api_key_management).toMatchObject({ enabled: false, generation_enabled: false, validation_enabled: false, rotation_enabled: false });
    expect(config.usage_analytics).toMatchObject({ enabled: false, pattern_analysis_enabled: false, reporting_enabled: false, retention_days: 30 });
    expect(config.monitoring).toMatchObject({
      api_gateway_endpoint: 'http://127.0.0.1:8000', sql_database_endpoint: '127.0.0.1:5432', redis_endpoint: '127.0.0.1:6390',
      custom_metrics_endpoint: 'http://127.0.0.1:9091',
    });
  });

  it('lists every problem at once, each naming its key or variable', () => {
    const dir = yamlDir(
      'service:\n  port: "eighty"\n  colour: blue\nrate_limits:\n  basic:\n    requests_per_minute: -5\n    burst: 3\n' +
        'quota_management:\n  overage_handling: refund\nuser_tiers:\n  gold_enabled: true\nbogus: {}\n',
    );
    const problems = problemsOf({ RATE_LIMIT_PREMIUM_REQUESTS_PER_HOUR: 'many', QUOTA_GRACE_PERIOD: '-1', USER_TIER_DEFAULT: 'platinum' }, dir);
    const expected = [
      /^bogus: unknown section/,
      /^service\.colour: unknown key/,
      /^rate_limits\.basic\.burst: unknown key/,
      /^RATE_LIMIT_PREMIUM_REQUESTS_PER_HOUR: expected an integer, got "many"/,
      /^service\.port \(RATE_LIMITING_API_PORT\): expected a number, got "eighty"/,
      /^quota_management\.overage_handling \(QUOTA_OVERAGE_HANDLING\): must be one of block, allow, throttle, got "refund"/,
      /^quota_management\.grace_period \(QUOTA_GRACE_PERIOD\): must not be negative, got -1/,
      /^rate_limits\.basic\.requests_per_minute \(RATE_LIMIT_BASIC_REQUESTS_PER_MINUTE\): must not be negative, got -5/,
    ];
    for (const pattern of expected) expect(problems.some((p) => pattern.test(p)), `${pattern} in\n${problems.join('\n')}`).toBe(true);
    expect(problems).toHaveLength(expected.length);
  });

  it('rejects an unknown default tier, a disabled default tier, and switches for unknown tiers', () => {
    expect(problemsOf({ USER_TIER_DEFAULT: 'gold' })).toEqual([
      'user_tiers.default_tier (USER_TIER_DEFAULT): unknown tier "gold" (tiers: basic, premium, enterprise)',
    ]);
    expect(problemsOf({ USER_TIER_BASIC_ENABLED: 'false' })[0]).toMatch(/tier "basic" is disabled/);
    expect(problemsOf({}, yamlDir('user_tiers:\n  gold_enabled: true\n'))).toEqual([
      'user_tiers.gold_enabled: unknown tier "gold" (tiers: basic, premium, enterprise)',
    ]);
    expect(problemsOf({ USER_TIER_BASIC_ENABLED: 'maybe' })[0]).toBe('USER_TIER_BASIC_ENABLED: expected true or false, got "maybe"');
  });

  it('accepts a custom tier with its own variables', () => {
    const dir = yamlDir('rate_limits:\n  gold:\n    requests_per_minute: 500\n    requests_per_hour: 9000\n    requests_per_day: 90000\n    burst_limit: 80\n');
    const { config } = loadConfig({ RATE_LIMIT_GOLD_BURST_LIMIT: '90', USER_TIER_GOLD_ENABLED: 'false' }, dir);
    expect(config.rate_limits.gold).toMatchObject({ burst_limit: 90, throttle_requests_per_minute: 50 });
    expect(config.user_tiers.gold_enabled).toBe(false);
    expect(problemsOf({}, yamlDir('rate_limits:\n  gold:\n    requests_per_minute: 5\n'))).toEqual([
      'rate_limits.gold.requests_per_hour: missing (RATE_LIMIT_GOLD_REQUESTS_PER_HOUR)',
      'rate_limits.gold.requests_per_day: missing (RATE_LIMIT_GOLD_REQUESTS_PER_DAY)',
      'rate_limits.gold.burst_limit: missing (RATE_LIMIT_GOLD_BURST_LIMIT)',
    ]);
  });

  it('checks the Redis settings', () => {
    expect(problemsOf({ RATE_LIMITING_MODE: 'redis' })).toEqual(['limiter.mode (RATE_LIMITING_MODE): redis mode needs redis.endpoint (REDIS_ENDPOINT)']);
    expect(problemsOf({ REDIS_ENDPOINT: 'a:1,b:2' })[0]).toMatch(/several addresses need redis.topology/);
    expect(problemsOf({ REDIS_ENDPOINT: 'redis://x y' })[0]).toMatch(/not a host:port list/);
    expect(problemsOf({ REDIS_ENDPOINT: 'a:1,b:2', REDIS_TOPOLOGY: 'cluster', REDIS_SYNC_INTERVAL_MS: '100' })).toEqual([]);
    expect(problemsOf({ CUSTOM_METRICS_ENDPOINT: 'pushgateway:9091' })).toEqual([
      'monitoring.custom_metrics_endpoint (CUSTOM_METRICS_ENDPOINT): not an http(s) URL of a Pushgateway: "pushgateway:9091"',
    ]);
    expect(problemsOf({ CUSTOM_METRICS_ENDPOINT: 'http://127.0.0.1:9091', CUSTOM_METRICS_PUSH_INTERVAL: '0' })).toEqual([
      'monitoring.push_interval_seconds (CUSTOM_METRICS_PUSH_INTERVAL): must be at least 1, got 0',
    ]);
    expect(loadConfig({ REDIS_ENDPOINT: 'redis:6379' }, EMPTY_DIR).config.redis).toMatchObject({ topology: 'standalone', sync_interval_ms: 100 });
  });

  it('rejects windows that do not nest', () => {
    expect(problemsOf({ QUOTA_RESET_INTERVAL: '90' })).toEqual([
      'quota_management.reset_interval (QUOTA_RESET_INTERVAL): must be a whole number of minute windows (60000 ms)',
    ]);
  });

  it('reads the shipped YAML file without problems, and it names no address', async () => {
    const { readFileSync } = await import('node:fs');
    const root = new URL('..', import.meta.url).pathname;
    const { config, file } = loadConfig({}, root);
    expect(file).toMatch(/config\/rate-limiting-api\.yaml$/);
    expect(config.redis.endpoint).toBe('');
    const text = readFileSync(file!, 'utf8') + readFileSync(join(root, '.env.example'), 'utf8');
    // Loopback only; 0.0.0.0 is the address the node listens on, never one it contacts.
    const addresses = [...text.matchAll(/\b\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}\b/g)].map((m) => m[0]);
    expect(addresses.length).toBeGreaterThan(0);
    for (const address of addresses) expect(address === '0.0.0.0' || address.startsWith('127.'), address).toBe(true);
  });

  it('documents an environment variable for every fixed key it reads from the environment', () => {
    const names = Object.values(FIXED_SECTIONS).flatMap((fields) => Object.values(fields).map((f) => f.env)).filter(Boolean);
    expect(new Set(names).size).toBeGreaterThan(30);
    expect(Object.values(TIER_FIELDS).map((f) => f.envSuffix)).toContain('BURST_LIMIT');
  });
});
