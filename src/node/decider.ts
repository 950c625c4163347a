import { performance } from 'node:perf_hooks';
import type { DecisionMode, FallbackPolicy } from '../config/types.js';
import { decide, newUserState, windowStart, type Decision } from './engine.js';
import type { EffectiveLimits } from './limits.js';
import { newEntry, type Shard } from './shard.js';
import type { TierPolicy } from './tiers.js';
import type { DecisionPath, Metrics } from '../observability/metrics.js';
import type { DecisionSli } from '../observability/sli.js';
import type { RedisConnection } from '../storage/redis/connection.js';
import type { RedisScripts } from '../storage/redis/scripts.js';

export interface CheckInput {
  userId: string;
  /** Tier hint for users the service does not know. */
  tier?: string | undefined;
  /** Integer ≥ 0; 0 is a peek. */
  cost: number;
}

/** Where the counters a local decision used came from. */
export type StateSource = 'memory' | 'loaded' | 'fresh';

export interface CheckOutcome {
  userId: string;
  tier: string;
  decision: Decision;
  /** Which path decided: this worker's memory, a peer, Redis, or the fallback policy. */
  path: DecisionPath;
  /** For local decisions: held in memory, loaded from Redis for this check, or started from rest because Redis was unreachable. */
  state?: StateSource;
}

export interface RedisTier {
  connection: RedisConnection;
  scripts: RedisScripts;
}

export interface DeciderDeps {
  shard: Shard;
  tiers: TierPolicy;
  metrics: Metrics;
  sli: DecisionSli;
  /** Epoch ms; read once per check. */
  clock: () => number;
  /** `local`: memory with write-behind; `redis`: every decision in Redis. */
  mode: DecisionMode;
  /** Absent without REDIS_ENDPOINT. */
  redis: RedisTier | null;
  /** What to do when neither this process's memory nor Redis can decide. */
  fallback: FallbackPolicy;
  /** Counters of the `local` fallback policy (never synced). */
  fallbackShard: Shard;
}

/**
 * Answers checks: resolves who the caller is and which limits apply, then decides on
 * the owner's counters. In `local` mode the owner is this process: a user held in
 * memory is decided synchronously; one that is not is first loaded from Redis, once
 * (concurrent checks wait on the same load). In `redis` mode every decision runs the
 * decide script. The cluster adds "the owner is a peer" as a further path.
 */
export class Decider {
  private readonly loads = new Map<string, Promise<StateSource>>();

  constructor(private readonly deps: DeciderDeps) {}

  get mode(): DecisionMode {
    return this.deps.mode;
  }

  /**
   * Decides one check; synchronous when the user is in this process's memory, so the
   * common path allocates no promise. `count: false` keeps it out of metrics and SLIs
   * (quota reads made by the API itself, not by callers).
   */
  check(input: CheckInput, options?: { count: boolean }): CheckOutcome | Promise<CheckOutcome> {
    const started = performance.now();
    const { shard, tiers, clock } = this.deps;
    const limits = tiers.limitsOf(tiers.tierForHint(input.tier));
    const now = clock();
    const count = options?.count !== false;

    if (this.deps.mode === 'redis') return this.decideInRedis(input, limits, now, started, count);
    const entry = shard.get(input.userId);
    if (entry !== undefined || this.deps.redis === null) {
      const decision =
        entry !== undefined ? shard.decideOn(input.userId, entry, limits, input.cost, now) : shard.decide(input.userId, limits, input.cost, now);
      return this.finish({ userId: input.userId, tier: limits.tier, decision, path: 'local', state: 'memory' }, started, count);
    }
    return this.loadThenDecide(input, limits, now, started, count);
  }

  private async loadThenDecide(input: CheckInput, limits: EffectiveLimits, now: number, started: number, count: boolean): Promise<CheckOutcome> {
    let load = this.loads.get(input.userId);
    if (load === undefined) {
      load = this.load(input.userId, limits, now).finally(() => this.loads.delete(input.userId));
      this.loads.set(input.userId, load);
    }
    const source = await load;
    const { shard } = this.deps;
    let entry = shard.get(input.userId);
    if (entry === undefined) {
      // Evicted again between the load and this waiter (a tiny shard): start it over.
      entry = newEntry(limits);
      shard.insert(input.userId, entry);
    }
    const decision = shard.decideOn(input.userId, entry, limits, input.cost, now);
    return this.finish({ userId: input.userId, tier: limits.tier, decision, path: 'local', state: source }, started, count);
  }

  /** Seeds memory with the user's counters from Redis, or from rest if Redis cannot answer. */
  private async load(userId: string, limits: EffectiveLimits, now: number): Promise<StateSource> {
    const { shard, metrics } = this.deps;
    const redis = this.deps.redis!;
    let source: StateSource = 'fresh';
    let entry = newEntry(limits);
    if (redis.connection.connected) {
      try {
        const stored = await redis.scripts.load(userId, limits, now);
        const state = {
          debt: stored.debt,
          debtAt: stored.debtAt,
          minuteStart: windowStart(now, limits.minuteMs),
          minuteCount: stored.minuteCount,
          hourStart: windowStart(now, limits.hourMs),
          hourCount: stored.hourCount,
          dayStart: windowStart(now, limits.dayMs),
          dayCount: stored.dayCount,
          graceAt: stored.graceAt,
        };
        entry = newEntry(limits, state, stored.version);
        source = 'loaded';
      } catch {
        source = 'fresh';
      }
    }
    metrics.loads.inc({ result: source });
    shard.insert(userId, shard.peek(userId) ?? entry);
    return source;
  }

  private async decideInRedis(input: CheckInput, limits: EffectiveLimits, now: number, started: number, count: boolean): Promise<CheckOutcome> {
    const redis = this.deps.redis;
    if (redis !== null && redis.connection.connected) {
      try {
        const decision = await redis.scripts.decide(input.userId, limits, input.cost, now);
        return this.finish({ userId: input.userId, tier: limits.tier, decision, path: 'redis' }, started, count);
      } catch {
        // fall through to the policy
      }
    }
    return this.finish(this.fallbackDecision(input, limits, now), started, count);
  }

  /** Neither this process's memory nor Redis can decide: the configured policy does. */
  fallbackDecision(input: CheckInput, limits: EffectiveLimits, now: number): CheckOutcome {
    const { fallback, fallbackShard, metrics } = this.deps;
    metrics.fallbacks.inc({ policy: fallback });
    let decision: Decision;
    if (fallback === 'local') {
      decision = fallbackShard.decide(input.userId, limits, input.cost, now);
    } else {
      const view = decide(newUserState(), limits, 0, now);
      decision =
        fallback === 'allow'
          ? { ...view, allowed: true, code: 'OK', limitedBy: null, retryAfterMs: 0 }
          : { ...view, allowed: false, code: 'UNAVAILABLE', limitedBy: null, retryAfterMs: 1000 };
    }
    return { userId: input.userId, tier: limits.tier, decision, path: 'fallback' };
  }

  private finish(outcome: CheckOutcome, started: number, count: boolean): CheckOutcome {
    if (!count) return outcome;
    const { metrics, sli } = this.deps;
    const ms = performance.now() - started;
    metrics.countDecision(outcome.tier, outcome.decision.allowed, outcome.decision.code, outcome.path);
    metrics.decisionSeconds.observe(ms / 1000);
    sli.record(ms, outcome.decision.now);
    return outcome;
  }
}
