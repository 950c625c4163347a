/**
 * Write-behind reconciliation of a shard's counters to Redis.
 *
 * Decisions never wait on Redis: they charge memory and leave a pending change per
 * window. Every sync interval this loop takes the pending changes of every dirty user,
 * sends them in `reconcile` script calls of up to 200 users (one per user on Redis
 * Cluster, auto-pipelined), and folds back what Redis returns: anything other writers
 * added in between is added to memory (Limitador's "learn remote deltas"). A failed flush puts its changes back — they are
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
import { FLUSH, FLUSH_STRIDE, FLUSH_WINDOW, FlushBatch, type RedisScripts, type Surprise } from './scripts.js';

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

/** A batch sent to Redis: the packed changes and, by position, the entries they came from. */
interface InFlight {
  batch: FlushBatch;
  entries: ShardEntry[];
  /** A refresh takes Redis's totals as the truth instead of adding what others added. */
  refresh: boolean;
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
  private spare: FlushBatch | null = null;

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

  /**
   * The batch of the last flush, reused (flushes run one at a time): a new one every
   * sync interval was most of the reconciler's garbage.
   */
  private batchFor(users: number): FlushBatch {
    const spare = this.spare;
    this.spare = null;
    if (spare !== null && spare.capacity >= users) {
      spare.clear();
      return spare;
    }
    return new FlushBatch(Math.max(users, Math.min(this.options.maxBatch, 2 * (spare?.capacity ?? 0))));
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

    this.reportPending(now);
    const flight: InFlight = { batch: this.batchFor(Math.min(shard.dirty.size, this.options.maxBatch)), entries: [], refresh: false };
    if (shard.dirty.size <= this.options.maxBatch) {
      // Everyone fits: one clear() instead of a delete per user.
      for (const [userId, entry] of shard.dirty) if (isDirty(entry)) this.take(flight, userId, entry);
      shard.dirty.clear();
    } else {
      for (const [userId, entry] of shard.dirty) {
        if (flight.entries.length >= this.options.maxBatch) break;
        shard.dirty.delete(userId);
        if (isDirty(entry)) this.take(flight, userId, entry);
      }
    }
    const users = flight.entries.length;
    if (users === 0) {
      this.spare = flight.batch;
      metrics.partitioned(0);
      return;
    }

    const started = Date.now();
    const calls: Array<Promise<void>> = [];
    let failed = 0;
    let failure: unknown;
    for (let from = 0; from < users; from += this.options.usersPerCall) {
      const to = Math.min(users, from + this.options.usersPerCall);
      calls.push(
        this.options.scripts.reconcile(flight.batch, from, to).then(
          (surprises) => {
            const doneAt = clock();
            for (let i = from; i < to; i++) this.adopt(flight, i, surprises.get(i), doneAt);
          },
          (err: unknown) => {
            failed += to - from;
            failure = err;
            for (let i = from; i < to; i++) this.restore(flight, i);
          },
        ),
      );
    }
    await Promise.all(calls);
    this.spare = flight.batch;
    const seconds = (Date.now() - started) / 1000;
    metrics.flushed(users - failed, seconds);
    if (failed > 0) {
      metrics.flushFailed(failed);
      metrics.partitioned(1);
      if (Date.now() - this.lastFailureLogged > 10_000) {
        this.lastFailureLogged = Date.now();
        this.options.logger.warn({ failed, err: (failure as Error | undefined)?.message }, 'flush to redis failed; changes kept for the next attempt');
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
    const flight: InFlight = { batch: new FlushBatch(queued.size), entries: [], refresh: true };
    const rolledTo = clock();
    for (const [userId, waiters] of queued) {
      const entry = waiters[0]!.entry;
      // The windows of now are sent (zero deltas where nothing is pending) with a claimed
      // total of 0: the memory of a stale entry is no claim, and Redis answers its totals.
      rollWindowsTo(entry, rolledTo);
      markWindowsPending(entry);
      shard.dirty.delete(userId);
      const graceIsNew = entry.graceDirty;
      const at = this.take(flight, userId, entry);
      const values = flight.batch.values;
      for (let k = 0; k < 3; k++) values[at + FLUSH.windows + 4 * k + FLUSH_WINDOW.full] = 0;
      if (!graceIsNew) values[at + FLUSH.graceAt] = -1;
    }
    const users = flight.entries.length;
    for (let from = 0; from < users; from += this.options.usersPerCall) {
      const to = Math.min(users, from + this.options.usersPerCall);
      const settle = (i: number, err?: unknown): void => {
        for (const w of queued.get(flight.batch.userIds[i]!)!) {
          if (err === undefined) w.resolve();
          else w.reject(err);
        }
      };
      try {
        const surprises = await scripts.reconcile(flight.batch, from, to);
        const now = clock();
        for (let i = from; i < to; i++) {
          this.adopt(flight, i, surprises.get(i), now);
          settle(i);
        }
      } catch (err) {
        for (let i = from; i < to; i++) {
          this.restore(flight, i);
          settle(i, err);
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

  /**
   * Takes the entry's pending changes into the batch (they are put back if the flush
   * fails) and returns the offset of its record.
   */
  private take(flight: InFlight, userId: string, entry: ShardEntry): number {
    const { limits } = entry;
    const at = flight.batch.add(userId);
    flight.entries.push(entry);
    const v = flight.batch.values;
    v[at + FLUSH.writeBucket] = entry.bucketDirty ? 1 : 0;
    v[at + FLUSH.ownerDebt] = entry.debt;
    v[at + FLUSH.ownerAt] = entry.debtAt;
    v[at + FLUSH.baseVersion] = entry.version;
    v[at + FLUSH.baseDebt] = entry.baseDebt;
    v[at + FLUSH.baseAt] = entry.baseAt;
    v[at + FLUSH.perMinute] = limits.perMinute;
    v[at + FLUSH.dayStart] = entry.dayStart;
    v[at + FLUSH.graceAt] = entry.graceAt;
    v[at + FLUSH.minuteMs] = limits.minuteMs;
    v[at + FLUSH.hourMs] = limits.hourMs;
    v[at + FLUSH.dayMs] = limits.dayMs;
    putWindow(v, at + FLUSH.windows, entry.pendingMinute, entry.minuteStart, entry.minuteCount);
    putWindow(v, at + FLUSH.windows + 4, entry.pendingHour, entry.hourStart, entry.hourCount);
    putWindow(v, at + FLUSH.windows + 8, entry.pendingDay, entry.dayStart, entry.dayCount);
    entry.pendingMinute = -1;
    entry.pendingHour = -1;
    entry.pendingDay = -1;
    entry.bucketDirty = false;
    entry.graceDirty = false;
    entry.dirtySince = 0;
    return at;
  }

  /**
   * Folds user `i`'s flush outcome into memory. Normally Redis now holds exactly what was
   * sent; a surprise (another writer, a lost key) adds what others contributed.
   */
  private adopt(flight: InFlight, i: number, surprise: Surprise | undefined, now: number): void {
    const entry = flight.entries[i]!;
    const v = flight.batch.values;
    const at = i * FLUSH_STRIDE;
    const writeBucket = v[at + FLUSH.writeBucket] === 1;
    const ownerDebt = v[at + FLUSH.ownerDebt]!;
    const ownerAt = v[at + FLUSH.ownerAt]!;
    if (surprise === undefined) {
      if (writeBucket) {
        entry.version = v[at + FLUSH.baseVersion]! + 1;
        entry.baseDebt = ownerDebt;
        entry.baseAt = ownerAt;
      }
    } else {
      const perMinute = v[at + FLUSH.perMinute]!;
      const expectedDebt = writeBucket ? ownerDebt : entry.baseDebt;
      const expectedAt = writeBucket ? ownerAt : entry.baseAt;
      const others = decayedDebt(surprise.debt, surprise.debtAt, now, perMinute) - decayedDebt(expectedDebt, expectedAt, now, perMinute);
      if (others > 0) {
        entry.debt = decayedDebt(entry.debt, entry.debtAt, now, perMinute) + others;
        entry.debtAt = Math.max(entry.debtAt, now);
      }
      entry.version = surprise.version;
      entry.baseDebt = surprise.debt;
      entry.baseAt = surprise.debtAt;
    }
    for (let k = 0; k < 3; k++) {
      const w = at + FLUSH.windows + 4 * k;
      const start = v[w + FLUSH_WINDOW.start]!;
      const full = v[w + FLUSH_WINDOW.full]!;
      if (v[w + FLUSH_WINDOW.sent] !== 1 || full < 0) continue;
      // Unreported totals equal the claim. A refresh takes Redis's total as the count; a
      // flush adds what others added.
      const reported = surprise === undefined ? -1 : k === 0 ? surprise.minute : k === 1 ? surprise.hour : surprise.day;
      const total = reported >= 0 ? reported : full;
      const others = Math.max(0, total - full);
      if (k === 0 && start === entry.minuteStart) entry.minuteCount = flight.refresh ? total : entry.minuteCount + others;
      if (k === 1 && start === entry.hourStart) entry.hourCount = flight.refresh ? total : entry.hourCount + others;
      if (k === 2 && start === entry.dayStart) entry.dayCount = flight.refresh ? total : entry.dayCount + others;
    }
    const sentGrace = v[at + FLUSH.graceAt]!;
    const redisGrace = surprise === undefined ? sentGrace : surprise.graceAt >= 0 && surprise.graceDay === entry.dayStart ? surprise.graceAt : -1;
    if (flight.refresh) entry.graceAt = redisGrace;
    else if (redisGrace >= 0 && (entry.graceAt < 0 || redisGrace < entry.graceAt)) entry.graceAt = redisGrace;
    // An evicted user is kept aside only until its changes are in Redis.
    if (!isDirty(entry)) this.options.shard.forgetEvicted(flight.batch.userIds[i]!, entry);
  }

  /** Puts user `i`'s failed changes back in front of whatever came since. */
  private restore(flight: InFlight, i: number): void {
    const entry = flight.entries[i]!;
    const v = flight.batch.values;
    const at = i * FLUSH_STRIDE;
    // Changes of a window that has ended since are not put back (see ShardEntry.pendingMinute).
    const back = (k: number, start: number, pending: number): number => {
      const w = at + FLUSH.windows + 4 * k;
      return v[w + FLUSH_WINDOW.sent] === 1 && v[w + FLUSH_WINDOW.start] === start ? Math.max(pending, 0) + v[w + FLUSH_WINDOW.delta]! : pending;
    };
    entry.pendingMinute = back(0, entry.minuteStart, entry.pendingMinute);
    entry.pendingHour = back(1, entry.hourStart, entry.pendingHour);
    entry.pendingDay = back(2, entry.dayStart, entry.pendingDay);
    entry.bucketDirty ||= v[at + FLUSH.writeBucket] === 1;
    entry.graceDirty ||= v[at + FLUSH.graceAt]! >= 0;
    entry.dirtySince = entry.dirtySince === 0 ? this.options.clock() : entry.dirtySince;
    this.options.shard.dirty.set(flight.batch.userIds[i]!, entry);
  }

  /** Pending users and requests, and the sync lag (the age of the oldest unflushed change). */
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

/** One window of a flush record: sent only if it has a pending change (≥ 0). */
function putWindow(v: Float64Array, w: number, pending: number, start: number, count: number): void {
  v[w + FLUSH_WINDOW.sent] = pending >= 0 ? 1 : 0;
  v[w + FLUSH_WINDOW.start] = start;
  v[w + FLUSH_WINDOW.delta] = Math.max(pending, 0);
  v[w + FLUSH_WINDOW.full] = count;
}
