import { isTierEnabled } from '../config/load.js';
import type { Config } from '../config/types.js';
import { tierLimitsTable, type EffectiveLimits } from './limits.js';

/**
 * Which tier a caller is in and what that tier allows. The tier in a check request is
 * only a hint for users the service does not know; an unknown or disabled hint falls
 * back to `default_tier` (docs/semantics.md).
 */
export class TierPolicy {
  private readonly limits: ReadonlyMap<string, EffectiveLimits>;
  private readonly enabled: ReadonlySet<string>;
  readonly defaultTier: string;

  constructor(config: Config) {
    this.limits = tierLimitsTable(config);
    this.enabled = new Set(Object.keys(config.rate_limits).filter((tier) => isTierEnabled(config, tier)));
    this.defaultTier = config.user_tiers.default_tier;
  }

  /** Configured tier names, enabled or not (the API rejects any other name). */
  get names(): string[] {
    return [...this.limits.keys()];
  }

  isEnabled(tier: string): boolean {
    return this.enabled.has(tier);
  }

  /** The tier an unknown user is placed in, given the request's hint. */
  tierForHint(hint: string | undefined): string {
    return hint !== undefined && this.isEnabled(hint) ? hint : this.defaultTier;
  }

  /** Limits of a configured tier; a disabled tier's users get the default tier's. */
  limitsOf(tier: string): EffectiveLimits {
    const limits = this.isEnabled(tier) ? this.limits.get(tier) : undefined;
    return limits ?? this.limits.get(this.defaultTier)!;
  }
}
