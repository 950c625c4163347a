import { describe, expect, it } from 'vitest';
import { toObservations } from '../bench/accuracy/index.js';
import type { Answer } from '../bench/accuracy/load.js';
import { TIERS, WINDOWS, limitEnvironment, refLimitsFromEnv } from '../bench/accuracy/scenarios.js';
import { buildWorkload, requestBody, type Workload, type WorkloadOptions, type WorkloadRequest } from '../bench/accuracy/workloads.js';
import { ReferenceModel, type RefDecision } from '../bench/reference/model.js';

/** The accuracy benchmark's workloads and bookkeeping: pure logic, no processes. */

const OPTIONS: WorkloadOptions = {
  seed: 42,
  durationMs: 130_000,
  prefix: 'test',
  steadyUsers: 30,
  burstyUsers: 12,
  hotUsers: 6,
  coldUsers: 3000,
  hotRatePerSecond: 8,
  peekShare: 0.02,
  tiers: TIERS,
  windows: WINDOWS,
};

const limitsOf = (tier: string) => refLimitsFromEnv(limitEnvironment(), tier);

function byUser(requests: WorkloadRequest[]): Map<string, WorkloadRequest[]> {
  const out = new Map<string, WorkloadRequest[]>();
  for (const r of requests) {
    const list = out.get(r.userId);
    if (list) list.push(r);
    else out.set(r.userId, [r]);
  }
  return out;
}

/** Every request of `kind`, decided by the reference at its scheduled time. */
function replay(workload: Workload, kind: WorkloadRequest['kind']): Array<{ request: WorkloadRequest; decision: RefDecision }> {
  const model = new ReferenceModel();
  return workload.requests.filter((r) => r.kind === kind).map((request) => ({ request, decision: model.decide(request.userId, limitsOf(request.tier), request.cost, request.at) }));
}

describe('accuracy workloads', () => {
  const workload = buildWorkload(OPTIONS);

  it('is a pure function of its seed', () => {
    expect(buildWorkload(OPTIONS)).toEqual(workload);
    const other = buildWorkload({ ...OPTIONS, seed: 43 });
    expect(other.requests.map((r) => [r.at, r.userId, r.cost])).not.toEqual(workload.requests.map((r) => [r.at, r.userId, r.cost]));
  });

  it('is sorted by send time, inside the run, with the promised users of every kind', () => {
    const times = workload.requests.map((r) => r.at);
    expect(times).toEqual([...times].sort((a, b) => a - b));
    expect(times[0]).toBeGreaterThanOrEqual(0);
    expect(times.at(-1)).toBeLessThan(OPTIONS.durationMs);
    expect(workload.users.steady).toHaveLength(OPTIONS.steadyUsers);
    expect(workload.users.bursty).toHaveLength(OPTIONS.burstyUsers);
    expect(workload.users.hot).toHaveLength(OPTIONS.hotUsers);
    expect(new Set(workload.users.cold).size).toBe(OPTIONS.coldUsers);
    const requestsOf = byUser(workload.requests);
    for (const kind of ['steady', 'bursty', 'hot', 'cold'] as const) {
      for (const id of workload.users[kind]) expect(requestsOf.get(id)?.length ?? 0, id).toBeGreaterThan(0);
    }
    for (const id of workload.users.cold) expect(requestsOf.get(id)!.length, id).toBeLessThanOrEqual(2);
    expect(new Set(workload.requests.map((r) => r.tier))).toEqual(new Set(Object.keys(TIERS)));
    // Runs cross minute, hour and day windows.
    expect(times.at(-1)! - times[0]!).toBeGreaterThan(WINDOWS.dayMs);
  });

  it('mixes costs above 1 and peeks (cost 0), never on cold users', () => {
    const costs = workload.requests.map((r) => r.cost);
    expect(costs.every((c) => Number.isInteger(c) && c >= 0)).toBe(true);
    expect(costs.filter((c) => c > 1).length).toBeGreaterThan(workload.requests.length / 20);
    const peeks = workload.requests.filter((r) => r.cost === 0);
    expect(peeks.length).toBeGreaterThan(0);
    expect(peeks.some((r) => r.kind === 'cold')).toBe(false);
  });

  it('keeps steady users under every limit: the reference admits each of their requests', () => {
    const decided = replay(workload, 'steady');
    expect(decided.length).toBeGreaterThan(500);
    const denied = decided.filter((d) => !d.decision.allowed);
    expect(denied.map((d) => `${d.request.userId}@${d.request.at}: ${d.decision.limitedBy}`)).toEqual([]);
  });

  it('sends bursts larger than the bucket holds, all at one instant', () => {
    for (const [id, requests] of byUser(workload.requests.filter((r) => r.kind === 'bursty'))) {
      const atOnce = new Map<number, number>();
      for (const r of requests) atOnce.set(r.at, (atOnce.get(r.at) ?? 0) + 1);
      expect(Math.max(...atOnce.values()), id).toBeGreaterThan(TIERS[requests[0]!.tier]!.burst);
    }
    const refused = replay(workload, 'bursty').filter((d) => !d.decision.allowed);
    expect(new Set(refused.map((d) => d.decision.limitedBy))).toContain('burst');
  });

  it('drives hot users far over their limits, up to the day quota', () => {
    const decided = replay(workload, 'hot').filter((d) => d.request.cost > 0);
    const denied = decided.filter((d) => !d.decision.allowed);
    expect(denied.length).toBeGreaterThan(decided.length / 2);
    const limitedBy = new Set(denied.map((d) => d.decision.limitedBy));
    expect(limitedBy).toContain('day');
    expect(['burst', 'minute', 'hour'].some((l) => limitedBy.has(l as RefDecision['limitedBy']))).toBe(true);
    // The quota ran out, and grace passed some requests before the block.
    expect(decided.some((d) => d.decision.code === 'GRACE')).toBe(true);
  });

  it('sends bodies of exactly {user_id, tier, cost}', () => {
    expect(JSON.parse(requestBody({ at: 5, userId: 'u-1', tier: 'premium', cost: 3, kind: 'hot' }))).toEqual({ user_id: 'u-1', tier: 'premium', cost: 3 });
  });
});

describe('accuracy bookkeeping', () => {
  it('gives the reference the limits the nodes are configured with', () => {
    const env = limitEnvironment();
    expect(env.QUOTA_RESET_INTERVAL).toBe(String(WINDOWS.dayMs / 1000));
    for (const [tier, figures] of Object.entries(TIERS)) {
      const limits = refLimitsFromEnv(env, tier);
      expect(limits).toMatchObject({ ...figures, ...WINDOWS, quotaEnabled: true, overage: 'block', graceMs: 4000 });
      expect(env[`RATE_LIMIT_${tier.toUpperCase()}_BURST_LIMIT`]).toBe(String(figures.burst));
    }
    expect(() => refLimitsFromEnv({ ...env, RATE_LIMIT_BASIC_BURST_LIMIT: 'x' }, 'basic')).toThrow(/RATE_LIMIT_BASIC_BURST_LIMIT/);
  });

  it('orders one user\'s decisions of the same ms as the node made them, by the usage they left', () => {
    const requests: WorkloadRequest[] = [
      { at: 0, userId: 'u', tier: 'basic', cost: 1, kind: 'bursty' },
      { at: 0, userId: 'u', tier: 'basic', cost: 1, kind: 'bursty' },
      { at: 0, userId: 'u', tier: 'basic', cost: 1, kind: 'bursty' },
    ];
    const workload: Workload = { requests, users: { steady: [], bursty: ['u'], hot: [], cold: [] }, tierOf: new Map([['u', 'basic']]) };
    const answer = (index: number, allowed: boolean, dayUsage: number, decidedAt = 1000): Answer => ({ index, allowed, decidedAt, dayUsage, code: '', mode: 'local', receivedAt: 0 });
    // Received out of order: the denial (usage 2) first, then the admissions to 2 and to 1.
    const observed = toObservations([answer(0, false, 2), answer(1, true, 2), answer(2, true, 1), answer(0, true, 0, 999)], workload);
    expect(observed.map((o) => [o.at, o.allowedBySystem])).toEqual([
      [999, true],
      [1000, true],
      [1000, true],
      [1000, false],
    ]);
  });
});
