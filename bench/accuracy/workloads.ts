/**
 * Seeded, reproducible request schedules for the accuracy benchmark. A workload is a list
 * of requests, each with the time (ms after the start of the run) it is meant to be sent
 * at, so the same seed and options always give the same list. Four kinds of users:
 *
 * - steady: a fixed pace (with jitter) at half the tightest of their limits, so an exact
 *   limiter admits every charged request; any denial is a false denial;
 * - bursty: idle, then a burst of more requests than the burst bucket holds, all at once;
 * - hot: a few users far over every limit (minute, hour and day), so the quota runs out;
 * - cold: many ids seen once or twice, as most users of a real service are.
 *
 * Costs above 1 are mixed in, and a share of requests are peeks (cost 0). Bodies are
 * `{user_id, tier, cost}`; user ids carry a prefix so every run uses fresh users.
 */
import { pick, randomInt, seededRandom } from '../lib/random.js';

export type UserKind = 'steady' | 'bursty' | 'hot' | 'cold';
export const USER_KINDS: readonly UserKind[] = ['steady', 'bursty', 'hot', 'cold'];

/** The figures of one tier, per (shortened) window. */
export interface TierFigures {
  burst: number;
  perMinute: number;
  perHour: number;
  perDay: number;
}

export interface WindowLengths {
  minuteMs: number;
  hourMs: number;
  dayMs: number;
}

export interface WorkloadOptions {
  seed: number;
  /** Requests are scheduled in [0, durationMs). */
  durationMs: number;
  /** Prefix of every user id (e.g. scenario and run), so runs never share users. */
  prefix: string;
  steadyUsers: number;
  burstyUsers: number;
  hotUsers: number;
  coldUsers: number;
  /** Requests per second of each hot user. */
  hotRatePerSecond: number;
  /** Share of steady, bursty and hot requests that are peeks (cost 0). */
  peekShare: number;
  tiers: Record<string, TierFigures>;
  windows: WindowLengths;
}

export interface WorkloadRequest {
  /** When to send it, in ms after the start of the run. */
  at: number;
  userId: string;
  tier: string;
  cost: number;
  kind: UserKind;
}

export interface Workload {
  requests: WorkloadRequest[];
  /** Users of each kind, by id (cold users included). */
  users: Record<UserKind, string[]>;
  tierOf: Map<string, string>;
}

/**
 * The steadiest pace (ms between requests of `cost`) that keeps a user at half of its
 * tightest limit, and at most one request a second.
 */
export function steadyIntervalMs(figures: TierFigures, windows: WindowLengths, cost: number): number {
  const perMs = Math.min(figures.perMinute / windows.minuteMs, figures.perHour / windows.hourMs, figures.perDay / windows.dayMs);
  return Math.max(1000, Math.ceil((2 * cost) / perMs));
}

/** Builds the schedule; a pure function of `options`. Sorted by `at` (stable). */
export function buildWorkload(options: WorkloadOptions): Workload {
  const random = seededRandom(options.seed);
  const tierNames = Object.keys(options.tiers).sort();
  if (tierNames.length === 0) throw new Error('a workload needs at least one tier');
  const requests: WorkloadRequest[] = [];
  const users: Record<UserKind, string[]> = { steady: [], bursty: [], hot: [], cold: [] };
  const tierOf = new Map<string, string>();
  const { durationMs } = options;
  const peekOr = (cost: number): number => (random() < options.peekShare ? 0 : cost);
  const newUser = (kind: UserKind, index: number, tier: string): string => {
    const id = `${options.prefix}-${kind}-${index}`;
    users[kind].push(id);
    tierOf.set(id, tier);
    return id;
  };

  for (let i = 0; i < options.steadyUsers; i++) {
    const tier = tierNames[i % tierNames.length]!;
    const userId = newUser('steady', i, tier);
    const cost = random() < 0.25 ? 2 : 1;
    const interval = steadyIntervalMs(options.tiers[tier]!, options.windows, cost);
    // Jitter of ±10 % keeps the pace under half the limit: never two in one interval × 0.8.
    for (let at = Math.floor(random() * interval); at < durationMs; at += Math.round(interval * (0.9 + 0.2 * random()))) {
      requests.push({ at, userId, tier, cost: peekOr(cost), kind: 'steady' });
    }
  }

  for (let i = 0; i < options.burstyUsers; i++) {
    const tier = pick(random, tierNames);
    const userId = newUser('bursty', i, tier);
    const burst = options.tiers[tier]!.burst;
    for (let at = Math.floor(random() * 3000); at < durationMs; at += randomInt(random, 3000, 8000)) {
      const size = burst + randomInt(random, 1, Math.max(1, burst));
      for (let k = 0; k < size; k++) requests.push({ at, userId, tier, cost: peekOr(random() < 0.2 ? 2 : 1), kind: 'bursty' });
    }
  }

  const hotInterval = 1000 / options.hotRatePerSecond;
  for (let i = 0; i < options.hotUsers; i++) {
    const tier = tierNames[i % tierNames.length]!;
    const userId = newUser('hot', i, tier);
    for (let at = random() * hotInterval; at < durationMs; at += hotInterval * (0.5 + random())) {
      requests.push({ at: Math.floor(at), userId, tier, cost: peekOr(randomInt(random, 1, 3)), kind: 'hot' });
    }
  }

  for (let i = 0; i < options.coldUsers; i++) {
    const tier = pick(random, tierNames);
    const userId = newUser('cold', i, tier);
    const at = Math.floor(random() * durationMs);
    requests.push({ at, userId, tier, cost: randomInt(random, 1, 4), kind: 'cold' });
    // One in ten comes back once, shortly after.
    if (random() < 0.1) {
      const again = at + randomInt(random, 10, 2000);
      if (again < durationMs) requests.push({ at: again, userId, tier, cost: 1, kind: 'cold' });
    }
  }

  requests.sort((a, b) => a.at - b.at);
  return { requests, users, tierOf };
}

/** The JSON body of one check request. */
export function requestBody(request: WorkloadRequest): string {
  return JSON.stringify({ user_id: request.userId, tier: request.tier, cost: request.cost });
}

/** Counts per kind, for the report. */
export function describeWorkload(workload: Workload): Record<UserKind, { users: number; requests: number }> {
  const out = Object.fromEntries(USER_KINDS.map((k) => [k, { users: workload.users[k].length, requests: 0 }])) as Record<UserKind, { users: number; requests: number }>;
  for (const r of workload.requests) out[r.kind].requests += 1;
  return out;
}
