/**
 * The key resolver and user directory over the real repositories, on a PGlite served to
 * this "worker" over a unix socket. The database outage is real: the server is stopped, so
 * the pg pool's connections fail and the repository throws DatabaseUnavailableError.
 */
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { generateApiKey, hashApiKey } from '../src/accounts/api-keys.js';
import { ApiKeysRepository, type KeyLookup, type LastUsed } from '../src/accounts/api-keys-repository.js';
import { InProcessInvalidationBus, parseInvalidationEvent } from '../src/accounts/invalidation.js';
import { KeyResolver, type KeyStore } from '../src/accounts/key-cache.js';
import { accountRepositories, type AccountRepositories } from '../src/accounts/repositories.js';
import { UserDirectory } from '../src/accounts/user-directory.js';
import { UsersRepository } from '../src/accounts/users-repository.js';
import { DatabaseUnavailableError } from '../src/storage/db/errors.js';
import { migrate } from '../src/storage/db/migrations.js';
import { servedPglite, type ServedPglite } from './helpers/databases.js';

const T0 = Date.UTC(2026, 2, 1, 12, 0, 0);

/** The real repository, with every call counted and its failures kept. */
class CountingStore implements KeyStore {
  lookups = 0;
  touches: LastUsed[][] = [];
  failures: unknown[] = [];
  /** When set, a lookup that has read the database waits for it before answering. */
  gate: Promise<void> | null = null;
  readsDone = 0;
  constructor(private readonly repository: ApiKeysRepository) {}
  async findByHash(hash: string): Promise<KeyLookup | null> {
    this.lookups++;
    try {
      const found = await this.repository.findByHash(hash);
      this.readsDone++;
      if (this.gate !== null) await this.gate;
      return found;
    } catch (err) {
      this.failures.push(err);
      throw err;
    }
  }
  async touchLastUsed(batch: readonly LastUsed[]): Promise<number> {
    this.touches.push([...batch]);
    return this.repository.touchLastUsed(batch);
  }
}

describe('KeyResolver and UserDirectory', () => {
  let served: ServedPglite;
  let now = T0;
  const clock = () => now;
  let admin: AccountRepositories;
  let store: CountingStore;
  let resolver: KeyResolver;
  let bus: InProcessInvalidationBus;

  beforeAll(async () => {
    served = await servedPglite();
    await migrate(served.primary);
    admin = accountRepositories(served.primary, clock);
    await admin.users.create({ userId: 'u1', tier: 'premium', overrides: { burst_limit: 5 }, quotaOverride: null, disabled: false });
    await admin.users.create({ userId: 'u2', tier: 'basic', overrides: {}, quotaOverride: null, disabled: false });
  });
  afterAll(async () => {
    await served?.dispose();
  });

  beforeEach(async () => {
    now = T0;
    const worker = served.connect({ poolSize: 2, statementTimeoutMs: 2_000 });
    store = new CountingStore(new ApiKeysRepository(worker, clock));
    resolver = new KeyResolver({ store, clock, refreshAfterMs: 30_000, unknownTtlMs: 5_000 });
    bus = new InProcessInvalidationBus();
    resolver.listen(bus);
  });

  it('caches a known key: one lookup, then synchronous answers', async () => {
    const { key, record } = await admin.apiKeys.create('u1', { name: 'k' });
    const first = resolver.resolve(key);
    expect(first).toBeInstanceOf(Promise);
    expect(await first).toMatchObject({ code: 'valid', keyId: record.id, userId: 'u1' });
    const second = resolver.resolve(key);
    expect(second).not.toBeInstanceOf(Promise);
    expect(second).toMatchObject({ code: 'valid', keyId: record.id, userId: 'u1' });
    expect(store.lookups).toBe(1);
  });

  it('shares one lookup among concurrent requests for the same key', async () => {
    const { key } = await admin.apiKeys.create('u1');
    const answers = await Promise.all(Array.from({ length: 20 }, () => resolver.resolve(key)));
    expect(new Set(answers.map((a) => a.code))).toEqual(new Set(['valid']));
    expect(store.lookups).toBe(1);
  });

  it('caches an unknown key for a short time, then re-checks it in the background', async () => {
    const { key } = generateApiKey();
    expect(await resolver.resolve(key)).toMatchObject({ code: 'INVALID_KEY', keyId: null, userId: null });
    now = T0 + 4_999;
    expect(resolver.resolve(key)).toMatchObject({ code: 'INVALID_KEY', keyId: null, userId: null });
    expect(store.lookups).toBe(1);
    now = T0 + 5_000;
    // Answered from memory (not a promise), with one re-check started.
    expect(resolver.resolve(key)).toMatchObject({ code: 'INVALID_KEY' });
    expect(resolver.resolve(key)).toMatchObject({ code: 'INVALID_KEY' });
    await waitFor(() => store.lookups === 2);
    expect(resolver.resolve(key)).toMatchObject({ code: 'INVALID_KEY' });
    expect(store.lookups).toBe(2);
  });

  it('answers KEY_EXPIRED from the cache when the clock passes the expiry', async () => {
    // (Within the refresh interval, so the cache alone answers.)
    const { key, record } = await admin.apiKeys.create('u1', { expiresAt: T0 + 20_000 });
    expect((await resolver.resolve(key)).code).toBe('valid');
    now = T0 + 19_999;
    expect(resolver.resolve(key)).toMatchObject({ code: 'valid' });
    now = T0 + 20_000;
    expect(resolver.resolve(key)).toMatchObject({ code: 'KEY_EXPIRED', keyId: record.id, userId: 'u1' });
    expect(store.lookups).toBe(1);
  });

  it('sees a revocation after invalidation by id, by hash, or through the bus', async () => {
    const keys = await Promise.all([admin.apiKeys.create('u1'), admin.apiKeys.create('u1'), admin.apiKeys.create('u1')]);
    for (const { key } of keys) expect((await resolver.resolve(key)).code).toBe('valid');
    for (const { record } of keys) await admin.apiKeys.revoke(record.id);
    // Cached: the revocation is not seen yet (this is what invalidation is for).
    for (const { key } of keys) expect(resolver.resolve(key)).toMatchObject({ code: 'valid' });

    resolver.invalidate(keys[0]!.record.id);
    resolver.invalidate(hashApiKey(keys[1]!.key));
    await bus.publish(parseInvalidationEvent(JSON.parse(JSON.stringify({ type: 'key', keyId: keys[2]!.record.id })))!);
    for (const { key, record } of keys) expect(await resolver.resolve(key)).toMatchObject({ code: 'KEY_REVOKED', keyId: record.id, userId: 'u1' });
  });

  it('drops every key of a user on a user event (the user was deleted)', async () => {
    await admin.users.create({ userId: 'temp', tier: 'basic', overrides: {}, quotaOverride: null, disabled: false });
    const { key } = await admin.apiKeys.create('temp');
    const other = await admin.apiKeys.create('u2');
    expect((await resolver.resolve(key)).code).toBe('valid');
    expect((await resolver.resolve(other.key)).code).toBe('valid');
    await admin.users.delete('temp');
    await bus.publish({ type: 'user', userId: 'temp' });
    expect(await resolver.resolve(key)).toMatchObject({ code: 'INVALID_KEY' });
    expect(resolver.resolve(other.key)).toMatchObject({ code: 'valid' }); // still cached, untouched
  });

  it('does not cache a lookup that an invalidation overtook', async () => {
    const { key, record } = await admin.apiKeys.create('u1');
    let open!: () => void;
    store.gate = new Promise((resolve) => (open = resolve));
    const pending = resolver.resolve(key); // the lookup reads the key as live …
    await waitFor(() => store.readsDone === 1);
    store.gate = null;
    await admin.apiKeys.revoke(record.id); // … then it is revoked,
    resolver.invalidate(record.id); // and the event arrives before the lookup's answer.
    open();
    expect((await pending).code).toBe('valid'); // that request raced the revocation
    expect(await resolver.resolve(key)).toMatchObject({ code: 'KEY_REVOKED' }); // the next one does not
    expect(store.lookups).toBe(2);
  });

  it('keeps validating cached keys while the database is down; unknown keys get KEY_STORE_UNAVAILABLE', async () => {
    const { key, record } = await admin.apiKeys.create('u1');
    const unknownWhileDown = generateApiKey().key;
    const expiring = await admin.apiKeys.create('u1', { expiresAt: T0 + 120_000 });
    expect((await resolver.resolve(key)).code).toBe('valid');
    expect((await resolver.resolve(expiring.key)).code).toBe('valid');

    await served.stop();
    try {
      expect(resolver.resolve(key)).toMatchObject({ code: 'valid', keyId: record.id, userId: 'u1' });
      expect(await resolver.resolve(unknownWhileDown)).toMatchObject({ code: 'KEY_STORE_UNAVAILABLE', keyId: null, userId: null });
      expect(store.failures.at(-1)).toBeInstanceOf(DatabaseUnavailableError);
      // Past the refresh interval the background reload fails; the cached key still validates.
      now = T0 + 31_000;
      const lookupsBefore = store.lookups;
      expect(resolver.resolve(key)).toMatchObject({ code: 'valid' });
      await new Promise((r) => setImmediate(r));
      await waitFor(() => store.failures.length >= 2);
      expect(store.lookups).toBe(lookupsBefore + 1);
      // Not retried on every request: only after the retry delay.
      expect(resolver.resolve(key)).toMatchObject({ code: 'valid' });
      expect(store.lookups).toBe(lookupsBefore + 1);
      // Expiry is still enforced from the cache.
      now = T0 + 120_000;
      expect(resolver.resolve(expiring.key)).toMatchObject({ code: 'KEY_EXPIRED' });
    } finally {
      await served.restart();
    }
    // Back up: the unknown key is looked up again (it was not cached as unknown).
    expect(await resolver.resolve(unknownWhileDown)).toMatchObject({ code: 'INVALID_KEY' });
  });

  it('records last use in memory and writes it in one batch', async () => {
    const a = await admin.apiKeys.create('u1');
    const b = await admin.apiKeys.create('u2');
    for (let i = 0; i < 50; i++) {
      now = T0 + i * 1000;
      expect((await resolver.resolve(i % 2 ? a.key : b.key)).code).toBe('valid');
    }
    expect(store.touches).toEqual([]); // no write per request
    expect((await admin.apiKeys.get(a.record.id))!.lastUsedAt).toBeNull();
    expect(resolver.pendingLastUsed).toBe(2);

    expect(await resolver.flushLastUsed()).toBe(2);
    expect(store.touches).toHaveLength(1);
    expect((await admin.apiKeys.get(a.record.id))!.lastUsedAt).toBe(T0 + 49_000);
    expect((await admin.apiKeys.get(b.record.id))!.lastUsedAt).toBe(T0 + 48_000);
    expect(await resolver.flushLastUsed()).toBe(0);
    expect(store.touches).toHaveLength(1);
  });

  it('records last use to the second: uses within a second of the recorded one are not recorded again', async () => {
    const a = await admin.apiKeys.create('u1');
    now = T0;
    expect((await resolver.resolve(a.key)).code).toBe('valid');
    now = T0 + 999;
    expect(resolver.resolve(a.key)).toMatchObject({ code: 'valid' });
    expect(await resolver.flushLastUsed()).toBe(1);
    expect((await admin.apiKeys.get(a.record.id))!.lastUsedAt).toBe(T0);
    now = T0 + 1500;
    expect(resolver.resolve(a.key)).toMatchObject({ code: 'valid' });
    expect(await resolver.flushLastUsed()).toBe(1);
    expect((await admin.apiKeys.get(a.record.id))!.lastUsedAt).toBe(T0 + 1500);
  });

  it('keeps last uses that could not be written and writes them once the database is back', async () => {
    const a = await admin.apiKeys.create('u1');
    now = T0 + 5_000;
    expect((await resolver.resolve(a.key)).code).toBe('valid');
    await served.stop();
    try {
      expect(await resolver.flushLastUsed()).toBe(0);
      expect(resolver.pendingLastUsed).toBe(1);
    } finally {
      await served.restart();
    }
    expect(await resolver.flushLastUsed()).toBe(1);
    expect((await admin.apiKeys.get(a.record.id))!.lastUsedAt).toBe(T0 + 5_000);
    expect(resolver.pendingLastUsed).toBe(0);
  });

  describe('UserDirectory', () => {
    it('looks up the users asked for in one turn of the event loop with one query', async () => {
      const worker = served.connect({ poolSize: 2 });
      const users = new UsersRepository(worker, clock);
      const batches: number[] = [];
      const directory = new UserDirectory({
        store: { get: () => Promise.reject(new Error('one at a time')), getMany: (ids) => (batches.push(ids.length), users.getMany(ids)) },
        clock,
      });
      const ids = ['u1', 'u2', ...Array.from({ length: 1200 }, (_, i) => `new-${i}`)];
      const answers = await Promise.all(ids.map((id) => directory.lookup(id)));
      expect(batches).toEqual([500, 500, 202]);
      expect(answers[0]).toMatchObject({ state: 'known', profile: { tier: 'premium' } });
      expect(answers[1]).toMatchObject({ state: 'known', profile: { tier: 'basic' } });
      expect(answers.slice(2).every((a) => a.state === 'unknown')).toBe(true);
      // Answered from memory now: no further query.
      expect(directory.lookup('new-7')).toEqual({ state: 'unknown' });
      expect(batches).toHaveLength(3);
      await worker.close();
    });

    it('answers known, unknown and (database down) unavailable; a user event makes a tier change visible', async () => {
      const worker = served.connect({ poolSize: 1 });
      const users = new UsersRepository(worker, clock);
      let loads = 0;
      const directory = new UserDirectory({ store: { get: (id) => (loads++, users.get(id)) }, clock, unknownTtlMs: 60_000 });
      directory.listen(bus);

      expect(await directory.lookup('u1')).toEqual({ state: 'known', profile: { tier: 'premium', overrides: { burst_limit: 5 }, quotaOverride: null, disabled: false } });
      expect(directory.lookup('u1')).toMatchObject({ state: 'known' });
      expect(await directory.lookup('stranger')).toEqual({ state: 'unknown' });
      expect(directory.lookup('stranger')).toEqual({ state: 'unknown' });
      expect(loads).toBe(2);

      await admin.users.update('u1', { tier: 'enterprise', disabled: true });
      expect(directory.lookup('u1')).toMatchObject({ profile: { tier: 'premium' } }); // cached until told
      await bus.publish({ type: 'user', userId: 'u1' });
      expect(await directory.lookup('u1')).toMatchObject({ state: 'known', profile: { tier: 'enterprise', disabled: true } });

      // Past the unknown TTL, a user created without an event (say, it was lost) is found by
      // the background re-check the next lookup starts; that lookup still answers from memory.
      expect(await directory.lookup('quiet')).toEqual({ state: 'unknown' });
      await admin.users.create({ userId: 'quiet', tier: 'premium', overrides: {}, quotaOverride: null, disabled: false });
      expect(directory.lookup('quiet')).toEqual({ state: 'unknown' });
      now += 60_000;
      expect(directory.lookup('quiet')).toEqual({ state: 'unknown' });
      await waitFor(() => (directory.lookup('quiet') as { state: string }).state === 'known');
      now -= 60_000;

      // A new user: the event ends the "unknown" entry early.
      await admin.users.create({ userId: 'stranger', tier: 'basic', overrides: {}, quotaOverride: 7, disabled: false });
      await bus.publish({ type: 'user', userId: 'stranger' });
      expect(await directory.lookup('stranger')).toMatchObject({ state: 'known', profile: { quotaOverride: 7 } });

      await served.stop();
      try {
        expect(directory.lookup('u1')).toMatchObject({ state: 'known' });
        expect(await directory.lookup('u2')).toEqual({ state: 'unavailable' });
      } finally {
        await served.restart();
      }
      expect(await directory.lookup('u2')).toMatchObject({ state: 'known', profile: { tier: 'basic' } });
    });
  });
});

async function waitFor(condition: () => boolean, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 5));
  }
}
