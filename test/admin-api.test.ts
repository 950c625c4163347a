/**
 * Every admin route through app.inject() against PGlite. The app is a bare Fastify
 * instance built like src/api/app.ts (same options, its error mapping), with only the
 * admin routes registered.
 */
import Fastify, { type FastifyError, type FastifyInstance, type LightMyRequestResponse } from 'fastify';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { checkApiKeyFormat, hashApiKey } from '../src/accounts/api-keys.js';
import { InProcessInvalidationBus, type InvalidationEvent } from '../src/accounts/invalidation.js';
import { KeyResolver } from '../src/accounts/key-cache.js';
import { accountRepositories } from '../src/accounts/repositories.js';
import { toErrorBody } from '../src/api/app.js';
import type { ErrorBody } from '../src/api/errors.js';
import { registerAdminRoutes, type AdminConfig } from '../src/api/routes/admin.js';
import { createLogger } from '../src/observability/logger.js';
import type { Database } from '../src/storage/db/database.js';
import { migrate } from '../src/storage/db/migrations.js';
import { openPglite, type PgliteDatabase } from '../src/storage/db/pglite.js';

const TOKEN = 'test-admin-token-0123456789';
const T0 = Date.UTC(2026, 4, 1, 8, 0, 0);
const TIERS = ['basic', 'premium', 'enterprise'];

interface TestApp {
  app: FastifyInstance;
  events: InvalidationEvent[];
  bus: InProcessInvalidationBus;
  clock: { now: number };
}

async function buildAdminApp(db: Database, config: Partial<AdminConfig> = {}): Promise<TestApp> {
  const clock = { now: T0 };
  const bus = new InProcessInvalidationBus();
  const events: InvalidationEvent[] = [];
  bus.subscribe((event) => events.push(event));
  const app = Fastify({
    logger: false,
    bodyLimit: 16 * 1024,
    ajv: { customOptions: { allErrors: false, coerceTypes: false, removeAdditional: true, useDefaults: true } },
  });
  app.setErrorHandler((error: FastifyError, _request, reply) => {
    const body = toErrorBody(error);
    if (body.statusCode >= 500) body.message = 'internal error';
    void reply.status(body.statusCode).send(body);
  });
  registerAdminRoutes(app, {
    db,
    invalidation: bus,
    config: { adminToken: TOKEN, generationEnabled: true, rotationEnabled: true, tiers: TIERS, quotaWindowSeconds: 86_400, rotationOverlapSeconds: 3600, ...config },
    clock: () => clock.now,
    logger: createLogger('silent'),
  });
  await app.ready();
  return { app, events, bus, clock };
}

const auth = { authorization: `Bearer ${TOKEN}`, 'x-admin-actor': 'alice@ops' };

function call(app: FastifyInstance, method: 'GET' | 'POST' | 'PATCH' | 'DELETE', url: string, body?: unknown, headers: Record<string, string> = auth) {
  return app.inject({ method, url, headers, ...(body === undefined ? {} : { payload: body as Record<string, unknown> }) });
}

const ROUTES: Array<['GET' | 'POST' | 'PATCH' | 'DELETE', string]> = [
  ['POST', '/admin/users'],
  ['GET', '/admin/users'],
  ['GET', '/admin/users/u'],
  ['PATCH', '/admin/users/u'],
  ['DELETE', '/admin/users/u'],
  ['POST', '/admin/users/u/keys'],
  ['GET', '/admin/users/u/keys'],
  ['POST', '/admin/keys/k/rotate'],
  ['DELETE', '/admin/keys/k'],
  ['POST', '/admin/users/u/quota/reset'],
];

function expectError(res: LightMyRequestResponse, status: number, code: string, field?: string): ErrorBody {
  const body = res.json<ErrorBody>();
  expect(res.statusCode, res.body).toBe(status);
  expect(body.error).toBe(code);
  expect(body.statusCode).toBe(status);
  if (field !== undefined) expect(body.field).toBe(field);
  return body;
}

describe('admin API', () => {
  let db: PgliteDatabase;
  let t: TestApp;
  /** Every key the API handed out, to look for in places it must never be. */
  const issued: string[] = [];

  beforeAll(async () => {
    db = await openPglite('memory');
    await migrate(db);
    t = await buildAdminApp(db);
  });
  afterAll(async () => {
    await t?.app.close();
    await db?.close();
  });

  describe('authentication', () => {
    it('answers 403 everywhere, with the hint, when no token is configured', async () => {
      const off = await buildAdminApp(db, { adminToken: '' });
      try {
        for (const [method, url] of ROUTES) {
          const body = expectError(await call(off.app, method, url, method === 'GET' || method === 'DELETE' ? undefined : {}), 403, 'FORBIDDEN');
          expect(body.message).toMatch(/set ADMIN_TOKEN/);
        }
      } finally {
        await off.app.close();
      }
    });

    it('answers 401 without the token, with a wrong one, or with another scheme', async () => {
      for (const [method, url] of ROUTES) {
        const res = await call(t.app, method, url, undefined, {});
        expectError(res, 401, 'UNAUTHORIZED');
        expect(res.headers['www-authenticate']).toBe('Bearer realm="admin"');
      }
      expectError(await call(t.app, 'GET', '/admin/users', undefined, { authorization: `Bearer ${TOKEN}x` }), 401, 'UNAUTHORIZED');
      expectError(await call(t.app, 'GET', '/admin/users', undefined, { authorization: `Bearer ${TOKEN.slice(0, -1)}` }), 401, 'UNAUTHORIZED');
      expectError(await call(t.app, 'GET', '/admin/users', undefined, { authorization: `Basic ${TOKEN}` }), 401, 'UNAUTHORIZED');
      expect((await call(t.app, 'GET', '/admin/users', undefined, { authorization: `bearer  ${TOKEN}` })).statusCode).toBe(200);
      // Nothing was written by the refused calls.
      expect(await accountRepositories(db, () => T0).audit.list()).toEqual([]);
    });
  });

  describe('users', () => {
    it('POST creates a user (201), records it in the audit log and publishes the change', async () => {
      t.events.length = 0;
      const res = await call(t.app, 'POST', '/admin/users', { user_id: 'acme-1', tier: 'premium', overrides: { burst_limit: 80, requests_per_minute: 500 }, quota_override: 90000 });
      expect(res.statusCode, res.body).toBe(201);
      expect(res.json()).toEqual({
        user_id: 'acme-1',
        tier: 'premium',
        overrides: { burst_limit: 80, requests_per_minute: 500 },
        quota_override: 90000,
        disabled: false,
        created_at: new Date(T0).toISOString(),
        updated_at: new Date(T0).toISOString(),
      });
      const [entry] = await accountRepositories(db, () => T0).audit.list({ target: 'user:acme-1' });
      expect(entry).toMatchObject({ actor: 'alice@ops', sourceIp: '127.0.0.1', action: 'user.create', at: T0 });
      expect(entry!.details).toMatchObject({ tier: 'premium', quota_override: 90000 });
      expect(t.events).toEqual([{ type: 'user', userId: 'acme-1' }]);
    });

    it('POST answers 409 for an existing user, naming user_id', async () => {
      const body = expectError(await call(t.app, 'POST', '/admin/users', { user_id: 'acme-1', tier: 'basic' }), 409, 'CONFLICT', 'user_id');
      expect(body.message).toMatch(/already exists/);
      expect((await call(t.app, 'GET', '/admin/users/acme-1')).json().tier).toBe('premium');
    });

    it('POST answers 400 naming the field, with every problem in the message', async () => {
      const body = expectError(
        await call(t.app, 'POST', '/admin/users', { user_id: 'x', tier: 'gold', overrides: { burst_limit: -1, requests_per_second: 5 }, disabled: 'yes' }),
        400,
        'INVALID_FIELD',
        'tier',
      );
      expect(body.message).toMatch(/tier must be one of basic, premium, enterprise, got "gold"/);
      expect(body.message).toMatch(/overrides\.requests_per_second is not a known field/);
      expect(body.message).toMatch(/overrides\.burst_limit must be a non-negative integer/);
      expect(body.message).toMatch(/disabled must be true or false/);
      expectError(await call(t.app, 'POST', '/admin/users', { tier: 'basic' }), 400, 'INVALID_FIELD', 'user_id');
      expectError(await call(t.app, 'POST', '/admin/users', { user_id: 'y', tier: 'basic', overrides: { requests_per_day: 1.5 } }), 400, 'INVALID_FIELD', 'overrides.requests_per_day');
      expectError(await call(t.app, 'POST', '/admin/users', { user_id: 'y', tier: 'basic', quota_override: -5 }), 400, 'INVALID_FIELD', 'quota_override');
      expectError(await call(t.app, 'POST', '/admin/users', [1, 2]), 400, 'INVALID_FIELD');
      expect((await call(t.app, 'GET', '/admin/users/x')).statusCode).toBe(404);
    });

    it('GET one user (200) or 404', async () => {
      expect((await call(t.app, 'GET', '/admin/users/acme-1')).json()).toMatchObject({ user_id: 'acme-1', tier: 'premium' });
      expectError(await call(t.app, 'GET', '/admin/users/nobody'), 404, 'NOT_FOUND');
      expectError(await call(t.app, 'GET', '/admin/users/a%07b'), 400, 'INVALID_FIELD', 'user_id');
      // NOTE: Fastify's router refuses path parameters over 100 characters (maxParamLength)
      // before any schema: ids of 101–256 characters need buildApp to raise it.
      expect((await call(t.app, 'GET', `/admin/users/${'x'.repeat(257)}`)).statusCode).toBe(414);
    });

    it('PATCH changes what it names (overrides merge, null removes), 404 for unknown, 400 for nothing', async () => {
      t.clock.now = T0 + 60_000;
      t.events.length = 0;
      const res = await call(t.app, 'PATCH', '/admin/users/acme-1', { tier: 'enterprise', overrides: { burst_limit: null, requests_per_hour: 9000 }, quota_override: null });
      expect(res.statusCode, res.body).toBe(200);
      expect(res.json()).toMatchObject({
        tier: 'enterprise',
        overrides: { requests_per_minute: 500, requests_per_hour: 9000 },
        quota_override: null,
        updated_at: new Date(T0 + 60_000).toISOString(),
        created_at: new Date(T0).toISOString(),
      });
      expect(t.events).toEqual([{ type: 'user', userId: 'acme-1' }]);
      expect((await accountRepositories(db, () => T0).audit.list({ target: 'user:acme-1' }))[0]).toMatchObject({ action: 'user.update', at: T0 + 60_000 });
      expectError(await call(t.app, 'PATCH', '/admin/users/nobody', { disabled: true }), 404, 'NOT_FOUND');
      expectError(await call(t.app, 'PATCH', '/admin/users/acme-1', {}), 400, 'INVALID_FIELD');
      expectError(await call(t.app, 'PATCH', '/admin/users/acme-1', { tier: 'platinum' }), 400, 'INVALID_FIELD', 'tier');
    });

    it('GET /admin/users pages with an opaque cursor; bad cursor or limit is a 400 naming it', async () => {
      for (const id of ['p-1', 'p-2', 'p-3', 'p-4']) expect((await call(t.app, 'POST', '/admin/users', { user_id: id, tier: 'basic' })).statusCode).toBe(201);
      const all = (await call(t.app, 'GET', '/admin/users?limit=1000')).json();
      expect(all.next_cursor).toBeNull();
      const seen: string[] = [];
      let url = '/admin/users?limit=2';
      for (;;) {
        const page = (await call(t.app, 'GET', url)).json();
        expect(page.users.length).toBeLessThanOrEqual(2);
        seen.push(...page.users.map((u: { user_id: string }) => u.user_id));
        if (page.next_cursor === null) break;
        url = `/admin/users?limit=2&cursor=${encodeURIComponent(page.next_cursor)}`;
      }
      expect(seen).toEqual(all.users.map((u: { user_id: string }) => u.user_id));
      expect(seen).toHaveLength(5);
      expectError(await call(t.app, 'GET', '/admin/users?cursor=garbage'), 400, 'INVALID_FIELD', 'cursor');
      expectError(await call(t.app, 'GET', '/admin/users?limit=0'), 400, 'INVALID_FIELD', 'limit');
      expectError(await call(t.app, 'GET', '/admin/users?limit=1001'), 400, 'INVALID_FIELD', 'limit');
      expectError(await call(t.app, 'GET', '/admin/users?limit=ten'), 400, 'INVALID_FIELD', 'limit');
    });
  });

  describe('keys', () => {
    let keyId = '';
    let key = '';

    it('POST makes a key: shown once, in our format, with its display prefix (201)', async () => {
      t.clock.now = T0;
      const res = await call(t.app, 'POST', '/admin/users/acme-1/keys', { name: 'production', expires_at: '2027-01-01T00:00:00Z' });
      expect(res.statusCode, res.body).toBe(201);
      const body = res.json();
      expect(Object.keys(body).sort()).toEqual(['created_at', 'expires_at', 'id', 'key', 'name', 'prefix', 'rotated_from']);
      expect(checkApiKeyFormat(body.key)).toBe('ok');
      expect(body).toMatchObject({ prefix: body.key.slice(0, 12), name: 'production', created_at: new Date(T0).toISOString(), expires_at: '2027-01-01T00:00:00.000Z' });
      expect(res.body).not.toContain(hashApiKey(body.key));
      ({ id: keyId, key } = body);
      issued.push(key);
      const audit = await accountRepositories(db, () => T0).audit.list({ target: `key:${keyId}` });
      expect(audit).toHaveLength(1);
      expect(audit[0]).toMatchObject({ action: 'key.create', actor: 'alice@ops', details: { user_id: 'acme-1', name: 'production' } });

      t.clock.now = T0 + 1;
      const plain = await call(t.app, 'POST', '/admin/users/acme-1/keys'); // no body at all
      expect(plain.statusCode, plain.body).toBe(201);
      issued.push(plain.json().key);
    });

    it('POST answers 404 for an unknown user and 400 for a past or malformed expiry', async () => {
      expectError(await call(t.app, 'POST', '/admin/users/nobody/keys', {}), 404, 'NOT_FOUND');
      expectError(await call(t.app, 'POST', '/admin/users/acme-1/keys', { expires_at: '2020-01-01T00:00:00Z' }), 400, 'INVALID_FIELD', 'expires_at');
      expectError(await call(t.app, 'POST', '/admin/users/acme-1/keys', { expires_at: 'tomorrow' }), 400, 'INVALID_FIELD', 'expires_at');
      expectError(await call(t.app, 'POST', '/admin/users/acme-1/keys', { name: '' }), 400, 'INVALID_FIELD', 'name');
    });

    it('GET lists a user\'s keys without the key or its hash; 404 for an unknown user', async () => {
      const res = await call(t.app, 'GET', '/admin/users/acme-1/keys');
      expect(res.statusCode).toBe(200);
      const { keys } = res.json();
      expect(keys).toHaveLength(2);
      expect(keys[0]).toEqual({
        id: keyId,
        user_id: 'acme-1',
        prefix: key.slice(0, 12),
        name: 'production',
        status: 'active',
        created_at: new Date(T0).toISOString(),
        expires_at: '2027-01-01T00:00:00.000Z',
        revoked_at: null,
        last_used_at: null,
        rotated_from: null,
      });
      for (const k of issued) {
        expect(res.body).not.toContain(k);
        expect(res.body).not.toContain(hashApiKey(k));
      }
      expectError(await call(t.app, 'GET', '/admin/users/nobody/keys'), 404, 'NOT_FOUND');
    });

    it('rotate gives a new key (201); the old one keeps working for the overlap, then expires', async () => {
      const resolver = new KeyResolver({ store: accountRepositories(db, () => t.clock.now).apiKeys, clock: () => t.clock.now });
      resolver.listen(t.bus);
      expect((await resolver.resolve(key)).code).toBe('valid');

      t.clock.now = T0 + 1000;
      const res = await call(t.app, 'POST', `/admin/keys/${keyId}/rotate`, { overlap_seconds: 600 });
      expect(res.statusCode, res.body).toBe(201);
      const body = res.json();
      issued.push(body.key);
      expect(checkApiKeyFormat(body.key)).toBe('ok');
      expect(body).toMatchObject({ name: 'production', rotated_from: keyId, expires_at: '2027-01-01T00:00:00.000Z', previous: { id: keyId, expires_at: new Date(T0 + 1000 + 600_000).toISOString() } });
      expect(res.body).not.toContain(hashApiKey(body.key));

      // The invalidation event reached the resolver: the old key's new expiry applies at once.
      t.clock.now = T0 + 1000 + 599_999;
      expect(resolver.resolve(key)).toBeInstanceOf(Promise);
      expect((await resolver.resolve(key)).code).toBe('valid');
      t.clock.now = T0 + 1000 + 600_000;
      expect(await resolver.resolve(key)).toMatchObject({ code: 'KEY_EXPIRED' });
      expect((await resolver.resolve(body.key)).code).toBe('valid');

      // The default overlap applies without a body.
      t.clock.now = T0 + 2000;
      const again = await call(t.app, 'POST', `/admin/keys/${body.id}/rotate`);
      expect(again.statusCode, again.body).toBe(201);
      issued.push(again.json().key);
      expect(again.json().previous.expires_at).toBe(new Date(T0 + 2000 + 3_600_000).toISOString());
      const audit = await accountRepositories(db, () => T0).audit.list({ target: `key:${keyId}` });
      expect(audit[0]).toMatchObject({ action: 'key.rotate', details: { overlap_seconds: 600, new_key_id: body.id } });
    });

    it('rotate answers 404, 409 (expired or revoked) and 400 (overlap out of range)', async () => {
      expectError(await call(t.app, 'POST', '/admin/keys/key_unknown/rotate', {}), 404, 'NOT_FOUND');
      t.clock.now = T0 + 1000 + 600_000;
      expectError(await call(t.app, 'POST', `/admin/keys/${keyId}/rotate`, {}), 409, 'CONFLICT');
      t.clock.now = T0 + 3000;
      expectError(await call(t.app, 'POST', `/admin/keys/${keyId}/rotate`, { overlap_seconds: -1 }), 400, 'INVALID_FIELD', 'overlap_seconds');
      expectError(await call(t.app, 'POST', `/admin/keys/${keyId}/rotate`, { overlap_seconds: 31 * 86_400 }), 400, 'INVALID_FIELD', 'overlap_seconds');
    });

    it('DELETE revokes a key (200) and the next validation says KEY_REVOKED; 404 for unknown', async () => {
      const made = (await call(t.app, 'POST', '/admin/users/acme-1/keys', { name: 'to revoke' })).json();
      issued.push(made.key);
      const resolver = new KeyResolver({ store: accountRepositories(db, () => t.clock.now).apiKeys, clock: () => t.clock.now });
      resolver.listen(t.bus);
      expect((await resolver.resolve(made.key)).code).toBe('valid');
      t.clock.now = T0 + 5000;
      const res = await call(t.app, 'DELETE', `/admin/keys/${made.id}`);
      expect(res.statusCode, res.body).toBe(200);
      expect(res.json()).toMatchObject({ id: made.id, status: 'revoked', revoked_at: new Date(T0 + 5000).toISOString() });
      expect(res.body).not.toContain(made.key);
      expect(await resolver.resolve(made.key)).toMatchObject({ code: 'KEY_REVOKED' });
      expectError(await call(t.app, 'POST', `/admin/keys/${made.id}/rotate`, {}), 409, 'CONFLICT');
      expectError(await call(t.app, 'DELETE', '/admin/keys/key_unknown'), 404, 'NOT_FOUND');
      expect((await accountRepositories(db, () => T0).audit.list({ target: `key:${made.id}` }))[0]).toMatchObject({ action: 'key.revoke' });
    });

    it('answers 403 for key generation or rotation when they are turned off', async () => {
      const locked = await buildAdminApp(db, { generationEnabled: false, rotationEnabled: false });
      try {
        expect(expectError(await call(locked.app, 'POST', '/admin/users/acme-1/keys', {}), 403, 'FORBIDDEN').message).toMatch(/generation is disabled/);
        expect(expectError(await call(locked.app, 'POST', `/admin/keys/${keyId}/rotate`, {}), 403, 'FORBIDDEN').message).toMatch(/rotation is disabled/);
        expect((await call(locked.app, 'GET', '/admin/users/acme-1/keys')).statusCode).toBe(200);
      } finally {
        await locked.app.close();
      }
    });
  });

  describe('quota and deletion', () => {
    it('POST quota/reset resets the current window, audits it and publishes it', async () => {
      t.clock.now = T0 + 7_200_000;
      t.events.length = 0;
      const res = await call(t.app, 'POST', '/admin/users/acme-1/quota/reset');
      expect(res.statusCode, res.body).toBe(200);
      const windowStart = Date.UTC(2026, 4, 1);
      expect(res.json()).toEqual({ user_id: 'acme-1', window_start: new Date(windowStart).toISOString(), reset_at: new Date(T0 + 7_200_000).toISOString() });
      expect(t.events).toEqual([{ type: 'quota_reset', userId: 'acme-1', windowStart, resetAt: T0 + 7_200_000 }]);
      const repos = accountRepositories(db, () => T0);
      expect(await repos.quota.listResets('acme-1', T0)).toEqual([{ userId: 'acme-1', windowStart, resetAt: T0 + 7_200_000, by: 'alice@ops' }]);
      expect((await repos.audit.list({ target: 'user:acme-1' }))[0]).toMatchObject({ action: 'quota.reset' });
    });

    it('DELETE removes a user and its keys (204), then 404', async () => {
      t.events.length = 0;
      const res = await call(t.app, 'DELETE', '/admin/users/acme-1');
      expect(res.statusCode, res.body).toBe(204);
      expect(t.events).toEqual([{ type: 'user', userId: 'acme-1' }]);
      expectError(await call(t.app, 'GET', '/admin/users/acme-1'), 404, 'NOT_FOUND');
      expectError(await call(t.app, 'GET', '/admin/users/acme-1/keys'), 404, 'NOT_FOUND');
      expectError(await call(t.app, 'DELETE', '/admin/users/acme-1'), 404, 'NOT_FOUND');
      expect((await db.query('SELECT id FROM api_keys WHERE user_id = $1', ['acme-1'])).rows).toEqual([]);
      const [entry] = await accountRepositories(db, () => T0).audit.list({ target: 'user:acme-1' });
      expect(entry!.action).toBe('user.delete');
      expect((entry!.details.deleted_keys as string[]).length).toBeGreaterThan(2);
    });

    it('audited every write, and no audit entry holds a key or a hash', async () => {
      const entries = await accountRepositories(db, () => T0).audit.list({ limit: 1000 });
      const actions = entries.map((e) => e.action);
      for (const action of ['user.create', 'user.update', 'user.delete', 'key.create', 'key.rotate', 'key.revoke', 'quota.reset']) expect(actions).toContain(action);
      expect(entries.every((e) => e.actor === 'alice@ops' && e.sourceIp === '127.0.0.1')).toBe(true);
      const text = JSON.stringify(entries);
      for (const k of issued) {
        expect(text).not.toContain(k);
        expect(text).not.toContain(hashApiKey(k));
      }
    });
  });

  describe('database unavailable', () => {
    it('answers 503 SERVICE_UNAVAILABLE on every route', async () => {
      const gone = await openPglite('memory');
      await migrate(gone);
      const down = await buildAdminApp(gone);
      await gone.close();
      try {
        for (const [method, url] of ROUTES) {
          const body = method === 'POST' && url === '/admin/users' ? { user_id: 'u', tier: 'basic' } : method === 'PATCH' ? { disabled: true } : undefined;
          expectError(await call(down.app, method, url, body), 503, 'SERVICE_UNAVAILABLE');
        }
      } finally {
        await down.app.close();
      }
    });
  });
});
