/**
 * Usage recording without slowing decisions: every decision adds to an in-memory
 * aggregate per minute, user, key and tier (the user's current row and a few increments), and every
 * few seconds the aggregates are written with additive upserts to usage_minute,
 * usage_hour and usage_day in one statement, so any number of workers and nodes can
 * write the same rows and the hour and day rows always equal the sum of their minutes.
 *
 * With holdOpenMinute (the default) a flush writes only minutes that have ended, so a
 * busy user's minute row is written once rather than at every flush: the database work
 * is one row per active user and minute, whatever the request rate. With `spreadMs`, an
 * ended minute is written in equal parts over the flushes of the following `spreadMs`
 * rather than all at the first one: the database (the node's primary, with the embedded
 * PGlite) then does a steady trickle of work instead of a burst at every minute's end
 * (about half a second for 10 000 users' rows).
 *
 * While the database is away, aggregates are kept and retried, up to `maxRows`; past that
 * the oldest buckets are dropped and counted (rate_limiting_usage_dropped_total). There is
 * no database write per request.
 */
import type { CheckOutcome } from '../node/decider.js';
import type { Decision } from '../node/engine.js';
import type { UsageSlot } from '../node/shard.js';
import type { Logger } from '../observability/logger.js';
import type { Database, Queryable } from '../storage/db/database.js';
import { COUNTERS, DAY_MS, HOUR_MS, INDEX, MINUTE_MS, addCounts, countsOf, type UsageRow } from './usage-row.js';

export interface RecorderMetrics {
  buffered(rows: number): void;
  lagSeconds(seconds: number): void;
  dropped(requests: number): void;
  flushed(ok: boolean): void;
}

export interface UsageRecorderOptions {
  db: Database;
  clock: () => number;
  logger: Logger;
  metrics: RecorderMetrics;
  /** Rows kept while the database is away (and between flushes). */
  maxRows: number;
  /**
   * Keep the current minute in memory until it ends, so each minute row is written once
   * (usage_analytics.hold_open_minute). Rows of ended minutes are written at every flush.
   */
  holdOpenMinute?: boolean;
  /**
   * With holdOpenMinute: how long after a minute ends its rows must all be written; they
   * are written in equal parts at the flushes until then (usage_analytics.write_spread_ms).
   * 0 (the default) writes an ended minute at the first flush after it.
   */
  spreadMs?: number;
  /** How often `start` flushes (and what the spread is divided by); default 5 s. */
  flushIntervalMs?: number;
}

/**
 * Rows per statement. A batch fits one statement unless the database was away for long;
 * statements of one batch run in one transaction.
 */
const ROWS_PER_STATEMENT = 50_000;
const DEFAULT_FLUSH_INTERVAL_MS = 5000;

/**
 * The units of an admitted check that lie beyond the quota: a check of cost 7 admitted at
 * 18 of 20 used is 5 units of overage, not 7. (Without the limits, the whole cost.)
 */
function beyondQuota(d: Decision, cost: number): number {
  const quota = d.limits?.day?.limit;
  if (quota === undefined) return cost;
  return Math.min(cost, Math.max(0, d.quotaUsed - quota));
}

/** A row while it is buffered: whether it still is, and the slot that points at it. */
interface BufferedRow extends UsageRow {
  /** False once the row left the buffer (taken by a flush, or dropped): a slot or `latest` still pointing at it must not add to it. */
  live: boolean;
  /** The user's shard entry whose `usage` points at this row, unhooked when the row leaves the buffer (so no entry keeps a written row alive). */
  slot: UsageSlot | null;
}

export class UsageRecorder {
  private rows = new Map<string, BufferedRow>();
  /**
   * Each user's most recent row, by user id alone, for decisions made without the user's
   * shard entry at hand (forwarded, in Redis, by the fallback policy): the common case
   * (same minute, key and tier as the user's previous decision) then needs no composite
   * key. Only rows still in `rows` are here.
   */
  private latest = new Map<string, BufferedRow>();
  private timer: NodeJS.Timeout | null = null;
  private flushing: Promise<boolean> | null = null;
  private droppedRequests = 0;
  private readonly intervalMs: number;

  constructor(private readonly options: UsageRecorderOptions) {
    this.intervalMs = options.flushIntervalMs ?? DEFAULT_FLUSH_INTERVAL_MS;
  }

  /**
   * Adds one decision. Called once per decision on the request path. A decision made on
   * this worker's own counters brings the user's shard entry (`outcome.entry`), which
   * points at the user's current row: no lookup by user id at all (the lookups were most
   * of recording's cost: cache misses on a table of every active user).
   */
  record(outcome: CheckOutcome, cost: number, keyId: string | null): void {
    const d = outcome.decision;
    const bucket = d.now - (d.now % MINUTE_MS);
    const key = keyId ?? '';
    const slot = outcome.entry;
    let row = slot === undefined ? this.latest.get(outcome.userId) : (slot.usage as BufferedRow | null) ?? undefined;
    if (row === undefined || !row.live || row.bucket !== bucket || row.keyId !== key || row.tier !== outcome.tier) {
      row = this.rowFor(bucket, outcome.userId, key, outcome.tier);
      if (slot === undefined) {
        this.latest.set(outcome.userId, row);
      } else {
        if (row.slot !== slot) unhook(row);
        slot.usage = row;
        row.slot = slot;
      }
    }
    row.requests++;
    if (d.allowed) {
      row.allowed++;
      row.cost += cost;
      if (d.code === 'OVERAGE') row.overage += beyondQuota(d, cost);
      else if (d.code === 'GRACE') row.grace += beyondQuota(d, cost);
      return;
    }
    row.denied++;
    switch (d.code) {
      case 'RATE_LIMITED':
        row.denied_rate_limited++;
        break;
      case 'QUOTA_EXCEEDED':
        row.denied_quota++;
        break;
      case 'INVALID_KEY':
      case 'KEY_EXPIRED':
      case 'KEY_REVOKED':
      case 'KEY_STORE_UNAVAILABLE':
        row.denied_key++;
        break;
      case 'USER_DISABLED':
        row.denied_disabled++;
        break;
      case 'UNAVAILABLE':
        row.denied_unavailable++;
        break;
    }
    switch (d.limitedBy) {
      case 'burst':
        row.limited_burst++;
        break;
      case 'minute':
        row.limited_minute++;
        break;
      case 'hour':
        row.limited_hour++;
        break;
      case 'day':
        row.limited_day++;
        break;
    }
  }

  /** The buffered row of that minute, user, key and tier, made if there is none. */
  private rowFor(bucket: number, userId: string, keyId: string, tier: string): BufferedRow {
    const id = rowId(bucket, userId, keyId, tier);
    let row = this.rows.get(id);
    if (row === undefined) {
      if (this.rows.size >= this.options.maxRows) this.dropOldest();
      row = newRow(bucket, userId, keyId, tier);
      this.rows.set(id, row);
    }
    return row;
  }

  get bufferedRows(): number {
    return this.rows.size;
  }

  /** Requests whose usage was dropped because too much waited for the database. */
  get dropped(): number {
    return this.droppedRequests;
  }

  /** Flushes every `flushIntervalMs` until `stop`. */
  start(): void {
    this.timer ??= setInterval(() => void this.flush(), this.intervalMs);
    this.timer.unref();
  }

  /** Stops the timer and writes everything, the current minute too (at shutdown, before the database closes). */
  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    await this.flushing;
    await this.flush({ all: true });
  }

  /**
   * Writes the aggregates due: ended minutes, and the current one too with `all`, without
   * holdOpenMinute, or when the buffer is half full. True when it succeeded (or there was
   * nothing to write). Overlapping calls share one write.
   */
  flush(options: { all?: boolean } = {}): Promise<boolean> {
    this.flushing ??= this.write(options.all === true).finally(() => (this.flushing = null));
    return this.flushing;
  }

  private async write(all: boolean): Promise<boolean> {
    const { metrics, clock } = this.options;
    const now = clock();
    this.report(now);
    if (this.rows.size === 0) return true;
    let batch: Map<string, BufferedRow>;
    if (all || this.options.holdOpenMinute !== true || this.rows.size * 2 >= this.options.maxRows) {
      batch = this.rows;
      this.rows = new Map();
      this.latest = new Map();
      for (const row of batch.values()) release(row);
    } else {
      batch = this.takeEnded(now);
      if (batch.size === 0) return true;
    }
    try {
      const rows = [...batch.values()].sort(byKey);
      if (rows.length <= ROWS_PER_STATEMENT) await writeRows(this.options.db, rows);
      else await this.options.db.transaction((tx) => writeRows(tx, rows));
      metrics.flushed(true);
      this.report(clock());
      return true;
    } catch (err) {
      // Put the batch back in front of what came since (counters add up), within the bound.
      for (const [id, row] of batch) {
        const newer = this.rows.get(id);
        if (newer) addCounts(newer, row);
        else {
          row.live = true;
          this.rows.set(id, row);
        }
      }
      while (this.rows.size > this.options.maxRows) this.dropOldest();
      metrics.flushed(false);
      this.options.logger.warn({ err: (err as Error).message, rows: this.rows.size }, 'usage not written; kept for the next attempt');
      this.report(clock());
      return false;
    }
  }

  /**
   * The rows of ended minutes this flush writes: all of them, or with `spreadMs` this
   * flush's equal share of what is left before the oldest ended minute's deadline (oldest
   * rows first: the map holds rows in the order they were made).
   */
  private takeEnded(now: number): Map<string, BufferedRow> {
    const openMinute = now - (now % MINUTE_MS);
    let ended = 0;
    let oldest = openMinute;
    for (const row of this.rows.values()) {
      if (row.bucket >= openMinute) continue;
      ended++;
      if (row.bucket < oldest) oldest = row.bucket;
    }
    const deadline = oldest + MINUTE_MS + (this.options.spreadMs ?? 0);
    const flushesLeft = now >= deadline ? 1 : Math.floor((deadline - now) / this.intervalMs) + 1;
    const share = Math.ceil(ended / flushesLeft);
    const batch = new Map<string, BufferedRow>();
    for (const [id, row] of this.rows) {
      if (batch.size >= share) break;
      if (row.bucket >= openMinute) continue;
      batch.set(id, row);
      this.rows.delete(id);
      this.forget(row);
    }
    return batch;
  }

  /** The row has left the buffer: no slot or `latest` entry may lead to it any more. */
  private forget(row: BufferedRow): void {
    if (this.latest.get(row.userId) === row) this.latest.delete(row.userId);
    release(row);
  }

  /** Drops the oldest bucket's rows (counted), to stay within the bound. */
  private dropOldest(): void {
    let oldest = Infinity;
    for (const row of this.rows.values()) if (row.bucket < oldest) oldest = row.bucket;
    for (const [id, row] of this.rows) {
      if (row.bucket !== oldest) continue;
      this.rows.delete(id);
      this.forget(row);
      const requests = row.requests;
      this.droppedRequests += requests;
      this.options.metrics.dropped(requests);
    }
  }

  private report(now: number): void {
    let oldest = now;
    for (const row of this.rows.values()) if (row.bucket < oldest) oldest = row.bucket;
    this.options.metrics.buffered(this.rows.size);
    this.options.metrics.lagSeconds(this.rows.size === 0 ? 0 : Math.max(0, now - oldest) / 1000);
  }
}

/** A new row, every field written out (rows share one hidden class). */
function newRow(bucket: number, userId: string, keyId: string, tier: string): BufferedRow {
  return {
    bucket, userId, keyId, tier, live: true, slot: null,
    requests: 0, allowed: 0, denied: 0, cost: 0, overage: 0, grace: 0,
    denied_rate_limited: 0, denied_quota: 0, denied_key: 0, denied_disabled: 0, denied_unavailable: 0,
    limited_burst: 0, limited_minute: 0, limited_hour: 0, limited_day: 0,
  };
}

/** Marks a row as out of the buffer and unhooks it from its slot. */
function release(row: BufferedRow): void {
  row.live = false;
  unhook(row);
}

/** The slot that points at the row (if it still does) no longer does. */
function unhook(row: BufferedRow): void {
  if (row.slot !== null && row.slot.usage === row) row.slot.usage = null;
  row.slot = null;
}

function rowId(bucket: number, userId: string, keyId: string, tier: string): string {
  return `${bucket}\u0000${userId}\u0000${keyId}\u0000${tier}`;
}

// Each row travels as {b, u, k, t, c: [counters in COUNTERS order]} (SQL arrays count from 1).
const MINUTE_COLUMNS = COUNTERS.map((_, i) => `c[${i + 1}]`).join(', ');
const SUMMED_COLUMNS = COUNTERS.map((_, i) => `sum(c[${i + 1}])`).join(', ');
const RECORD_TYPE = 'b bigint, u text, k text, t text, c bigint[]';
const TARGET = `(bucket, user_id, key_id, tier, ${COUNTERS.join(', ')})`;
const ADD = `ON CONFLICT (bucket, user_id, key_id, tier) DO UPDATE SET ${COUNTERS.map((c) => `${c} = t.${c} + EXCLUDED.${c}`).join(', ')}`;
const OVERAGE = `c[${INDEX.overage + 1}]`;

/** Epoch ms `b` floored to `ms` as a timestamptz (integer arithmetic: no time zone involved). */
const floorTo = (ms: number) => `to_timestamp(((b / ${ms}) * ${ms}) / 1000.0)`;

/**
 * One statement writes a batch to all three tables and overage_daily: the rows travel as
 * one JSON parameter (counters as an array: a third of the bytes and of the parsing of
 * named fields), PostgreSQL rolls them up into hours and days. Rows are inserted in
 * key order, so concurrent writers take row locks in one order and do not deadlock (if a
 * deadlock did happen, the batch is kept and written by the next flush).
 */
const WRITE_SQL = `
WITH r AS (SELECT * FROM jsonb_to_recordset($1::jsonb) AS x(${RECORD_TYPE})),
m AS (
  INSERT INTO usage_minute AS t ${TARGET}
  SELECT to_timestamp(b / 1000.0), u, k, t, ${MINUTE_COLUMNS} FROM r ORDER BY b, u COLLATE "C", k COLLATE "C", t COLLATE "C"
  ${ADD}
),
h AS (
  INSERT INTO usage_hour AS t ${TARGET}
  SELECT ${floorTo(HOUR_MS)}, u, k, t, ${SUMMED_COLUMNS} FROM r GROUP BY 1, u, k, t ORDER BY 1, u COLLATE "C", k COLLATE "C", t COLLATE "C"
  ${ADD}
),
d AS (
  INSERT INTO usage_day AS t ${TARGET}
  SELECT ${floorTo(DAY_MS)}, u, k, t, ${SUMMED_COLUMNS} FROM r GROUP BY 1, u, k, t ORDER BY 1, u COLLATE "C", k COLLATE "C", t COLLATE "C"
  ${ADD}
)
INSERT INTO overage_daily AS o (user_id, day, units)
SELECT u, (${floorTo(DAY_MS)} AT TIME ZONE 'UTC')::date, sum(${OVERAGE}) FROM r
GROUP BY u, 2 HAVING sum(${OVERAGE}) > 0 ORDER BY u COLLATE "C", 2
ON CONFLICT (user_id, day) DO UPDATE SET units = o.units + EXCLUDED.units`;

/** Key order, as the statement's ORDER BY (byte order, COLLATE "C"). */
function byKey(a: UsageRow, b: UsageRow): number {
  return a.bucket - b.bucket || compare(a.userId, b.userId) || compare(a.keyId, b.keyId) || compare(a.tier, b.tier);
}

function compare(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** Writes `rows` (distinct keys) in statements of at most ROWS_PER_STATEMENT rows. */
async function writeRows(tx: Queryable, rows: UsageRow[]): Promise<void> {
  for (let start = 0; start < rows.length; start += ROWS_PER_STATEMENT) {
    const chunk = rows
      .slice(start, start + ROWS_PER_STATEMENT)
      .map((row) => ({ b: row.bucket, u: row.userId, k: row.keyId, t: row.tier, c: countsOf(row) }));
    await tx.query(WRITE_SQL, [JSON.stringify(chunk)]);
  }
}
