import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startNodeProcess, type NodeProcess } from './helpers/node-process.js';
import { RedisServer } from './helpers/redis-server.js';
import { throwawayPostgresEnv } from './helpers/databases.js';

/**
 * Two nodes sharing PostgreSQL: admin changes on one reach the other's caches, through
 * Redis pub/sub and the audit log (change-feed.ts), or through the audit log alone.
 */
describe.each([
  { name: 'with Redis', redis: true },
  { name: 'without Redis (the audit log alone)', redis: false },
])('accounts across nodes, $name', ({ redis: withRedis }) => {
  let redis: RedisServer | undefined;
  let database: Awaited<ReturnType<typeof throwawayPostgresEnv>>;
  let a: NodeProcess;
  let b: NodeProcess;
  const admin = { authorization: 'Bearer cross-node', 'content-type': 'application/json' };

  beforeAll(async () => {
    if (withRedis) redis = await RedisServer.start();
    database = await throwawayPostgresEnv();
    const env = { ...database.env, ...(redis ? { REDIS_ENDPOINT: redis.endpoint } : {}), ADMIN_TOKEN: 'cross-node', LOG_LEVEL: 'warn' };
    [a, b] = await Promise.all([startNodeProcess({ ...env, NODE_ID: 'acc-a' }), startNodeProcess({ ...env, NODE_ID: 'acc-b' })]);
  }, 60_000);
  afterAll(async () => {
    await Promise.all([a?.kill(), b?.kill()]);
    await redis?.stop();
    await database?.dispose();
  });

  async function check(node: NodeProcess, body: Record<string, unknown>): Promise<{ allowed: boolean; code: string; tier: string }> {
    // A new connection each time, so both workers of the node answer over the loop.
    const res = await fetch(`${node.url}/rate-limiting/check`, { method: 'POST', headers: { 'content-type': 'application/json', connection: 'close' }, body: JSON.stringify(body) });
    return (await res.json()) as { allowed: boolean; code: string; tier: string };
  }

  /** Time until `done` holds for 6 checks in a row (both workers), polling every 50 ms. */
  async function timeUntil(done: () => Promise<boolean>): Promise<number> {
    const started = Date.now();
    let streak = 0;
    while (streak < 6) {
      streak = (await done()) ? streak + 1 : 0;
      if (Date.now() - started > 10_000) throw new Error('timed out');
      if (streak === 0) await new Promise((r) => setTimeout(r, 50));
    }
    return Date.now() - started;
  }

  it('a key revoked on one node is refused by the other within 2 seconds', async () => {
    await fetch(`${a.url}/admin/users`, { method: 'POST', headers: admin, body: JSON.stringify({ user_id: 'cross', tier: 'premium' }) });
    const created = (await (await fetch(`${a.url}/admin/users/cross/keys`, { method: 'POST', headers: admin, body: '{}' })).json()) as { id: string; key: string };
    // Both of b's workers have the key cached as valid.
    for (let i = 0; i < 6; i++) expect((await check(b, { api_key: created.key })).code).toBe('OK');
    const revoked = await fetch(`${a.url}/admin/keys/${created.id}`, { method: 'DELETE', headers: { authorization: admin.authorization } });
    expect(revoked.status).toBe(200);
    const took = await timeUntil(async () => (await check(b, { api_key: created.key })).code === 'KEY_REVOKED');
    expect(took).toBeLessThan(2000);
  }, 30_000);

  it('a tier change on one node applies to the next decisions on the other', async () => {
    await fetch(`${a.url}/admin/users`, { method: 'POST', headers: admin, body: JSON.stringify({ user_id: 'upgrade', tier: 'basic' }) });
    for (let i = 0; i < 4; i++) expect((await check(b, { user_id: 'upgrade' })).tier).toBe('basic');
    await fetch(`${a.url}/admin/users/upgrade`, { method: 'PATCH', headers: admin, body: JSON.stringify({ tier: 'enterprise' }) });
    const took = await timeUntil(async () => (await check(b, { user_id: 'upgrade' })).tier === 'enterprise');
    expect(took).toBeLessThan(2000);
    // The other node also read the changes back from the audit log (within about a
    // second, also where pub/sub was faster), counted in its metrics.
    const changesRead = async (): Promise<number> =>
      Number(/^rate_limiting_account_changes_total (\d+)$/m.exec(await (await fetch(`${b.url}/metrics`)).text())?.[1] ?? 0);
    await timeUntil(async () => (await changesRead()) >= 4);
    expect(await (await fetch(`${b.url}/metrics`)).text()).toMatch(/^rate_limiting_account_change_feed_up 1$/m);
  }, 30_000);
});
