/**
 * A worker's part in usage history: the recorder that aggregates its decisions and
 * flushes them every USAGE_FLUSH_INTERVAL_MS, and (on worker 0 of each node) the retention
 * job that deletes minute rows past USAGE_MINUTE_RETENTION_HOURS and hour and day rows
 * past USAGE_RETENTION_DAYS. The retention job is a few DELETEs by age, so every node
 * running it at once is harmless.
 */
import type { Config } from '../config/types.js';
import type { Logger } from '../observability/logger.js';
import type { Metrics } from '../observability/metrics.js';
import type { Database } from '../storage/db/database.js';
import { UsageRecorder } from './recorder.js';
import { UsageStore } from './store.js';
import { DAY_MS, HOUR_MS } from './usage-row.js';

/** How often the retention job runs (and how long after start it first runs). */
export const RETENTION_INTERVAL_MS = HOUR_MS;
const RETENTION_FIRST_RUN_MS = 60_000;

export class UsageHistory {
  readonly recorder: UsageRecorder;
  readonly store: UsageStore;
  private retentionTimer: NodeJS.Timeout | null = null;

  constructor(
    private readonly config: Config,
    db: Database,
    private readonly clock: () => number,
    private readonly logger: Logger,
    private readonly metrics: Metrics,
  ) {
    this.store = new UsageStore(db);
    this.recorder = new UsageRecorder({
      db,
      clock,
      logger,
      maxRows: config.usage_analytics.max_buffered_rows,
      holdOpenMinute: config.usage_analytics.hold_open_minute,
      spreadMs: config.usage_analytics.write_spread_ms,
      flushIntervalMs: config.usage_analytics.flush_interval_ms,
      metrics: {
        buffered: (rows) => metrics.usageBufferedRows.set(rows),
        lagSeconds: (seconds) => metrics.usageLag.set(seconds),
        dropped: (requests) => metrics.usageDropped.inc(requests),
        flushed: (ok) => metrics.usageFlushes.inc({ result: ok ? 'ok' : 'failed' }),
      },
    });
  }

  start(options: { retention: boolean }): void {
    this.recorder.start();
    if (!options.retention) return;
    const first = setTimeout(() => {
      void this.runRetention();
      this.retentionTimer = setInterval(() => void this.runRetention(), RETENTION_INTERVAL_MS);
      this.retentionTimer.unref();
    }, RETENTION_FIRST_RUN_MS);
    first.unref();
    this.retentionTimer = first;
  }

  /** Deletes usage past its age once; the counts per table, or null when the database failed. */
  async runRetention(): Promise<{ minute: number; hour: number; day: number } | null> {
    const { minute_retention_hours, retention_days } = this.config.usage_analytics;
    try {
      const deleted = await this.store.deleteExpired(this.clock(), minute_retention_hours * HOUR_MS, retention_days * DAY_MS);
      for (const [table, rows] of Object.entries(deleted)) this.metrics.usageRetentionDeleted.inc({ table }, rows);
      if (deleted.minute + deleted.hour + deleted.day > 0) this.logger.info(deleted, 'usage retention: deleted rows past their age');
      return deleted;
    } catch (err) {
      this.logger.warn({ err: (err as Error).message }, 'usage retention failed; retrying at the next run');
      return null;
    }
  }

  /** Stops the jobs and writes what is buffered (before the database closes). */
  async stop(): Promise<void> {
    if (this.retentionTimer) {
      clearTimeout(this.retentionTimer);
      clearInterval(this.retentionTimer);
    }
    this.retentionTimer = null;
    await this.recorder.stop();
  }
}
