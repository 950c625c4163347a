/**
 * Reading usage history back: time series, top consumers, denials by tier and limit,
 * quota usage, overage for billing, hourly series for pattern analysis, and the
 * retention that deletes what is past its age. All queries are plain SQL over the three
 * usage tables and run on PostgreSQL and PGlite alike.
 */
import type { Queryable } from '../storage/db/database.js';
import { COUNTERS, DAY_MS, HOUR_MS, MINUTE_MS } from './usage-row.js';

export type Granularity = 'minute' | 'hour' | 'day';

export const TABLE: Record<Granularity, string> = { minute: 'usage_minute', hour: 'usage_hour', day: 'usage_day' };
export const LENGTH_MS: Record<Granularity, number> = { minute: MINUTE_MS, hour: HOUR_MS, day: DAY_MS };

export interface UsageFilter {
  from: number;
  to: number;
  userId?: string | undefined;
  tier?: string | undefined;
  keyId?: string | undefined;
}

export type Totals = Record<(typeof COUNTERS)[number], number>;

const SUMS = COUNTERS.map((c) => `sum(${c})::float8 AS ${c}`).join(', ');

function where(filter: UsageFilter, params: unknown[]): string {
  params.push(new Date(filter.from).toISOString(), new Date(filter.to).toISOString());
  const clauses = ['bucket >= $1::timestamptz', 'bucket < $2::timestamptz'];
  if (filter.userId !== undefined) clauses.push(`user_id = $${params.push(filter.userId)}`);
  if (filter.tier !== undefined) clauses.push(`tier = $${params.push(filter.tier)}`);
  if (filter.keyId !== undefined) clauses.push(`key_id = $${params.push(filter.keyId)}`);
  return clauses.join(' AND ');
}

function totals(row: Record<string, unknown>): Totals {
  return Object.fromEntries(COUNTERS.map((c) => [c, Number(row[c] ?? 0)])) as Totals;
}

export class UsageStore {
  constructor(private readonly db: Queryable) {}

  /** Sums per bucket of `granularity`, oldest first. */
  async timeseries(filter: UsageFilter, granularity: Granularity, limit = 10_000): Promise<Array<{ bucket: number } & Totals>> {
    const params: unknown[] = [];
    const result = await this.db.query(
      `SELECT bucket, ${SUMS} FROM ${TABLE[granularity]} WHERE ${where(filter, params)} GROUP BY bucket ORDER BY bucket LIMIT ${limit}`,
      params,
    );
    return result.rows.map((row) => ({ bucket: new Date(row.bucket as string).getTime(), ...totals(row) }));
  }

  /** Users with the most admitted cost (then requests). */
  async topConsumers(filter: UsageFilter, granularity: Granularity, limit: number): Promise<Array<{ user_id: string; tier: string } & Totals>> {
    const params: unknown[] = [];
    const result = await this.db.query(
      `SELECT user_id, max(tier) AS tier, ${SUMS} FROM ${TABLE[granularity]} WHERE ${where(filter, params)}
       GROUP BY user_id ORDER BY sum(cost) DESC, sum(requests) DESC, user_id LIMIT ${limit}`,
      params,
    );
    return result.rows.map((row) => ({ user_id: String(row.user_id), tier: String(row.tier), ...totals(row) }));
  }

  /** Sums per tier (the denial breakdown by code and by limit). */
  async byTier(filter: UsageFilter, granularity: Granularity): Promise<Array<{ tier: string } & Totals>> {
    const params: unknown[] = [];
    const result = await this.db.query(
      `SELECT tier, ${SUMS} FROM ${TABLE[granularity]} WHERE ${where(filter, params)} GROUP BY tier ORDER BY tier`,
      params,
    );
    return result.rows.map((row) => ({ tier: String(row.tier), ...totals(row) }));
  }

  /** Sums over the whole range. */
  async totals(filter: UsageFilter, granularity: Granularity): Promise<Totals> {
    const params: unknown[] = [];
    const result = await this.db.query(`SELECT ${SUMS} FROM ${TABLE[granularity]} WHERE ${where(filter, params)}`, params);
    return totals(result.rows[0] ?? {});
  }

  /** Sums per user and tier, for reports. */
  async byUser(filter: UsageFilter, granularity: Granularity, limit = 100_000): Promise<Array<{ user_id: string; tier: string } & Totals>> {
    const params: unknown[] = [];
    const result = await this.db.query(
      `SELECT user_id, tier, ${SUMS} FROM ${TABLE[granularity]} WHERE ${where(filter, params)}
       GROUP BY user_id, tier ORDER BY user_id, tier LIMIT ${limit}`,
      params,
    );
    return result.rows.map((row) => ({ user_id: String(row.user_id), tier: String(row.tier), ...totals(row) }));
  }

  /** Sums per API key (with its user and tier; '' for checks without a key), for reports. */
  async byKey(filter: UsageFilter, granularity: Granularity, limit = 100_000): Promise<Array<{ key_id: string; user_id: string; tier: string } & Totals>> {
    const params: unknown[] = [];
    const result = await this.db.query(
      `SELECT key_id, user_id, tier, ${SUMS} FROM ${TABLE[granularity]} WHERE ${where(filter, params)}
       GROUP BY key_id, user_id, tier ORDER BY user_id, key_id, tier LIMIT ${limit}`,
      params,
    );
    return result.rows.map((row) => ({ key_id: String(row.key_id), user_id: String(row.user_id), tier: String(row.tier), ...totals(row) }));
  }

  /**
   * Admitted cost per user in [since, now) (the current quota window), largest first.
   * Whole hours are read from the hour rows (kept for the full retention), the minutes
   * before the first whole hour from the minute rows; quota windows aligned to the hour
   * (every window of whole hours) read hour rows only.
   */
  async quotaUsage(
    since: number,
    now: number,
    limit: number,
    filter: { userId?: string | undefined; tier?: string | undefined } = {},
  ): Promise<Array<{ user_id: string; tier: string; used: number }>> {
    const firstHour = Math.min(Math.ceil(since / HOUR_MS) * HOUR_MS, now);
    const params: unknown[] = [new Date(since).toISOString(), new Date(firstHour).toISOString(), new Date(now).toISOString()];
    const extra: string[] = [];
    if (filter.userId !== undefined) extra.push(`user_id = $${params.push(filter.userId)}`);
    if (filter.tier !== undefined) extra.push(`tier = $${params.push(filter.tier)}`);
    const and = extra.map((c) => ` AND ${c}`).join('');
    const result = await this.db.query(
      `SELECT user_id, max(tier) AS tier, sum(cost)::float8 AS used FROM (
         SELECT user_id, tier, cost FROM usage_minute WHERE bucket >= $1::timestamptz AND bucket < $2::timestamptz${and}
         UNION ALL
         SELECT user_id, tier, cost FROM usage_hour WHERE bucket >= $2::timestamptz AND bucket < $3::timestamptz${and}
       ) AS window_rows
       GROUP BY user_id HAVING sum(cost) > 0 ORDER BY sum(cost) DESC, user_id LIMIT ${limit}`,
      params,
    );
    return result.rows.map((row) => ({ user_id: String(row.user_id), tier: String(row.tier), used: Number(row.used) }));
  }

  /** Users with the most requests in [from, to), read from the hour rows (for pattern scans). */
  async activeUsers(from: number, to: number, limit: number, tier?: string): Promise<string[]> {
    const params: unknown[] = [new Date(from).toISOString(), new Date(to).toISOString()];
    const byTier = tier === undefined ? '' : ` AND tier = $${params.push(tier)}`;
    const result = await this.db.query(
      `SELECT user_id FROM usage_hour WHERE bucket >= $1::timestamptz AND bucket < $2::timestamptz${byTier}
       GROUP BY user_id ORDER BY sum(requests) DESC, user_id LIMIT ${limit}`,
      params,
    );
    return result.rows.map((row) => String(row.user_id));
  }

  /** Overage units per user in the range, for billing. */
  async overage(filter: UsageFilter, granularity: Granularity, limit = 10_000): Promise<Array<{ user_id: string; overage: number; cost: number }>> {
    const params: unknown[] = [];
    const result = await this.db.query(
      `SELECT user_id, sum(overage)::float8 AS overage, sum(cost)::float8 AS cost FROM ${TABLE[granularity]} WHERE ${where(filter, params)}
       GROUP BY user_id HAVING sum(overage) > 0 ORDER BY sum(overage) DESC, user_id LIMIT ${limit}`,
      params,
    );
    return result.rows.map((row) => ({ user_id: String(row.user_id), overage: Number(row.overage), cost: Number(row.cost) }));
  }

  /** One user's hourly series (all keys and tiers summed), for pattern analysis. */
  async hourly(userId: string, from: number, to: number): Promise<Array<{ hourStart: number; requests: number; denied: number; cost: number }>> {
    const result = await this.db.query(
      `SELECT bucket, sum(requests)::float8 AS requests, sum(denied)::float8 AS denied, sum(cost)::float8 AS cost FROM usage_hour
       WHERE user_id = $1 AND bucket >= $2::timestamptz AND bucket < $3::timestamptz GROUP BY bucket ORDER BY bucket`,
      [userId, new Date(from).toISOString(), new Date(to).toISOString()],
    );
    return result.rows.map((row) => ({
      hourStart: new Date(row.bucket as string).getTime(),
      requests: Number(row.requests),
      denied: Number(row.denied),
      cost: Number(row.cost),
    }));
  }

  /**
   * Deletes minute rows older than `minuteRetentionMs` and hour and day rows older than
   * `retentionMs` (plain DELETEs by age: safe on every node at once). Returns the counts.
   */
  async deleteExpired(now: number, minuteRetentionMs: number, retentionMs: number): Promise<{ minute: number; hour: number; day: number }> {
    const cutoff = (ms: number) => new Date(now - ms).toISOString();
    const minute = await this.db.query('DELETE FROM usage_minute WHERE bucket < $1::timestamptz', [cutoff(minuteRetentionMs)]);
    const hour = await this.db.query('DELETE FROM usage_hour WHERE bucket < $1::timestamptz', [cutoff(retentionMs)]);
    const day = await this.db.query('DELETE FROM usage_day WHERE bucket < $1::timestamptz', [cutoff(retentionMs)]);
    await this.db.query('DELETE FROM overage_daily WHERE day < $1::date', [cutoff(retentionMs).slice(0, 10)]);
    return { minute: minute.rowCount, hour: hour.rowCount, day: day.rowCount };
  }
}
