/**
 * Account changes read back from the audit log. Every admin write appends its audit row in
 * the write's own transaction (audit-repository.ts), so the audit log is a complete,
 * ordered record of what changed. Each worker polls it for rows newer than the last it
 * saw and turns them into cache invalidations: a new tier, a revoked key or a deleted
 * user reaches every process within about one poll interval, whatever happened to the
 * pub/sub message (dropped while Redis was away, or never sent: nodes without Redis).
 * The caches' periodic reloads remain only as a backstop for changes made around the
 * admin API (SQL by hand), so they can be rare.
 *
 * Ids are handed out before commit, so a row can become visible after a higher one has
 * been read (two admin writes on different nodes at once). The ids skipped over are looked
 * for again on every poll until they are `settleMs` old to this reader (a rolled-back
 * write leaves its id unused for good). Each row is delivered once, and a backlog (a bulk
 * import) is read in one poll, a batch at a time.
 */
import type { Logger } from '../observability/logger.js';
import type { Queryable } from '../storage/db/database.js';
import { toInt } from '../storage/db/sql-values.js';
import type { InvalidationEvent } from './invalidation.js';

export interface ChangeFeedOptions {
  db: Queryable;
  /** Called once per change, in id order; must not throw (an InvalidationBus's `deliver` does not). */
  deliver: (event: InvalidationEvent) => void;
  clock: () => number;
  logger?: Logger;
  /** Default 1 s. */
  intervalMs?: number;
  /** How long an id skipped over is looked for (a write committing late); default 10 s. */
  settleMs?: number;
  /** Rows per poll; default 1000. */
  batch?: number;
  /** After every poll: whether the audit log could be read, and how many changes were delivered. */
  onPoll?: (ok: boolean, delivered: number) => void;
}

/** The cache invalidation an audit row calls for, or null (e.g. a key created: nothing cached yet). */
export function eventOfAudit(action: string, target: string): InvalidationEvent | null {
  const colon = target.indexOf(':');
  if (colon < 0 || colon === target.length - 1) return null;
  const kind = target.slice(0, colon);
  const id = target.slice(colon + 1);
  if (kind === 'user' && action.startsWith('user.')) return { type: 'user', userId: id };
  if (kind === 'key' && action !== 'key.create') return { type: 'key', keyId: id };
  return null;
}

export class AuditChangeFeed {
  /** The highest id read (or the newest row when the feed started). Null until known. */
  private last: number | null = null;
  /** Ids skipped over (not committed yet when a higher one was read), with when each was noticed. */
  private readonly gaps = new Map<number, number>();
  private timer: NodeJS.Timeout | null = null;
  private polling: Promise<number> | null = null;
  private failing = false;
  private hasRead = false;

  constructor(private readonly options: ChangeFeedOptions) {}

  /** Polls every interval from now on (changes made before the first poll are not replayed). */
  start(): void {
    this.timer ??= setInterval(() => void this.poll(), this.options.intervalMs ?? 1000);
    this.timer.unref();
    void this.poll();
  }

  stop(): void {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
  }

  /** One poll (overlapping calls share it); resolves with the number of changes delivered. */
  poll(): Promise<number> {
    this.polling ??= this.pollOnce().finally(() => (this.polling = null));
    return this.polling;
  }

  private async pollOnce(): Promise<number> {
    const { db, clock } = this.options;
    const batch = this.options.batch ?? 1000;
    try {
      if (this.last === null) {
        const newest = await db.query<{ id: unknown }>('SELECT coalesce(max(id), 0) AS id FROM audit_log');
        this.last = toInt(newest.rows[0]!.id);
      }
      const now = clock();
      let delivered = 0;
      // Ids skipped earlier that have committed since.
      if (this.gaps.size > 0) {
        const late = await db.query<AuditRow>('SELECT id, action, target FROM audit_log WHERE id = ANY($1::bigint[]) ORDER BY id', [[...this.gaps.keys()]]);
        for (const row of late.rows) {
          this.gaps.delete(toInt(row.id));
          delivered += this.deliver(row);
        }
      }
      // New rows; a backlog (a bulk import) is read in full, a batch at a time.
      for (let round = 0; round < MAX_BATCHES_PER_POLL; round++) {
        const rows = await db.query<AuditRow>('SELECT id, action, target FROM audit_log WHERE id > $1 ORDER BY id LIMIT $2', [this.last, batch]);
        for (const row of rows.rows) {
          const id = toInt(row.id);
          // Ids between the last read and this one are taken by writes not committed yet
          // (or rolled back): looked for again until they settle. A jump too large to be
          // writes in flight is not tracked.
          if (id - this.last <= MAX_GAP && this.gaps.size < MAX_TRACKED_GAPS) for (let g = this.last + 1; g < id; g++) this.gaps.set(g, now);
          this.last = id;
          delivered += this.deliver(row);
        }
        if (rows.rows.length < batch) break;
      }
      const settleMs = this.options.settleMs ?? 10_000;
      for (const [id, noticed] of this.gaps) if (now - noticed >= settleMs) this.gaps.delete(id);
      if (this.failing) this.options.logger?.info('account change feed reading again');
      this.failing = false;
      this.hasRead = true;
      this.options.onPoll?.(true, delivered);
      return delivered;
    } catch (err) {
      // The database is away (or not up yet): nothing can change meanwhile; catch up when it answers.
      if (!this.failing && this.hasRead) this.options.logger?.warn({ err: (err as Error).message }, 'account change feed cannot read the audit log; retrying');
      this.failing = true;
      this.options.onPoll?.(false, 0);
      return 0;
    }
  }

  /** Hands a row's invalidation to the caches; 1 if there was one. */
  private deliver(row: AuditRow): number {
    const event = eventOfAudit(String(row.action), String(row.target));
    if (event === null) return 0;
    this.options.deliver(event);
    return 1;
  }
}

interface AuditRow {
  id: unknown;
  action: string;
  target: string;
}

/** Batches read in one poll at most (a backlog beyond waits for the next poll). */
const MAX_BATCHES_PER_POLL = 50;
/** Skipped ids tracked between two rows at most, and in all. */
const MAX_GAP = 1000;
const MAX_TRACKED_GAPS = 10_000;
