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
 * been seen (two admin writes on different nodes at once). Rows are therefore re-read
 * until they are `settleMs` old to this reader, and each is delivered once.
 */
import type { Logger } from '../observability/logger.js';
import type { Queryable } from '../storage/db/database.js';
import { toInt } from '../storage/db/sql-values.js';
import type { InvalidationEvent } from './invalidation.js';

export interface ChangeFeedOptions {
  db: Queryable;
  /** Called once per change, in id order. */
  deliver: (event: InvalidationEvent) => void;
  clock: () => number;
  logger?: Logger;
  /** Default 1 s. */
  intervalMs?: number;
  /** How long a seen row keeps being re-read for late commits below it; default 10 s. */
  settleMs?: number;
  /** Rows per poll; default 1000. */
  batch?: number;
}

/** The cache invalidation an audit row calls for, or null (e.g. a key created: nothing cached yet). */
export function eventOfAudit(action: string, target: string): InvalidationEvent | null {
  const colon = target.indexOf(':');
  const kind = target.slice(0, colon);
  const id = target.slice(colon + 1);
  if (colon < 0 || id === '') return null;
  if (kind === 'user' && action.startsWith('user.')) return { type: 'user', userId: id };
  if (kind === 'key' && action !== 'key.create') return { type: 'key', keyId: id };
  return null;
}

export class AuditChangeFeed {
  /** Rows up to this id are settled (or older than the feed). Null until the start is known. */
  private floor: number | null = null;
  /** Rows above the floor already delivered, with when they were first seen. */
  private readonly seen = new Map<number, number>();
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
    try {
      if (this.floor === null) {
        const newest = await db.query<{ id: unknown }>('SELECT coalesce(max(id), 0) AS id FROM audit_log');
        this.floor = toInt(newest.rows[0]!.id);
      }
      const rows = await db.query<{ id: unknown; action: string; target: string }>(
        'SELECT id, action, target FROM audit_log WHERE id > $1 ORDER BY id LIMIT $2',
        [this.floor, this.options.batch ?? 1000],
      );
      if (this.failing) this.options.logger?.info('account change feed reading again');
      this.failing = false;
      this.hasRead = true;
      const now = clock();
      let delivered = 0;
      for (const row of rows.rows) {
        const id = toInt(row.id);
        if (this.seen.has(id)) continue;
        this.seen.set(id, now);
        const event = eventOfAudit(String(row.action), String(row.target));
        if (event === null) continue;
        delivered++;
        try {
          this.options.deliver(event);
        } catch (err) {
          this.options.logger?.warn({ err: (err as Error).message }, 'account change handler failed');
        }
      }
      this.settle(now);
      return delivered;
    } catch (err) {
      // The database is away (or not up yet): nothing can change meanwhile; catch up when it answers.
      if (!this.failing && this.hasRead) this.options.logger?.warn({ err: (err as Error).message }, 'account change feed cannot read the audit log; retrying');
      this.failing = true;
      return 0;
    }
  }

  /** Raises the floor past rows seen longer ago than the settle time. */
  private settle(now: number): void {
    const settleMs = this.options.settleMs ?? 10_000;
    let floor = this.floor!;
    for (const [id, seenAt] of this.seen) if (now - seenAt >= settleMs && id > floor) floor = id;
    if (floor === this.floor) return;
    this.floor = floor;
    for (const id of this.seen.keys()) if (id <= floor) this.seen.delete(id);
  }
}
