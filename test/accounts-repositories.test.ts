import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { generateApiKey, hashApiKey } from '../src/accounts/api-keys.js';
import { AccountError } from '../src/accounts/errors.js';
import { KeyResolver } from '../src/accounts/key-cache.js';
import { accountRepositories, type AccountRepositories } from '../src/accounts/repositories.js';
import type { Database } from '../src/storage/db/database.js';
import { migrate, MIGRATIONS, SchemaMismatchError, schemaVersion } from '../src/storage/db/migrations.js';
import { DATABASE_BACKENDS } from './helpers/databases.js';

/** The newest migration this code knows. */
const LAST = MIGRATIONS[MIGRATIONS.length - 1]!.version;
const T0 = Date.UTC(2026, 0, 15, 10, 30, 0);
const HOUR = 3_600_000;


async function expectAccountError(promise: Promise<unknown>, code: string): Promise<void> {
  const err = await promise.then(
    () => null,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(AccountError);
  expect((err as AccountError).code).toBe(code);
}

describe.each(DATABASE_BACKENDS)('accounts storage on $name', (backend) => {
  let db: Database;
  let dispose: () => Promise<void>;
  let now = T0;
  const clock = () => now;
  let repos: AccountRepositories;
  /** Every key made in this suite, to search the tables for afterwards. */
  const plaintexts: string[] = [];

  beforeAll(async () => {
    ({ db, dispose } = await backend.open());
    repos = accountRepositories(db, clock);
  });
  afterAll(async () => {
    await dispose?.();
  });

  describe('migrations', () => {
    it('apply on a fresh database, once, even when two processes start together', async () => {
      expect(await schemaVersion(db)).toBe(0);
      const [first, second] = await Promise.all([migrate(db), migrate(db)]);
      expect([...first.applied, ...second.applied].sort()).toEqual(MIGRATIONS.map((m) => m.version));
      expect(first.version).toBe(LAST);
      expect(await schemaVersion(db)).toBe(LAST);
      const rows = await db.query<{ version: number; name: string }>('SELECT version, name FROM schema_migrations ORDER BY version');
      expect(rows.rows.map((r) => [Number(r.version), r.name])).toEqual(MIGRATIONS.map((m) => [m.version, m.name]));
    });

    it('leave room on the pages of the hour and day rollups, so their per-flush updates stay on the page', async () => {
      const rows = await db.query<{ relname: string; reloptions: string[] | null }>(
        "SELECT relname, reloptions FROM pg_class WHERE relname IN ('usage_minute', 'usage_hour', 'usage_day') ORDER BY relname",
      );
      expect(rows.rows.map((r) => [r.relname, r.reloptions])).toEqual([
        ['usage_day', ['fillfactor=50']],
        ['usage_hour', ['fillfactor=50']],
        ['usage_minute', null],
      ]);
    });

    it('are idempotent', async () => {
      expect(await migrate(db)).toEqual({ applied: [], version: LAST });
    });

    it('apply a later migration, and then refuse older code naming both versions', async () => {
      const later = [...MIGRATIONS, { version: LAST + 1, name: 'later_feature', sql: 'CREATE TABLE later_feature (x integer); CREATE INDEX later_feature_x ON later_feature (x)' }];
      expect(await migrate(db, later)).toEqual({ applied: [LAST + 1], version: LAST + 1 });
      const refused = await migrate(db).catch((e: unknown) => e);
      expect(refused).toBeInstanceOf(SchemaMismatchError);
      expect((refused as Error).message).toMatch(new RegExp(`schema is at version ${LAST + 1} \\(later_feature\\).*knows migrations up to version ${LAST}`));
      // Nothing changed by the refusal.
      expect(await schemaVersion(db)).toBe(LAST + 1);
      await db.query('DROP TABLE later_feature');
      await db.query(`DELETE FROM schema_migrations WHERE version = ${LAST + 1}`);
    });

    it('refuse a version applied under another name, or a gap below the newest', async () => {
      await expect(migrate(db, [...MIGRATIONS.slice(0, -1), { ...MIGRATIONS[LAST - 1]!, name: 'something_else' }])).rejects.toThrow(
        new RegExp(`applied as "${MIGRATIONS[LAST - 1]!.name}".*names it "something_else"`),
      );
      await db.query(`INSERT INTO schema_migrations (version, name) VALUES (${LAST + 2}, 'three')`);
      const withGap = [...MIGRATIONS, { version: LAST + 1, name: 'two', sql: 'SELECT 1' }, { version: LAST + 2, name: 'three', sql: 'SELECT 1' }];
      await expect(migrate(db, withGap)).rejects.toThrow(new RegExp(`migration ${LAST + 1} \\(two\\) is missing although version ${LAST + 2} is applied`));
      await db.query(`DELETE FROM schema_migrations WHERE version = ${LAST + 2}`);
      expect(await migrate(db)).toEqual({ applied: [], version: LAST });
    });

    it('roll a failing migration back entirely', async () => {
      const broken = [...MIGRATIONS, { version: LAST + 1, name: 'broken', sql: 'CREATE TABLE half_made (x integer); SELECT no_such_column FROM half_made' }];
      await expect(migrate(db, broken)).rejects.toThrow();
      expect(await schemaVersion(db)).toBe(LAST);
      const table = await db.query<{ present: boolean }>("SELECT to_regclass('half_made') IS NOT NULL AS present");
      expect(table.rows[0]!.present).toBe(false);
    });
  });

  describe('users', () => {
    it('create, get, and refuse a second user with the same id', async () => {
      now = T0;
      const created = await repos.users.create({ userId: 'alice', tier: 'premium', overrides: { burst_limit: 20 }, quotaOverride: 5000, disabled: false });
      expect(created).toEqual({
        userId: 'alice',
        tier: 'premium',
        overrides: { burst_limit: 20 },
        quotaOverride: 5000,
        disabled: false,
        createdAt: T0,
        updatedAt: T0,
      });
      expect(await repos.users.get('alice')).toEqual(created);
      expect(await repos.users.get('nobody')).toBeNull();
      await expectAccountError(repos.users.create({ userId: 'alice', tier: 'basic', overrides: {}, quotaOverride: null, disabled: false }), 'USER_EXISTS');
      expect((await repos.users.get('alice'))!.tier).toBe('premium');
    });

    it('read many users in one query: only those that exist, by id', async () => {
      const found = await repos.users.getMany(['alice', 'nobody', "o'brien", 'alice']);
      expect([...found.keys()]).toEqual(['alice']);
      expect(found.get('alice')).toEqual(await repos.users.get('alice'));
      expect((await repos.users.getMany([])).size).toBe(0);
    });

    it('update only what the patch names: overrides merge, null removes', async () => {
      now = T0 + 1000;
      let user = await repos.users.update('alice', { tier: 'enterprise' });
      expect(user).toMatchObject({ tier: 'enterprise', overrides: { burst_limit: 20 }, quotaOverride: 5000, disabled: false, createdAt: T0, updatedAt: T0 + 1000 });
      user = await repos.users.update('alice', { overrides: { requests_per_minute: 100, burst_limit: null } });
      expect(user!.overrides).toEqual({ requests_per_minute: 100 });
      user = await repos.users.update('alice', { overrides: { requests_per_day: 0 }, quotaOverride: null, disabled: true });
      expect(user).toMatchObject({ overrides: { requests_per_minute: 100, requests_per_day: 0 }, quotaOverride: null, disabled: true, tier: 'enterprise' });
      user = await repos.users.update('alice', { quotaOverride: 9_000_000_000 });
      expect(user!.quotaOverride).toBe(9_000_000_000);
      expect(await repos.users.update('nobody', { tier: 'basic' })).toBeNull();
    });

    it('list in pages with an opaque cursor, in the database order, each user once', async () => {
      const ids = Array.from({ length: 23 }, (_, i) => `page-user-${String(i).padStart(2, '0')}`).concat(['Zed', 'a', 'b_1', 'b-2']);
      for (const userId of ids) await repos.users.create({ userId, tier: 'basic', overrides: {}, quotaOverride: null, disabled: false });
      const all = (await db.query<{ user_id: string }>('SELECT user_id FROM users ORDER BY user_id')).rows.map((r) => r.user_id);
      const seen: string[] = [];
      let cursor: string | null = null;
      let pages = 0;
      do {
        const page = await repos.users.list({ cursor, limit: 10 });
        seen.push(...page.users.map((u) => u.userId));
        cursor = page.nextCursor;
        pages++;
        if (cursor !== null) expect(cursor).not.toContain('page-user');
      } while (cursor !== null);
      expect(seen).toEqual(all);
      expect(pages).toBe(Math.ceil(all.length / 10));
      expect((await repos.users.list({ limit: all.length })).nextCursor).toBeNull();
      await expectAccountError(repos.users.list({ cursor: 'not-a-cursor!', limit: 10 }), 'INVALID_CURSOR');
    });

    it('delete a user and, by cascade, its keys', async () => {
      await repos.users.create({ userId: 'bob', tier: 'basic', overrides: {}, quotaOverride: null, disabled: false });
      const issued = await repos.apiKeys.create('bob', { name: 'bob key' });
      plaintexts.push(issued.key);
      expect(await repos.users.delete('bob')).toBe(true);
      expect(await repos.users.delete('bob')).toBe(false);
      expect(await repos.apiKeys.get(issued.record.id)).toBeNull();
      expect(await repos.apiKeys.findByHash(hashApiKey(issued.key))).toBeNull();
    });
  });

  describe('API keys', () => {
    it('are made for existing users only, and found by hash', async () => {
      now = T0;
      await repos.users.create({ userId: 'carol', tier: 'basic', overrides: {}, quotaOverride: null, disabled: false });
      await expectAccountError(repos.apiKeys.create('nobody'), 'USER_NOT_FOUND');
      const issued = await repos.apiKeys.create('carol', { name: 'laptop', expiresAt: T0 + 24 * HOUR });
      plaintexts.push(issued.key);
      expect(issued.record).toEqual({
        id: issued.record.id,
        userId: 'carol',
        prefix: issued.key.slice(0, 12),
        name: 'laptop',
        createdAt: T0,
        expiresAt: T0 + 24 * HOUR,
        revokedAt: null,
        lastUsedAt: null,
        rotatedFrom: null,
      });
      expect(await repos.apiKeys.findByHash(hashApiKey(issued.key))).toEqual({ keyId: issued.record.id, userId: 'carol', expiresAt: T0 + 24 * HOUR, revokedAt: null });
      expect(await repos.apiKeys.findByHash(hashApiKey(generateApiKey().key))).toBeNull();
      // Many at once: only the hashes that exist, each as findByHash answers it.
      const unknown = hashApiKey(generateApiKey().key);
      const many = await repos.apiKeys.findManyByHash([hashApiKey(issued.key), unknown]);
      expect([...many]).toEqual([[hashApiKey(issued.key), await repos.apiKeys.findByHash(hashApiKey(issued.key))]]);
      expect((await repos.apiKeys.findManyByHash([])).size).toBe(0);
    });

    it('are listed oldest first, without the key or its hash', async () => {
      now = T0 + 1;
      const second = await repos.apiKeys.create('carol');
      plaintexts.push(second.key);
      const listed = await repos.apiKeys.listForUser('carol');
      expect(listed.map((k) => k.name)).toEqual(['laptop', null]);
      for (const key of listed) {
        expect(Object.keys(key).sort()).toEqual(['createdAt', 'expiresAt', 'id', 'lastUsedAt', 'name', 'prefix', 'revokedAt', 'rotatedFrom', 'userId']);
        const text = JSON.stringify(key);
        for (const plain of plaintexts) {
          expect(text).not.toContain(plain);
          expect(text).not.toContain(hashApiKey(plain));
        }
      }
      expect(await repos.apiKeys.listForUser('nobody')).toEqual([]);
    });

    it('revoke once: a second revoke keeps the first time', async () => {
      const issued = await repos.apiKeys.create('carol', { name: 'to revoke' });
      plaintexts.push(issued.key);
      now = T0 + 5000;
      expect((await repos.apiKeys.revoke(issued.record.id))!.revokedAt).toBe(T0 + 5000);
      now = T0 + 9000;
      expect((await repos.apiKeys.revoke(issued.record.id))!.revokedAt).toBe(T0 + 5000);
      expect(await repos.apiKeys.revoke('key_nope')).toBeNull();
      expect((await repos.apiKeys.findByHash(hashApiKey(issued.key)))!.revokedAt).toBe(T0 + 5000);
    });

    it('rotate: the new key carries name and user; the old one works for the overlap, then expires', async () => {
      now = T0;
      await repos.users.create({ userId: 'dave', tier: 'premium', overrides: {}, quotaOverride: null, disabled: false });
      const old = await repos.apiKeys.create('dave', { name: 'ci' });
      plaintexts.push(old.key);
      const resolver = new KeyResolver({ store: repos.apiKeys, clock });
      expect((await resolver.resolve(old.key)).code).toBe('valid');

      now = T0 + HOUR;
      const { issued, previous } = await repos.apiKeys.rotate(old.record.id, 600);
      plaintexts.push(issued.key);
      expect(issued.key).not.toBe(old.key);
      expect(issued.record).toMatchObject({ userId: 'dave', name: 'ci', rotatedFrom: old.record.id, createdAt: T0 + HOUR, expiresAt: null });
      expect(previous).toMatchObject({ id: old.record.id, expiresAt: T0 + HOUR + 600_000, revokedAt: null });
      resolver.invalidate(old.record.id); // what the admin API's invalidation event does

      now = T0 + HOUR + 599_999;
      expect(await resolver.resolve(old.key)).toMatchObject({ code: 'valid', keyId: old.record.id, userId: 'dave' });
      expect(await resolver.resolve(issued.key)).toMatchObject({ code: 'valid', keyId: issued.record.id, userId: 'dave' });
      now = T0 + HOUR + 600_000;
      expect(await resolver.resolve(old.key)).toMatchObject({ code: 'KEY_EXPIRED', keyId: old.record.id, userId: 'dave' });
      expect((await resolver.resolve(issued.key)).code).toBe('valid');

      // An expired key cannot be rotated again; neither can a revoked or unknown one.
      await expectAccountError(repos.apiKeys.rotate(old.record.id, 600), 'KEY_NOT_ROTATABLE');
      await repos.apiKeys.revoke(issued.record.id);
      await expectAccountError(repos.apiKeys.rotate(issued.record.id, 600), 'KEY_NOT_ROTATABLE');
      await expectAccountError(repos.apiKeys.rotate('key_nope', 600), 'KEY_NOT_FOUND');
    });

    it('rotate never extends the old key past its own expiry, and keeps the expiry on the new key', async () => {
      now = T0;
      const old = await repos.apiKeys.create('dave', { name: 'short', expiresAt: T0 + 60_000 });
      plaintexts.push(old.key);
      const { issued, previous } = await repos.apiKeys.rotate(old.record.id, 3600);
      plaintexts.push(issued.key);
      expect(previous.expiresAt).toBe(T0 + 60_000);
      expect(issued.record.expiresAt).toBe(T0 + 60_000);
      const immediate = await repos.apiKeys.create('dave', { name: 'now' });
      plaintexts.push(immediate.key);
      const rotatedNow = await repos.apiKeys.rotate(immediate.record.id, 0);
      plaintexts.push(rotatedNow.issued.key);
      expect(rotatedNow.previous.expiresAt).toBe(T0);
    });

    it('touchLastUsed writes many keys in one statement and never moves a time back', async () => {
      now = T0;
      const keys = await Promise.all([repos.apiKeys.create('carol'), repos.apiKeys.create('carol'), repos.apiKeys.create('carol')]);
      plaintexts.push(...keys.map((k) => k.key));
      const [a, b, c] = keys.map((k) => k.record.id) as [string, string, string];
      const written = await repos.apiKeys.touchLastUsed([
        { keyId: a, at: T0 + 10 },
        { keyId: b, at: T0 + 20 },
        { keyId: a, at: T0 + 30 },
        { keyId: 'key_unknown', at: T0 },
      ]);
      expect(written).toBe(2);
      expect((await repos.apiKeys.get(a))!.lastUsedAt).toBe(T0 + 30);
      expect((await repos.apiKeys.get(b))!.lastUsedAt).toBe(T0 + 20);
      expect((await repos.apiKeys.get(c))!.lastUsedAt).toBeNull();
      await repos.apiKeys.touchLastUsed([{ keyId: a, at: T0 + 5 }]);
      expect((await repos.apiKeys.get(a))!.lastUsedAt).toBe(T0 + 30);
      expect(await repos.apiKeys.touchLastUsed([])).toBe(0);
    });
  });

  describe('audit log', () => {
    it('records who did what, when, from where; lists newest first', async () => {
      now = T0 + 42;
      const first = await repos.audit.record({ actor: 'ops', sourceIp: '127.0.0.1', action: 'user.create', target: 'user:erin', details: { tier: 'basic', n: 1 } });
      now = T0 + 43;
      await repos.audit.record({ actor: 'ops', sourceIp: null, action: 'user.update', target: 'user:erin', details: {} });
      await repos.audit.record({ actor: 'ops', sourceIp: '::1', action: 'key.revoke', target: 'key:k1', details: { user_id: 'erin' } });
      expect(first).toMatchObject({ at: T0 + 42, actor: 'ops' });
      const entries = await repos.audit.list({ target: 'user:erin' });
      expect(entries.map((e) => e.action)).toEqual(['user.update', 'user.create']);
      expect(entries[1]).toEqual({ id: first.id, at: T0 + 42, actor: 'ops', sourceIp: '127.0.0.1', action: 'user.create', target: 'user:erin', details: { tier: 'basic', n: 1 } });
      expect((await repos.audit.list({ limit: 1 }))[0]!.target).toBe('key:k1');
    });
  });

  describe('quotas', () => {
    it('reset the current window, aligned to the epoch, and list resets since a time', async () => {
      now = T0;
      const reset = await repos.quota.resetCurrentWindow('anyone', 'ops', 86_400);
      expect(reset).toEqual({ userId: 'anyone', windowStart: Date.UTC(2026, 0, 15), resetAt: T0, by: 'ops' });
      now = T0 + HOUR;
      await repos.quota.resetCurrentWindow('anyone', 'ops2', 3600);
      await repos.quota.resetCurrentWindow('someone-else', 'ops', 3600);
      expect(await repos.quota.listResets('anyone', T0)).toEqual([
        reset,
        { userId: 'anyone', windowStart: T0 + HOUR - 30 * 60_000, resetAt: T0 + HOUR, by: 'ops2' },
      ]);
      expect(await repos.quota.listResets('anyone', T0 + 1)).toHaveLength(1);
    });

    it('add overage units per user and UTC day, additively', async () => {
      const day1 = Date.UTC(2026, 0, 15, 23, 59);
      const day2 = Date.UTC(2026, 0, 16, 0, 1);
      await repos.quota.addOverage([
        { userId: 'alice', at: day1, units: 5 },
        { userId: 'alice', at: day1 + 1, units: 7 },
        { userId: 'alice', at: day2, units: 1 },
        { userId: 'carol', at: day1, units: 2 },
        { userId: 'carol', at: day1, units: 0 },
      ]);
      await repos.quota.addOverage([{ userId: 'alice', at: day1, units: 100 }]);
      expect(await repos.quota.overage('alice', day1, day2)).toEqual([
        { day: '2026-01-15', units: 112 },
        { day: '2026-01-16', units: 1 },
      ]);
      expect(await repos.quota.overage('carol', day1, day1)).toEqual([{ day: '2026-01-15', units: 2 }]);
      await expect(repos.quota.addOverage([{ userId: 'alice', at: day1, units: -1 }])).rejects.toThrow(RangeError);
    });
  });

  describe('transactions', () => {
    it('commit together or not at all', async () => {
      await expect(
        db.transaction(async (tx) => {
          const inTx = accountRepositories(tx, clock);
          await inTx.users.create({ userId: 'tx-user', tier: 'basic', overrides: {}, quotaOverride: null, disabled: false });
          await inTx.audit.record({ actor: 't', sourceIp: null, action: 'user.create', target: 'user:tx-user', details: {} });
          throw new Error('abort');
        }),
      ).rejects.toThrow('abort');
      expect(await repos.users.get('tx-user')).toBeNull();
      expect(await repos.audit.list({ target: 'user:tx-user' })).toEqual([]);
      await db.transaction(async (tx) => {
        await accountRepositories(tx, clock).users.create({ userId: 'tx-user', tier: 'basic', overrides: {}, quotaOverride: null, disabled: false });
      });
      expect(await repos.users.get('tx-user')).not.toBeNull();
    });
  });

  describe('secrets at rest', () => {
    it('no table holds a key in plain text: only its hash and display prefix', async () => {
      expect(plaintexts.length).toBeGreaterThan(10);
      const tables = await db.query<{ table_name: string }>(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema() AND table_type = 'BASE TABLE' ORDER BY table_name",
      );
      const names = tables.rows.map((r) => r.table_name);
      expect(names).toEqual(expect.arrayContaining(['api_keys', 'audit_log', 'overage_daily', 'quota_resets', 'schema_migrations', 'users']));
      let dump = '';
      for (const table of names) {
        const rows = await db.query<{ row: string }>(`SELECT t::text AS row FROM "${table}" t`);
        dump += rows.rows.map((r) => r.row).join('\n');
      }
      for (const key of plaintexts) {
        expect(dump).not.toContain(key);
        expect(dump).not.toContain(key.slice(12)); // the secret part after the display prefix
      }
      // The search itself works: hashes of keys still stored are there.
      const live = await db.query<{ key_hash: string }>('SELECT key_hash FROM api_keys');
      expect(live.rows.length).toBeGreaterThan(5);
      for (const { key_hash } of live.rows) expect(dump).toContain(key_hash);
    });
  });
});
