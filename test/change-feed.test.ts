/**
 * The account change feed reads admin changes back from the audit log, on each of the
 * three ways the service reaches a database.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AuditRepository } from '../src/accounts/audit-repository.js';
import { AuditChangeFeed, eventOfAudit } from '../src/accounts/change-feed.js';
import type { InvalidationEvent } from '../src/accounts/invalidation.js';
import type { Database, Queryable } from '../src/storage/db/database.js';
import { DatabaseUnavailableError } from '../src/storage/db/errors.js';
import { migrate } from '../src/storage/db/migrations.js';
import { DATABASE_BACKENDS } from './helpers/databases.js';

describe('eventOfAudit', () => {
  it('maps user and key changes to invalidations, and nothing else', () => {
    expect(eventOfAudit('user.update', 'user:u1')).toEqual({ type: 'user', userId: 'u1' });
    expect(eventOfAudit('user.delete', 'user:a:b')).toEqual({ type: 'user', userId: 'a:b' });
    expect(eventOfAudit('key.revoke', 'key:key_1')).toEqual({ type: 'key', keyId: 'key_1' });
    expect(eventOfAudit('key.rotate', 'key:key_1')).toEqual({ type: 'key', keyId: 'key_1' });
    expect(eventOfAudit('key.create', 'key:key_1')).toBeNull();
    expect(eventOfAudit('quota.reset', 'user:u1')).toBeNull();
    expect(eventOfAudit('user.update', 'nonsense')).toBeNull();
  });
});

describe.each(DATABASE_BACKENDS)('account change feed on $name', (backend) => {
  let db: Database;
  let dispose: () => Promise<void>;
  let now = 1_000_000;
  let down = false;
  // The database as the feed sees it; `down` makes every query fail as an outage does.
  const reader: Queryable = {
    query: (sql, params) => (down ? Promise.reject(new DatabaseUnavailableError('down for the test')) : db.query(sql, params)),
  } as Queryable;
  const write = (action: string, target: string) =>
    new AuditRepository(db, () => now).record({ actor: 'test', sourceIp: null, action, target, details: {} });

  beforeAll(async () => {
    ({ db, dispose } = await backend.open());
    await migrate(db);
  }, 60_000);
  afterAll(async () => dispose?.());

  function feed(settleMs = 10_000) {
    const events: InvalidationEvent[] = [];
    return { events, feed: new AuditChangeFeed({ db: reader, deliver: (e) => events.push(e), clock: () => now, settleMs }) };
  }

  it('delivers each change made after its first poll once, in order', async () => {
    await write('user.update', 'user:before');
    const { events, feed: f } = feed();
    expect(await f.poll()).toBe(0);
    await write('user.update', 'user:u1');
    await write('key.create', 'key:k1');
    await write('key.revoke', 'key:k1');
    await write('user.delete', 'user:u2');
    expect(await f.poll()).toBe(3);
    now += 1000;
    expect(await f.poll()).toBe(0);
    now += 20_000;
    expect(await f.poll()).toBe(0);
    await write('user.create', 'user:u3');
    expect(await f.poll()).toBe(1);
    expect(events).toEqual([
      { type: 'user', userId: 'u1' },
      { type: 'key', keyId: 'k1' },
      { type: 'user', userId: 'u2' },
      { type: 'user', userId: 'u3' },
    ]);
  });

  it('still delivers a change that becomes visible below one already seen, until it settles', async () => {
    const { events, feed: f } = feed(5000);
    await f.poll();
    const newest = Number((await db.query<{ id: unknown }>('SELECT max(id) AS id FROM audit_log')).rows[0]!.id);
    // Rows with ids taken out of order, as two admin writes committing in the other order leave them.
    const insert = (id: number, target: string) =>
      db.query(`INSERT INTO audit_log (id, actor, action, target) VALUES ($1, 'test', 'user.update', $2)`, [id, target]);
    await insert(newest + 5, 'user:later-id');
    expect(await f.poll()).toBe(1);
    now += 2000;
    await insert(newest + 3, 'user:committed-late');
    expect(await f.poll()).toBe(1);
    // Once every row seen is older than the settle time, the feed stops re-reading them.
    now += 10_000;
    expect(await f.poll()).toBe(0);
    await insert(newest + 1, 'user:too-late');
    expect(await f.poll()).toBe(0);
    expect(events.map((e) => (e as { userId: string }).userId)).toEqual(['later-id', 'committed-late']);
    await db.query(`SELECT setval(pg_get_serial_sequence('audit_log', 'id'), $1)`, [newest + 5]);
  });

  it('reads a backlog in one poll, a batch at a time', async () => {
    const { events, feed: f } = (() => {
      const events: InvalidationEvent[] = [];
      return { events, feed: new AuditChangeFeed({ db: reader, deliver: (e) => events.push(e), clock: () => now, batch: 100 }) };
    })();
    await f.poll();
    await db.query(`INSERT INTO audit_log (actor, action, target) SELECT 'test', 'user.create', 'user:bulk-' || g FROM generate_series(1, 2500) AS g`);
    expect(await f.poll()).toBe(2500);
    expect(events.at(-1)).toEqual({ type: 'user', userId: 'bulk-2500' });
    expect(await f.poll()).toBe(0);
  });

  it('catches up on what changed while the database did not answer', async () => {
    const events: InvalidationEvent[] = [];
    const polls: Array<[boolean, number]> = [];
    const f = new AuditChangeFeed({ db: reader, deliver: (e) => events.push(e), clock: () => now, onPoll: (ok, n) => polls.push([ok, n]) });
    await f.poll();
    down = true;
    expect(await f.poll()).toBe(0);
    await write('user.update', 'user:during');
    expect(await f.poll()).toBe(0);
    down = false;
    expect(await f.poll()).toBe(1);
    expect(events).toEqual([{ type: 'user', userId: 'during' }]);
    expect(polls).toEqual([[true, 0], [false, 0], [false, 0], [true, 1]]);
  });
});
