import type { Config } from '../config/types.js';
import { resolveLimits, type EffectiveLimits } from '../node/limits.js';
import type { TierPolicy } from '../node/tiers.js';
import type { UserDirectory, UserLookup, UserProfile } from './user-directory.js';

/** The limits a check is held to, and whether the user may make checks at all. */
export interface UserLimitsResult {
  limits: EffectiveLimits;
  /** A stored user the admins disabled: the check is denied with USER_DISABLED. */
  disabled: boolean;
  /** Where the tier came from: the stored user, the request's hint, or the default. */
  known: boolean;
}

/**
 * Which limits apply to a user: a stored user's tier and overrides always win (a caller
 * cannot upgrade itself); users the service does not store get the request's tier if it
 * is enabled, else the default tier (docs/semantics.md). While the database cannot answer
 * for a user it has not cached, the user is treated as not stored.
 */
export class UserLimits {
  /** Limits per stored profile; a changed profile is a new object, so entries never go stale. */
  private readonly byProfile = new WeakMap<UserProfile, UserLimitsResult>();

  constructor(
    private readonly config: Config,
    private readonly tiers: TierPolicy,
    private readonly directory: UserDirectory | null,
  ) {}

  /** Synchronous when the user (or the user's absence) is cached. */
  limitsFor(userId: string, tierHint: string | undefined): UserLimitsResult | Promise<UserLimitsResult> {
    if (this.directory === null || userId === '') return this.unknown(tierHint);
    const found = this.directory.lookup(userId);
    return found instanceof Promise ? found.then((f) => this.fromLookup(f, tierHint)) : this.fromLookup(found, tierHint);
  }

  private fromLookup(found: UserLookup, tierHint: string | undefined): UserLimitsResult {
    if (found.state !== 'known') return this.unknown(tierHint);
    let result = this.byProfile.get(found.profile);
    if (result === undefined) {
      const { profile } = found;
      // A stored tier that is no longer configured (or disabled) falls back to the default.
      const tier = this.tiers.isEnabled(profile.tier) ? profile.tier : this.tiers.defaultTier;
      const overrides = profile.quotaOverride === null ? profile.overrides : { ...profile.overrides, requests_per_day: profile.quotaOverride };
      result = { limits: resolveLimits(this.config, tier, overrides), disabled: profile.disabled, known: true };
      this.byProfile.set(found.profile, result);
    }
    return result;
  }

  private readonly hinted = new Map<string, UserLimitsResult>();
  private unknown(tierHint: string | undefined): UserLimitsResult {
    const tier = this.tiers.tierForHint(tierHint);
    let result = this.hinted.get(tier);
    if (result === undefined) {
      result = { limits: this.tiers.limitsOf(tier), disabled: false, known: false };
      this.hinted.set(tier, result);
    }
    return result;
  }
}
