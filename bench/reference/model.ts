/**
 * The accuracy benchmark's reference model: an independent, sequential, exact
 * implementation of the limit semantics in docs/semantics.md (DESIGN §2). It is the judge
 * the system is measured against, so it shares no code with `src/` and was written from
 * the written semantics alone. It favours an obviously-correct formulation over speed:
 *
 * - One question is answered everywhere: "what does each limit say about a request of cost
 *   c at time s, if nothing else happens before s?" (`verdictAt`). Counters are read as of
 *   s (a window that has ended reads as empty, the bucket has repaid its debt).
 * - `retry_after_ms` and `limited_by` ask that question at every time where any verdict can
 *   change (the candidates below) and take the earliest time all limits admit, resp. the
 *   earliest time each refusing limit admits. Between two candidates every verdict is
 *   constant, and after the last one nothing changes any more, so this search is exact.
 *
 * Semantics, as implemented (M = minuteMs, R = perMinute, B = burst, T = throttlePerMinute):
 * - burst: a debt in integer units; a request of cost c adds c×M, the debt falls by R per
 *   ms (never below 0); admits while debt + c×M ≤ B×M.
 * - minute / hour / day: fixed windows of minuteMs / hourMs / dayMs aligned to the epoch
 *   (start = floor(t / len) × len); admit while used + c ≤ limit.
 * - The quota (day) runs out for a request when day used + c > perDay. Then, if graceMs > 0
 *   and grace has not started in this day window, the request passes as GRACE (and starts
 *   grace at its time if it is admitted); while t < graceStart + graceMs it passes as GRACE;
 *   otherwise overage handling: block refuses, allow passes as OVERAGE, throttle passes as
 *   OVERAGE while minute used + c ≤ T and refuses otherwise. The throttle is a refusal by
 *   the day limit (the quota's doing), not by the minute limit. quotaEnabled = false: the
 *   day window counts but never refuses and never yields GRACE/OVERAGE.
 * - All or nothing: admitted only if every limit admits; then every limit is charged c.
 *   A denial charges nothing.
 * - cost 0 is a peek: answered exactly as cost 1, nothing is charged, no grace starts.
 * - limited_by: of the limits refusing now, the one whose own refusal lifts last (the
 *   earliest later time at which that limit alone would admit; never = +∞); ties go to the
 *   longer window (day > hour > minute > burst). code: QUOTA_EXCEEDED when limited_by is
 *   day, RATE_LIMITED otherwise.
 * - retry_after_ms: 0 when admitted; on a denial the earliest s ≥ t at which every limit
 *   admits with no other traffic (including a grace period ending while waiting), minus t;
 *   null when there is none.
 * - remaining (after the decision): burst = floor((B×M − debt) / M); minute = R − used, or
 *   T − used when this request was under throttle overage handling (its quota had run out,
 *   grace was over and overage is throttle; so the admission that exactly reaches the quota
 *   still reports R − used); hour = H − used; day = D − used; all clamped at 0.
 *
 * Time: decisions must be fed in timeline order per user. The model treats each user's
 * clock as never going backwards: a decision is made at max(at, the latest `at` of this
 * user's non-peek requests, admitted or denied), and that effective time is returned as
 * `at`. An out-of-order request is therefore decided as if it arrived at the user's latest
 * time. Peeks change nothing at all, not even the clock (and a peek of an unknown user
 * creates no state), so `peek` can probe any future time without disturbing the timeline.
 *
 * All arithmetic stays on integers (times in ms, debts in units); `R × elapsed` is only used
 * when it is below the debt, so it never leaves the exact range of doubles.
 */

export type RefLimitName = 'burst' | 'minute' | 'hour' | 'day';

/** Longest window first: the order ties of `limited_by` are broken in. */
const TIE_ORDER: readonly RefLimitName[] = ['day', 'hour', 'minute', 'burst'];

export interface RefLimits {
  /** B: capacity of the burst bucket. */
  burst: number;
  /** R: per minute window; also the bucket's refill per minute window. */
  perMinute: number;
  /** H: per hour window. */
  perHour: number;
  /** D: the quota, per day window. */
  perDay: number;
  /** T: per-minute rate under `throttle` overage handling. */
  throttlePerMinute: number;
  quotaEnabled: boolean;
  overage: 'block' | 'allow' | 'throttle';
  graceMs: number;
  minuteMs: number;
  hourMs: number;
  dayMs: number;
}

export type RefCode = 'OK' | 'GRACE' | 'OVERAGE' | 'RATE_LIMITED' | 'QUOTA_EXCEEDED';

export interface RefDecision {
  allowed: boolean;
  code: RefCode;
  limitedBy: RefLimitName | null;
  /** 0 when admitted; the wait until the same request would pass alone; null if never. */
  retryAfterMs: number | null;
  /** Per limit, after the decision. */
  remaining: Record<RefLimitName, number>;
  /** Usage of the current day window after the decision (may exceed perDay). */
  quotaUsed: number;
  /** The time the decision was made at: max(at, the user's latest time). */
  at: number;
  /** What every limit was charged: the cost if admitted and not a peek, else 0. */
  charged: number;
}

/** One user's counters. Window counts belong to the window starting at `…Start`. */
interface UserState {
  clock: number;
  debt: number;
  debtAt: number;
  minuteStart: number;
  minuteUsed: number;
  hourStart: number;
  hourUsed: number;
  dayStart: number;
  dayUsed: number;
  /** Start of the grace period in the day window `dayStart`, or null if none began. */
  graceStart: number | null;
}

/** The counters as they read at time `at`, with nothing happening since the last charge. */
interface View {
  debt: number;
  minuteUsed: number;
  hourUsed: number;
  dayUsed: number;
  graceStart: number | null;
}

/** What each limit says about one request; `dayCode` is the code if it is admitted. */
interface Verdict {
  refuses: Record<RefLimitName, boolean>;
  dayCode: 'OK' | 'GRACE' | 'OVERAGE';
  /** True when the quota is under overage handling `throttle` for this request. */
  throttled: boolean;
}

export function windowStartOf(at: number, lengthMs: number): number {
  return Math.floor(at / lengthMs) * lengthMs;
}

function nextWindowStart(at: number, lengthMs: number): number {
  return windowStartOf(at, lengthMs) + lengthMs;
}

function newUserState(at: number): UserState {
  return {
    clock: at,
    debt: 0,
    debtAt: at,
    minuteStart: Number.NEGATIVE_INFINITY,
    minuteUsed: 0,
    hourStart: Number.NEGATIVE_INFINITY,
    hourUsed: 0,
    dayStart: Number.NEGATIVE_INFINITY,
    dayUsed: 0,
    graceStart: null,
  };
}

function debtAt(state: UserState, perMinute: number, at: number): number {
  const elapsed = Math.max(0, at - state.debtAt);
  if (perMinute <= 0) return state.debt;
  // Compare before multiplying: R × elapsed may be huge, but then the debt is repaid.
  if (elapsed >= Math.ceil(state.debt / perMinute)) return 0;
  return Math.max(0, state.debt - perMinute * elapsed);
}

function viewAt(state: UserState, limits: RefLimits, at: number): View {
  const sameDay = state.dayStart === windowStartOf(at, limits.dayMs);
  return {
    debt: debtAt(state, limits.perMinute, at),
    minuteUsed: state.minuteStart === windowStartOf(at, limits.minuteMs) ? state.minuteUsed : 0,
    hourUsed: state.hourStart === windowStartOf(at, limits.hourMs) ? state.hourUsed : 0,
    dayUsed: sameDay ? state.dayUsed : 0,
    graceStart: sameDay ? state.graceStart : null,
  };
}

/** What every limit says about a request of `cost` (≥ 1) at `at`, nothing else happening. */
function verdictAt(state: UserState, limits: RefLimits, cost: number, at: number): Verdict {
  const view = viewAt(state, limits, at);
  const refuses: Record<RefLimitName, boolean> = {
    burst: view.debt + cost * limits.minuteMs > limits.burst * limits.minuteMs,
    minute: view.minuteUsed + cost > limits.perMinute,
    hour: view.hourUsed + cost > limits.perHour,
    day: false,
  };
  let dayCode: Verdict['dayCode'] = 'OK';
  let throttled = false;
  const quotaRunsOut = limits.quotaEnabled && view.dayUsed + cost > limits.perDay;
  if (quotaRunsOut) {
    const inGrace = limits.graceMs > 0 && (view.graceStart === null || at < view.graceStart + limits.graceMs);
    if (inGrace) {
      dayCode = 'GRACE';
    } else {
      dayCode = 'OVERAGE';
      if (limits.overage === 'block') refuses.day = true;
      if (limits.overage === 'throttle') {
        throttled = true;
        refuses.day = view.minuteUsed + cost > limits.throttlePerMinute;
      }
    }
  }
  return { refuses, dayCode, throttled };
}

function anyRefuses(verdict: Verdict): boolean {
  return TIE_ORDER.some((name) => verdict.refuses[name]);
}

/**
 * Every time ≥ `at` at which some verdict about this request can change, given no traffic:
 * the bucket repaying enough, the next minute / hour / day window, the grace period ending.
 * After the latest of these every window is empty and stays so, the bucket only gets
 * fuller (its moment is listed) and grace is settled, so no verdict changes again.
 */
function candidateTimes(state: UserState, limits: RefLimits, cost: number, at: number): number[] {
  const view = viewAt(state, limits, at);
  const times = [at, nextWindowStart(at, limits.minuteMs), nextWindowStart(at, limits.hourMs), nextWindowStart(at, limits.dayMs)];
  const excess = view.debt + cost * limits.minuteMs - limits.burst * limits.minuteMs;
  if (excess > 0 && cost <= limits.burst && limits.perMinute > 0) {
    times.push(at + Math.ceil(excess / limits.perMinute));
  }
  if (view.graceStart !== null && view.graceStart + limits.graceMs > at) {
    times.push(view.graceStart + limits.graceMs);
  }
  // Duplicates are harmless: the searches take the first time that answers.
  return times.sort((a, b) => a - b);
}

function assertValid(limits: RefLimits, cost: number, at: number): void {
  if (!Number.isSafeInteger(cost) || cost < 0) throw new RangeError(`cost must be an integer ≥ 0, got ${cost}`);
  if (!Number.isFinite(at)) throw new RangeError(`at must be a finite time, got ${at}`);
  for (const name of ['minuteMs', 'hourMs', 'dayMs'] as const) {
    if (!Number.isSafeInteger(limits[name]) || limits[name] <= 0) throw new RangeError(`${name} must be a positive integer`);
  }
}

/** Per-user reference state. */
export class ReferenceModel {
  private readonly users = new Map<string, UserState>();

  /** Number of users with state (peeks of unknown users add none). */
  get userCount(): number {
    return this.users.size;
  }

  /**
   * Decides one request of `cost` for `userId` at `at` (epoch ms) and, when it is admitted
   * and not a peek, charges it. Feed each user's requests in time order; an earlier `at`
   * than the user's latest is decided at the latest (the clock never goes backwards).
   * `cost` 0 is a peek: answered as cost 1, changing nothing (not even the user's clock).
   */
  decide(userId: string, limits: RefLimits, cost: number, at: number): RefDecision {
    assertValid(limits, cost, at);
    if (cost === 0) return this.peek(userId, limits, 1, at);
    let state = this.users.get(userId);
    if (state === undefined) {
      state = newUserState(at);
      this.users.set(userId, state);
    }
    state.clock = Math.max(at, state.clock);
    const { decision, throttled } = answerAt(state, limits, cost, state.clock);
    if (!decision.allowed) return decision;
    charge(state, limits, cost, state.clock, decision.code === 'GRACE');
    const after = viewAt(state, limits, state.clock);
    return { ...decision, remaining: remainingOf(after, limits, throttled), quotaUsed: after.dayUsed, charged: cost };
  }

  /**
   * How a request of `cost` (≥ 1) at `at` would be decided, changing nothing. `decide`
   * answers cost-0 peeks with this at cost 1; tests use it to probe future times.
   */
  peek(userId: string, limits: RefLimits, cost: number, at: number): RefDecision {
    assertValid(limits, cost, at);
    if (cost < 1) throw new RangeError(`peek asks about a cost ≥ 1, got ${cost}`);
    const state = this.users.get(userId) ?? newUserState(at);
    return answerAt(state, limits, cost, Math.max(at, state.clock)).decision;
  }
}

/** The decision on a request of `cost` (≥ 1) at `now`, before anything is charged. */
function answerAt(state: UserState, limits: RefLimits, cost: number, now: number): { decision: RefDecision; throttled: boolean } {
  const verdict = verdictAt(state, limits, cost, now);
  const throttled = verdict.throttled;
  const view = viewAt(state, limits, now);
  const base = { remaining: remainingOf(view, limits, throttled), quotaUsed: view.dayUsed, at: now, charged: 0 };
  if (!anyRefuses(verdict)) {
    return { decision: { allowed: true, code: verdict.dayCode, limitedBy: null, retryAfterMs: 0, ...base }, throttled };
  }

  const later = candidateTimes(state, limits, cost, now).map((time) => ({ time, verdict: verdictAt(state, limits, cost, time) }));
  const passes = later.find((entry) => !anyRefuses(entry.verdict));

  let limitedBy: RefLimitName | null = null;
  let latestLift = Number.NEGATIVE_INFINITY;
  for (const name of TIE_ORDER) {
    if (!verdict.refuses[name]) continue;
    const lifts = later.find((entry) => !entry.verdict.refuses[name])?.time ?? Number.POSITIVE_INFINITY;
    // TIE_ORDER runs from the longest window, so only a strictly later lift displaces it.
    if (lifts > latestLift) {
      latestLift = lifts;
      limitedBy = name;
    }
  }
  const decision: RefDecision = {
    allowed: false,
    code: limitedBy === 'day' ? 'QUOTA_EXCEEDED' : 'RATE_LIMITED',
    limitedBy,
    retryAfterMs: passes === undefined ? null : passes.time - now,
    ...base,
  };
  return { decision, throttled };
}

/** Charges `cost` to every limit at `at`; the first GRACE admission starts grace. */
function charge(state: UserState, limits: RefLimits, cost: number, at: number, grace: boolean): void {
  const view = viewAt(state, limits, at);
  state.debt = view.debt + cost * limits.minuteMs;
  state.debtAt = at;
  state.minuteStart = windowStartOf(at, limits.minuteMs);
  state.minuteUsed = view.minuteUsed + cost;
  state.hourStart = windowStartOf(at, limits.hourMs);
  state.hourUsed = view.hourUsed + cost;
  state.dayStart = windowStartOf(at, limits.dayMs);
  state.dayUsed = view.dayUsed + cost;
  state.graceStart = grace && view.graceStart === null ? at : view.graceStart;
}

/** What is left of each limit in `view`; `throttled`: the request was under throttle overage. */
function remainingOf(view: View, limits: RefLimits, throttled: boolean): Record<RefLimitName, number> {
  const minuteLimit = throttled ? limits.throttlePerMinute : limits.perMinute;
  return {
    burst: Math.max(0, Math.floor((limits.burst * limits.minuteMs - view.debt) / limits.minuteMs)),
    minute: Math.max(0, minuteLimit - view.minuteUsed),
    hour: Math.max(0, limits.perHour - view.hourUsed),
    day: Math.max(0, limits.perDay - view.dayUsed),
  };
}
