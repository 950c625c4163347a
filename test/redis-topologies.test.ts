import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Cluster, Redis } from 'ioredis';
import { readStoredState, stateKey } from '../src/storage/redis/keys.js';
import type { BuiltNode } from '../src/worker.js';
import { ManualClock, postJson, testNode } from './helpers/app.js';
import { RedisClusterProcess, RedisSentinelProcess } from './helpers/redis-topologies.js';

const DAY = 86_400_000;
const T0 = Math.ceil((Date.now() + 10 * DAY) / DAY) * DAY;

async function check(n: BuiltNode, body: Record<string, unknown>) {
  const res = await postJson(n.app, '/rate-limiting/check', body);
  expect(res.statusCode).toBe(200);
  return res.json();
}

describe('Redis Cluster (three masters)', () => {
  let cluster: RedisClusterProcess;
  beforeAll(async () => {
    cluster = await RedisClusterProcess.start();
  }, 60_000);
  afterAll(async () => {
    await cluster?.stop();
  });

  it('writes behind, recovers on restart and decides in redis mode across slots', async () => {
    const env = { REDIS_ENDPOINT: cluster.endpoint, REDIS_TOPOLOGY: 'cluster', REDIS_SYNC_INTERVAL_MS: '50' };
    const users = Array.from({ length: 12 }, (_, i) => `cluster-user-${i}`);
    const first = await testNode(env, new ManualClock(T0));
    for (const user of users) for (let i = 0; i < 3; i++) await check(first, { user_id: user });
    expect(await first.reconciler!.flushAll(10_000)).toBe(true);
    await first.close();

    const client = new Cluster([{ host: '127.0.0.1', port: cluster.ports[0]! }]);
    for (const user of users) expect((await readStoredState(client, user))?.dayCount).toBe(3);
    // The users really are spread over the masters.
    const owners = new Set(await Promise.all(users.map(async (u) => (await client.cluster('KEYSLOT', stateKey(u))) as number)));
    expect(owners.size).toBeGreaterThan(3);
    client.disconnect();

    const second = await testNode(env, new ManualClock(T0 + 1000));
    const resumed = await check(second, { user_id: users[0] });
    expect(resumed).toMatchObject({ state: 'loaded', quota: { current_usage: 4 } });
    await second.close();

    const redisMode = await testNode({ ...env, RATE_LIMITING_MODE: 'redis' }, new ManualClock(T0 + 2000));
    const decided = await check(redisMode, { user_id: users[1] });
    expect(decided).toMatchObject({ mode: 'redis', allowed: true, quota: { current_usage: 4 } });
    await redisMode.close();
  }, 60_000);
});

describe('Redis Sentinel', () => {
  let sentinel: RedisSentinelProcess;
  beforeAll(async () => {
    sentinel = await RedisSentinelProcess.start('limiter');
  }, 60_000);
  afterAll(async () => {
    await sentinel?.stop();
  });

  it('finds the master through the sentinel and writes behind to it', async () => {
    const n = await testNode(
      { REDIS_ENDPOINT: sentinel.endpoint, REDIS_TOPOLOGY: 'sentinel', REDIS_SENTINEL_MASTER: 'limiter', REDIS_SYNC_INTERVAL_MS: '50' },
      new ManualClock(T0),
    );
    expect((await n.app.inject('/health')).json()).toMatchObject({ redis_connected: true, durability: 'redis' });
    for (let i = 0; i < 5; i++) await check(n, { user_id: 'sentinel-user' });
    expect(await n.reconciler!.flushAll(5000)).toBe(true);
    await n.close();
    const master = new Redis({ port: sentinel.masterPort });
    expect((await readStoredState(master, 'sentinel-user'))?.dayCount).toBe(5);
    master.disconnect();
  }, 30_000);
});
