import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { FastifyInstance } from 'fastify';
import { migrate } from '../src/storage/db/migrations.js';
import { openPglite, type PgliteDatabase } from '../src/storage/db/pglite.js';
import type { BuiltNode } from '../src/worker.js';
import { ManualClock, postJson, sharedDatabase, testNode } from './helpers/app.js';

const T0 = 1_767_225_600_000;
const ADMIN = { authorization: 'Bearer test-admin-token' };
let db: PgliteDatabase;
let node: BuiltNode & { clock: ManualClock };
let app: FastifyInstance;

beforeAll(async () => {
  db = await openPglite('memory');
  await migrate(db);
});
afterAll(async () => {
  await db.close();
});
afterEach(async () => {
  await node?.close();
});

async function start(env: Record<string, string> = {}) {
  node = await testNode({ ADMIN_TOKEN: 'test-admin-token', ...env }, new ManualClock(T0), sharedDatabase(db));
  app = node.app;
  return node;
}

async function admin(method: 'POST' | 'PATCH' | 'DELETE' | 'GET', url: string, payload?: unknown) {
  const res = await app.inject({ method, url, headers: ADMIN, ...(payload === undefined ? {} : { payload: payload as Record<string, unknown> }) });
  return { status: res.statusCode, body: res.json() };
}

async function check(body: Record<string, unknown>) {
  const res = await postJson(app, '/rate-limiting/check', body);
  expect(res.statusCode).toBe(200);
  return res.json();
}

let n = 0;
const fresh = (name: string) => `${name}-${++n}`;

describe('the check path with stored users and API keys', () => {
  it('uses a stored user\'s tier whatever the request hints, and a tier change applies at once', async () => {
    await start();
    const user = fresh('stored');
    expect((await admin('POST', '/admin/users', { user_id: user, tier: 'premium' })).status).toBe(201);
    expect(await check({ user_id: user, tier: 'basic' })).toMatchObject({ tier: 'premium', limits: { burst: { limit: 50 } } });
    expect((await admin('PATCH', `/admin/users/${user}`, { tier: 'enterprise', overrides: { burst_limit: 7 } })).status).toBe(200);
    const after = await check({ user_id: user });
    expect(after).toMatchObject({ tier: 'enterprise', limits: { burst: { limit: 7 }, minute: { limit: 1000 } } });
  });

  it('resolves the user from the API key, which overrides user_id and tier in the body', async () => {
    await start();
    const user = fresh('keyed');
    await admin('POST', '/admin/users', { user_id: user, tier: 'premium' });
    const created = await admin('POST', `/admin/users/${user}/keys`, { name: 'ci' });
    expect(created.status).toBe(201);
    const key = created.body.key as string;
    const decided = await check({ api_key: key, user_id: 'someone-else', tier: 'enterprise' });
    expect(decided).toMatchObject({ allowed: true, code: 'OK', user_id: user, tier: 'premium' });
    const validated = (await postJson(app, '/rate-limiting/validate-key', { api_key: key })).json();
    expect(validated).toEqual({ valid: true, code: 'OK', user_id: user, tier: 'premium', expires_at: null });
    // All of a user's keys share the user's limits.
    const second = (await admin('POST', `/admin/users/${user}/keys`, {})).body.key as string;
    expect((await check({ api_key: second })).quota.current_usage).toBe(2);
  });

  it('answers each key problem with its code, touching no counter', async () => {
    await start();
    const user = fresh('coded');
    await admin('POST', '/admin/users', { user_id: user, tier: 'basic' });
    const key = (await admin('POST', `/admin/users/${user}/keys`, {})).body.key as string;
    await check({ api_key: key });

    const typo = key.slice(0, -1) + (key.endsWith('A') ? 'B' : 'A');
    expect(await check({ api_key: typo })).toMatchObject({ allowed: false, code: 'INVALID_KEY' });
    expect(await check({ api_key: 'test_key', user_id: user })).toMatchObject({ allowed: false, code: 'INVALID_KEY' });

    const expiring = (await admin('POST', `/admin/users/${user}/keys`, { expires_at: new Date(T0 + 60_000).toISOString() })).body;
    expect(await check({ api_key: expiring.key })).toMatchObject({ allowed: true });
    node.clock.advance(61_000);
    expect(await check({ api_key: expiring.key })).toMatchObject({ allowed: false, code: 'KEY_EXPIRED', user_id: user });

    const revoked = (await admin('POST', `/admin/users/${user}/keys`, {})).body;
    expect((await admin('DELETE', `/admin/keys/${revoked.id}`)).status).toBe(200);
    expect(await check({ api_key: revoked.key })).toMatchObject({ allowed: false, code: 'KEY_REVOKED' });

    expect((await admin('PATCH', `/admin/users/${user}`, { disabled: true })).status).toBe(200);
    expect(await check({ api_key: key })).toMatchObject({ allowed: false, code: 'USER_DISABLED' });
    expect(await check({ user_id: user })).toMatchObject({ allowed: false, code: 'USER_DISABLED' });
    expect((await postJson(app, '/rate-limiting/validate-key', { api_key: key })).json()).toMatchObject({ valid: false, code: 'USER_DISABLED' });

    // Only the first, good check was charged.
    const quota = (await app.inject(`/rate-limiting/quota/${user}`)).json();
    expect(quota.quota.current_usage).toBe(2);
    const metrics = (await app.inject('/metrics')).body;
    expect(metrics).toMatch(/rate_limiting_decisions_total\{tier="basic",outcome="denied",code="KEY_REVOKED",path="local"\} 1/);
  });

  it('rotates a key: the old one keeps working for the overlap, then expires', async () => {
    await start();
    const user = fresh('rotated');
    await admin('POST', '/admin/users', { user_id: user, tier: 'basic' });
    const old = (await admin('POST', `/admin/users/${user}/keys`, { name: 'prod' })).body;
    const rotated = await admin('POST', `/admin/keys/${old.id}/rotate`, { overlap_seconds: 120 });
    expect(rotated.status).toBe(201);
    expect(rotated.body.key).not.toBe(old.key);
    expect(await check({ api_key: rotated.body.key })).toMatchObject({ allowed: true, user_id: user });
    expect(await check({ api_key: old.key })).toMatchObject({ allowed: true, user_id: user });
    node.clock.advance(121_000);
    expect(await check({ api_key: old.key })).toMatchObject({ allowed: false, code: 'KEY_EXPIRED' });
    expect(await check({ api_key: rotated.body.key })).toMatchObject({ allowed: true });
  });

  it('resets a user\'s quota through the admin API', async () => {
    await start({ RATE_LIMIT_BASIC_REQUESTS_PER_DAY: '3', QUOTA_GRACE_PERIOD: '0' });
    const user = fresh('quota');
    for (let i = 0; i < 3; i++) {
      node.clock.advance(2000);
      await check({ user_id: user });
    }
    expect(await check({ user_id: user })).toMatchObject({ allowed: false, code: 'QUOTA_EXCEEDED' });
    const reset = await admin('POST', `/admin/users/${user}/quota/reset`);
    expect(reset.status).toBe(200);
    expect(await check({ user_id: user })).toMatchObject({ allowed: true, quota: { current_usage: 1 } });
    const rows = await db.query('SELECT action FROM audit_log WHERE target = $1', [`user:${user}`]);
    expect(rows.rows.map((r) => r.action)).toContain('quota.reset');
  });

  it('ignores api_key when key validation is switched off, and needs user_id then', async () => {
    await start({ API_KEY_VALIDATION_ENABLED: 'false' });
    expect(await check({ api_key: 'anything', user_id: fresh('plain') })).toMatchObject({ allowed: true, code: 'OK' });
    const missing = await postJson(app, '/rate-limiting/check', { api_key: 'anything' });
    expect(missing.statusCode).toBe(400);
    expect(missing.json()).toMatchObject({ field: 'user_id' });
    expect((await postJson(app, '/rate-limiting/validate-key', { api_key: 'x' })).statusCode).toBe(403);
  });

  it('refuses the admin API without a token configured, with a hint', async () => {
    await start({ ADMIN_TOKEN: '' });
    const res = await app.inject({ method: 'GET', url: '/admin/users', headers: ADMIN });
    expect(res.statusCode).toBe(403);
    expect(res.json().message).toMatch(/ADMIN_TOKEN/);
  });
});
