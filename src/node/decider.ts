import { performance } from 'node:perf_hooks';
import type { DecisionMode, FallbackPolicy } from '../config/types.js';
import { decide, newUserState, windowStart, type Decision, type DecisionCode } from './engine.js';
import type { EffectiveLimits } from './limits.js';
import { newEntry, type Shard, type ShardEntry, type UsageSlot } from './shard.js';
import type { UserLimits, UserLimitsResult } from '../accounts/user-limits.js';
import type { DecisionPath, Metrics } from '../observability/metrics.js';
import type { DecisionSli } from '../observability/sli.js';
import type { RedisConnection } from '../storage/redis/connection.js';
import type { RedisScripts } from '../storage/redis/scripts.js';
import type { Reconciler } from '../storage/redis/reconciler.js';
import type { ClusterView } from '../cluster/cluster-view.js';

export interface CheckInput {
  userId: string;
  /** Tier hint for users the service does not know. */
  tier?: string | undefined;
  /** Integer ≥ 0; 0 is a peek. */
  cost: number;
  /** The API key the check came with (its id), for usage history. */
  keyId?: string | undefined;
}

/**
 * Where the counters a local decision used came from: memory; loaded from Redis for this
 * check; re-read from Redis because others may have decided for the user meanwhile
 * (refreshed); or from rest because Redis could not answer (fresh).
 */
export type StateSource = 'memory' | 'loaded' | 'refreshed' | 'fresh';

export interface CheckOutcome {
  userId: string;
  tier: string;
  decision: Decision;
  /** Which path decided: this worker's memory, a peer, Redis, or the fallback policy. */
  path: DecisionPath;
  /** For local decisions: held in memory, loaded from Redis for this check, or started from rest because Redis was unreachable. */
  state?: StateSource;
  /** The limits the receiving worker resolved for the user (for the response headers). */
  limits?: EffectiveLimits;
  /** For decisions on this worker's own counters: the user's entry, where usage recording keeps the user's current row. */
  entry?: UsageSlot;
}

export interface RedisTier {
  connection: RedisConnection;
  scripts: RedisScripts;
}

export interface DeciderDeps {
  shard: Shard;
  /** Which limits a user is held to (stored users, else the tier hint). */
  users: UserLimits;
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
  /** Write-behind of the shard; null unless local mode with Redis. */
  reconciler: Reconciler | null;
  /** The ring; null when this process is the only decider. */
  cluster: ClusterView | null;
  /** Usage history: told about every counted decision (absent when analytics are off). */
  usage?: UsageSink | null;
}

/** Takes every counted decision for usage history; must not block or throw. */
export interface UsageSink {
  record(outcome: CheckOutcome, cost: number, keyId: string | null): void;
}

/**
 * Answers checks: resolves which limits apply, reads the user's owner from the ring
 * once, and decides on the owner's counters:
 *  - owner is this worker: a user held in memory is decided synchronously; one that is
 *    not is loaded from Redis first, and one from an older epoch re-read (each once:
 *    concurrent checks of that user wait on the same load);
 *  - owner is a healthy peer: the check joins the next batch to that peer;
 *  - owner is suspected, or the forward fails: decided in Redis (or by the fallback
 *    policy when Redis is away too).
 * In `redis` mode every decision runs the decide script instead.
 */
export class Decider {
  /** Loads and refreshes in flight, by user (single-flight). */
  private readonly loads = new Map<string, Promise<StateSource>>();

  constructor(private readonly deps: DeciderDeps) {}

  /** Joins the ring (once the worker's cluster view exists). */
  attachCluster(cluster: ClusterView): void {
    this.deps.cluster = cluster;
  }

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
    const now = this.deps.clock();
    const count = options?.count !== false;
    const found = this.deps.users.limitsFor(input.userId, input.tier);
    return found instanceof Promise
      ? found.then((f) => this.checkWith(input, f, now, started, count))
      : this.checkWith(input, found, now, started, count);
  }

  /**
   * The user's counters as a peek (cost 0), for /quota: not counted as a decision, and
   * answered for disabled users too.
   */
  read(userId: string, tierHint: string | undefined): CheckOutcome | Promise<CheckOutcome> {
    const input = { userId, tier: tierHint, cost: 0 };
    const started = performance.now();
    const now = this.deps.clock();
    const found = this.deps.users.limitsFor(userId, tierHint);
    const readWith = (f: UserLimitsResult) => this.checkWith(input, { ...f, disabled: false }, now, started, false);
    return found instanceof Promise ? found.then(readWith) : readWith(found);
  }

  /**
   * A check refused before any limit is consulted (an invalid, expired or revoked API key,
   * or the key store unavailable): no counter is touched. Counted like any decision.
   */
  refuse(input: CheckInput, code: DecisionCode, options?: { count: boolean }): CheckOutcome | Promise<CheckOutcome> {
    const started = performance.now();
    const now = this.deps.clock();
    const found = this.deps.users.limitsFor(input.userId, input.tier);
    const done = (f: UserLimitsResult): CheckOutcome => this.finish(refusal(input.userId, f.limits, code, now), started, options?.count !== false, input);
    return found instanceof Promise ? found.then(done) : done(found);
  }

  private checkWith(input: CheckInput, found: UserLimitsResult, now: number, started: number, count: boolean): CheckOutcome | Promise<CheckOutcome> {
    const limits = found.limits;
    if (found.disabled) return this.finish(refusal(input.userId, limits, 'USER_DISABLED', now), started, count, input);
    if (this.deps.mode === 'redis') return this.decideInRedis(input, limits, now, started, count);
    const route = this.deps.cluster?.route(input.userId);
    if (route === undefined || route.kind === 'self') return this.decideOwned(input, limits, now, started, count);
    if (route.kind === 'suspect') return this.decideInRedis(input, limits, now, started, count);
    return route.client.decide({ user_id: input.userId, tier: input.tier ?? '', cost: input.cost }).then(
      (outcome) => {
        if (outcome.path === 'local') outcome.path = 'forwarded';
        outcome.limits = limits;
        return this.finish(outcome, started, count, input);
      },
      (err: Error) => {
        this.deps.cluster!.suspect(route.member.id, err.message);
        this.deps.metrics.forwardErrors.inc();
        return this.decideInRedis(input, limits, now, started, count);
      },
    );
  }

  /**
   * Decides a check a peer forwarded because it sees this worker as the owner. Decided
   * here whatever this worker's own ring says, so a check never travels twice. The peer
   * that received the check counts it as a decision; here it counts as a peer decision.
   */
  decideForPeer(input: CheckInput): CheckOutcome | Promise<CheckOutcome> {
    const started = performance.now();
    const now = this.deps.clock();
    this.deps.metrics.peerDecisions.inc();
    const decideWith = (found: UserLimitsResult): CheckOutcome | Promise<CheckOutcome> => {
      if (found.disabled) return refusal(input.userId, found.limits, 'USER_DISABLED', now);
      if (this.deps.mode === 'redis') return this.decideInRedis(input, found.limits, now, started, false);
      return this.decideOwned(input, found.limits, now, started, false);
    };
    const found = this.deps.users.limitsFor(input.userId, input.tier);
    return found instanceof Promise ? found.then(decideWith) : decideWith(found);
  }

  /**
   * An admin reset of the user's current quota window, carried out by the user's owner
   * (this worker, or the owning peer), so memory, pending writes and Redis agree.
   * Rejects when the owner cannot be reached.
   */
  async resetQuota(userId: string): Promise<void> {
    const route = this.deps.cluster?.route(userId);
    if (route?.kind === 'peer') return route.client.resetQuota(userId);
    if (route?.kind === 'suspect') throw new Error(`the owner of ${userId} (${route.member.id}) is not answering; try again shortly`);
    return this.resetOwned(userId);
  }

  /** The reset, by this worker as the owner. */
  async resetOwned(userId: string): Promise<void> {
    const now = this.deps.clock();
    const found = this.deps.users.limitsFor(userId, undefined);
    const { limits } = found instanceof Promise ? await found : found;
    const { redis, reconciler, shard } = this.deps;
    if (reconciler !== null) return reconciler.resetQuota(userId, limits, now);
    if (redis !== null && this.deps.mode === 'redis') return redis.scripts.resetQuota(userId, limits, now);
    const entry = shard.peek(userId);
    if (entry !== undefined && entry.dayStart === windowStart(now, limits.dayMs)) {
      entry.dayCount = 0;
      entry.graceAt = -1;
    }
  }

  /** This worker owns the user. */
  private decideOwned(input: CheckInput, limits: EffectiveLimits, now: number, started: number, count: boolean): CheckOutcome | Promise<CheckOutcome> {
    const { shard } = this.deps;
    const entry = shard.get(input.userId);
    if (entry !== undefined && (entry.epoch === shard.epoch || this.deps.reconciler === null)) {
      const decision = shard.decideOn(input.userId, entry, limits, input.cost, now);
      return this.finish({ userId: input.userId, tier: limits.tier, limits, decision, path: 'local', state: 'memory', entry }, started, count, input);
    }
    if (entry === undefined && this.deps.redis === null) {
      const decision = shard.decide(input.userId, limits, input.cost, now);
      return this.finish({ userId: input.userId, tier: limits.tier, limits, decision, path: 'local', state: 'memory' }, started, count, input);
    }
    return this.prepareThenDecide(input, limits, now, started, count);
  }

  /** Loads the user (not in memory) or re-reads it (older epoch) once, then decides. */
  private async prepareThenDecide(input: CheckInput, limits: EffectiveLimits, now: number, started: number, count: boolean): Promise<CheckOutcome> {
    let prepared = this.loads.get(input.userId);
    if (prepared === undefined) {
      const entry = this.deps.shard.get(input.userId);
      prepared = (entry === undefined ? this.load(input.userId, limits, now) : this.refresh(input.userId, entry)).finally(() =>
        this.loads.delete(input.userId),
      );
      this.loads.set(input.userId, prepared);
    }
    const source = await prepared;
    const { shard } = this.deps;
    let entry = shard.get(input.userId);
    if (entry === undefined) {
      // Evicted again between the load and this waiter (a tiny shard): start it over.
      entry = newEntry(limits, undefined, -1, shard.epoch);
      shard.insert(input.userId, entry);
    }
    const decision = shard.decideOn(input.userId, entry, limits, input.cost, now);
    return this.finish({ userId: input.userId, tier: limits.tier, limits, decision, path: 'local', state: source, entry }, started, count, input);
  }

  /** Re-reads an entry from an older epoch: flush its changes, adopt what others added. */
  private async refresh(userId: string, entry: ShardEntry): Promise<StateSource> {
    const { shard, metrics, reconciler } = this.deps;
    const epoch = shard.epoch;
    try {
      await reconciler!.refresh(userId, entry);
      metrics.staleRefreshes.inc({ result: 'refreshed' });
    } catch {
      // Redis cannot answer: memory is the best there is.
      metrics.staleRefreshes.inc({ result: 'failed' });
    }
    entry.epoch = epoch;
    return 'refreshed';
  }

  /** Seeds memory with the user's counters from Redis, or from rest if Redis cannot answer. */
  private async load(userId: string, limits: EffectiveLimits, now: number): Promise<StateSource> {
    const { shard, metrics } = this.deps;
    const redis = this.deps.redis!;
    let source: StateSource = 'fresh';
    let entry = newEntry(limits, undefined, -1, shard.epoch);
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
        entry = newEntry(limits, state, stored.version, shard.epoch);
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
        return this.finish({ userId: input.userId, tier: limits.tier, limits, decision, path: 'redis' }, started, count, input);
      } catch {
        // fall through to the policy
      }
    }
    return this.finish(this.fallbackDecision(input, limits, now), started, count, input);
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
    return { userId: input.userId, tier: limits.tier, limits, decision, path: 'fallback' };
  }

  private finish(outcome: CheckOutcome, started: number, count: boolean, input: CheckInput): CheckOutcome {
    if (!count) return outcome;
    const { metrics, sli, usage } = this.deps;
    const ms = performance.now() - started;
    metrics.countDecision(outcome.tier, outcome.decision.allowed, outcome.decision.code, outcome.path);
    metrics.decisionSeconds.observe(ms / 1000);
    sli.record(ms, outcome.decision.now);
    usage?.record(outcome, input.cost, input.keyId ?? null);
    return outcome;
  }
}

/** The answer to a check refused before any limit was consulted: nothing charged, nothing left. */
function refusal(userId: string, limits: EffectiveLimits, code: DecisionCode, now: number): CheckOutcome {
  const status = (limit: number) => ({ limit, remaining: 0, reset_at: now });
  const decision: Decision = {
    allowed: false,
    code,
    limitedBy: null,
    retryAfterMs: null,
    limits: { burst: status(limits.burst), minute: status(limits.perMinute), hour: status(limits.perHour), day: status(limits.perDay) },
    quotaUsed: 0,
    charged: 0,
    graceStarted: false,
    now,
  };
  return { userId, tier: limits.tier, limits, decision, path: 'local' };
}
