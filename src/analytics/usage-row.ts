/**
 * One usage aggregate: counters of the checks one user (with one key, in one tier) made in
 * one time bucket. The same columns exist in usage_minute, usage_hour and usage_day
 * (migration 2); every counter is additive, so rows from any worker and node merge by
 * adding.
 */
export const COUNTERS = [
  'requests',
  'allowed',
  'denied',
  /** Cost admitted (what quotas count). */
  'cost',
  /** Units admitted beyond the quota once grace is over (OVERAGE): what overage billing charges. */
  'overage',
  /** Units admitted beyond the quota during the grace period (GRACE). */
  'grace',
  'denied_rate_limited',
  'denied_quota',
  /** INVALID_KEY, KEY_EXPIRED, KEY_REVOKED, KEY_STORE_UNAVAILABLE. */
  'denied_key',
  'denied_disabled',
  'denied_unavailable',
  'limited_burst',
  'limited_minute',
  'limited_hour',
  'limited_day',
] as const;

export type Counter = (typeof COUNTERS)[number];

export const INDEX: Record<Counter, number> = Object.fromEntries(COUNTERS.map((c, i) => [c, i])) as Record<Counter, number>;

export interface UsageKey {
  /** Start of the bucket (epoch ms). */
  bucket: number;
  userId: string;
  /** '' for checks made without an API key. */
  keyId: string;
  tier: string;
}

/** One value per counter. */
export type Counts = Record<Counter, number>;

/**
 * A key and its counters as fields of one object, not an array beside it: recording a
 * decision then touches one object (a row per user and minute is made on the request
 * path, and every object more is one more cache miss per decision).
 */
export interface UsageRow extends UsageKey, Counts {}

export const MINUTE_MS = 60_000;
export const HOUR_MS = 3_600_000;
export const DAY_MS = 86_400_000;

export function addCounts(into: Counts, from: Counts): void {
  for (const c of COUNTERS) into[c] += from[c];
}

/** The counters in COUNTERS order. */
export function countsOf(row: Counts): number[] {
  return COUNTERS.map((c) => row[c]);
}
