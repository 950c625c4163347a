import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { BuiltNode } from '../src/worker.js';
import { readStoredState, stateKey } from '../src/storage/redis/keys.js';
import { FLUSH, FlushBatch, RedisScripts } from '../src/storage/redis/scripts.js';
import { ManualClock, postJson, testNode } from './helpers/app.js';
import { RedisServer } from './helpers/redis-server.js';

const DAY = 86_400_000;
const MINUTE = 60_000;
// Keys expire when their window ends, so test time lies ahead of the real clock.
const T0 = Math.ceil((Date.now() + 10 * DAY) / DAY) * DAY;

let redis: RedisServer;
const nodes: BuiltNode[] = [];

beforeAll(async () => {
  redis = await RedisServer.start();
});
afterAll(async () => {
  await redis.stop();
});
afterEach(async () => {
  // Redis first: a closing node waits (bounded) for Redis to take its last changes.
  if (!redis.running) await redis.restart();
  await Promise.all(nodes.splice(0).map((n) => n.close()));
  const client = redis.client();
  await client.flushall();
  client.disconnect();
});

async function node(env: Record<string, string> = {}, clock = new ManualClock(T0)) {
  const built = await testNode({ REDIS_ENDPOINT: redis.endpoint, REDIS_SYNC_INTERVAL_MS: '50', REDIS_CONNECTION_POOL_SIZE: '2', ...env }, clock);
  nodes.push(built);
  return built;
}

async function check(n: BuiltNode, body: Record<string, unknown>) {
  const res = await postJson(n.app, '/rate-limiting/check', body);
  expect(res.statusCode).toBe(200);
  return res.json();
}

async function waitFor(what: () => Promise<boolean> | boolean, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await what())) {
    if (Date.now() > deadline) throw new Error('timed out waiting');
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe('write-behind to Redis', () => {
  it('writes counters behind every sync interval, with the user\'s hash tag and expiring keys', async () => {
    const n = await node();
    for (let i = 0; i < 7; i++) await check(n, { user_id: 'alice' });
    const client = redis.client();
    await waitFor(async () => (await readStoredState(client, 'alice'))?.minuteCount === 7);
    expect(await readStoredState(client, 'alice')).toMatchObject({
      debt: 7 * MINUTE, debtAt: T0, graceAt: -1, minuteStart: T0, minuteCount: 7, hourStart: T0, hourCount: 7, dayStart: T0, dayCount: 7,
    });
    // The key ends shortly after its last window (the day): nothing grows without bound.
    expect(await client.pexpiretime(stateKey('alice'))).toBeGreaterThanOrEqual(T0 + DAY);
    expect(await client.pexpiretime(stateKey('alice'))).toBeLessThanOrEqual(T0 + DAY + 120_000);
    expect(await client.keys('*')).toEqual([stateKey('alice')]);
    expect(stateKey('alice')).toMatch(/^rl:\{alice\}:/);
    client.disconnect();
    const status = (await n.app.inject('/rate-limiting/status')).json();
    expect(status.redis).toMatchObject({ connected: true, sync_interval_ms: 50, pending_users: 0 });
    const health = (await n.app.inject('/health')).json();
    expect(health).toMatchObject({ status: 'healthy', redis_connected: true, durability: 'redis', mode: 'local' });
  });

  it('a restarted node continues every user\'s counters from Redis, loading each user once', async () => {
    const first = await node();
    for (let i = 0; i < 10; i++) await check(first, { user_id: 'bob' });
    await check(first, { user_id: 'carol', cost: 4 });
    await first.close();
    nodes.splice(nodes.indexOf(first), 1);

    const second = await node({}, new ManualClock(T0 + 2000));
    // Concurrent first checks of a user wait on one load.
    const results = await Promise.all(Array.from({ length: 5 }, () => postJson(second.app, '/rate-limiting/check', { user_id: 'bob' })));
    const bodies = results.map((r) => r.json());
    expect(bodies.filter((b) => b.allowed)).toHaveLength(2); // two seconds of refill, nothing more
    expect(bodies[0]).toMatchObject({ state: 'loaded', quota: { current_usage: 11 } });
    expect(bodies.slice(1).every((b) => b.state === 'loaded')).toBe(true);
    const metrics = (await second.app.inject('/metrics')).body;
    expect(metrics).toContain('rate_limiting_state_loads_total{result="loaded"} 1');
    const quota = (await second.app.inject('/rate-limiting/quota/carol')).json();
    expect(quota.quota.current_usage).toBe(4);
  });

  it('keeps the grace period across a restart instead of starting it again', async () => {
    const env = { RATE_LIMIT_BASIC_REQUESTS_PER_DAY: '3', QUOTA_GRACE_PERIOD: '60' };
    const first = await node(env, new ManualClock(T0));
    for (let i = 0; i < 3; i++) expect((await check(first, { user_id: 'grace' })).code).toBe('OK');
    expect((await check(first, { user_id: 'grace' })).code).toBe('GRACE');
    await first.close();
    nodes.splice(nodes.indexOf(first), 1);
    const clock = new ManualClock(T0 + 30_000);
    const second = await node(env, clock);
    expect(await check(second, { user_id: 'grace' })).toMatchObject({ code: 'GRACE', state: 'loaded', quota: { current_usage: 5 } });
    clock.ms = T0 + 60_000;
    expect(await check(second, { user_id: 'grace' })).toMatchObject({ code: 'QUOTA_EXCEEDED', allowed: false });
  });

  it('adopts what another writer added in Redis meanwhile', async () => {
    const clock = new ManualClock(T0);
    const owner = await node({}, clock);
    for (let i = 0; i < 3; i++) await check(owner, { user_id: 'dave' });
    await owner.reconciler!.flushAll(2000);
    // Another node decides for dave directly in Redis (as the cluster does when the owner is suspected).
    const other = await node({ RATE_LIMITING_MODE: 'redis' }, clock);
    for (let i = 0; i < 4; i++) expect((await check(other, { user_id: 'dave' })).mode).toBe('redis');
    await check(owner, { user_id: 'dave' });
    await owner.reconciler!.flushAll(2000);
    const after = await check(owner, { user_id: 'dave', cost: 0 });
    expect(after.quota.current_usage).toBe(8);
    expect(after.limits.burst.remaining).toBe(2);
  });

  it('redis mode decides exactly as local mode for the same traffic', async () => {
    const clock = new ManualClock(T0);
    const local = await node({}, clock);
    // Its own database, so the local node's write-behind does not feed it.
    const remote = await node({ RATE_LIMITING_MODE: 'redis', REDIS_DATABASE: '1' }, clock);
    const steps = [0, 0, 0, 200, 999, 1500, 20_000, 59_999, 60_000, 60_001, 61_000, 3_600_000];
    for (const [i, at] of steps.entries()) {
      clock.ms = T0 + at;
      for (const user of ['u1', 'u2']) {
        const body = { user_id: user, tier: user === 'u1' ? 'basic' : 'premium', cost: 1 + (i % 4) };
        const a = await check(local, body);
        const b = await check(remote, body);
        expect(a.mode).toBe('local');
        expect(b.mode).toBe('redis');
        const { mode: _m1, state: _s1, ...decisionA } = a;
        const { mode: _m2, ...decisionB } = b;
        expect(decisionB, `step ${i} ${user}`).toEqual(decisionA);
      }
    }
  });
});

describe('when Redis goes away', () => {
  it('keeps deciding from memory, reports degraded, and re-seeds a fresh empty Redis', async () => {
    const clock = new ManualClock(T0);
    const n = await node({}, clock);
    for (let i = 0; i < 6; i++) await check(n, { user_id: 'erin' });
    await check(n, { user_id: 'frank', cost: 3 });
    await n.reconciler!.flushAll(2000);

    await redis.kill();
    await waitFor(() => !n.redis!.connection.connected);
    clock.advance(1000);
    const during = await check(n, { user_id: 'erin' });
    expect(during).toMatchObject({ allowed: true, mode: 'local', state: 'memory', quota: { current_usage: 7 } });
    const newcomer = await check(n, { user_id: 'gina' });
    expect(newcomer).toMatchObject({ allowed: true, state: 'fresh' });
    const health = (await n.app.inject('/health')).json();
    expect(health.status).toBe('degraded');
    expect(health.redis_connected).toBe(false);
    expect(health.problems[0]).toMatch(/redis unreachable/);
    expect((await n.app.inject('/metrics')).body).toMatch(/rate_limiting_redis_partitioned 1/);

    await redis.restart();
    const client = redis.client();
    // Every user in memory is written back in full, touched since or not.
    await waitFor(async () => (await readStoredState(client, 'frank'))?.dayCount === 3, 8000);
    await waitFor(async () => (await readStoredState(client, 'erin'))?.dayCount === 7, 8000);
    expect((await readStoredState(client, 'gina'))?.dayCount).toBe(1);
    client.disconnect();
    await waitFor(async () => (await n.app.inject('/health')).json().status === 'healthy');

    // A node started afterwards recovers them from the re-seeded Redis.
    const later = await node({}, clock);
    expect((await check(later, { user_id: 'erin', cost: 0 })).quota.current_usage).toBe(7);
  });

  it('keeps a failed flush\'s changes and writes them once Redis is back', async () => {
    const clock = new ManualClock(T0);
    const n = await node({}, clock);
    await check(n, { user_id: 'hank' });
    await n.reconciler!.flushAll(2000);
    await redis.kill();
    await waitFor(() => !n.redis!.connection.connected);
    for (let i = 0; i < 4; i++) await check(n, { user_id: 'hank' });
    await n.reconciler!.tick();
    expect(n.shard.dirty.has('hank')).toBe(true);
    expect((await n.app.inject('/metrics')).body).toMatch(/rate_limiting_sync_pending_requests 4/);
    await redis.restart();
    await waitFor(() => n.shard.dirty.size === 0, 8000);
    const client = redis.client();
    expect((await readStoredState(client, 'hank'))?.dayCount).toBe(5);
    client.disconnect();
  });

  it('bounds the changes kept for evicted users and counts what it drops', async () => {
    const n = await node({ RATE_LIMITING_MAX_USERS_IN_MEMORY: '1000', REDIS_MAX_UNSYNCED_EVICTED_USERS: '10' });
    await redis.kill();
    await waitFor(() => !n.redis!.connection.connected);
    for (const from of [0, 510]) {
      const checks = Array.from({ length: 510 }, (_, i) => ({ user_id: `crowd-${from + i}`, cost: 2 }));
      expect((await postJson(n.app, '/rate-limiting/check/batch', { checks })).statusCode).toBe(200);
    }
    expect(n.shard.size).toBe(1000);
    expect(n.shard.evictedDirty.size).toBe(10);
    const metrics = (await n.app.inject('/metrics')).body;
    expect(metrics).toContain('rate_limiting_sync_dropped_users_total 10');
    expect(metrics).toContain('rate_limiting_sync_dropped_requests_total 20');
  });
});

describe('the fallback policy', () => {
  it.each([
    ['deny', { allowed: false, code: 'UNAVAILABLE', mode: 'fallback' }],
    ['allow', { allowed: true, code: 'OK', mode: 'fallback' }],
    ['local', { allowed: true, code: 'OK', mode: 'fallback' }],
  ])('redis mode with Redis down follows %s', async (policy, expected) => {
    const n = await node({ RATE_LIMITING_MODE: 'redis', RATE_LIMITING_FALLBACK_POLICY: policy });
    await redis.kill();
    await waitFor(() => !n.redis!.connection.connected);
    expect(await check(n, { user_id: 'ivy' })).toMatchObject(expected);
    expect((await n.app.inject('/metrics')).body).toContain(`rate_limiting_fallback_decisions_total{policy="${policy}"} 1`);
    const health = (await n.app.inject('/health')).json();
    expect(health.problems[0]).toContain(`fallback policy (${policy})`);
  });
});


describe('one key per user: the window rules of the scripts', () => {
  const limits = {
    tier: 't', burst: 100, perMinute: 100, perHour: 1000, perDay: 10_000, throttlePerMinute: 1,
    quotaEnabled: true, overage: 'block' as const, graceMs: 0, minuteMs: MINUTE, hourMs: 60 * MINUTE, dayMs: DAY,
  };
  /** One user's flush with only the given windows sent (no bucket write, as an owner that never saw Redis). */
  const flush = (userId: string, windows: Array<{ kind: 'm' | 'h' | 'd'; start: number; delta: number; full: number }>) => {
    const batch = new FlushBatch(1);
    const at = batch.add(userId);
    batch.values.set([0, 0, 0, -1, 0, 0, 100, T0, -1, MINUTE, 60 * MINUTE, DAY], at);
    for (const w of windows) batch.values.set([1, w.start, w.delta, w.full], at + FLUSH.windows + 4 * 'mhd'.indexOf(w.kind));
    return batch;
  };

  /** Runs `body` with the scripts on their own connection and a plain client, closing both afterwards. */
  async function withScripts(body: (scripts: RedisScripts, client: ReturnType<typeof redis.client>) => Promise<void>) {
    const { RedisConnection } = await import('../src/storage/redis/connection.js');
    const { createLogger } = await import('../src/observability/logger.js');
    const connection = new RedisConnection(
      { endpoint: redis.endpoint, topology: 'standalone', sentinelMaster: '', database: 0, password: '', poolSize: 1, connectTimeoutMs: 2000, commandTimeoutMs: 5000 },
      createLogger('silent'),
    );
    expect(await connection.start(5000)).toBe(true);
    const client = redis.client();
    try {
      await body(new RedisScripts(connection, 60_000), client);
    } finally {
      client.disconnect();
      await connection.close();
    }
  }

  it('adds deltas to their window, lets a newer window replace the stored one and ignores an ended one', async () => {
    await withScripts(async (scripts, client) => {
      await scripts.reconcile(flush('w', [{ kind: 'm', start: T0, delta: 3, full: -1 }, { kind: 'd', start: T0, delta: 3, full: -1 }]));
      await scripts.reconcile(flush('w', [{ kind: 'm', start: T0, delta: 2, full: -1 }]));
      expect(await readStoredState(client, 'w')).toMatchObject({ minuteStart: T0, minuteCount: 5, dayStart: T0, dayCount: 3 });
      await scripts.reconcile(flush('w', [{ kind: 'm', start: T0 + MINUTE, delta: 1, full: -1 }]));
      expect(await readStoredState(client, 'w')).toMatchObject({ minuteStart: T0 + MINUTE, minuteCount: 1, dayCount: 3 });
      // A late delta of the minute that has ended changes nothing.
      await scripts.reconcile(flush('w', [{ kind: 'm', start: T0, delta: 4, full: -1 }]));
      expect(await readStoredState(client, 'w')).toMatchObject({ minuteStart: T0 + MINUTE, minuteCount: 1 });
      // An owner's total re-seeds a count Redis lost.
      await client.del(stateKey('w'));
      const surprises = await scripts.reconcile(flush('w', [{ kind: 'd', start: T0, delta: 1, full: 9 }]));
      expect(await readStoredState(client, 'w')).toMatchObject({ dayStart: T0, dayCount: 9 });
      expect(surprises.size).toBe(0);
      // load answers the counts of the windows asked for, 0 for others.
      expect(await scripts.load('w', limits, T0 + 2 * MINUTE)).toMatchObject({ minuteCount: 0, dayCount: 9 });
    });
  });

  it('one call writes many users, each to its own key, whatever its id holds', async () => {
    await withScripts(async (scripts, client) => {
      const ids = ['plain', 'br{ace}', '~tilde', 'new\nline', 'ünï', 'x'.repeat(200)];
      const batch = new FlushBatch(ids.length);
      ids.forEach((id, i) => {
        const at = batch.add(id);
        batch.values.set([0, 0, 0, -1, 0, 0, 100, T0, -1, MINUTE, 60 * MINUTE, DAY], at);
        batch.values.set([1, T0, i + 1, -1], at + FLUSH.windows);
      });
      // A user from the middle of the batch onwards: positions index into the whole batch.
      expect((await scripts.reconcile(batch, 0, 2)).size).toBe(0);
      expect((await scripts.reconcile(batch, 2, ids.length)).size).toBe(0);
      for (const [i, id] of ids.entries()) expect(await readStoredState(client, id)).toMatchObject({ minuteStart: T0, minuteCount: i + 1 });
      expect(stateKey('new\nline')).not.toContain('\n');
      expect(await client.dbsize()).toBe(ids.length);
    });
  });

  it('a key always outlives its windows and its bucket by the slack, and keeps its expiry when nothing ends later', async () => {
    await withScripts(async (scripts, client) => {
      const SLACK = 60_000;
      const user = (perMs: number, debt: number, at: number, day: number, version: number) => {
        const batch = new FlushBatch(1);
        const i = batch.add('ttl');
        batch.values.set([1, debt, at, version, 0, 0, perMs, day, -1, MINUTE, 60 * MINUTE, DAY], i);
        for (const [k, start] of [at - (at % MINUTE), at - (at % (60 * MINUTE)), day].entries()) batch.values.set([1, start, 1, -1], i + FLUSH.windows + 4 * k);
        return batch;
      };
      await scripts.reconcile(user(0.01, 5, T0, T0, -1));
      expect(await client.pexpiretime(stateKey('ttl'))).toBe(T0 + DAY + SLACK);
      // Set apart by hand: a later flush whose windows end no later leaves it as it is.
      await client.pexpireat(stateKey('ttl'), T0 + DAY + SLACK + 7);
      await scripts.reconcile(user(0.01, 6, T0 + 5 * MINUTE, T0, 0));
      expect(await client.pexpiretime(stateKey('ttl'))).toBe(T0 + DAY + SLACK + 7);
      // A bucket full later than the day ends (a debt repaid at 0.5 per ms over 2 days) moves it.
      await scripts.reconcile(user(0.5, DAY, T0 + 10 * MINUTE, T0, 1));
      expect(await client.pexpiretime(stateKey('ttl'))).toBe(T0 + 10 * MINUTE + 2 * DAY + SLACK);
      // So does the next day window.
      await scripts.reconcile(user(0.01, 1, T0 + DAY + MINUTE, T0 + DAY, 2));
      expect(await client.pexpiretime(stateKey('ttl'))).toBe(T0 + 2 * DAY + SLACK);
      // decide.lua keeps the same rule.
      await scripts.decide('ttl', limits, 1, T0 + DAY + 2 * MINUTE);
      expect(await client.pexpiretime(stateKey('ttl'))).toBe(T0 + 2 * DAY + SLACK);
      await scripts.decide('ttl', limits, 1, T0 + 2 * DAY + MINUTE);
      expect(await client.pexpiretime(stateKey('ttl'))).toBe(T0 + 3 * DAY + SLACK);
      expect(await readStoredState(client, 'ttl')).toMatchObject({ dayStart: T0 + 2 * DAY, dayCount: 1 });
    });
  });

  it('a Redis decision made with a clock behind the stored windows charges the newer window, losing no count', async () => {
    await withScripts(async (scripts, client) => {
      for (let i = 0; i < 3; i++) await scripts.decide('skew', limits, 1, T0 + MINUTE + 5);
      await scripts.decide('skew', limits, 1, T0 + MINUTE - 5);
      expect(await readStoredState(client, 'skew')).toMatchObject({ minuteStart: T0 + MINUTE, minuteCount: 4, dayCount: 4 });
    });
  });
});
