/**
 * API key validation on the request path. Order of checks:
 *   1. length, then the in-memory cache of known keys by key hash (refreshing-cache.ts),
 *      answered synchronously: a stored key passed its format check when it was issued;
 *   2. format and checksum (api-keys.ts): a mistyped or made-up key never reaches the
 *      unknown-key cache or the database;
 *   3. the key store (the database), once per hash, concurrent callers sharing the lookup.
 * Answers are a closed set of codes. A key the cache knows keeps validating while the
 * database is down (its expiry still applies, by the clock); a key it does not know gets
 * KEY_STORE_UNAVAILABLE, never a guess.
 *
 * `last_used_at` is kept in memory, to the second, and written in batches (`flushLastUsed`,
 * on a timer from `startFlushing`): no database write per request.
 *
 * NOTE: the checksum is public, so anyone can make well-formed keys that do not exist. Each
 * distinct one costs a lookup, then sits in the unknown-key cache for `unknownTtlMs`; the
 * caller's own rate limits are what bound a flood of them.
 */
import type { Logger } from '../observability/logger.js';
import { API_KEY_LENGTH, checkApiKeyFormat, hashApiKey } from './api-keys.js';
import type { KeyLookup, LastUsed } from './api-keys-repository.js';
import type { InvalidationBus } from './invalidation.js';
import { BatchLoader } from './batch-loader.js';
import { RefreshingCache, type CacheLookup } from './refreshing-cache.js';

export type KeyCheckCode = 'valid' | 'INVALID_KEY' | 'KEY_EXPIRED' | 'KEY_REVOKED' | 'KEY_STORE_UNAVAILABLE';

export interface KeyCheck {
  code: KeyCheckCode;
  /** The key's id and owner, when the key exists (also for expired and revoked keys). */
  keyId: string | null;
  userId: string | null;
  /** When the key expires (epoch ms), if it does. */
  expiresAt: number | null;
}

/** What the resolver needs from the database (ApiKeysRepository provides it). */
export interface KeyStore {
  findByHash(keyHash: string): Promise<KeyLookup | null>;
  /** Many keys in one read (when the store can): the map holds the hashes that exist. */
  findManyByHash?(keyHashes: string[]): Promise<Map<string, KeyLookup>>;
  touchLastUsed(batch: readonly LastUsed[]): Promise<number>;
}

export interface KeyResolverOptions {
  store: KeyStore;
  clock: () => number;
  logger?: Logger;
  /** Known keys held in memory; default 100 000. */
  maxKeys?: number;
  /** Unknown key hashes remembered; default 100 000. */
  maxUnknownKeys?: number;
  /** A known key is re-read in the background after this long in use; default 30 s. */
  refreshAfterMs?: number;
  /** An unknown key is answered INVALID_KEY without a lookup for this long; default 5 s. */
  unknownTtlMs?: number;
  /** Keys whose last use waits to be written; beyond, new ones are not recorded until a flush; default 100 000. */
  maxPendingLastUsed?: number;
}

/** A cached key with its three possible answers made once. */
interface CachedKey {
  lookup: KeyLookup;
  valid: KeyCheck;
  expired: KeyCheck;
  revoked: KeyCheck;
  /** When this key's use was last put in the pending last-use batch. */
  recordedAt: number;
}

/** `last_used_at` resolution: within it, further uses of a key are not recorded again. */
const LAST_USED_RESOLUTION_MS = 1000;

/**
 * How often a worker writes its recorded last uses: the time stays exact to the second but
 * reaches the database up to a minute late. With a 5 s period a thousand busy keys were
 * rewritten every 5 s; the node's primary (the embedded PGlite) showed 50–250 ms of work
 * every 5 s in a profile (by hand) under the throughput bench's API key load.
 */
export const LAST_USED_FLUSH_MS = 60_000;

const INVALID: KeyCheck = Object.freeze({ code: 'INVALID_KEY', keyId: null, userId: null, expiresAt: null });
const UNAVAILABLE: KeyCheck = Object.freeze({ code: 'KEY_STORE_UNAVAILABLE', keyId: null, userId: null, expiresAt: null });

export class KeyResolver {
  private readonly cache: RefreshingCache<CachedKey>;
  private readonly clock: () => number;
  private readonly store: KeyStore;
  private readonly logger: Logger | undefined;
  private readonly maxPendingLastUsed: number;
  private lastUsed = new Map<string, number>();
  private flushing: Promise<number> | null = null;
  private timer: NodeJS.Timeout | null = null;
  /** Uses not recorded because too many were waiting (a gauge for metrics). */
  droppedLastUsed = 0;

  constructor(options: KeyResolverOptions) {
    this.clock = options.clock;
    this.store = options.store;
    this.logger = options.logger;
    this.maxPendingLastUsed = options.maxPendingLastUsed ?? 100_000;
    // Lookups of one turn share a query; reloads nobody waits for (every key's, every 30 s)
    // gather for longer (batch-loader.ts).
    const findMany = options.store.findManyByHash?.bind(options.store);
    const batches = findMany ? new BatchLoader<KeyLookup>({ loadMany: findMany }) : null;
    this.cache = new RefreshingCache<CachedKey>({
      load: async (hash, background) => {
        const lookup = batches ? await batches.load(hash, background) : await this.store.findByHash(hash);
        return lookup === null ? null : cachedKey(lookup);
      },
      clock: options.clock,
      maxEntries: options.maxKeys ?? 100_000,
      maxMissing: options.maxUnknownKeys ?? 100_000,
      refreshAfterMs: options.refreshAfterMs ?? 30_000,
      missingTtlMs: options.unknownTtlMs ?? 5_000,
      retryAfterMs: 1_000,
      onLoadError: (_hash, err) => this.logger?.warn({ err: (err as Error).message }, 'API key lookup failed'),
      // Invalidations name a key by its id, or a user: found through this index, not a scan.
      indexBy: (key) => [`key:${key.lookup.keyId}`, `user:${key.lookup.userId}`],
    });
  }

  /** Checks `key`; synchronous unless the key must be looked up. Never throws. */
  resolve(key: string): KeyCheck | Promise<KeyCheck> {
    if (key.length !== API_KEY_LENGTH) return INVALID;
    const hash = hashApiKey(key);
    const now = this.clock();
    const known = this.cache.getFound(hash, now);
    if (known !== undefined) return this.answerKey(known, now);
    if (checkApiKeyFormat(key) !== 'ok') return INVALID;
    const found = this.cache.get(hash);
    return found instanceof Promise ? found.then((lookup) => this.answer(lookup)) : this.answer(found);
  }

  /** Drops what is cached about a key, by its hash or its id. */
  invalidate(keyHashOrId: string): void {
    this.cache.delete(keyHashOrId);
    this.cache.deleteIndexed(`key:${keyHashOrId}`);
  }

  /** Drops every cached key of a user (the user was deleted or changed). */
  invalidateUser(userId: string): void {
    this.cache.deleteIndexed(`user:${userId}`);
  }

  /** Follows `bus`: key events drop the key, user events the user's keys. Returns the unsubscribe function. */
  listen(bus: InvalidationBus): () => void {
    return bus.subscribe((event) => {
      if (event.type === 'key') this.invalidate(event.keyId);
      else if (event.type === 'user') this.invalidateUser(event.userId);
    });
  }

  /**
   * Writes the recorded last uses in one statement. On failure they are kept (merged with
   * newer ones) for the next flush. Resolves with the number of keys written.
   */
  flushLastUsed(): Promise<number> {
    this.flushing ??= this.writeLastUsed().finally(() => (this.flushing = null));
    return this.flushing;
  }

  /** Flushes every `intervalMs` until `stop`. */
  startFlushing(intervalMs: number): void {
    if (this.timer !== null) return;
    this.timer = setInterval(() => void this.flushLastUsed(), intervalMs);
    this.timer.unref();
  }

  /** Stops the timer and writes what is left (at shutdown, before the database is closed). */
  async stop(): Promise<void> {
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
    await this.flushLastUsed();
  }

  get pendingLastUsed(): number {
    return this.lastUsed.size;
  }

  get cacheSize(): { found: number; missing: number; indexed: number } {
    return this.cache.size;
  }

  private answer(found: CacheLookup<CachedKey>): KeyCheck {
    if (found.state === 'missing') return INVALID;
    if (found.state === 'unavailable') return UNAVAILABLE;
    return this.answerKey(found.value);
  }

  private answerKey(key: CachedKey, now = this.clock()): KeyCheck {
    if (key.lookup.revokedAt !== null) return key.revoked;
    if (key.lookup.expiresAt !== null && key.lookup.expiresAt <= now) return key.expired;
    if (now - key.recordedAt >= LAST_USED_RESOLUTION_MS) this.recordUse(key, now);
    return key.valid;
  }

  private recordUse(key: CachedKey, now: number): void {
    const { keyId } = key.lookup;
    if (this.lastUsed.size >= this.maxPendingLastUsed && !this.lastUsed.has(keyId)) {
      this.droppedLastUsed++;
      return;
    }
    this.lastUsed.set(keyId, now);
    key.recordedAt = now;
  }

  private async writeLastUsed(): Promise<number> {
    if (this.lastUsed.size === 0) return 0;
    const batch = this.lastUsed;
    this.lastUsed = new Map();
    try {
      await this.store.touchLastUsed([...batch].map(([keyId, at]) => ({ keyId, at })));
      return batch.size;
    } catch (err) {
      for (const [keyId, at] of batch) {
        const newer = this.lastUsed.get(keyId);
        if (newer === undefined || newer < at) this.lastUsed.set(keyId, at);
      }
      this.logger?.warn({ err: (err as Error).message, keys: batch.size }, 'could not record API key use; will retry');
      return 0;
    }
  }
}

function cachedKey(lookup: KeyLookup): CachedKey {
  const ids = { keyId: lookup.keyId, userId: lookup.userId, expiresAt: lookup.expiresAt };
  return {
    lookup,
    valid: Object.freeze({ code: 'valid', ...ids }),
    expired: Object.freeze({ code: 'KEY_EXPIRED', ...ids }),
    revoked: Object.freeze({ code: 'KEY_REVOKED', ...ids }),
    recordedAt: -Infinity,
  };
}
