import { afterEach, describe, expect, it } from 'vitest';
import type { FastifyInstance } from 'fastify';
import { postJson, testNode } from './helpers/app.js';

const SEED_SCENARIOS = [
  { user_id: 'basic_user', tier: 'basic', requests: 70 },
  { user_id: 'premium_user', tier: 'premium', requests: 350 },
  { user_id: 'enterprise_user', tier: 'enterprise', requests: 1100 },
];

let app: FastifyInstance | undefined;
afterEach(async () => {
  await app?.close();
  app = undefined;
});

async function node(env: Record<string, string> = {}) {
  const built = await testNode(env);
  app = built.app;
  return built;
}

describe('GET /health', () => {
  it('answers the seed\'s shape plus mode, durability and uptime', async () => {
    const { app, clock } = await node();
    clock.advance(2500);
    const res = await app.inject('/health');
    expect(res.statusCode).toBe(200);
    const body = res.json();
    expect(body).toMatchObject({ status: 'healthy', service: 'rate-limiting-api', redis_connected: false, mode: 'local', durability: 'memory', uptime_seconds: 2.5 });
    expect(new Date(body.timestamp).getTime()).toBe(clock.ms);
  });
});

describe('POST /rate-limiting/check', () => {
  it('answers 200 with the decision, remaining per limit and rate-limit headers', async () => {
    const { app, clock } = await node();
    const res = await postJson(app, '/rate-limiting/check', { user_id: 'alice', tier: 'basic' });
    expect(res.statusCode).toBe(200);
    const body = res.json();
    expect(body).toMatchObject({
      allowed: true, code: 'OK', user_id: 'alice', tier: 'basic', cost: 1, limited_by: null, retry_after_ms: 0, mode: 'local', decided_at: clock.ms,
      limits: {
        burst: { limit: 10, remaining: 9, reset_at: clock.ms + 1000 },
        minute: { limit: 60, remaining: 59, reset_at: clock.ms + 60_000 },
        hour: { limit: 1000, remaining: 999 },
        day: { limit: 10000, remaining: 9999 },
      },
      quota: { current_usage: 1, limit: 10000, reset_time: '2026-01-02T00:00:00.000Z' },
    });
    expect(res.headers['ratelimit-policy']).toBe('"burst";q=10;w=10, "minute";q=60;w=60, "hour";q=1000;w=3600, "day";q=10000;w=86400');
    expect(res.headers.ratelimit).toBe('"burst";r=9;t=1, "minute";r=59;t=60, "hour";r=999;t=3600, "day";r=9999;t=86400');
    expect(res.headers).toMatchObject({ 'x-ratelimit-limit': '10', 'x-ratelimit-remaining': '9', 'x-ratelimit-reset': '1' });
    expect(res.headers['retry-after']).toBeUndefined();
  });

  it('admits exactly burst_limit of 70 back-to-back checks, then denies with Retry-After', async () => {
    const { app } = await node();
    const codes: string[] = [];
    let last;
    for (let i = 0; i < 70; i++) {
      last = await postJson(app, '/rate-limiting/check', { user_id: 'bob', tier: 'basic' });
      expect(last.statusCode).toBe(200);
      codes.push(last.json().code);
    }
    expect(codes.filter((c) => c === 'OK')).toHaveLength(10);
    expect(codes.slice(10).every((c) => c === 'RATE_LIMITED')).toBe(true);
    expect(last!.json()).toMatchObject({ allowed: false, limited_by: 'burst', retry_after_ms: 1000 });
    expect(last!.headers).toMatchObject({ 'retry-after': '1', 'retry-after-ms': '1000', 'x-ratelimit-remaining': '0' });
  });

  it('charges cost to every limit and treats cost 0 as a peek', async () => {
    const { app } = await node();
    expect((await postJson(app, '/rate-limiting/check', { user_id: 'c', cost: 4 })).json().limits.minute.remaining).toBe(56);
    const peek = (await postJson(app, '/rate-limiting/check', { user_id: 'c', cost: 0 })).json();
    expect(peek).toMatchObject({ allowed: true, cost: 0, quota: { current_usage: 4 } });
    expect((await postJson(app, '/rate-limiting/check', { user_id: 'c', cost: 6 })).json()).toMatchObject({ allowed: true, limits: { burst: { remaining: 0 } } });
    expect((await postJson(app, '/rate-limiting/check', { user_id: 'c', cost: 11 })).json()).toMatchObject({ allowed: false, retry_after_ms: null });
  });

  it('refills as the injected clock moves', async () => {
    const { app, clock } = await node();
    for (let i = 0; i < 10; i++) await postJson(app, '/rate-limiting/check', { user_id: 'd' });
    expect((await postJson(app, '/rate-limiting/check', { user_id: 'd' })).json().allowed).toBe(false);
    clock.advance(3000);
    const after = await Promise.all([1, 2, 3, 4].map(() => postJson(app, '/rate-limiting/check', { user_id: 'd' })));
    expect(after.map((r) => r.json().allowed)).toEqual([true, true, true, false]);
  });

  it('places unknown users in the hinted tier if enabled, else in default_tier', async () => {
    const { app } = await node({ USER_TIER_PREMIUM_ENABLED: 'false' });
    expect((await postJson(app, '/rate-limiting/check', { user_id: 'e', tier: 'enterprise' })).json().limits.burst.limit).toBe(200);
    expect((await postJson(app, '/rate-limiting/check', { user_id: 'f', tier: 'premium' })).json()).toMatchObject({ tier: 'basic', limits: { burst: { limit: 10 } } });
    expect((await postJson(app, '/rate-limiting/check', { user_id: 'g' })).json().tier).toBe('basic');
  });

  it.each([
    ['missing user_id', { tier: 'basic' }, 'user_id', /user_id is required/],
    ['empty user_id', { user_id: '' }, 'user_id', /user_id/],
    ['10 KB user_id', { user_id: 'x'.repeat(10_240) }, 'user_id', /must NOT have more than 256 characters/],
    ['control characters in user_id', { user_id: 'a\u0000b' }, 'user_id', /user_id/],
    ['negative cost', { user_id: 'u', cost: -1 }, 'cost', /must be >= 0/],
    ['fractional cost', { user_id: 'u', cost: 1.5 }, 'cost', /must be integer/],
    ['cost as a string', { user_id: 'u', cost: '3' }, 'cost', /must be integer/],
    ['unknown tier', { user_id: 'u', tier: 'gold' }, 'tier', /must be equal to one of the allowed values/],
    ['user_id as a number', { user_id: 42 }, 'user_id', /must be string/],
  ])('400 naming the field for %s', async (_name, payload, field, message) => {
    const { app } = await node();
    const res = await postJson(app, '/rate-limiting/check', payload);
    expect(res.statusCode).toBe(400);
    expect(res.json()).toMatchObject({ statusCode: 400, error: 'INVALID_FIELD', field });
    expect(res.json().message).toMatch(message);
  });

  it('refuses a 1 MB body with 413 before parsing it, and bad JSON with 400', async () => {
    const { app } = await node();
    const big = await app.inject({ method: 'POST', url: '/rate-limiting/check', headers: { 'content-type': 'application/json' }, payload: JSON.stringify({ user_id: 'u', pad: 'x'.repeat(1024 * 1024) }) });
    expect(big.statusCode).toBe(413);
    expect(big.json()).toMatchObject({ error: 'BODY_TOO_LARGE' });
    const bad = await app.inject({ method: 'POST', url: '/rate-limiting/check', headers: { 'content-type': 'application/json' }, payload: '{"user_id": ' });
    expect(bad.statusCode).toBe(400);
    expect(bad.json().error).toBe('INVALID_JSON');
    // Nothing was lost: the node still decides.
    expect((await postJson(app, '/rate-limiting/check', { user_id: 'u' })).json().allowed).toBe(true);
  });
});

describe('POST /rate-limiting/check/batch', () => {
  it('decides many checks in order in one call', async () => {
    const { app } = await node();
    const checks = Array.from({ length: 12 }, () => ({ user_id: 'batch-user' })).concat([{ user_id: 'other', cost: 2 } as { user_id: string }]);
    const res = await postJson(app, '/rate-limiting/check/batch', { checks });
    expect(res.statusCode).toBe(200);
    const results = res.json().results as Array<{ allowed: boolean; user_id: string; cost: number }>;
    expect(results).toHaveLength(13);
    expect(results.filter((r) => r.user_id === 'batch-user' && r.allowed)).toHaveLength(10);
    expect(results[12]).toMatchObject({ user_id: 'other', allowed: true, cost: 2 });
  });

  it('names the bad item and refuses more than 1000 checks', async () => {
    const { app } = await node();
    const bad = await postJson(app, '/rate-limiting/check/batch', { checks: [{ user_id: 'a' }, { user_id: 'b', cost: -2 }] });
    expect(bad.statusCode).toBe(400);
    expect(bad.json().field).toBe('checks[1].cost');
    const many = await postJson(app, '/rate-limiting/check/batch', { checks: Array.from({ length: 1001 }, (_, i) => ({ user_id: `u${i}` })) });
    expect(many.statusCode).toBe(400);
    expect(many.json().field).toBe('checks');
  });
});

describe('GET /rate-limiting/tiers and /quota', () => {
  it('lists the tiers with their figures', async () => {
    const { app } = await node({ USER_TIER_ENTERPRISE_ENABLED: 'false' });
    const body = (await app.inject('/rate-limiting/tiers')).json();
    expect(body.default_tier).toBe('basic');
    expect(body.tiers).toContainEqual({
      name: 'premium', enabled: true, requests_per_minute: 300, requests_per_hour: 5000, requests_per_day: 50000, burst_limit: 50, throttle_requests_per_minute: 30,
    });
    expect(body.tiers.find((t: { name: string }) => t.name === 'enterprise').enabled).toBe(false);
    expect(body.quota).toEqual({ enabled: true, overage_handling: 'block', reset_interval: 86400, grace_period: 300 });
  });

  it('reports quota in the seed\'s user-tier schema without consuming', async () => {
    const { app } = await node();
    await postJson(app, '/rate-limiting/check', { user_id: 'q', tier: 'premium', cost: 5 });
    const first = (await app.inject('/rate-limiting/quota/q?tier=premium')).json();
    const second = (await app.inject('/rate-limiting/quota/q?tier=premium')).json();
    expect(first).toMatchObject({
      user_id: 'q', tier: 'premium',
      rate_limits: { requests_per_minute: 300, requests_per_hour: 5000, requests_per_day: 50000, burst_limit: 50 },
      quota: { current_usage: 5, limit: 50000, reset_time: '2026-01-02T00:00:00.000Z' },
    });
    expect(second.quota.current_usage).toBe(5);
    expect(second.limits.burst.remaining).toBe(45);
    expect((await app.inject('/rate-limiting/quota/never-seen')).json().quota.current_usage).toBe(0);
    expect((await app.inject('/rate-limiting/quota/q?tier=gold')).statusCode).toBe(400);
  });
});

describe('POST /rate-limiting/test', () => {
  it('runs the seed\'s scenarios in isolation and compares with the closed form', async () => {
    const { app } = await node();
    await postJson(app, '/rate-limiting/check', { user_id: 'basic_user', tier: 'basic' });
    const res = await postJson(app, '/rate-limiting/test', { test_scenarios: SEED_SCENARIOS });
    expect(res.statusCode).toBe(200);
    const body = res.json();
    expect(body.all_match).toBe(true);
    expect(body.results.map((r: { allowed: number; expected_allowed: number; denied: number }) => [r.allowed, r.expected_allowed, r.denied])).toEqual([
      [10, 10, 60], [50, 50, 300], [200, 200, 900],
    ]);
    // The real basic_user was charged once by the check above, not by the scenario.
    expect((await app.inject('/rate-limiting/quota/basic_user')).json().quota.current_usage).toBe(1);
  });

  it('uses the configured limits for the closed form', async () => {
    const { app } = await node({ RATE_LIMIT_BASIC_BURST_LIMIT: '70', RATE_LIMIT_BASIC_REQUESTS_PER_DAY: '25', QUOTA_GRACE_PERIOD: '0' });
    const body = (await postJson(app, '/rate-limiting/test', { test_scenarios: [{ user_id: 'x', tier: 'basic', requests: 100 }] })).json();
    expect(body.results[0]).toMatchObject({ allowed: 25, expected_allowed: 25, matches: true, codes: { OK: 25, QUOTA_EXCEEDED: 75 } });
  });

  it('validates scenarios', async () => {
    const { app } = await node();
    const res = await postJson(app, '/rate-limiting/test', { test_scenarios: [{ user_id: 'x', requests: 0 }] });
    expect(res.statusCode).toBe(400);
    expect(res.json().field).toBe('test_scenarios[0].requests');
  });
});

describe('GET /rate-limiting/status and /metrics', () => {
  it('reports measured decision SLIs over the last five minutes', async () => {
    const { app } = await node();
    const empty = (await app.inject('/rate-limiting/status')).json();
    expect(empty.decisions).toMatchObject({ count: 0, p50_ms: null, within_timeout_ratio: 1 });
    for (let i = 0; i < 25; i++) await postJson(app, '/rate-limiting/check', { user_id: `s${i % 5}` });
    const body = (await app.inject('/rate-limiting/status')).json();
    expect(body).toMatchObject({ mode: 'local', shard: { users: 5, max_users: 1_000_000 } });
    expect(body.decisions.count).toBe(25);
    expect(body.decisions.p50_ms).toBeGreaterThan(0);
    expect(body.decisions.p99_ms).toBeGreaterThanOrEqual(body.decisions.p50_ms);
    expect(body.decisions.within_timeout_ratio).toBe(1);
  });

  it('exposes rate_limiting_* metrics and process metrics', async () => {
    const { app } = await node();
    for (let i = 0; i < 12; i++) await postJson(app, '/rate-limiting/check', { user_id: 'm', tier: 'basic' });
    await postJson(app, '/rate-limiting/check', { user_id: 'bad', cost: -3 });
    const res = await app.inject('/metrics');
    expect(res.statusCode).toBe(200);
    expect(res.headers['content-type']).toMatch(/text\/plain/);
    const text = res.body;
    expect(text).toContain('rate_limiting_decisions_total{tier="basic",outcome="allowed",code="OK",path="local"} 10');
    expect(text).toContain('rate_limiting_decisions_total{tier="basic",outcome="denied",code="RATE_LIMITED",path="local"} 2');
    expect(text).toMatch(/rate_limiting_decision_duration_seconds_count 12/);
    expect(text).toContain('rate_limiting_shard_users 1');
    expect(text).toContain('rate_limiting_bad_requests_total{route="/rate-limiting/check",code="INVALID_FIELD"} 1');
    expect(text).toMatch(/rate_limiting_config_info\{mode="local",durability="memory"/);
    expect(text).toContain('rate_limiting_tier_limit{tier="premium",limit="burst_limit"} 50');
    expect(text).toMatch(/process_cpu_user_seconds_total/);
  });

  it('answers unknown routes with a JSON 404', async () => {
    const { app } = await node();
    const res = await app.inject('/nope');
    expect(res.statusCode).toBe(404);
    expect(res.json()).toMatchObject({ error: 'NOT_FOUND' });
  });
});
