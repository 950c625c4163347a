import { performance } from 'node:perf_hooks';
import type { Decision } from './engine.js';
import type { Shard } from './shard.js';
import type { TierPolicy } from './tiers.js';
import type { DecisionPath, Metrics } from '../observability/metrics.js';
import type { DecisionSli } from '../observability/sli.js';

export interface CheckInput {
  userId: string;
  /** Tier hint for users the service does not know. */
  tier?: string | undefined;
  /** Integer ≥ 0; 0 is a peek. */
  cost: number;
}

export interface CheckOutcome {
  userId: string;
  tier: string;
  decision: Decision;
  /** Which path decided: this worker's memory, a peer, Redis, or the fallback policy. */
  path: DecisionPath;
}

export interface DeciderDeps {
  shard: Shard;
  tiers: TierPolicy;
  metrics: Metrics;
  sli: DecisionSli;
  /** Epoch ms; read once per check. */
  clock: () => number;
}

/**
 * Answers checks: resolves who the caller is and which limits apply, then decides on
 * the owner's counters. Today every user is owned by this process's shard; the
 * cluster adds "owner is a peer" and "owner is down, decide in Redis" as further
 * paths of `route`.
 */
export class Decider {
  constructor(private readonly deps: DeciderDeps) {}

  /**
   * Decides one check; synchronous when this process owns the user, so the request
   * path allocates no promise. `count: false` keeps it out of metrics and SLIs (quota
   * reads made by the API itself, not by callers).
   */
  check(input: CheckInput, options?: { count: boolean }): CheckOutcome | Promise<CheckOutcome> {
    const started = performance.now();
    const { shard, tiers, clock } = this.deps;
    const tier = tiers.tierForHint(input.tier);
    const limits = tiers.limitsOf(tier);
    const now = clock();
    const decision = shard.decide(input.userId, limits, input.cost, now);
    const outcome: CheckOutcome = { userId: input.userId, tier: limits.tier, decision, path: 'local' };
    if (options?.count !== false) this.record(outcome, performance.now() - started);
    return outcome;
  }

  private record(outcome: CheckOutcome, ms: number): void {
    const { metrics, sli } = this.deps;
    metrics.countDecision(outcome.tier, outcome.decision.allowed, outcome.decision.code, outcome.path);
    metrics.decisionSeconds.observe(ms / 1000);
    sli.record(ms, outcome.decision.now);
  }
}
