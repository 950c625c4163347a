import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { FastCounter, FastHistogram, type CounterSeries } from './fast-metrics.js';

/** What a decision is recorded under: `mode` says which path decided. */
export type DecisionPath = 'local' | 'forwarded' | 'redis' | 'fallback';

/**
 * The node's Prometheus metrics. Every name starts with `rate_limiting_`. Components
 * receive this object and own the meaning of their metrics; the hot path uses
 * pre-bound label children so recording a decision allocates nothing.
 */
export class Metrics {
  readonly registry = new Registry();

  readonly decisions = new FastCounter(
    'rate_limiting_decisions_total',
    'Rate-limit decisions by tier, outcome (allowed/denied), decision code and the path that decided',
    ['tier', 'outcome', 'code', 'path'] as const,
    this.registry,
  );

  readonly decisionSeconds = new FastHistogram(
    'rate_limiting_decision_duration_seconds',
    'Time from receiving a check to having its decision, in seconds',
    [0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1],
    this.registry,
  );

  /** Reads the shard size at scrape time; set by whoever owns the shard. */
  shardSize: () => number = () => 0;

  readonly shardUsers: Gauge = new Gauge({
    name: 'rate_limiting_shard_users',
    help: 'Users whose counters are held in memory by this process',
    registers: [this.registry],
    collect: (): void => this.shardUsers.set(this.shardSize()),
  });

  readonly configInfo = new Gauge({
    name: 'rate_limiting_config_info',
    help: 'Configuration of this node (value is always 1)',
    labelNames: ['mode', 'durability', 'default_tier', 'overage_handling', 'quota_enabled'] as const,
    registers: [this.registry],
  });

  readonly tierLimit = new Gauge({
    name: 'rate_limiting_tier_limit',
    help: 'Configured limit figures per tier',
    labelNames: ['tier', 'limit'] as const,
    registers: [this.registry],
  });

  readonly badRequests = new Counter({
    name: 'rate_limiting_bad_requests_total',
    help: 'Requests rejected before deciding, by route and error code',
    labelNames: ['route', 'code'] as const,
    registers: [this.registry],
  });

  // --- Redis tier (src/storage/redis) ---
  readonly redisUp = new Gauge({
    name: 'rate_limiting_redis_up',
    help: '1 while Redis is connected, 0 while it is not (or not configured)',
    registers: [this.registry],
  });

  readonly loads = new Counter({
    name: 'rate_limiting_state_loads_total',
    help: 'Users not in memory whose counters were loaded before deciding: loaded from Redis, or fresh (Redis unreachable)',
    labelNames: ['result'] as const,
    registers: [this.registry],
  });

  readonly fallbacks = new Counter({
    name: 'rate_limiting_fallback_decisions_total',
    help: 'Decisions made by the fallback policy because neither the owner nor Redis could decide',
    labelNames: ['policy'] as const,
    registers: [this.registry],
  });

  readonly partitioned = new Gauge({
    name: 'rate_limiting_redis_partitioned',
    help: '1 while changes cannot be written to Redis (unreachable or flushes failing)',
    registers: [this.registry],
  });

  readonly syncLag = new Gauge({
    name: 'rate_limiting_sync_lag_seconds',
    help: 'Age of the oldest change in memory that Redis has not seen yet',
    registers: [this.registry],
  });

  readonly syncPendingUsers = new Gauge({
    name: 'rate_limiting_sync_pending_users',
    help: 'Users with changes Redis has not seen yet',
    registers: [this.registry],
  });

  readonly syncPendingRequests = new Gauge({
    name: 'rate_limiting_sync_pending_requests',
    help: 'Admitted request cost (quota units) not yet written to Redis',
    registers: [this.registry],
  });

  readonly syncFlushSeconds = new Histogram({
    name: 'rate_limiting_sync_flush_duration_seconds',
    help: 'Duration of one reconciliation flush',
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
    registers: [this.registry],
  });

  readonly syncFlushedUsers = new Counter({
    name: 'rate_limiting_sync_flushed_users_total',
    help: 'User flushes written to Redis',
    registers: [this.registry],
  });

  readonly syncFailedUsers = new Counter({
    name: 'rate_limiting_sync_failed_users_total',
    help: 'User flushes that failed and were kept for the next attempt',
    registers: [this.registry],
  });

  readonly syncDroppedUsers = new Counter({
    name: 'rate_limiting_sync_dropped_users_total',
    help: 'Evicted users whose unsynced changes were dropped because too many waited',
    registers: [this.registry],
  });

  readonly syncDroppedRequests = new Counter({
    name: 'rate_limiting_sync_dropped_requests_total',
    help: 'Admitted request cost lost with dropped changes',
    registers: [this.registry],
  });

  private readonly decisionSeries = new Map<string, CounterSeries>();

  constructor(options: { processMetrics?: boolean } = {}) {
    if (options.processMetrics !== false) collectDefaultMetrics({ register: this.registry });
  }

  /** Counts one decision; called once per decision on the request path. */
  countDecision(tier: string, allowed: boolean, code: string, path: DecisionPath): void {
    // Tiers are lower case, codes upper case, paths lower case: the joined key is unambiguous.
    const key = tier + code + path;
    let series = this.decisionSeries.get(key);
    if (series === undefined) {
      series = this.decisions.seriesFor({ tier, outcome: allowed ? 'allowed' : 'denied', code, path });
      this.decisionSeries.set(key, series);
    }
    series.count++;
  }
}
