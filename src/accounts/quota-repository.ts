import type { Queryable } from '../storage/db/database.js';
import { isoTime, toInt, toMs } from '../storage/db/sql-values.js';

/** An admin reset of a user's quota: usage of the window counts from `resetAt` on. */
export interface QuotaReset {
  userId: string;
  /** Start of the quota window that was reset (epoch ms, aligned to the window length). */
  windowStart: number;
  resetAt: number;
  by: string;
}

export interface OverageUnits {
  userId: string;
  /** When the units were admitted (epoch ms); they count on that UTC day. */
  at: number;
  units: number;
}

const DAY_MS = 86_400_000;

/** Admin quota resets, and overage units per user and day for billing. */
export class QuotaRepository {
  constructor(
    private readonly db: Queryable,
    private readonly clock: () => number,
  ) {}

  /**
   * Resets the user's current quota window (of `windowSeconds`, aligned to the epoch like
   * the limiter's day window). The limiter reads the resets with `listResets`.
   */
  async resetCurrentWindow(userId: string, by: string, windowSeconds: number): Promise<QuotaReset> {
    const now = this.clock();
    const windowMs = windowSeconds * 1000;
    const windowStart = Math.floor(now / windowMs) * windowMs;
    await this.db.query('INSERT INTO quota_resets (user_id, day_start, reset_at, by) VALUES ($1, $2::bigint, $3::timestamptz, $4)', [
      userId,
      windowStart,
      isoTime(now),
      by,
    ]);
    return { userId, windowStart, resetAt: now, by };
  }

  /** The user's resets at or after `sinceMs`, oldest first. */
  async listResets(userId: string, sinceMs: number): Promise<QuotaReset[]> {
    const result = await this.db.query(
      'SELECT user_id, day_start, reset_at, by FROM quota_resets WHERE user_id = $1 AND reset_at >= $2::timestamptz ORDER BY reset_at, id',
      [userId, isoTime(sinceMs)],
    );
    return result.rows.map((row) => ({ userId: String(row.user_id), windowStart: toInt(row.day_start), resetAt: toMs(row.reset_at), by: String(row.by) }));
  }

  /** Adds overage units, any number of users and days in one statement; additive, so retries of a failed batch must not overlap a succeeded one. */
  async addOverage(items: readonly OverageUnits[]): Promise<void> {
    const totals = new Map<string, { user_id: string; day: string; units: number }>();
    for (const { userId, at, units } of items) {
      if (!Number.isSafeInteger(units) || units < 0) throw new RangeError(`overage units must be a non-negative integer, got ${units}`);
      if (units === 0) continue;
      const day = utcDay(at);
      const key = `${day}\u0000${userId}`;
      const entry = totals.get(key);
      if (entry) entry.units += units;
      else totals.set(key, { user_id: userId, day, units });
    }
    if (totals.size === 0) return;
    await this.db.query(
      `INSERT INTO overage_daily (user_id, day, units)
       SELECT user_id, day, units FROM jsonb_to_recordset($1::jsonb) AS v(user_id text, day date, units bigint)
       ON CONFLICT (user_id, day) DO UPDATE SET units = overage_daily.units + EXCLUDED.units`,
      [JSON.stringify([...totals.values()])],
    );
  }

  /** The user's overage per UTC day (`YYYY-MM-DD`) from `fromMs` to `toMs`, both days included. */
  async overage(userId: string, fromMs: number, toMs: number): Promise<Array<{ day: string; units: number }>> {
    const result = await this.db.query(
      'SELECT day::text AS day, units FROM overage_daily WHERE user_id = $1 AND day BETWEEN $2::date AND $3::date ORDER BY day',
      [userId, utcDay(fromMs), utcDay(toMs)],
    );
    return result.rows.map((row) => ({ day: String(row.day), units: toInt(row.units) }));
  }
}

/** The UTC calendar day of an instant, `YYYY-MM-DD`. */
export function utcDay(ms: number): string {
  return new Date(Math.floor(ms / DAY_MS) * DAY_MS).toISOString().slice(0, 10);
}
