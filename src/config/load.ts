import { existsSync, readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { parse as parseYaml } from 'yaml';
import { defaultConfig } from './defaults.js';
import { FIXED_SECTIONS, TIER_FIELDS, TIER_NAME, type FieldSpec } from './schema.js';
import type { Config } from './types.js';

/** Every problem found in the configuration; thrown once, listing them all. */
export class ConfigError extends Error {
  constructor(readonly problems: string[]) {
    super(`invalid configuration (${problems.length} problem${problems.length === 1 ? '' : 's'}):\n  - ${problems.join('\n  - ')}`);
    this.name = 'ConfigError';
  }
}

export interface LoadedConfig {
  config: Config;
  /** The YAML file that was read, if any. */
  file: string | null;
}

export const DEFAULT_CONFIG_FILE = 'config/rate-limiting-api.yaml';

type Env = Record<string, string | undefined>;
type Raw = Record<string, unknown>;

/**
 * Builds the configuration: built-in defaults < YAML file < environment variables.
 * The YAML file is `RATE_LIMITING_CONFIG`, else `config/rate-limiting-api.yaml` when it
 * exists under `cwd`. Throws `ConfigError` listing every problem.
 */
export function loadConfig(env: Env = process.env, cwd: string = process.cwd()): LoadedConfig {
  const problems: string[] = [];
  const config = defaultConfig() as unknown as Record<string, Raw>;

  const file = pickFile(env, cwd, problems);
  if (file) mergeYaml(config, file, problems);
  applyEnv(config, env, problems);
  checkTypes(config, problems);
  if (problems.length === 0) checkRelations(config as unknown as Config, problems);
  if (problems.length > 0) throw new ConfigError(problems);
  fillDerived(config as unknown as Config);
  return { config: config as unknown as Config, file };
}

function pickFile(env: Env, cwd: string, problems: string[]): string | null {
  const named = env.RATE_LIMITING_CONFIG;
  if (named !== undefined && named !== '') {
    const path = resolve(cwd, named);
    if (!existsSync(path)) {
      problems.push(`RATE_LIMITING_CONFIG: file ${path} does not exist`);
      return null;
    }
    return path;
  }
  const fallback = resolve(cwd, DEFAULT_CONFIG_FILE);
  return existsSync(fallback) ? fallback : null;
}

function mergeYaml(config: Record<string, Raw>, file: string, problems: string[]): void {
  let doc: unknown;
  try {
    doc = parseYaml(readFileSync(file, 'utf8'));
  } catch (err) {
    problems.push(`${file}: not valid YAML: ${(err as Error).message.split('\n')[0]}`);
    return;
  }
  if (doc === null || doc === undefined) return;
  if (!isObject(doc)) {
    problems.push(`${file}: the top level must be a mapping of sections`);
    return;
  }
  for (const [section, value] of Object.entries(doc)) {
    const known = section in FIXED_SECTIONS || section === 'user_tiers' || section === 'rate_limits';
    if (!known) {
      problems.push(`${section}: unknown section (known: ${[...Object.keys(FIXED_SECTIONS), 'user_tiers', 'rate_limits'].sort().join(', ')})`);
      continue;
    }
    if (!isObject(value)) {
      problems.push(`${section}: must be a mapping`);
      continue;
    }
    if (section === 'rate_limits') {
      mergeRateLimits(config.rate_limits as Record<string, Raw>, value, problems);
      continue;
    }
    const target = config[section] as Raw;
    for (const [key, v] of Object.entries(value)) {
      const isTierSwitch = section === 'user_tiers' && key.endsWith('_enabled');
      const isKnown = section === 'user_tiers' ? key === 'default_tier' || isTierSwitch : key in FIXED_SECTIONS[section]!;
      if (!isKnown) {
        problems.push(`${section}.${key}: unknown key`);
        continue;
      }
      target[key] = v;
    }
  }
}

function mergeRateLimits(limits: Record<string, Raw>, value: Raw, problems: string[]): void {
  for (const [tier, fields] of Object.entries(value)) {
    if (!TIER_NAME.test(tier)) {
      problems.push(`rate_limits.${tier}: tier names are lower-case letters, digits and _ (at most 32)`);
      continue;
    }
    if (!isObject(fields)) {
      problems.push(`rate_limits.${tier}: must be a mapping`);
      continue;
    }
    const target = (limits[tier] ??= {});
    for (const [key, v] of Object.entries(fields)) {
      if (!(key in TIER_FIELDS)) {
        problems.push(`rate_limits.${tier}.${key}: unknown key`);
        continue;
      }
      target[key] = v;
    }
  }
}

function applyEnv(config: Record<string, Raw>, env: Env, problems: string[]): void {
  for (const [section, fields] of Object.entries(FIXED_SECTIONS)) {
    for (const [key, spec] of Object.entries(fields)) {
      const raw = spec.env === undefined ? undefined : env[spec.env];
      if (raw === undefined) continue;
      const parsed = parseEnv(raw, spec);
      if (parsed.ok) (config[section] as Raw)[key] = parsed.value;
      else problems.push(`${spec.env}: ${parsed.error}`);
    }
  }
  const limits = config.rate_limits as Record<string, Raw>;
  const tiers = config.user_tiers as Raw;
  const defaultTier = env.USER_TIER_DEFAULT;
  if (defaultTier !== undefined) tiers.default_tier = defaultTier;
  for (const tier of Object.keys(limits)) {
    const upper = tier.toUpperCase();
    const switchName = `USER_TIER_${upper}_ENABLED`;
    const enabled = env[switchName];
    if (enabled !== undefined) {
      const parsed = parseEnv(enabled, { type: 'bool', doc: '' });
      if (parsed.ok) tiers[`${tier}_enabled`] = parsed.value;
      else problems.push(`${switchName}: ${parsed.error}`);
    }
    for (const [key, spec] of Object.entries(TIER_FIELDS)) {
      const name = `RATE_LIMIT_${upper}_${spec.envSuffix}`;
      const raw = env[name];
      if (raw === undefined) continue;
      const parsed = parseEnv(raw, spec);
      if (parsed.ok) limits[tier]![key] = parsed.value;
      else problems.push(`${name}: ${parsed.error}`);
    }
  }
  // The seed names the Redis endpoint twice (redis and monitoring); either one sets it.
  const monitoring = config.monitoring as Raw;
  const redis = config.redis as Raw;
  if (redis.endpoint === '' && typeof monitoring.redis_endpoint === 'string') redis.endpoint = monitoring.redis_endpoint;
}

type Parsed = { ok: true; value: unknown } | { ok: false; error: string };

function parseEnv(raw: string, spec: FieldSpec): Parsed {
  const text = raw.trim();
  switch (spec.type) {
    case 'bool': {
      const lower = text.toLowerCase();
      if (['true', '1', 'yes', 'on'].includes(lower)) return { ok: true, value: true };
      if (['false', '0', 'no', 'off'].includes(lower)) return { ok: true, value: false };
      return { ok: false, error: `expected true or false, got ${JSON.stringify(raw)}` };
    }
    case 'int':
      if (!/^-?\d+$/.test(text)) return { ok: false, error: `expected an integer, got ${JSON.stringify(raw)}` };
      return { ok: true, value: Number(text) };
    case 'number':
      if (text === '' || !Number.isFinite(Number(text))) return { ok: false, error: `expected a number, got ${JSON.stringify(raw)}` };
      return { ok: true, value: Number(text) };
    default:
      return { ok: true, value: raw };
  }
}

/** Checks every value against its spec; both YAML and environment values end up here. */
function checkTypes(config: Record<string, Raw>, problems: string[]): void {
  for (const [section, fields] of Object.entries(FIXED_SECTIONS)) {
    const values = config[section] as Raw;
    for (const [key, spec] of Object.entries(fields)) {
      const problem = checkValue(values[key], spec);
      if (problem) problems.push(`${section}.${key}${spec.env ? ` (${spec.env})` : ''}: ${problem}`);
      else if (spec.type === 'enum' && spec.caseInsensitive) values[key] = String(values[key]).toLowerCase();
    }
  }
  const tiers = config.user_tiers as Raw;
  for (const [key, value] of Object.entries(tiers)) {
    if (key === 'default_tier') {
      if (typeof value !== 'string') problems.push(`user_tiers.default_tier (USER_TIER_DEFAULT): expected a tier name, got ${describe(value)}`);
    } else if (typeof value !== 'boolean') {
      problems.push(`user_tiers.${key}: expected true or false, got ${describe(value)}`);
    }
  }
  for (const [tier, fields] of Object.entries(config.rate_limits as Record<string, Raw>)) {
    for (const [key, spec] of Object.entries(TIER_FIELDS)) {
      const value = fields[key];
      if (value === undefined && spec.optional) continue;
      if (value === undefined) {
        problems.push(`rate_limits.${tier}.${key}: missing (RATE_LIMIT_${tier.toUpperCase()}_${spec.envSuffix})`);
        continue;
      }
      const problem = checkValue(value, spec);
      if (problem) problems.push(`rate_limits.${tier}.${key} (RATE_LIMIT_${tier.toUpperCase()}_${spec.envSuffix}): ${problem}`);
    }
  }
}

function checkValue(value: unknown, spec: FieldSpec): string | null {
  switch (spec.type) {
    case 'bool':
      return typeof value === 'boolean' ? null : `expected true or false, got ${describe(value)}`;
    case 'string':
      if (typeof value !== 'string') return `expected a string, got ${describe(value)}`;
      if (spec.maxLength !== undefined && value.length > spec.maxLength) return `longer than ${spec.maxLength} characters`;
      return null;
    case 'enum': {
      const text = typeof value === 'string' ? (spec.caseInsensitive ? value.toLowerCase() : value) : null;
      if (text === null || !spec.values.includes(text)) return `must be one of ${spec.values.join(', ')}, got ${describe(value)}`;
      return null;
    }
    case 'int':
    case 'number': {
      if (typeof value !== 'number' || !Number.isFinite(value)) return `expected a number, got ${describe(value)}`;
      if (spec.type === 'int' && !Number.isInteger(value)) return `expected an integer, got ${value}`;
      if (value < 0 && spec.min >= 0) return `must not be negative, got ${value}`;
      const exclusive = spec.type === 'number' && spec.exclusiveMin === true;
      if (exclusive ? value <= spec.min : value < spec.min) return `must be ${exclusive ? 'greater than' : 'at least'} ${spec.min}, got ${value}`;
      if (spec.max !== undefined && value > spec.max) return `must be at most ${spec.max}, got ${value}`;
      return null;
    }
  }
}

/** Rules that relate several keys; run once every key has the right type. */
function checkRelations(config: Config, problems: string[]): void {
  const tiers = Object.keys(config.rate_limits);
  for (const key of Object.keys(config.user_tiers)) {
    if (key === 'default_tier') continue;
    const tier = key.slice(0, -'_enabled'.length);
    if (!tiers.includes(tier)) problems.push(`user_tiers.${key}: unknown tier ${JSON.stringify(tier)} (tiers: ${tiers.join(', ')})`);
  }
  const def = config.user_tiers.default_tier;
  if (!tiers.includes(def)) {
    problems.push(`user_tiers.default_tier (USER_TIER_DEFAULT): unknown tier ${JSON.stringify(def)} (tiers: ${tiers.join(', ')})`);
  } else if (config.user_tiers[`${def}_enabled`] === false) {
    problems.push(`user_tiers.default_tier (USER_TIER_DEFAULT): tier ${JSON.stringify(def)} is disabled, but unknown users fall back to it`);
  }
  const { minute_ms, hour_ms } = config.limiter;
  const dayMs = config.quota_management.reset_interval * 1000;
  if (hour_ms % minute_ms !== 0) problems.push(`limiter.hour_ms: must be a multiple of limiter.minute_ms (${minute_ms})`);
  if (dayMs % minute_ms !== 0) problems.push(`quota_management.reset_interval (QUOTA_RESET_INTERVAL): must be a whole number of minute windows (${minute_ms} ms)`);
  if (config.limiter.mode === 'redis' && config.redis.endpoint === '') {
    problems.push('limiter.mode (RATE_LIMITING_MODE): redis mode needs redis.endpoint (REDIS_ENDPOINT)');
  }
  if (config.redis.endpoint !== '') {
    for (const part of config.redis.endpoint.split(',')) {
      if (!/^\[?[A-Za-z0-9_.:-]+\]?(:\d{1,5})?$/.test(part.trim())) problems.push(`redis.endpoint (REDIS_ENDPOINT): not a host:port list: ${JSON.stringify(part)}`);
    }
    if (config.redis.topology === 'standalone' && config.redis.endpoint.includes(',')) {
      problems.push('redis.endpoint (REDIS_ENDPOINT): several addresses need redis.topology (REDIS_TOPOLOGY) sentinel or cluster');
    }
  }
  if (config.cluster.peers !== '') {
    if (config.cluster.secret === '') problems.push('cluster.secret (CLUSTER_SECRET): required with static peers (CLUSTER_PEERS)');
    for (const entry of config.cluster.peers.split(',').map((p) => p.trim()).filter(Boolean)) {
      if (!/^[^@\s]+@\[?[^\]\s]+\]?:\d{1,5}$/.test(entry)) problems.push(`cluster.peers (CLUSTER_PEERS): not nodeId@host:port: ${JSON.stringify(entry)}`);
    }
  }
  if (config.cluster.member_ttl_ms <= config.cluster.heartbeat_ms) {
    problems.push('cluster.member_ttl_ms (CLUSTER_MEMBER_TTL_MS): must be longer than cluster.heartbeat_ms (CLUSTER_HEARTBEAT_MS)');
  }
  if (config.service.port + config.cluster.peer_port_offset + config.service.workers > 65_535) {
    problems.push('cluster.peer_port_offset (CLUSTER_PEER_PORT_OFFSET): API port + offset + workers exceeds 65535');
  }
  const push = config.monitoring.custom_metrics_endpoint;
  if (push !== '' && !/^https?:\/\/[^\s/]+(\/\S*)?$/.test(push)) {
    problems.push(`monitoring.custom_metrics_endpoint (CUSTOM_METRICS_ENDPOINT): not an http(s) URL of a Pushgateway: ${JSON.stringify(push)}`);
  }
  const redisAlias = config.monitoring.redis_endpoint;
  if (redisAlias !== '' && config.redis.endpoint !== '' && redisAlias !== config.redis.endpoint) {
    problems.push(`monitoring.redis_endpoint: differs from redis.endpoint (${config.redis.endpoint}); set one of them`);
  }
}

function fillDerived(config: Config): void {
  for (const [tier, limits] of Object.entries(config.rate_limits)) {
    limits.throttle_requests_per_minute ??= Math.max(1, Math.floor(limits.requests_per_minute / 10));
    config.user_tiers[`${tier}_enabled`] ??= true;
  }
}

/** The tiers callers may name: enabled in `user_tiers`. */
export function isTierEnabled(config: Config, tier: string): boolean {
  return tier in config.rate_limits && config.user_tiers[`${tier}_enabled`] !== false;
}

function isObject(value: unknown): value is Raw {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function describe(value: unknown): string {
  if (value === undefined) return 'nothing';
  if (typeof value === 'string') return JSON.stringify(value);
  return `${typeof value} ${JSON.stringify(value)}`;
}
