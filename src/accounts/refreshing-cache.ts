/**
 * A bounded read-through cache for the request path, in front of the database.
 *
 * - Found entries are answered from memory, synchronously. Once an entry has been held for
 *   `refreshAfterMs`, its next use still answers from memory and starts one background
 *   reload. If the database cannot answer, the entry is kept and served: known keys and
 *   users keep working through a database outage.
 * - Absent entries ("no such key") are remembered for `missingTtlMs`, in a separate LRU so
 *   a flood of made-up ids cannot push out the found ones. Past that, the next use still
 *   answers "missing" from memory and starts one background re-check, so ids the store
 *   does not hold (most users of a rate limiter) cost one lookup, not one a minute on the
 *   request path; an invalidation ends the entry at once.
 * - Everything else waits for one load per id (concurrent callers share it); a load that
 *   fails answers `unavailable` and caches nothing.
 * - `delete` drops an entry at once (invalidation); `deleteIndexed` drops the entries a
 *   secondary key names (`indexBy`: e.g. every cached API key of a user), through an index
 *   kept with the cache, so an invalidation costs the entries it drops, not a scan of the
 *   cache. A load that was already running when something was deleted answers its callers
 *   but is not cached, so a revocation racing a lookup cannot put the old state back.
 *
 * Trade-off: without invalidation, a change reaches this cache within about
 * `refreshAfterMs` of use; with it, on the next request.
 */
import { LRUCache } from 'lru-cache';

export type CacheLookup<V> = { state: 'found'; value: V } | { state: 'missing' } | { state: 'unavailable' };

export interface RefreshingCacheOptions<V> {
  /**
   * Reads one entry from the store: null when it does not exist; throws when the store
   * cannot answer. `background` is set for re-checks and reloads nobody waits for (they
   * may be gathered into fewer reads).
   */
  load(id: string, background: boolean): Promise<V | null>;
  clock: () => number;
  maxEntries: number;
  maxMissing: number;
  refreshAfterMs: number;
  missingTtlMs: number;
  /** Wait before trying again after a background reload failed. */
  retryAfterMs: number;
  /** Secondary keys of a found value, for `deleteIndexed`. */
  indexBy?: (value: V) => readonly string[];
  onLoadError?: (id: string, err: unknown) => void;
}

interface FoundEntry<V> {
  lookup: { state: 'found'; value: V };
  refreshAt: number;
  /** When the entry last moved to the front of the LRU order. */
  touchedAt: number;
}

/**
 * A found entry moves to the front of the LRU order at most once a second: eviction order
 * to the second, and a hit is one hash lookup instead of a re-link of the LRU's lists
 * (timed by hand in the server: a key's cache hit cost 0.9 µs per check, its SHA-256 1.5 µs).
 */
const RECENCY_RESOLUTION_MS = 1000;

const MAX_TRACKED_DELETIONS = 10_000;
/** Prefix of secondary keys among the deleted names (ids and secondary keys share the map). */
const SECONDARY = '\u0000';

const MISSING = Object.freeze({ state: 'missing' as const });
const UNAVAILABLE = Object.freeze({ state: 'unavailable' as const });

export class RefreshingCache<V extends object> {
  private readonly found: LRUCache<string, FoundEntry<V>>;
  /** id → until when it is known not to exist. */
  private readonly missing: LRUCache<string, number>;
  private readonly loading = new Map<string, Promise<CacheLookup<V>>>();
  /**
   * Bumped by every deletion. A load is not cached if what it is about was deleted after it
   * started: its id, one of its value's secondary keys, or everything (`clear`). Kept only
   * while loads are in flight. (With one counter for every id, an admin change to any user
   * kept every load then in flight out of the cache; with changes arriving every second from
   * the audit log, a bulk import would have sent lookups to the database again and again.)
   */
  private generation = 0;
  private readonly deletedAt = new Map<string, number>();
  private clearedAt = -1;
  /** Secondary key → ids of the found entries it names (`indexBy`), kept as entries come and go. */
  private readonly index = new Map<string, Set<string>>();

  constructor(private readonly options: RefreshingCacheOptions<V>) {
    const { indexBy } = options;
    this.found = new LRUCache<string, FoundEntry<V>>({
      max: options.maxEntries,
      // Every way out of the cache (evicted, replaced, deleted, cleared) leaves the index too.
      ...(indexBy ? { dispose: (entry: FoundEntry<V>, id: string) => this.unindex(id, indexBy(entry.lookup.value)) } : {}),
    });
    this.missing = new LRUCache({ max: options.maxMissing });
  }

  /** The entry for `id`: synchronously when it is in memory, else after one load. */
  get(id: string): CacheLookup<V> | Promise<CacheLookup<V>> {
    const now = this.options.clock();
    const entry = this.foundEntry(id, now);
    return entry !== undefined ? entry.lookup : this.getAbsent(id, now);
  }

  /** The value of a found entry (refreshed as `get` does), or undefined without any lookup. */
  getFound(id: string, now = this.options.clock()): V | undefined {
    return this.foundEntry(id, now)?.lookup.value;
  }

  /** A found entry, starting its background reload once it is due. */
  private foundEntry(id: string, now: number): FoundEntry<V> | undefined {
    const entry = this.found.peek(id);
    if (entry === undefined) return undefined;
    if (now - entry.touchedAt >= RECENCY_RESOLUTION_MS) {
      entry.touchedAt = now;
      this.found.get(id);
    }
    if (now >= entry.refreshAt) this.refresh(id, entry, now);
    return entry;
  }

  private getAbsent(id: string, now: number): CacheLookup<V> | Promise<CacheLookup<V>> {
    const until = this.missing.get(id);
    if (until !== undefined) {
      if (now >= until && !this.loading.has(id)) {
        // Until the re-check answers, try again only after the retry delay.
        this.missing.set(id, now + this.options.retryAfterMs);
        void this.load(id, true);
      }
      return MISSING;
    }
    return this.load(id, false);
  }

  /** Drops what is known about `id`; the next `get` reads the store. */
  delete(id: string): void {
    this.markDeleted(id);
    this.found.delete(id);
    this.missing.delete(id);
  }

  /** Drops every found entry whose value has `secondaryKey` among its `indexBy` keys. */
  deleteIndexed(secondaryKey: string): void {
    this.markDeleted(SECONDARY + secondaryKey);
    const ids = this.index.get(secondaryKey);
    if (ids === undefined) return;
    for (const id of [...ids]) this.found.delete(id);
  }

  clear(): void {
    this.clearedAt = ++this.generation;
    this.found.clear();
    this.missing.clear();
  }

  /** Entries held, and secondary keys indexed (bounded by the found entries' keys). */
  get size(): { found: number; missing: number; indexed: number } {
    return { found: this.found.size, missing: this.missing.size, indexed: this.index.size };
  }

  private markDeleted(name: string): void {
    this.generation++;
    if (this.loading.size === 0) return;
    // Past a bound (a bulk import while loads keep running), loads in flight are all treated
    // as overtaken instead.
    if (this.deletedAt.size >= MAX_TRACKED_DELETIONS) {
      this.deletedAt.clear();
      this.clearedAt = this.generation;
    } else {
      this.deletedAt.set(name, this.generation);
    }
  }

  /** Whether a load of `id` started at `generation` may cache `value` (nothing about it was deleted since). */
  private stillCurrent(id: string, value: V | null, generation: number): boolean {
    if (generation === this.generation) return true;
    if (this.clearedAt > generation || (this.deletedAt.get(id) ?? -1) > generation) return false;
    const keys = value === null ? [] : (this.options.indexBy?.(value) ?? []);
    return keys.every((key) => (this.deletedAt.get(SECONDARY + key) ?? -1) <= generation);
  }

  private unindex(id: string, keys: readonly string[]): void {
    for (const key of keys) {
      const ids = this.index.get(key);
      if (ids === undefined) continue;
      ids.delete(id);
      if (ids.size === 0) this.index.delete(key);
    }
  }

  private store(id: string, entry: FoundEntry<V>): void {
    this.found.set(id, entry);
    const keys = this.options.indexBy?.(entry.lookup.value) ?? [];
    for (const key of keys) {
      let ids = this.index.get(key);
      if (ids === undefined) this.index.set(key, (ids = new Set()));
      ids.add(id);
    }
  }

  private refresh(id: string, entry: FoundEntry<V>, now: number): void {
    if (this.loading.has(id)) return;
    // Until the reload succeeds, try again only after the retry delay (not on every request).
    entry.refreshAt = now + this.options.retryAfterMs;
    void this.load(id, true);
  }

  private load(id: string, background: boolean): Promise<CacheLookup<V>> {
    const running = this.loading.get(id);
    if (running !== undefined) return running;
    const generation = this.generation;
    const promise = this.options.load(id, background).then(
      (value): CacheLookup<V> => {
        const now = this.options.clock();
        const current = this.stillCurrent(id, value, generation);
        if (value === null) {
          if (current) {
            this.found.delete(id);
            this.missing.set(id, now + this.options.missingTtlMs);
          }
          return MISSING;
        }
        const lookup = { state: 'found' as const, value };
        if (current) {
          this.missing.delete(id);
          this.store(id, { lookup, refreshAt: now + this.options.refreshAfterMs, touchedAt: now });
        }
        return lookup;
      },
      (err: unknown): CacheLookup<V> => {
        this.options.onLoadError?.(id, err);
        return UNAVAILABLE;
      },
    );
    this.loading.set(id, promise);
    void promise.finally(() => {
      this.loading.delete(id);
      if (this.loading.size === 0) this.deletedAt.clear();
    });
    return promise;
  }
}
