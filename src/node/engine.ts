import type { EffectiveLimits, LimitName } from './limits.js';

/**
 * The limit math of docs/semantics.md (DESIGN §2), as pure functions of
 * (state, limits, cost, now). No clock, no I/O: the caller reads the clock once per
 * request and passes it in. `src/storage/redis/lua/decide.lua` implements the same
 * arithmetic, step for step, and the vectors in test/vectors run through both.
 *
 * All arithmetic is on integers below 2^53, so JavaScript and Lua doubles agree exactly.
 */

/** Decision codes are a closed set; the API, metrics and analytics use these names. */
export const DECISION_CODES = [
  'OK',
  'GRACE',
  'OVERAGE',
  'RATE_LIMITED',
  'QUOTA_EXCEEDED',
  'INVALID_KEY',
  'KEY_EXPIRED',
  'KEY_REVOKED',
  'USER_DISABLED',
  'KEY_STORE_UNAVAILABLE',
  'UNAVAILABLE',
] as const;
export type DecisionCode = (typeof DECISION_CODES)[number];

/**
 * One user's counters. The burst bucket is kept as a debt: 0 is a full bucket, one
 * request adds `minuteMs` units and the bucket repays R units per millisecond, so R
 * requests per minute window refill it exactly without fractions.
 */
export interface UserState {
  debt: number;
  /** Time `debt` refers to (ms). */
  debtAt: number;
  minuteStart: number;
  minuteCount: number;
  hourStart: number;
  hourCount: number;
  dayStart: number;
  dayCount: number;
  /** When grace began within the day window `dayStart`, or -1. */
  graceAt: number;
}

export function newUserState(): UserState {
  return { debt: 0, debtAt: 0, minuteStart: -1, minuteCount: 0, hourStart: -1, hourCount: 0, dayStart: -1, dayCount: 0, graceAt: -1 };
}

/** One limit's state after a decision, named as on the wire so responses reuse it as is. */
export interface LimitStatus {
  limit: number;
  remaining: number;
  /** Epoch ms when this limit is back to its full size (the window's end, or a full bucket). */
  reset_at: number;
}

export type LimitStatuses = Record<LimitName, LimitStatus>;

export interface Decision {
  allowed: boolean;
  code: DecisionCode;
  /** The limit that denied (the one that lifts last), or null when allowed. */
  limitedBy: LimitName | null;
  /** 0 when allowed; on a denial the wait until the same request would pass; null if it never can. */
  retryAfterMs: number | null;
  limits: LimitStatuses;
  /** Usage in the current day window (may exceed the quota under grace or overage). */
  quotaUsed: number;
  /** What was charged to every limit: the cost if admitted, 0 for denials and peeks. */
  charged: number;
  /** True when this admission started the grace period. */
  graceStarted: boolean;
  /** The time the decision was made at (epoch ms). */
  now: number;
}

/** Start of the window of length `lengthMs` that contains `at` (windows are aligned to the epoch). */
export function windowStart(at: number, lengthMs: number): number {
  return at - (at % lengthMs);
}

const NORMAL = 0;
const GRACE = 1;
const OVERAGE = 2;

/** Burst debt left at `now` after repaying `perMinute` units per ms since `debtAt`. */
export function decayedDebt(debt: number, debtAt: number, now: number, perMinute: number): number {
  if (debt <= 0) return 0;
  const elapsed = now - debtAt;
  if (elapsed <= 0) return debt;
  const repaid = elapsed * perMinute;
  return repaid >= debt ? 0 : debt - repaid;
}

/** What the limits say about a request of cost `c` at time `at`, given `state`. */
interface Assessment {
  phase: number;
  minuteStart: number;
  minuteCount: number;
  minuteLimit: number;
  hourStart: number;
  hourCount: number;
  dayStart: number;
  dayCount: number;
  graceAt: number;
  debt: number;
  /** The refusing limit that lifts last, or null when every limit admits. */
  limitedBy: LimitName | null;
  /** When that limit lifts (Infinity: never); `at` when admitted. */
  liftsAt: number;
}

function newAssessment(): Assessment {
  return {
    phase: NORMAL, minuteStart: 0, minuteCount: 0, minuteLimit: 0, hourStart: 0, hourCount: 0, dayStart: 0,
    dayCount: 0, graceAt: -1, debt: 0, limitedBy: null, liftsAt: 0,
  };
}

// Decisions are synchronous, so two scratch objects serve every call without allocating.
const current = newAssessment();
const probe = newAssessment();

function assess(state: UserState, limits: EffectiveLimits, c: number, at: number, out: Assessment): void {
  const unit = limits.minuteMs;
  const perMinute = limits.perMinute;
  const minuteStart = at - (at % limits.minuteMs);
  const hourStart = at - (at % limits.hourMs);
  const dayStart = at - (at % limits.dayMs);
  const minuteCount = state.minuteStart === minuteStart ? state.minuteCount : 0;
  const hourCount = state.hourStart === hourStart ? state.hourCount : 0;
  const dayCount = state.dayStart === dayStart ? state.dayCount : 0;
  const graceAt = state.dayStart === dayStart ? state.graceAt : -1;
  const debt = decayedDebt(state.debt, state.debtAt, at, perMinute);
  const capacity = limits.burst * unit;
  const nextDay = dayStart + limits.dayMs;

  let phase = NORMAL;
  if (limits.quotaEnabled && dayCount + c > limits.perDay) {
    phase = limits.graceMs > 0 && (graceAt < 0 || at < graceAt + limits.graceMs) ? GRACE : OVERAGE;
  }
  const throttled = phase === OVERAGE && limits.overage === 'throttle';
  const minuteLimit = throttled ? Math.min(perMinute, limits.throttlePerMinute) : perMinute;
  // A cost above the quota can still pass in a later window only through grace.
  const dayNeverPasses = c > limits.perDay && limits.graceMs === 0;

  // Each refusing limit's earliest admitting time; ties go to the longer window.
  let limitedBy: LimitName | null = null;
  let liftsAt = at;
  if (debt + c * unit > capacity) {
    const lift = c * unit > capacity ? Infinity : at + Math.ceil((debt + c * unit - capacity) / perMinute);
    if (lift >= liftsAt) { liftsAt = lift; limitedBy = 'burst'; }
  }
  if (minuteCount + c > minuteLimit) {
    let lift: number;
    if (c > perMinute) lift = Infinity;
    else if (c <= minuteLimit) lift = minuteStart + limits.minuteMs;
    else lift = dayNeverPasses ? Infinity : nextDay; // throttled below c: wait for the quota to reset
    // When only the throttled rate refuses, that is the quota's doing, so the quota is named.
    const name: LimitName = throttled && c <= perMinute ? 'day' : 'minute';
    if (lift >= liftsAt) { liftsAt = lift; limitedBy = name; }
  }
  if (hourCount + c > limits.perHour) {
    const lift = c > limits.perHour ? Infinity : hourStart + limits.hourMs;
    if (lift >= liftsAt) { liftsAt = lift; limitedBy = 'hour'; }
  }
  if (phase === OVERAGE && limits.overage === 'block') {
    const lift = dayNeverPasses ? Infinity : nextDay;
    if (lift >= liftsAt) { liftsAt = lift; limitedBy = 'day'; }
  }

  out.phase = phase;
  out.minuteStart = minuteStart;
  out.minuteCount = minuteCount;
  out.minuteLimit = minuteLimit;
  out.hourStart = hourStart;
  out.hourCount = hourCount;
  out.dayStart = dayStart;
  out.dayCount = dayCount;
  out.graceAt = graceAt;
  out.debt = debt;
  out.limitedBy = limitedBy;
  out.liftsAt = liftsAt;
}

/** Most phase changes a wait can cross: grace ends, then the quota window rolls over. */
const MAX_RETRY_STEPS = 8;

/**
 * The earliest time ≥ `from` at which the request passes, if nothing else happens in
 * between. The refusing limits lift at known times, but a grace period may end while
 * waiting for them, so the answer is found by stepping from lift time to lift time.
 */
function passesAt(state: UserState, limits: EffectiveLimits, c: number, from: number): number {
  let at = from;
  for (let step = 0; step < MAX_RETRY_STEPS && at !== Infinity; step++) {
    assess(state, limits, c, at, probe);
    if (probe.limitedBy === null) return at;
    at = probe.liftsAt;
  }
  return at;
}

/**
 * Decides a request of `cost` (0 = peek: answered as for cost 1, nothing charged).
 * When admitted (and not a peek), charges every limit `cost` by updating `state` in
 * place; a denial or a peek leaves `state` untouched.
 */
export function decide(state: UserState, limits: EffectiveLimits, cost: number, now: number): Decision {
  const peek = cost === 0;
  const c = peek ? 1 : cost;
  const a = current;
  assess(state, limits, c, now, a);

  const unit = limits.minuteMs;
  const allowed = a.limitedBy === null;
  const limitedBy = a.limitedBy;
  const phase = a.phase;
  const charged = allowed && !peek ? c : 0;
  const graceStarted = charged > 0 && phase === GRACE && a.graceAt < 0;
  const debtAfter = a.debt + charged * unit;
  const minuteUsed = a.minuteCount + charged;
  const hourUsed = a.hourCount + charged;
  const dayUsed = a.dayCount + charged;
  const minuteLimit = a.minuteLimit;
  const minuteReset = a.minuteStart + limits.minuteMs;
  const hourReset = a.hourStart + limits.hourMs;
  const dayReset = a.dayStart + limits.dayMs;
  const retryAt = allowed ? now : passesAt(state, limits, c, a.liftsAt);

  if (charged > 0) {
    state.debt = debtAfter;
    state.debtAt = Math.max(state.debtAt, now);
    state.minuteStart = a.minuteStart;
    state.minuteCount = minuteUsed;
    state.hourStart = a.hourStart;
    state.hourCount = hourUsed;
    state.dayStart = a.dayStart;
    state.dayCount = dayUsed;
    state.graceAt = graceStarted ? now : a.graceAt;
  }

  let code: Decision['code'];
  if (allowed) code = phase === NORMAL ? 'OK' : phase === GRACE ? 'GRACE' : 'OVERAGE';
  else code = limitedBy === 'day' ? 'QUOTA_EXCEEDED' : 'RATE_LIMITED';

  return {
    allowed,
    code,
    limitedBy,
    retryAfterMs: retryAt === Infinity ? null : retryAt - now,
    limits: {
      burst: {
        limit: limits.burst,
        remaining: Math.max(0, Math.floor((limits.burst * unit - debtAfter) / unit)),
        reset_at: now + Math.ceil(debtAfter / limits.perMinute),
      },
      minute: { limit: minuteLimit, remaining: Math.max(0, minuteLimit - minuteUsed), reset_at: minuteReset },
      hour: { limit: limits.perHour, remaining: Math.max(0, limits.perHour - hourUsed), reset_at: hourReset },
      day: { limit: limits.perDay, remaining: Math.max(0, limits.perDay - dayUsed), reset_at: dayReset },
    },
    quotaUsed: dayUsed,
    charged,
    graceStarted,
    now,
  };
}

/**
 * How many of `requests` back-to-back requests of `cost`, all at one instant, a user
 * at rest is admitted (the closed form the `/rate-limiting/test` endpoint compares
 * against). Derived from the semantics, not from `decide`.
 */
export function expectedAdmittedFromRest(limits: EffectiveLimits, requests: number, cost = 1): number {
  const fits = (capacity: number): number => Math.floor(capacity / cost);
  let admitted = Math.min(requests, fits(limits.burst), fits(limits.perMinute), fits(limits.perHour));
  if (!limits.quotaEnabled) return admitted;
  const withinQuota = fits(limits.perDay);
  if (admitted <= withinQuota) return admitted;
  // The quota runs out within the burst. Grace cannot expire within one instant.
  if (limits.graceMs > 0 || limits.overage === 'allow') return admitted;
  if (limits.overage === 'block') return withinQuota;
  // throttle: the minute counter already holds the quota's requests; more pass up to the reduced rate.
  admitted = Math.max(withinQuota, Math.min(admitted, fits(Math.min(limits.perMinute, limits.throttlePerMinute))));
  return admitted;
}
