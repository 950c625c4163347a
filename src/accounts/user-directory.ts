/**
 * Who a user is, for the request path: tier, overrides, quota override, disabled. Answered
 * from memory (refreshing-cache.ts) and, for users not in memory, after one lookup. A
 * user-changed event (invalidation.ts) drops the entry, so a new tier applies from the next
 * decision on. Known users keep their profile through a database outage; users not in
 * memory are then `unavailable` (the caller decides: e.g. treat as unknown and use the
 * tier hint).
 *
 * Users the service does not store are the common case (the limiter serves them by tier
 * hint), so their absence is cached for `unknownTtlMs` (default 60 s); creating a user
 * publishes an event that ends that early.
 */
import type { Logger } from '../observability/logger.js';
import type { InvalidationBus } from './invalidation.js';
import { BatchLoader } from './batch-loader.js';
import { RefreshingCache, type CacheLookup } from './refreshing-cache.js';
import type { TierOverrides } from './validation.js';

export interface UserProfile {
  tier: string;
  overrides: TierOverrides;
  quotaOverride: number | null;
  disabled: boolean;
}

export type UserLookup = { state: 'known'; profile: UserProfile } | { state: 'unknown' } | { state: 'unavailable' };

/** What the directory needs from the database (UsersRepository provides it). */
export interface UserStore {
  get(userId: string): Promise<UserProfile | null>;
  /** Many users in one read (when the store can): lookups of one event-loop turn share it. */
  getMany?(userIds: string[]): Promise<Map<string, UserProfile>>;
}

export interface UserDirectoryOptions {
  store: UserStore;
  clock: () => number;
  logger?: Logger;
  /** Known users held in memory; default 200 000. */
  maxUsers?: number;
  /** Unknown user ids remembered; default 200 000. */
  maxUnknownUsers?: number;
  refreshAfterMs?: number;
  unknownTtlMs?: number;
}

const UNKNOWN = Object.freeze({ state: 'unknown' as const });
const UNAVAILABLE = Object.freeze({ state: 'unavailable' as const });

type KnownUser = { state: 'known'; profile: UserProfile };

export class UserDirectory {
  private readonly cache: RefreshingCache<KnownUser>;

  constructor(options: UserDirectoryOptions) {
    const { store } = options;
    const getMany = store.getMany?.bind(store);
    const batches = getMany ? new BatchLoader<UserProfile>({ loadMany: getMany }) : null;
    this.cache = new RefreshingCache<KnownUser>({
      load: async (userId, background) => {
        const user = batches ? await batches.load(userId, background) : await store.get(userId);
        if (user === null) return null;
        const profile: UserProfile = { tier: user.tier, overrides: user.overrides, quotaOverride: user.quotaOverride, disabled: user.disabled };
        return { state: 'known', profile };
      },
      clock: options.clock,
      maxEntries: options.maxUsers ?? 200_000,
      maxMissing: options.maxUnknownUsers ?? 200_000,
      refreshAfterMs: options.refreshAfterMs ?? 30_000,
      missingTtlMs: options.unknownTtlMs ?? 60_000,
      retryAfterMs: 1_000,
      onLoadError: (_userId, err) => options.logger?.warn({ err: (err as Error).message }, 'user lookup failed'),
    });
  }

  /** The user's profile; synchronous unless the user must be looked up. Never throws. */
  lookup(userId: string): UserLookup | Promise<UserLookup> {
    const found = this.cache.get(userId);
    return found instanceof Promise ? found.then(toUserLookup) : toUserLookup(found);
  }

  invalidate(userId: string): void {
    this.cache.delete(userId);
  }

  /** Follows `bus`: user events drop the user. Returns the unsubscribe function. */
  listen(bus: InvalidationBus): () => void {
    return bus.subscribe((event) => {
      if (event.type === 'user') this.invalidate(event.userId);
    });
  }

  get cacheSize(): { found: number; missing: number } {
    return this.cache.size;
  }
}

function toUserLookup(found: CacheLookup<KnownUser>): UserLookup {
  if (found.state === 'found') return found.value;
  return found.state === 'missing' ? UNKNOWN : UNAVAILABLE;
}
