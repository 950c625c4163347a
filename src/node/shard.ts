import { LRUCache } from 'lru-cache';
import { decide, newUserState, type Decision, type UserState } from './engine.js';
import type { EffectiveLimits } from './limits.js';

/** Changes to one window that Redis has not seen yet. */
export interface PendingWindow {
  kind: 'm' | 'h' | 'd';
  start: number;
  lengthMs: number;
  delta: number;
}

/**
 * A user's counters in memory plus what the write-behind reconciler needs to know
 * about them. Without Redis only the `UserState` part is used.
 */
export interface ShardEntry extends UserState {
  /** The limits of the last decision (the reconciler needs R and the window lengths). */
  limits: EffectiveLimits;
  /** Bucket version last seen in Redis; -1 if never (a fresh start without Redis). */
  version: number;
  /** The bucket as Redis had it at `version`, to tell other writers' charges apart. */
  baseDebt: number;
  baseAt: number;
  /** Window changes not yet flushed, or null. */
  pending: PendingWindow[] | null;
  bucketDirty: boolean;
  graceDirty: boolean;
  /** When the oldest unflushed change was made (ms), or 0 when clean. */
  dirtySince: number;
  /** The shard epoch this entry was last known to be current in (see `Shard.epoch`). */
  epoch: number;
}

export function newEntry(limits: EffectiveLimits, state: UserState = newUserState(), version = -1, epoch = 0): ShardEntry {
  // Every field written out (no spread): entries share one hidden class, which keeps
  // decide() on them as fast as on a plain UserState.
  return {
    debt: state.debt,
    debtAt: state.debtAt,
    minuteStart: state.minuteStart,
    minuteCount: state.minuteCount,
    hourStart: state.hourStart,
    hourCount: state.hourCount,
    dayStart: state.dayStart,
    dayCount: state.dayCount,
    graceAt: state.graceAt,
    limits,
    version,
    baseDebt: state.debt,
    baseAt: state.debtAt,
    pending: null,
    bucketDirty: false,
    graceDirty: false,
    dirtySince: 0,
    epoch,
  };
}

export function isDirty(entry: ShardEntry): boolean {
  return entry.pending !== null || entry.bucketDirty || entry.graceDirty;
}

/** Adds `delta` to the pending change of one window, creating it if needed. */
export function addPending(entry: ShardEntry, kind: PendingWindow['kind'], start: number, lengthMs: number, delta: number): void {
  const pending = (entry.pending ??= []);
  for (const window of pending) {
    if (window.kind === kind && window.start === start) {
      window.delta += delta;
      return;
    }
  }
  pending.push({ kind, start, lengthMs, delta });
}

export interface ShardOptions {
  maxUsers: number;
  /** Record changes for the reconciler (only when Redis is configured). */
  tracking: boolean;
  /** Upper bound of evicted users whose changes still wait for a flush. */
  maxEvictedDirty: number;
  /** Called when an evicted user's unflushed changes had to be dropped (past the bound). */
  onDropped?: (entry: ShardEntry, requests: number) => void;
}

/**
 * One worker's in-memory counters: the single writer for the users it owns, bounded
 * by an LRU. With tracking on, every charge is also recorded as a pending change for
 * the reconciler; a user evicted with unflushed changes is kept aside (bounded) until
 * they are flushed, and revived from there if touched again first.
 *
 * NOTE: callers must not `await` between taking an entry and deciding on it;
 * `decide` reads and writes the state in one synchronous step.
 */
export class Shard {
  private readonly entries: LRUCache<string, ShardEntry>;
  /** Users with changes Redis has not seen. */
  readonly dirty = new Set<string>();
  /** Evicted users whose changes are not flushed yet, oldest first. */
  readonly evictedDirty = new Map<string, ShardEntry>();
  /**
   * Bumped whenever others may have decided for this shard's users behind its back: the
   * ring changed, this worker stalled, or a peer says it suspected this worker. An entry
   * from an older epoch is re-read from Redis before it decides again.
   */
  epoch = 0;

  constructor(private readonly options: ShardOptions) {
    this.entries = new LRUCache<string, ShardEntry>({
      max: options.maxUsers,
      dispose: (entry, userId, reason) => {
        if (reason === 'evict' && options.tracking && isDirty(entry)) this.keepEvicted(userId, entry);
      },
    });
  }

  get maxUsers(): number {
    return this.options.maxUsers;
  }

  get size(): number {
    return this.entries.size;
  }

  private keepEvicted(userId: string, entry: ShardEntry): void {
    this.evictedDirty.set(userId, entry);
    while (this.evictedDirty.size > this.options.maxEvictedDirty) {
      const [oldestId, oldest] = this.evictedDirty.entries().next().value as [string, ShardEntry];
      this.evictedDirty.delete(oldestId);
      this.dirty.delete(oldestId);
      const requests = (oldest.pending ?? []).filter((w) => w.kind === 'd').reduce((sum, w) => sum + w.delta, 0);
      this.options.onDropped?.(oldest, requests);
    }
  }

  /** The user's entry if held (also reviving one evicted with unflushed changes). */
  get(userId: string): ShardEntry | undefined {
    const entry = this.entries.get(userId);
    if (entry !== undefined) return entry;
    const evicted = this.evictedDirty.get(userId);
    if (evicted !== undefined) {
      this.evictedDirty.delete(userId);
      this.entries.set(userId, evicted);
    }
    return evicted;
  }

  /** The entry without touching recency (reconciler, status). */
  peek(userId: string): ShardEntry | undefined {
    return this.entries.peek(userId) ?? this.evictedDirty.get(userId);
  }

  /** Drops an evicted user once its changes are flushed (if it was not revived meanwhile). */
  forgetEvicted(userId: string, entry: ShardEntry): void {
    if (this.evictedDirty.get(userId) === entry) this.evictedDirty.delete(userId);
  }

  insert(userId: string, entry: ShardEntry): void {
    this.entries.set(userId, entry);
  }

  delete(userId: string): void {
    this.entries.delete(userId);
    this.evictedDirty.delete(userId);
    this.dirty.delete(userId);
  }

  /** Every held user id (a snapshot, for re-seeding). */
  userIds(): string[] {
    return [...this.entries.keys(), ...this.evictedDirty.keys()];
  }

  /** Decides on an entry obtained from `get`/`insert` and records the charge. */
  decideOn(userId: string, entry: ShardEntry, limits: EffectiveLimits, cost: number, now: number): Decision {
    entry.limits = limits;
    const decision = decide(entry, limits, cost, now);
    if (decision.charged > 0 && this.options.tracking) {
      const charged = decision.charged;
      addPending(entry, 'm', entry.minuteStart, limits.minuteMs, charged);
      addPending(entry, 'h', entry.hourStart, limits.hourMs, charged);
      addPending(entry, 'd', entry.dayStart, limits.dayMs, charged);
      entry.bucketDirty = true;
      if (decision.graceStarted) entry.graceDirty = true;
      if (entry.dirtySince === 0) entry.dirtySince = now;
      this.dirty.add(userId);
    }
    return decision;
  }

  /** Decides `cost` for `userId`, starting the user from rest if not held. */
  decide(userId: string, limits: EffectiveLimits, cost: number, now: number): Decision {
    let entry = this.get(userId);
    if (entry === undefined) {
      // A peek of an unknown user must not take a slot from a real one.
      if (cost === 0) return decide(newUserState(), limits, 0, now);
      entry = newEntry(limits, undefined, -1, this.epoch);
      this.insert(userId, entry);
    }
    return this.decideOn(userId, entry, limits, cost, now);
  }

  clear(): void {
    this.entries.clear();
    this.evictedDirty.clear();
    this.dirty.clear();
  }
}
