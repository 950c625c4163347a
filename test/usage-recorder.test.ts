/**
 * Usage recording on real databases (PostgreSQL, PGlite in memory, PGlite served over its
 * socket): the rows it writes add up to the decisions it was told about, hour and day rows
 * equal the sum of their minutes, retention deletes exactly what is past its age, and a
 * database that goes away and comes back loses nothing within the buffer bound.
 */
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { UsageRecorder, type RecorderMetrics } from '../src/analytics/recorder.js';
import { UsageStore } from '../src/analytics/store.js';
import { COUNTERS, DAY_MS, HOUR_MS, MINUTE_MS } from '../src/analytics/usage-row.js';
import type { CheckOutcome } from '../src/node/decider.js';
import type { DecisionCode } from '../src/node/engine.js';
import type { LimitName } from '../src/node/limits.js';
import type { UsageSlot } from '../src/node/shard.js';
import { createLogger } from '../src/observability/logger.js';
import type { Database } from '../src/storage/db/database.js';
import { migrate } from '../src/storage/db/migrations.js';
import { openPostgres } from '../src/storage/db/postgres.js';
import { DATABASE_BACKENDS, LOCAL_POSTGRES, postgresSettings, servedPglite, throwawayPostgres } from './helpers/databases.js';
import { freePort } from './helpers/ports.js';
import { pick, randomInt, seededRandom } from './helpers/random.js';
import { TcpProxy } from './helpers/tcp-proxy.js';

const T0 = Date.UTC(2026, 2, 10, 22, 50, 0);
const logger = createLogger('silent');

/** A decision as the decider reports it (only what the recorder reads matters). */
function outcome(userId: string, tier: string, now: number, code: DecisionCode, limitedBy: LimitName | null = null): CheckOutcome {
  const allowed = code === 'OK' || code === 'OVERAGE' || code === 'GRACE';
  return {
    userId,
    tier,
    path: 'local',
    decision: { allowed, code, limitedBy, retryAfterMs: allowed ? 0 : 1000, limits: null as never, quotaUsed: 0, charged: 0, graceStarted: false, now },
  };
}

class CountingMetrics implements RecorderMetrics {
  rows = 0;
  lag = 0;
  droppedRequests = 0;
  flushes = { ok: 0, failed: 0 };
  buffered(rows: number): void {
    this.rows = rows;
  }
  lagSeconds(seconds: number): void {
    this.lag = seconds;
  }
  dropped(requests: number): void {
    this.droppedRequests += requests;
  }
  flushed(ok: boolean): void {
    this.flushes[ok ? 'ok' : 'failed']++;
  }
}

/** What the test itself counted, per counter, to compare the tables with. */
type Tally = Record<(typeof COUNTERS)[number], number>;
const emptyTally = (): Tally => Object.fromEntries(COUNTERS.map((c) => [c, 0])) as Tally;

const CODES: Array<{ code: DecisionCode; limitedBy: LimitName | null; counters: Array<(typeof COUNTERS)[number]> }> = [
  { code: 'OK', limitedBy: null, counters: ['allowed'] },
  { code: 'OVERAGE', limitedBy: null, counters: ['allowed'] },
  { code: 'GRACE', limitedBy: null, counters: ['allowed'] },
  { code: 'RATE_LIMITED', limitedBy: 'minute', counters: ['denied', 'denied_rate_limited', 'limited_minute'] },
  { code: 'RATE_LIMITED', limitedBy: 'burst', counters: ['denied', 'denied_rate_limited', 'limited_burst'] },
  { code: 'QUOTA_EXCEEDED', limitedBy: 'day', counters: ['denied', 'denied_quota', 'limited_day'] },
  { code: 'INVALID_KEY', limitedBy: null, counters: ['denied', 'denied_key'] },
  { code: 'USER_DISABLED', limitedBy: null, counters: ['denied', 'denied_disabled'] },
];

/**
 * Records `n` random decisions from `now` on, moving the clock by up to `stepMs` each;
 * returns the tally. Most decisions bring the user's shard entry (as decisions on the
 * worker's own counters do), some do not (forwarded, in Redis), and now and then the
 * user's entry is a new one (evicted and made again): every way to a row is taken.
 */
function recordRandom(recorder: UsageRecorder, rand: () => number, clock: { ms: number }, n: number, stepMs: number, tally: Tally): void {
  const slots = new Map<string, UsageSlot>();
  for (let i = 0; i < n; i++) {
    clock.ms += randomInt(rand, 0, stepMs);
    const kind = pick(rand, CODES);
    const cost = randomInt(rand, 0, 5);
    const user = `user-${randomInt(rand, 1, 6)}`;
    const key = rand() < 0.5 ? null : `key-${user}`;
    if (!slots.has(user) || rand() < 0.05) slots.set(user, { usage: null });
    const decided = outcome(user, user.endsWith('1') ? 'premium' : 'free', clock.ms, kind.code, kind.limitedBy);
    if (rand() < 0.7) decided.entry = slots.get(user)!;
    recorder.record(decided, cost, key);
    tally.requests++;
    for (const c of kind.counters) tally[c]++;
    if (kind.counters.includes('allowed')) {
      tally.cost += cost;
      if (kind.code === 'OVERAGE') tally.overage += cost;
      if (kind.code === 'GRACE') tally.grace += cost;
    }
  }
}

async function tableTotals(db: Database, table: string): Promise<Tally> {
  const sums = COUNTERS.map((c) => `coalesce(sum(${c}), 0)::float8 AS ${c}`).join(', ');
  const row = (await db.query(`SELECT ${sums} FROM ${table}`)).rows[0]!;
  return Object.fromEntries(COUNTERS.map((c) => [c, Number(row[c])])) as Tally;
}


describe.each(DATABASE_BACKENDS)('usage history on $name', (backend) => {
  let db: Database;
  let dispose: () => Promise<void>;
  const clock = { ms: T0 };

  beforeAll(async () => {
    ({ db, dispose } = await backend.open());
    await migrate(db);
  });
  afterAll(async () => {
    await dispose?.();
  });
  beforeEach(async () => {
    for (const table of ['usage_minute', 'usage_hour', 'usage_day', 'overage_daily']) await db.query(`DELETE FROM ${table}`);
    clock.ms = T0;
  });

  function recorder(maxRows = 100_000, metrics = new CountingMetrics()): UsageRecorder {
    return new UsageRecorder({ db, clock: () => clock.ms, logger, metrics, maxRows });
  }

  it('writes what it was told, across many flushes, and hour and day rows equal the sum of their minutes', async () => {
    const rand = seededRandom(7);
    const r = recorder();
    const tally = emptyTally();
    // ~3 days of decisions crossing hour and day boundaries, flushed every 300 decisions.
    for (let round = 0; round < 12; round++) {
      recordRandom(r, rand, clock, 300, 20 * MINUTE_MS, tally);
      expect(await r.flush()).toBe(true);
    }
    expect(r.bufferedRows).toBe(0);
    expect(clock.ms - T0).toBeGreaterThan(2 * DAY_MS);

    for (const table of ['usage_minute', 'usage_hour', 'usage_day']) expect(await tableTotals(db, table)).toEqual(tally);

    // Every hour row is the sum of the minute rows in it, key by key and counter by counter.
    for (const [coarse, length] of [['usage_hour', 'hour'], ['usage_day', 'day']] as const) {
      const diffs = COUNTERS.map((c) => `abs(coalesce(c.${c}, 0) - coalesce(m.${c}, 0))`).join(' + ');
      const sums = COUNTERS.map((c) => `sum(${c}) AS ${c}`).join(', ');
      const mismatches = await db.query(
        `SELECT count(*)::int AS n FROM ${coarse} c
         FULL OUTER JOIN (SELECT date_trunc('${length}', bucket AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS bucket, user_id, key_id, tier, ${sums}
                          FROM usage_minute GROUP BY 1, 2, 3, 4) m
         ON c.bucket = m.bucket AND c.user_id = m.user_id AND c.key_id = m.key_id AND c.tier = m.tier
         WHERE c.bucket IS NULL OR m.bucket IS NULL OR (${diffs}) <> 0`,
      );
      expect(mismatches.rows[0]!.n).toBe(0);
    }
    const hours = await db.query('SELECT count(DISTINCT bucket)::int AS n FROM usage_hour');
    expect(hours.rows[0]!.n).toBeGreaterThan(40);

    // Overage per user and day, for billing, equals the overage in the day rows.
    const overage = await db.query(
      `SELECT o.user_id, o.day::text AS day, o.units::float8 AS units, d.overage::float8 AS expected FROM overage_daily o
       JOIN (SELECT user_id, (bucket AT TIME ZONE 'UTC')::date AS day, sum(overage) AS overage FROM usage_day GROUP BY 1, 2) d
       ON d.user_id = o.user_id AND d.day = o.day`,
    );
    expect(overage.rows.length).toBeGreaterThan(0);
    for (const row of overage.rows) expect(row.units).toBe(row.expected);
    const overageTotal = await db.query('SELECT coalesce(sum(units), 0)::float8 AS n FROM overage_daily');
    expect(overageTotal.rows[0]!.n).toBe(tally.overage);
  });

  it('reads back per user, tier and key, and the quota window from hour and minute rows', async () => {
    const r = recorder();
    clock.ms = Date.UTC(2026, 2, 10, 9, 15);
    for (let i = 0; i < 5; i++) r.record(outcome('alice', 'free', clock.ms, 'OK'), 2, 'k1');
    clock.ms = Date.UTC(2026, 2, 10, 10, 40);
    for (let i = 0; i < 3; i++) r.record(outcome('alice', 'free', clock.ms, 'OK'), 1, null);
    r.record(outcome('bob', 'premium', clock.ms, 'RATE_LIMITED', 'minute'), 1, null);
    r.record(outcome('bob', 'premium', clock.ms, 'OVERAGE'), 4, null);
    await r.flush();
    const store = new UsageStore(db);
    const day = { from: Date.UTC(2026, 2, 10), to: Date.UTC(2026, 2, 11) };

    const users = await store.byUser(day, 'day');
    expect(users.map((u) => [u.user_id, u.tier, u.requests, u.cost])).toEqual([
      ['alice', 'free', 8, 13],
      ['bob', 'premium', 2, 4],
    ]);
    const keys = await store.byKey(day, 'hour');
    expect(keys.map((k) => [k.key_id, k.user_id, k.requests])).toEqual([
      ['', 'alice', 3],
      ['k1', 'alice', 5],
      ['', 'bob', 2],
    ]);
    const tiers = await store.byTier(day, 'minute');
    expect(tiers.find((t) => t.tier === 'premium')).toMatchObject({ denied: 1, denied_rate_limited: 1, limited_minute: 1, overage: 4 });

    // A window starting mid-hour: minutes 09:30–10:00 from minute rows, then whole hours.
    const since = Date.UTC(2026, 2, 10, 9, 30);
    const used = await store.quotaUsage(since, Date.UTC(2026, 2, 10, 11), 10);
    expect(used).toEqual([
      { user_id: 'bob', tier: 'premium', used: 4 },
      { user_id: 'alice', tier: 'free', used: 3 },
    ]);
    expect(await store.quotaUsage(Date.UTC(2026, 2, 10, 9), Date.UTC(2026, 2, 10, 11), 10, { userId: 'alice' })).toEqual([
      { user_id: 'alice', tier: 'free', used: 13 },
    ]);
    const series = await store.timeseries(day, 'hour');
    expect(series.map((p) => [new Date(p.bucket).getUTCHours(), p.requests])).toEqual([
      [9, 5],
      [10, 5],
    ]);
    expect(await store.overage(day, 'day')).toEqual([{ user_id: 'bob', overage: 4, cost: 4 }]);
  });

  it('holding the open minute writes each minute once, after it ends, and everything at stop', async () => {
    const r = new UsageRecorder({ db, clock: () => clock.ms, logger, metrics: new CountingMetrics(), maxRows: 1000, holdOpenMinute: true });
    const minute = Date.UTC(2026, 2, 10, 9, 0);
    const minutesWritten = async () =>
      (await db.query('SELECT bucket, requests::int AS n FROM usage_minute ORDER BY bucket')).rows.map((row) => [new Date(row.bucket as string).getTime() - minute, row.n]);
    clock.ms = minute + 1000;
    r.record(outcome('held', 'free', clock.ms, 'OK'), 1, null);
    expect(await r.flush()).toBe(true);
    expect(await minutesWritten()).toEqual([]);
    clock.ms = minute + MINUTE_MS + 5000;
    r.record(outcome('held', 'free', clock.ms, 'OK'), 1, null);
    r.record(outcome('held', 'free', clock.ms, 'OK'), 1, null);
    expect(await r.flush()).toBe(true);
    expect(await minutesWritten()).toEqual([[0, 1]]);
    expect(r.bufferedRows).toBe(1);
    await r.stop();
    expect(await minutesWritten()).toEqual([[0, 1], [MINUTE_MS, 2]]);
    expect(r.bufferedRows).toBe(0);
  });

  it('a decision that brings the user\'s entry adds to the row the entry points at; a written row is unhooked and never added to again', async () => {
    const r = new UsageRecorder({ db, clock: () => clock.ms, logger, metrics: new CountingMetrics(), maxRows: 1000, holdOpenMinute: true });
    const minute = Date.UTC(2026, 2, 10, 9, 0);
    const slot: UsageSlot = { usage: null };
    const withEntry = (ms: number) => ({ ...outcome('slotted', 'free', ms, 'OK'), entry: slot });
    clock.ms = minute + 1000;
    r.record(withEntry(clock.ms), 1, null);
    const first = slot.usage;
    expect(first).not.toBeNull();
    r.record(withEntry(clock.ms), 1, null);
    r.record(outcome('slotted', 'free', clock.ms, 'OK'), 1, null); // without the entry: the same row, found by id
    expect(slot.usage).toBe(first);
    expect(r.bufferedRows).toBe(1);
    // The minute ends and is written: the entry no longer holds the written row.
    clock.ms = minute + MINUTE_MS + 1000;
    expect(await r.flush()).toBe(true);
    expect(slot.usage).toBeNull();
    expect(r.bufferedRows).toBe(0);
    // A stale pointer (an entry that kept the row, e.g. one evicted and revived) is not added to either.
    const stale: UsageSlot = { usage: first };
    r.record({ ...outcome('slotted', 'free', minute + 2000, 'OK'), entry: stale }, 1, null);
    expect(stale.usage).not.toBe(first);
    await r.stop();
    const rows = await db.query('SELECT bucket, requests::int AS n FROM usage_minute ORDER BY bucket');
    expect(rows.rows.map((row) => row.n)).toEqual([4]);
  });

  it('a spread writes an ended minute in equal parts over the flushes before its deadline, oldest rows first', async () => {
    const r = new UsageRecorder({
      db, clock: () => clock.ms, logger, metrics: new CountingMetrics(), maxRows: 1000, holdOpenMinute: true, spreadMs: 20_000, flushIntervalMs: 5000,
    });
    const minute = Date.UTC(2026, 2, 10, 9, 0);
    const written = async () => Number((await db.query('SELECT count(*)::int AS n FROM usage_minute')).rows[0]!.n);
    for (let i = 0; i < 100; i++) {
      clock.ms = minute + 100 * i;
      r.record(outcome(`spread-${String(i).padStart(3, '0')}`, 'free', clock.ms, 'OK'), 1, null);
    }
    // The deadline is the minute's end + 20 s: flushes at +1 s, +6 s, +11 s, +16 s and +21 s.
    const perFlush: number[] = [];
    const ranges: unknown[] = [];
    for (const after of [1000, 6000, 11_000, 16_000, 21_000]) {
      clock.ms = minute + MINUTE_MS + after;
      r.record(outcome('spread-open', 'free', clock.ms, 'OK'), 1, null); // the open minute stays held
      const before = await written();
      expect(await r.flush()).toBe(true);
      perFlush.push((await written()) - before);
      ranges.push((await db.query(`SELECT min(user_id) AS lo, max(user_id) AS hi FROM usage_minute`)).rows[0]);
    }
    expect(perFlush).toEqual([25, 25, 25, 25, 0]);
    expect(ranges.slice(0, 2)).toEqual([{ lo: 'spread-000', hi: 'spread-024' }, { lo: 'spread-000', hi: 'spread-049' }]);
    expect(r.bufferedRows).toBe(1);
    // Nothing is lost or counted twice: the hour row is the sum of every minute row.
    await r.stop();
    const hour = await db.query(`SELECT sum(requests)::int AS n FROM usage_hour`);
    expect(hour.rows[0]!.n).toBe(105);
  });

  it('a spread whose deadline has passed writes everything ended at once', async () => {
    const r = new UsageRecorder({
      db, clock: () => clock.ms, logger, metrics: new CountingMetrics(), maxRows: 1000, holdOpenMinute: true, spreadMs: 20_000, flushIntervalMs: 5000,
    });
    const minute = Date.UTC(2026, 2, 10, 9, 0);
    for (let i = 0; i < 40; i++) r.record(outcome(`late-${i}`, 'free', minute + i, 'OK'), 1, null);
    clock.ms = minute + MINUTE_MS + 1000;
    expect(await r.flush()).toBe(true);
    const first = Number((await db.query('SELECT count(*)::int AS n FROM usage_minute')).rows[0]!.n);
    expect(first).toBe(10);
    clock.ms = minute + MINUTE_MS + 25_000;
    expect(await r.flush()).toBe(true);
    expect(Number((await db.query('SELECT count(*)::int AS n FROM usage_minute')).rows[0]!.n)).toBe(40);
    expect(r.bufferedRows).toBe(0);
  });

  it('retention deletes exactly the rows past their age, and running it twice at once is harmless', async () => {
    const r = recorder();
    const now = Date.UTC(2026, 5, 1, 12, 0);
    const ages = [0, 47 * HOUR_MS, 48 * HOUR_MS, 48 * HOUR_MS + MINUTE_MS, 10 * DAY_MS, 89 * DAY_MS, 90 * DAY_MS, 91 * DAY_MS];
    for (const age of ages) r.record(outcome(`age-${age}`, 'free', now - age, 'OK'), 1, null);
    await r.flush();
    const store = new UsageStore(db);
    const [a, b] = await Promise.all([store.deleteExpired(now, 48 * HOUR_MS, 90 * DAY_MS), store.deleteExpired(now, 48 * HOUR_MS, 90 * DAY_MS)]);
    // Minute rows older than 48 h: 48 h 1 min, 10 d, 89 d, 90 d, 91 d (48 h exactly is kept).
    expect(a.minute + b.minute).toBe(5);
    const left = async (table: string) =>
      (await db.query(`SELECT user_id FROM ${table} ORDER BY bucket DESC`)).rows.map((row) => Number(String(row.user_id).slice(4)));
    expect(await left('usage_minute')).toEqual([0, 47 * HOUR_MS, 48 * HOUR_MS]);
    // Hour rows past 90 days: only 91 d (the 90 d row starts exactly at the cutoff).
    expect(a.hour + b.hour).toBe(1);
    expect(await left('usage_hour')).toEqual(ages.slice(0, 7));
    // Day rows are UTC days: the 90-day-old day starts before the cutoff only if the cutoff is mid-day.
    const cutoff = now - 90 * DAY_MS;
    const expectedDays = ages.filter((age) => Math.floor((now - age) / DAY_MS) * DAY_MS >= cutoff);
    expect((await left('usage_day')).sort((x, y) => x - y)).toEqual(expectedDays);
    expect((await store.deleteExpired(now, 48 * HOUR_MS, 90 * DAY_MS)).minute).toBe(0);
  });
});

/** A database a test can take away and bring back. */
interface Outage {
  name: string;
  open(): Promise<{ db: Database; cut(): Promise<void>; restore(): Promise<void>; dispose(): Promise<void> }>;
}

const outages: Outage[] = [
  {
    name: 'PostgreSQL behind a proxy that is stopped',
    async open() {
      const created = await throwawayPostgres();
      await migrate(created.db);
      const proxy = new TcpProxy(await freePort(), { host: LOCAL_POSTGRES.host, port: LOCAL_POSTGRES.port });
      await proxy.start();
      const db = openPostgres(postgresSettings(created.name, { port: proxy.port, connectTimeoutMs: 500, statementTimeoutMs: 2000 }));
      return {
        db,
        cut: () => proxy.stop(),
        restore: () => proxy.start(),
        async dispose() {
          await db.close();
          await proxy.stop();
          await created.dispose();
        },
      };
    },
  },
  {
    name: 'PGlite whose server is stopped',
    async open() {
      const served = await servedPglite();
      await migrate(served.primary);
      const db = served.connect({ statementTimeoutMs: 2000 });
      return { db, cut: () => served.stop(), restore: () => served.restart(), dispose: () => served.dispose() };
    },
  },
];

describe.each(outages)('usage recording while the database is away: $name', (outage) => {
  let handle: Awaited<ReturnType<Outage['open']>>;

  beforeAll(async () => {
    handle = await outage.open();
  });
  afterAll(async () => {
    await handle?.dispose();
  });
  beforeEach(async () => {
    for (const table of ['usage_minute', 'usage_hour', 'usage_day', 'overage_daily']) await handle.db.query(`DELETE FROM ${table}`);
  });

  it('keeps and retries what could not be written, and loses nothing within the bound', async () => {
    const clock = { ms: T0 };
    const metrics = new CountingMetrics();
    const r = new UsageRecorder({ db: handle.db, clock: () => clock.ms, logger, metrics, maxRows: 10_000 });
    const rand = seededRandom(11);
    const tally = emptyTally();
    recordRandom(r, rand, clock, 200, 30_000, tally);
    expect(await r.flush()).toBe(true);

    await handle.cut();
    for (let i = 0; i < 3; i++) {
      recordRandom(r, rand, clock, 200, 30_000, tally);
      expect(await r.flush()).toBe(false);
    }
    expect(metrics.flushes.failed).toBe(3);
    expect(metrics.rows).toBe(r.bufferedRows);
    expect(r.bufferedRows).toBeGreaterThan(0);
    expect(metrics.lag).toBeGreaterThan(0);

    await handle.restore();
    // The pool may hold a connection the outage broke: a later attempt succeeds.
    let written = false;
    for (let attempt = 0; attempt < 5 && !written; attempt++) written = await r.flush();
    expect(written).toBe(true);
    expect(r.bufferedRows).toBe(0);
    expect(metrics.lag).toBe(0);
    expect(r.dropped).toBe(0);
    expect(await tableTotals(handle.db, 'usage_minute')).toEqual(tally);
    expect(await tableTotals(handle.db, 'usage_day')).toEqual(tally);
  });

  it('past the bound drops the oldest minutes and counts every request it dropped', async () => {
    const clock = { ms: T0 };
    const metrics = new CountingMetrics();
    const r = new UsageRecorder({ db: handle.db, clock: () => clock.ms, logger, metrics, maxRows: 20 });
    await handle.cut();
    let recorded = 0;
    let pending: Promise<boolean> | null = null;
    // 60 minutes of one user: three times what the buffer holds. Flushes fail while more
    // is recorded, so what comes back from a failed flush meets what came meanwhile.
    for (let minute = 0; minute < 60; minute++) {
      for (let i = 0; i <= minute % 4; i++, recorded++) r.record(outcome('u', 'free', T0 + minute * MINUTE_MS, 'OK'), 1, null);
      if (pending !== null && minute % 20 === 14) {
        expect(await pending).toBe(false);
        expect(r.bufferedRows).toBeLessThanOrEqual(20);
        pending = null;
      }
      if (minute % 20 === 19) pending = r.flush();
    }
    if (pending !== null) expect(await pending).toBe(false);
    expect(r.bufferedRows).toBeLessThanOrEqual(20);
    expect(r.dropped).toBeGreaterThan(0);
    expect(metrics.droppedRequests).toBe(r.dropped);
    await handle.restore();
    let written = false;
    for (let attempt = 0; attempt < 5 && !written; attempt++) written = await r.flush();
    expect(written).toBe(true);
    const kept = await tableTotals(handle.db, 'usage_minute');
    expect(kept.requests + r.dropped).toBe(recorded);
    // What was kept is the newest minutes.
    const oldest = await handle.db.query('SELECT min(bucket) AS b FROM usage_minute');
    expect(new Date(oldest.rows[0]!.b as string).getTime()).toBe(T0 + 40 * MINUTE_MS);
  });
});
