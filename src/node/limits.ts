import type { Config, OverageHandling } from '../config/types.js';

/** The four limits every check is held against (docs/semantics.md). */
export const LIMIT_NAMES = ['burst', 'minute', 'hour', 'day'] as const;
export type LimitName = (typeof LIMIT_NAMES)[number];

/**
 * Everything the engine needs to decide for one user, already resolved from the tier,
 * the user's overrides and the node's configuration. Objects are shared between the
 * users of a tier, so they must not be mutated.
 */
export interface EffectiveLimits {
  readonly tier: string;
  /** B: capacity of the burst bucket. */
  readonly burst: number;
  /** R: per minute window; also the burst bucket's refill per minute window. */
  readonly perMinute: number;
  readonly perHour: number;
  /** The quota, per day window. */
  readonly perDay: number;
  /** Per-minute rate once the quota is used up and `overage` is `throttle`. */
  readonly throttlePerMinute: number;
  readonly quotaEnabled: boolean;
  readonly overage: OverageHandling;
  readonly graceMs: number;
  readonly minuteMs: number;
  readonly hourMs: number;
  readonly dayMs: number;
}

/** Per-user overrides of a tier's figures, as stored with the user (seed's `rate_limits`). */
export interface LimitOverrides {
  requests_per_minute?: number;
  requests_per_hour?: number;
  requests_per_day?: number;
  burst_limit?: number;
}

/** Builds the limits of `tier` with `overrides` applied. The tier must exist in config. */
export function resolveLimits(config: Config, tier: string, overrides?: LimitOverrides | null): EffectiveLimits {
  const base = config.rate_limits[tier];
  if (!base) throw new Error(`unknown tier ${tier}`);
  const perMinute = overrides?.requests_per_minute ?? base.requests_per_minute;
  const throttleShare = base.throttle_requests_per_minute / base.requests_per_minute;
  return Object.freeze({
    tier,
    burst: overrides?.burst_limit ?? base.burst_limit,
    perMinute,
    perHour: overrides?.requests_per_hour ?? base.requests_per_hour,
    perDay: overrides?.requests_per_day ?? base.requests_per_day,
    // An overridden R keeps the tier's throttle share, so a bigger user is throttled less.
    throttlePerMinute:
      overrides?.requests_per_minute === undefined
        ? base.throttle_requests_per_minute
        : Math.max(1, Math.floor(perMinute * throttleShare)),
    quotaEnabled: config.quota_management.enabled,
    overage: config.quota_management.overage_handling,
    graceMs: config.quota_management.grace_period * 1000,
    minuteMs: config.limiter.minute_ms,
    hourMs: config.limiter.hour_ms,
    dayMs: config.quota_management.reset_interval * 1000,
  });
}

/** One frozen `EffectiveLimits` per configured tier, built once at start. */
export function tierLimitsTable(config: Config): ReadonlyMap<string, EffectiveLimits> {
  return new Map(Object.keys(config.rate_limits).map((tier) => [tier, resolveLimits(config, tier)]));
}
