/**
 * `npm run bench -- usage-flush`: what writing one minute of usage costs the embedded
 * database, with the rollup tables as migration 3 leaves them (half of each page free,
 * so the per-flush updates of hour and day rows stay on their page) and as they were
 * before it (full pages). Two in-memory PGlite databases in this process get the same
 * recorded decisions; each ended minute is flushed into both, alternately, and timed.
 */
import { UsageRecorder } from '../src/analytics/recorder.js';
import type { CheckOutcome } from '../src/node/decider.js';
import type { Decision } from '../src/node/engine.js';
import { createLogger } from '../src/observability/logger.js';
import { migrate } from '../src/storage/db/migrations.js';
import { openPglite, type PgliteDatabase } from '../src/storage/db/pglite.js';
import { median, reportMarkdown, table, writeResult, type Row } from './lib/report.js';

export interface UsageFlushOptions {
  /** Distinct users per minute (each one row per minute, hour and day). */
  users: number;
  /** Minutes flushed into each database (the first one is a warm-up, not counted). */
  minutes: number;
}

interface Variant {
  name: string;
  db: PgliteDatabase;
  recorder: UsageRecorder;
  ms: number[];
}

const MINUTE_MS = 60_000;

function allowed(now: number): Decision {
  const status = (limit: number) => ({ limit, remaining: limit - 1, reset_at: now + MINUTE_MS });
  return {
    allowed: true, code: 'OK', limitedBy: null, retryAfterMs: 0,
    limits: { burst: status(10), minute: status(60), hour: status(1000), day: status(10_000) },
    quotaUsed: 1, charged: 1, graceStarted: false, now,
  };
}

export async function usageFlush(options: UsageFlushOptions): Promise<boolean> {
  let now = Date.UTC(2026, 0, 1, 0, 0, 0);
  const clock = () => now;
  const logger = createLogger('silent');
  const metrics = { buffered: () => undefined, lagSeconds: () => undefined, dropped: () => undefined, flushed: () => undefined };
  const variants: Variant[] = [];
  for (const [name, fillfactor] of [['rollups with free page room (fillfactor 50, migration 3)', 50], ['rollups on full pages (fillfactor 100, before it)', 100]] as const) {
    const db = await openPglite('memory');
    await migrate(db);
    await db.query(`ALTER TABLE usage_hour SET (fillfactor = ${fillfactor}); ALTER TABLE usage_day SET (fillfactor = ${fillfactor})`);
    variants.push({ name, db, recorder: new UsageRecorder({ db, clock, logger, metrics, maxRows: 10 * options.users, holdOpenMinute: true }), ms: [] });
  }
  try {
    const userIds = Array.from({ length: options.users }, (_, i) => `bench-user-${i}`);
    for (let minute = 0; minute < options.minutes; minute++) {
      for (const userId of userIds) {
        const outcome: CheckOutcome = { userId, tier: 'basic', decision: allowed(now + 1000), path: 'local' };
        for (const v of variants) for (let i = 0; i < 3; i++) v.recorder.record(outcome, 1, null);
      }
      now += MINUTE_MS;
      // Alternate which database goes first, so neither always flushes on a warmer process.
      const order = minute % 2 === 0 ? variants : [...variants].reverse();
      for (const v of order) {
        const started = performance.now();
        if (!(await v.recorder.flush())) throw new Error(`${v.name}: the flush failed`);
        if (minute > 0) v.ms.push(performance.now() - started);
      }
      console.error(`usage-flush: minute ${minute + 1}/${options.minutes}`);
    }
  } finally {
    for (const v of variants) await v.db.close();
  }

  const baseline = median(variants[1]!.ms);
  const rows: Row[] = variants.map((v) => ({
    variant: v.name,
    'median ms per minute flushed': median(v.ms).toFixed(0),
    'min ms': Math.min(...v.ms).toFixed(0),
    'max ms': Math.max(...v.ms).toFixed(0),
    'vs full pages': (median(v.ms) / baseline).toFixed(2),
  }));
  console.log(`\n${table(rows)}\n`);
  const markdown = reportMarkdown({
    title: 'Usage flush: one minute of usage into the embedded database',
    command: `npm run bench -- usage-flush --users ${options.users} --minutes ${options.minutes}`,
    method:
      `Two in-memory PGlite databases in one process, the same ${options.users} users × 3 decisions a minute ` +
      `recorded into each; every ended minute is written by the recorder's flush (one statement: minute rows inserted, hour and day ` +
      `rows updated after the first minute), alternating which database goes first; the first minute is a warm-up.`,
    rows,
  });
  console.log(`report: ${writeResult('usage-flush', markdown, { options, rows })}`);
  return true;
}
