import { LRUCache } from 'lru-cache';
import { decide, newUserState, type Decision, type UserState } from './engine.js';
import type { EffectiveLimits } from './limits.js';

/** Where the usage recorder keeps a pointer to the user's current usage row (opaque here). */
export interface UsageSlot {
  usage: object | null;
}

/**
 * A user's counters in memory plus what the write-behind reconciler needs to know
 * about them. Without Redis only the `UserState` part is used.
 */
export interface ShardEntry extends UserState, UsageSlot {
  /** The limits of the last decision (the reconciler needs R and the window lengths). */
  limits: EffectiveLimits;
  /** Bucket version last seen in Redis; -1 if never (a fresh start without Redis). */
  version: number;
  /** The bucket as Redis had it at `version`, to tell other writers' charges apart. */
  baseDebt: number;
  baseAt: number;
  /**
   * What the entry's current minute, hour and day windows (`minuteStart`, …) gained since
   * they were last flushed; -1 when there is nothing to send. Only current windows are
   * tracked: Redis keeps one window of each kind per user, so a change to a window that
   * has ended can no longer matter to any decision.
   */
  pendingMinute: number;
  pendingHour: number;
  pendingDay: number;
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
    pendingMinute: -1,
    pendingHour: -1,
    pendingDay: -1,
    bucketDirty: false,
    graceDirty: false,
    dirtySince: 0,
    epoch,
    usage: null,
  };
}

export function isDirty(entry: ShardEntry): boolean {
  return entry.pendingMinute >= 0 || entry.pendingHour >= 0 || entry.pendingDay >= 0 || entry.bucketDirty || entry.graceDirty;
}

/** Marks every window the entry has to be sent (with what it gained, or 0): a full write. */
export function markWindowsPending(entry: ShardEntry): void {
  if (entry.minuteStart >= 0) entry.pendingMinute = Math.max(entry.pendingMinute, 0);
  if (entry.hourStart >= 0) entry.pendingHour = Math.max(entry.pendingHour, 0);
  if (entry.dayStart >= 0) entry.pendingDay = Math.max(entry.pendingDay, 0);
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
  /** Users with changes Redis has not seen, and their entries (oldest change first, mostly). */
  readonly dirty = new Map<string, ShardEntry>();
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
      this.options.onDropped?.(oldest, Math.max(oldest.pendingDay, 0));
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
    const { minuteStart, hourStart, dayStart } = entry;
    const decision = decide(entry, limits, cost, now);
    if (decision.charged > 0 && this.options.tracking) {
      // A charge in a new window starts its change afresh (the ended window's no longer matters).
      const charged = decision.charged;
      entry.pendingMinute = (entry.minuteStart === minuteStart ? Math.max(entry.pendingMinute, 0) : 0) + charged;
      entry.pendingHour = (entry.hourStart === hourStart ? Math.max(entry.pendingHour, 0) : 0) + charged;
      entry.pendingDay = (entry.dayStart === dayStart ? Math.max(entry.pendingDay, 0) : 0) + charged;
      entry.bucketDirty = true;
      if (decision.graceStarted) entry.graceDirty = true;
      if (entry.dirtySince === 0) entry.dirtySince = now;
      this.dirty.set(userId, entry);
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
