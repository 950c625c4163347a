/**
 * The accuracy figures of DESIGN §2, computed by replaying what the system saw through the
 * reference model (./model.ts).
 *
 * How the replay works. The reference is given the same request timeline the system saw
 * (every request, admitted or denied by the system, with its cost and the time the system
 * decided it) and decides it INDEPENDENTLY: its state evolves from its own decisions, never
 * from the system's. So the reference is what an exact limiter would have done with the same
 * traffic. This matters for how errors compound: if the system over-admits one request
 * early in a window, the reference keeps that room and admits a later request the system
 * denies, so one error can show up as an over-admission followed by a false denial. Within
 * one window these net out (|A − E| is taken per window); across windows, and in the
 * per-decision figures, both are counted.
 *
 * Ordering. Each user's observations are sorted stably by `at`; observations with equal `at`
 * keep their input order, so the harness should list them in the order the system decided
 * them. `at` should be the time the system stamped on its decision. Users are independent.
 * Every user starts from rest (full bucket, empty windows, no grace) at its first
 * observation, so the timeline must hold all of a user's traffic since the system last
 * had it at rest (the benchmark uses fresh user ids), or the figures mean nothing.
 *
 * Grouping ("for every user and window"). A decision falls, for each window kind (minute,
 * hour, day), into the window of that kind containing its time: start = floor(at / len) ×
 * len with the lengths of the limits it was decided under. A group is (user, kind, window
 * start, window length); per tier, additionally the tier of the observation. For a group,
 * E = what the reference admitted, A = what the system admitted, both counted in cost units
 * and in requests. Per scope and kind:
 *   accuracy = 1 − Σ|A − E| / Σ E, overAdmission = Σ max(0, A − E),
 *   falseDenials = Σ max(0, E − A)
 * (when Σ E = 0 the formula is undefined: accuracy is 1 if there is no error, else 0).
 * The burst bucket has no window, so it has no grouping of its own; its errors show in
 * every window kind and in the per-decision figures, where every decision is its own group
 * (Σ|A − E| is then the cost of the decisions the two disagree on). Coarser windows net out
 * more, so accuracy(decision) ≤ accuracy(minute) ≤ accuracy(hour) ≤ accuracy(day) when the
 * windows nest; the headline `accuracy` is the minute-window cost-unit figure (the finest
 * window of the table), and `agreement.rate` is the share of decisions (peeks included)
 * whose allowed/denied answer matches.
 *
 * Peeks (cost 0) admit nothing: they add 0 cost units and 0 requests to E and A, and count
 * only in the per-decision agreement.
 */
import { ReferenceModel, windowStartOf, type RefDecision, type RefLimits } from './model.js';

export interface ObservedDecision {
  userId: string;
  tier: string;
  /** When the system decided the request (epoch ms). */
  at: number;
  cost: number;
  allowedBySystem: boolean;
}

/** The limits a request is judged by; `userId` lets a harness apply per-user overrides. */
export type LimitsFor = (tier: string, userId: string) => RefLimits;

export const WINDOW_KINDS = ['minute', 'hour', 'day'] as const;
export type WindowKind = (typeof WINDOW_KINDS)[number];

/** Σ over groups of one quantity (cost units or requests). */
export interface Tally {
  /** Σ E: admitted by the reference. */
  expected: number;
  /** Σ A: admitted by the system. */
  admitted: number;
  /** Σ |A − E|. */
  absError: number;
  /** Σ max(0, A − E). */
  overAdmission: number;
  /** Σ max(0, E − A). */
  falseDenials: number;
  /** 1 − absError / expected. */
  accuracy: number;
}

export interface GroupedFigures {
  costUnits: Tally;
  requests: Tally;
  /** Number of groups (user × window, or decisions). */
  groups: number;
}

export interface Agreement {
  decisions: number;
  agreed: number;
  /** agreed / decisions (1 when there are none). */
  rate: number;
  /** Admitted by the system, denied by the reference. */
  systemOnly: number;
  /** Denied by the system, admitted by the reference. */
  referenceOnly: number;
  peeks: number;
  peeksAgreed: number;
}

export interface ScopeReport {
  byWindow: Record<WindowKind, GroupedFigures>;
  perDecision: GroupedFigures;
  agreement: Agreement;
}

export interface Disagreement {
  /** Index in the input list. */
  index: number;
  observed: ObservedDecision;
  reference: RefDecision;
}

export interface AccuracyReport {
  /** Headline: overall, minute windows, cost units. */
  accuracy: number;
  overall: ScopeReport;
  byTier: Record<string, ScopeReport>;
  /** How many decisions disagree, and the first few in input order. */
  disagreementCount: number;
  disagreements: Disagreement[];
}

export interface AccuracyOptions {
  /** How many disagreements to list (default 20). */
  maxDisagreements?: number;
}

/**
 * Replays `observed` through a fresh reference model (each user's requests stably sorted
 * by `at`) and returns the reference's decision for every observation, in input order.
 */
export function replayReference(observed: readonly ObservedDecision[], limitsFor: LimitsFor): RefDecision[] {
  const model = new ReferenceModel();
  const out = new Array<RefDecision | undefined>(observed.length);
  for (const indices of timelinesByUser(observed)) {
    for (const index of indices) {
      const o = observed[index]!;
      out[index] = model.decide(o.userId, limitsFor(o.tier, o.userId), o.cost, o.at);
    }
  }
  return out.map((decision, index) => {
    if (decision === undefined) throw new Error(`observation ${index} was not replayed`);
    return decision;
  });
}

/** DESIGN §2's accuracy figures for `observed`, judged by the reference model. */
export function computeAccuracy(observed: readonly ObservedDecision[], limitsFor: LimitsFor, options: AccuracyOptions = {}): AccuracyReport {
  const model = new ReferenceModel();
  const overall = new ScopeAccumulator();
  const byTier = new Map<string, ScopeAccumulator>();
  const disagreements: Disagreement[] = [];

  for (const indices of timelinesByUser(observed)) {
    // The open window of each kind for this user; its groups close when the window changes.
    const open = new Map<WindowKind, OpenWindow>();
    for (const index of indices) {
      const o = observed[index]!;
      const limits = limitsFor(o.tier, o.userId);
      const ref = model.decide(o.userId, limits, o.cost, o.at);
      if (ref.allowed !== o.allowedBySystem) disagreements.push({ index, observed: o, reference: ref });
      const counts = countsOf(o, ref);
      let tierScope = byTier.get(o.tier);
      if (tierScope === undefined) {
        tierScope = new ScopeAccumulator();
        byTier.set(o.tier, tierScope);
      }
      for (const scope of [overall, tierScope]) {
        scope.perDecision.add(counts);
        scope.agreement.add(o, ref);
      }
      for (const kind of WINDOW_KINDS) {
        const length = windowLength(limits, kind);
        const start = windowStartOf(ref.at, length);
        let window = open.get(kind);
        if (window !== undefined && (window.start !== start || window.length !== length)) {
          closeWindow(window, kind, overall, byTier);
          window = undefined;
        }
        if (window === undefined) {
          window = { start, length, all: zeroCounts(), byTier: new Map() };
          open.set(kind, window);
        }
        addCounts(window.all, counts);
        let tierCounts = window.byTier.get(o.tier);
        if (tierCounts === undefined) {
          tierCounts = zeroCounts();
          window.byTier.set(o.tier, tierCounts);
        }
        addCounts(tierCounts, counts);
      }
    }
    for (const [kind, window] of open) closeWindow(window, kind, overall, byTier);
  }

  disagreements.sort((a, b) => a.index - b.index);
  const overallReport = overall.report();
  return {
    accuracy: overallReport.byWindow.minute.costUnits.accuracy,
    overall: overallReport,
    byTier: Object.fromEntries([...byTier].map(([tier, scope]) => [tier, scope.report()])),
    disagreementCount: disagreements.length,
    disagreements: disagreements.slice(0, options.maxDisagreements ?? 20),
  };
}

/** Each user's observation indices, stably sorted by `at`. */
function timelinesByUser(observed: readonly ObservedDecision[]): number[][] {
  const byUser = new Map<string, number[]>();
  observed.forEach((o, index) => {
    const list = byUser.get(o.userId);
    if (list === undefined) byUser.set(o.userId, [index]);
    else list.push(index);
  });
  // Array.prototype.sort is stable, and the lists start in input order.
  return [...byUser.values()].map((indices) => indices.sort((a, b) => observed[a]!.at - observed[b]!.at));
}

function windowLength(limits: RefLimits, kind: WindowKind): number {
  if (kind === 'minute') return limits.minuteMs;
  if (kind === 'hour') return limits.hourMs;
  return limits.dayMs;
}

/** What one group (or one decision) admitted: E by the reference, A by the system. */
interface Counts {
  expectedUnits: number;
  admittedUnits: number;
  expectedRequests: number;
  admittedRequests: number;
}

function zeroCounts(): Counts {
  return { expectedUnits: 0, admittedUnits: 0, expectedRequests: 0, admittedRequests: 0 };
}

function countsOf(o: ObservedDecision, ref: RefDecision): Counts {
  const charged = o.cost > 0;
  return {
    expectedUnits: ref.allowed ? o.cost : 0,
    admittedUnits: o.allowedBySystem ? o.cost : 0,
    expectedRequests: charged && ref.allowed ? 1 : 0,
    admittedRequests: charged && o.allowedBySystem ? 1 : 0,
  };
}

function addCounts(into: Counts, counts: Counts): void {
  into.expectedUnits += counts.expectedUnits;
  into.admittedUnits += counts.admittedUnits;
  into.expectedRequests += counts.expectedRequests;
  into.admittedRequests += counts.admittedRequests;
}

interface OpenWindow {
  start: number;
  length: number;
  all: Counts;
  byTier: Map<string, Counts>;
}

function closeWindow(window: OpenWindow, kind: WindowKind, overall: ScopeAccumulator, byTier: Map<string, ScopeAccumulator>): void {
  overall.byWindow[kind].add(window.all);
  for (const [tier, counts] of window.byTier) byTier.get(tier)!.byWindow[kind].add(counts);
}

class TallyAccumulator {
  private expected = 0;
  private admitted = 0;
  private absError = 0;
  private overAdmission = 0;
  private falseDenials = 0;

  add(expected: number, admitted: number): void {
    this.expected += expected;
    this.admitted += admitted;
    this.absError += Math.abs(admitted - expected);
    this.overAdmission += Math.max(0, admitted - expected);
    this.falseDenials += Math.max(0, expected - admitted);
  }

  tally(): Tally {
    const accuracy = this.expected === 0 ? (this.absError === 0 ? 1 : 0) : 1 - this.absError / this.expected;
    return {
      expected: this.expected,
      admitted: this.admitted,
      absError: this.absError,
      overAdmission: this.overAdmission,
      falseDenials: this.falseDenials,
      accuracy,
    };
  }
}

class GroupAccumulator {
  private readonly units = new TallyAccumulator();
  private readonly requests = new TallyAccumulator();
  private groups = 0;

  add(counts: Counts): void {
    this.units.add(counts.expectedUnits, counts.admittedUnits);
    this.requests.add(counts.expectedRequests, counts.admittedRequests);
    this.groups += 1;
  }

  figures(): GroupedFigures {
    return { costUnits: this.units.tally(), requests: this.requests.tally(), groups: this.groups };
  }
}

class AgreementAccumulator {
  private decisions = 0;
  private agreed = 0;
  private systemOnly = 0;
  private referenceOnly = 0;
  private peeks = 0;
  private peeksAgreed = 0;

  add(o: ObservedDecision, ref: RefDecision): void {
    const same = o.allowedBySystem === ref.allowed;
    this.decisions += 1;
    if (same) this.agreed += 1;
    else if (o.allowedBySystem) this.systemOnly += 1;
    else this.referenceOnly += 1;
    if (o.cost === 0) {
      this.peeks += 1;
      if (same) this.peeksAgreed += 1;
    }
  }

  agreement(): Agreement {
    return {
      decisions: this.decisions,
      agreed: this.agreed,
      rate: this.decisions === 0 ? 1 : this.agreed / this.decisions,
      systemOnly: this.systemOnly,
      referenceOnly: this.referenceOnly,
      peeks: this.peeks,
      peeksAgreed: this.peeksAgreed,
    };
  }
}

class ScopeAccumulator {
  readonly byWindow: Record<WindowKind, GroupAccumulator> = {
    minute: new GroupAccumulator(),
    hour: new GroupAccumulator(),
    day: new GroupAccumulator(),
  };
  readonly perDecision = new GroupAccumulator();
  readonly agreement = new AgreementAccumulator();

  report(): ScopeReport {
    return {
      byWindow: {
        minute: this.byWindow.minute.figures(),
        hour: this.byWindow.hour.figures(),
        day: this.byWindow.day.figures(),
      },
      perDecision: this.perDecision.figures(),
      agreement: this.agreement.agreement(),
    };
  }
}
