/**
 * Write-behind reconciliation of a shard's counters to Redis.
 *
 * Decisions never wait on Redis: they charge memory and leave a pending change per
 * window. Every sync interval this loop takes the pending changes of every dirty user,
 * sends them in `reconcile` script calls of up to 200 users (one per user on Redis
 * Cluster, auto-pipelined), and folds back what Redis returns: anything other writers added in between is added to memory
 * (Limitador's "learn remote deltas"). A failed flush puts its changes back — they are
 * never dropped while the user is in memory; evicted users' changes are kept up to a
 * bound, past which they are counted as dropped.
 *
 * Accuracy trade-off: while Redis is healthy, a crash (kill -9) loses at most the
 * changes of the last sync interval (plus the flush in flight); a graceful shutdown
 * flushes everything. While Redis is away, the owner keeps deciding exactly from memory
 * and only durability is delayed.
 */
import type { Logger } from '../../observability/logger.js';
import type { EffectiveLimits } from '../../node/limits.js';
import { decayedDebt, windowStart } from '../../node/engine.js';
import { isDirty, markWindowsPending, type Shard, type ShardEntry } from '../../node/shard.js';
import type { RedisConnection } from './connection.js';
import type { RedisScripts, Surprise, UserFlush, WindowFlush } from './scripts.js';

export interface ReconcilerMetrics {
  partitioned(value: 0 | 1): void;
  syncLagSeconds(value: number): void;
  pending(users: number, requests: number): void;
  flushed(users: number, seconds: number): void;
  flushFailed(users: number): void;
}

export interface ReconcilerOptions {
  shard: Shard;
  scripts: RedisScripts;
  connection: RedisConnection;
  logger: Logger;
  metrics: ReconcilerMetrics;
  intervalMs: number;
  /** Most users flushed in one tick (the rest wait for the next). */
  maxBatch: number;
  /** Users per script call. */
  usersPerCall: number;
  clock: () => number;
}

interface InFlight {
  userId: string;
  entry: ShardEntry;
  flush: UserFlush;
  /** A refresh takes Redis's totals as the truth instead of adding what others added. */
  refresh?: boolean;
}

interface RefreshWaiter {
  entry: ShardEntry;
  resolve(): void;
  reject(err: unknown): void;
}

export class Reconciler {
  private timer: NodeJS.Timeout | null = null;
  private running: Promise<void> | null = null;
  /**
   * Flush passes and refresh passes run one after another: two concurrent writes of one
   * user's bucket would each see the other's as a foreign write and count it twice.
   */
  private chain: Promise<unknown> = Promise.resolve();
  private refreshes = new Map<string, RefreshWaiter[]>();
  private refreshScheduled = false;
  private reseedQueue: string[] = [];
  private lastFailureLogged = 0;

  constructor(private readonly options: ReconcilerOptions) {}

  start(): void {
    this.timer ??= setInterval(() => void this.tick(), this.options.intervalMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  /** Users with changes Redis has not seen (in memory or evicted). */
  get pendingUsers(): number {
    return this.options.shard.dirty.size;
  }

  /**
   * Marks every held user to be written in full: Redis came back empty or as another
   * server. Spread over the following ticks so decisions are not held up.
   */
  reseedAll(): void {
    this.reseedQueue = this.options.shard.userIds();
    this.options.logger.info({ users: this.reseedQueue.length }, 're-seeding Redis from memory');
  }

  /** One flush pass; overlapping calls share the pass in progress. */
  tick(): Promise<void> {
    if (this.running === null) {
      const pass = this.chain.then(() => this.flushOnce()).finally(() => (this.running = null));
      this.chain = pass.catch(() => undefined);
      this.running = pass;
    }
    return this.running;
  }

  /** Flushes until nothing is pending or `timeoutMs` passes; true when everything is in Redis. */
  async flushAll(timeoutMs: number): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      await this.tick();
      if (this.options.shard.dirty.size === 0 && this.reseedQueue.length === 0) return true;
      if (!this.options.connection.connected) await new Promise((r) => setTimeout(r, 50));
    }
    return this.options.shard.dirty.size === 0;
  }

  private markReseeds(): void {
    const { shard, clock } = this.options;
    const batch = this.reseedQueue.splice(0, this.options.maxBatch);
    const now = clock();
    for (const userId of batch) {
      const entry = shard.peek(userId);
      if (entry === undefined) continue;
      // Every current window is sent; each carries its full count (see toFlush).
      markWindowsPending(entry);
      entry.bucketDirty = true;
      entry.graceDirty ||= entry.graceAt >= 0;
      if (entry.dirtySince === 0) entry.dirtySince = now;
      shard.dirty.set(userId, entry);
    }
  }

  private async flushOnce(): Promise<void> {
    const { shard, connection, metrics, clock } = this.options;
    const now = clock();
    if (!connection.connected) {
      this.reportPending(now);
      metrics.partitioned(shard.dirty.size > 0 ? 1 : 0);
      return;
    }
    if (this.reseedQueue.length > 0) this.markReseeds();

    // One pass takes the batch and measures what is pending (lag: the oldest change).
    const pendingUsers = shard.dirty.size;
    let oldest = now;
    let requests = 0;
    const batch: InFlight[] = [];
    for (const [userId, entry] of shard.dirty) {
      if (entry.dirtySince > 0 && entry.dirtySince < oldest) oldest = entry.dirtySince;
      if (entry.pendingDay > 0) requests += entry.pendingDay;
      if (batch.length >= this.options.maxBatch) continue;
      shard.dirty.delete(userId);
      if (isDirty(entry)) batch.push({ userId, entry, flush: this.toFlush(userId, entry) });
    }
    metrics.pending(pendingUsers, requests);
    metrics.syncLagSeconds((now - oldest) / 1000);
    if (batch.length === 0) {
      metrics.partitioned(0);
      return;
    }

    const started = Date.now();
    const chunks: InFlight[][] = [];
    for (let i = 0; i < batch.length; i += this.options.usersPerCall) chunks.push(batch.slice(i, i + this.options.usersPerCall));
    const results = await Promise.allSettled(chunks.map((chunk) => this.options.scripts.reconcile(chunk.map((item) => item.flush))));
    const doneAt = clock();
    let failed = 0;
    results.forEach((result, c) => {
      const chunk = chunks[c]!;
      if (result.status === 'fulfilled') chunk.forEach((item, i) => this.adopt(item, result.value.get(i), doneAt));
      else {
        failed += chunk.length;
        for (const item of chunk) this.restore(item);
      }
    });
    const seconds = (Date.now() - started) / 1000;
    metrics.flushed(batch.length - failed, seconds);
    if (failed > 0) {
      metrics.flushFailed(failed);
      metrics.partitioned(1);
      if (Date.now() - this.lastFailureLogged > 10_000) {
        this.lastFailureLogged = Date.now();
        const reason = results.find((r): r is PromiseRejectedResult => r.status === 'rejected')?.reason as Error | undefined;
        this.options.logger.warn({ failed, err: reason?.message }, 'flush to redis failed; changes kept for the next attempt');
      }
    } else {
      metrics.partitioned(0);
    }
  }

  /**
   * Brings one entry up to date with Redis before it decides again (its epoch is old:
   * others may have decided for the user meanwhile): flushes its own changes and adopts
   * what others added. Requests arriving together are refreshed in one batch. Rejects if
   * Redis cannot answer; the entry keeps its changes.
   */
  refresh(userId: string, entry: ShardEntry): Promise<void> {
    return new Promise((resolve, reject) => {
      const waiters = this.refreshes.get(userId) ?? [];
      waiters.push({ entry, resolve, reject });
      this.refreshes.set(userId, waiters);
      if (!this.refreshScheduled) {
        this.refreshScheduled = true;
        this.chain = this.chain.then(() => this.refreshPass()).catch(() => undefined);
      }
    });
  }

  private async refreshPass(): Promise<void> {
    this.refreshScheduled = false;
    const queued = this.refreshes;
    this.refreshes = new Map();
    const { shard, scripts, clock } = this.options;
    const items: InFlight[] = [];
    const rolledTo = clock();
    for (const [userId, waiters] of queued) {
      const entry = waiters[0]!.entry;
      // The windows of now are sent (zero deltas where nothing is pending) with a claimed
      // total of 0: the memory of a stale entry is no claim, and Redis answers its totals.
      rollWindowsTo(entry, rolledTo);
      markWindowsPending(entry);
      shard.dirty.delete(userId);
      const graceIsNew = entry.graceDirty;
      const flush = this.toFlush(userId, entry);
      for (const w of flush.windows) if (w.full >= 0) w.full = 0;
      if (!graceIsNew) flush.graceAt = -1;
      items.push({ userId, entry, flush, refresh: true });
    }
    for (let i = 0; i < items.length; i += this.options.usersPerCall) {
      const chunk = items.slice(i, i + this.options.usersPerCall);
      try {
        const surprises = await scripts.reconcile(chunk.map((item) => item.flush));
        const now = clock();
        chunk.forEach((item, j) => {
          this.adopt(item, surprises.get(j), now);
          for (const w of queued.get(item.userId)!) w.resolve();
        });
      } catch (err) {
        for (const item of chunk) {
          this.restore(item);
          for (const w of queued.get(item.userId)!) w.reject(err);
        }
      }
    }
  }

  /**
   * An admin reset of the user's quota window: memory and Redis go back to zero, in line
   * with flushes (a flush in flight could otherwise write the old count back).
   */
  resetQuota(userId: string, limits: EffectiveLimits, now: number): Promise<void> {
    const run = this.chain.then(async () => {
      const entry = this.options.shard.peek(userId);
      const dayStart = now - (now % limits.dayMs);
      if (entry !== undefined && entry.dayStart === dayStart) {
        entry.dayCount = 0;
        entry.graceAt = -1;
        entry.pendingDay = -1;
      }
      await this.options.scripts.resetQuota(userId, limits, now);
    });
    this.chain = run.catch(() => undefined);
    return run;
  }

  /** Takes the entry's pending changes into a flush (they are put back if it fails). */
  private toFlush(userId: string, entry: ShardEntry): UserFlush {
    const { limits } = entry;
    const windows: WindowFlush[] = [];
    if (entry.pendingMinute >= 0) windows.push({ kind: 'm', start: entry.minuteStart, delta: entry.pendingMinute, full: entry.minuteCount, lengthMs: limits.minuteMs });
    if (entry.pendingHour >= 0) windows.push({ kind: 'h', start: entry.hourStart, delta: entry.pendingHour, full: entry.hourCount, lengthMs: limits.hourMs });
    if (entry.pendingDay >= 0) windows.push({ kind: 'd', start: entry.dayStart, delta: entry.pendingDay, full: entry.dayCount, lengthMs: limits.dayMs });
    const flush: UserFlush = {
      userId,
      writeBucket: entry.bucketDirty,
      ownerDebt: entry.debt,
      ownerAt: entry.debtAt,
      baseVersion: entry.version,
      baseDebt: entry.baseDebt,
      baseAt: entry.baseAt,
      perMinute: limits.perMinute,
      minuteMs: limits.minuteMs,
      hourMs: limits.hourMs,
      dayMs: limits.dayMs,
      dayStart: entry.dayStart,
      graceAt: entry.graceAt,
      windows,
    };
    entry.pendingMinute = -1;
    entry.pendingHour = -1;
    entry.pendingDay = -1;
    entry.bucketDirty = false;
    entry.graceDirty = false;
    entry.dirtySince = 0;
    return flush;
  }

  /**
   * Folds the flush's outcome into memory. Normally Redis now holds exactly what was
   * sent; a surprise (another writer, a lost key) adds what others contributed.
   */
  private adopt(item: InFlight, surprise: Surprise | undefined, now: number): void {
    const { entry, flush } = item;
    if (surprise === undefined) {
      if (flush.writeBucket) {
        entry.version = flush.baseVersion + 1;
        entry.baseDebt = flush.ownerDebt;
        entry.baseAt = flush.ownerAt;
      }
    } else {
      const perMinute = flush.perMinute;
      const expectedDebt = flush.writeBucket ? flush.ownerDebt : entry.baseDebt;
      const expectedAt = flush.writeBucket ? flush.ownerAt : entry.baseAt;
      const others = decayedDebt(surprise.debt, surprise.debtAt, now, perMinute) - decayedDebt(expectedDebt, expectedAt, now, perMinute);
      if (others > 0) {
        entry.debt = decayedDebt(entry.debt, entry.debtAt, now, perMinute) + others;
        entry.debtAt = Math.max(entry.debtAt, now);
      }
      entry.version = surprise.version;
      entry.baseDebt = surprise.debt;
      entry.baseAt = surprise.debtAt;
    }
    for (const w of flush.windows) {
      if (w.full < 0) continue;
      // Unreported totals equal the claim. A refresh takes Redis's total as the count; a
      // flush adds what others added.
      const reported = surprise === undefined ? -1 : w.kind === 'm' ? surprise.minute : w.kind === 'h' ? surprise.hour : surprise.day;
      const total = reported >= 0 ? reported : w.full;
      const others = Math.max(0, total - w.full);
      if (w.kind === 'm' && w.start === entry.minuteStart) entry.minuteCount = item.refresh ? total : entry.minuteCount + others;
      if (w.kind === 'h' && w.start === entry.hourStart) entry.hourCount = item.refresh ? total : entry.hourCount + others;
      if (w.kind === 'd' && w.start === entry.dayStart) entry.dayCount = item.refresh ? total : entry.dayCount + others;
    }
    const redisGrace =
      surprise === undefined ? flush.graceAt : surprise.graceAt >= 0 && surprise.graceDay === entry.dayStart ? surprise.graceAt : -1;
    if (item.refresh) entry.graceAt = redisGrace;
    else if (redisGrace >= 0 && (entry.graceAt < 0 || redisGrace < entry.graceAt)) entry.graceAt = redisGrace;
    // An evicted user is kept aside only until its changes are in Redis.
    if (!isDirty(entry)) this.options.shard.forgetEvicted(item.userId, entry);
  }

  /** Puts a failed flush's changes back in front of whatever came since. */
  private restore(item: InFlight): void {
    const { entry, flush, userId } = item;
    // Changes of a window that has ended since are not put back (see ShardEntry.pendingMinute).
    for (const w of flush.windows) {
      if (w.kind === 'm' && w.start === entry.minuteStart) entry.pendingMinute = Math.max(entry.pendingMinute, 0) + w.delta;
      if (w.kind === 'h' && w.start === entry.hourStart) entry.pendingHour = Math.max(entry.pendingHour, 0) + w.delta;
      if (w.kind === 'd' && w.start === entry.dayStart) entry.pendingDay = Math.max(entry.pendingDay, 0) + w.delta;
    }
    entry.bucketDirty ||= flush.writeBucket;
    entry.graceDirty ||= flush.graceAt >= 0;
    entry.dirtySince = entry.dirtySince === 0 ? this.options.clock() : entry.dirtySince;
    this.options.shard.dirty.set(userId, entry);
  }

  private reportPending(now: number): void {
    const { shard, metrics } = this.options;
    let oldest = now;
    let requests = 0;
    for (const entry of shard.dirty.values()) {
      if (entry.dirtySince > 0 && entry.dirtySince < oldest) oldest = entry.dirtySince;
      if (entry.pendingDay > 0) requests += entry.pendingDay;
    }
    metrics.pending(shard.dirty.size, requests);
    metrics.syncLagSeconds((now - oldest) / 1000);
  }
}

/** Moves an entry's windows that have ended to the windows of `now`, counting from 0. */
function rollWindowsTo(entry: ShardEntry, now: number): void {
  const { limits } = entry;
  const minuteStart = windowStart(now, limits.minuteMs);
  const hourStart = windowStart(now, limits.hourMs);
  const dayStart = windowStart(now, limits.dayMs);
  if (entry.minuteStart < minuteStart) [entry.minuteStart, entry.minuteCount, entry.pendingMinute] = [minuteStart, 0, -1];
  if (entry.hourStart < hourStart) [entry.hourStart, entry.hourCount, entry.pendingHour] = [hourStart, 0, -1];
  if (entry.dayStart < dayStart) [entry.dayStart, entry.dayCount, entry.pendingDay, entry.graceAt] = [dayStart, 0, -1, -1];
}
