import { getHeapStatistics } from 'node:v8';
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

  readonly heapLimit: Gauge = new Gauge({
    name: 'rate_limiting_heap_limit_bytes',
    help:
      "V8's heap size limit of this process (node's --max-old-space-size plus the young generation); " +
      'nodejs_heap_size_used_bytes over it is how full the heap may get before the process runs out of memory',
    registers: [this.registry],
    collect: (): void => this.heapLimit.set(getHeapStatistics().heap_size_limit),
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
    aggregator: 'max',
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

  // --- Cluster (src/cluster) ---
  readonly ringMembers = new Gauge({
    name: 'rate_limiting_ring_members',
    help: 'Workers in the consistent-hash ring as this worker sees it',
    registers: [this.registry],
    aggregator: 'max',
  });

  readonly suspectedPeers = new Gauge({
    name: 'rate_limiting_suspected_peers',
    help: 'Ring members this worker currently suspects (their users are decided in Redis)',
    registers: [this.registry],
    aggregator: 'max',
  });

  readonly suspicions = new Counter({
    name: 'rate_limiting_peer_suspicions_total',
    help: 'Times a peer was suspected after a failed or timed-out forward',
    registers: [this.registry],
  });

  readonly recoveries = new Counter({
    name: 'rate_limiting_peer_recoveries_total',
    help: 'Times a suspected peer answered health checks again',
    registers: [this.registry],
  });

  readonly forwardBatchSize = new Histogram({
    name: 'rate_limiting_forward_batch_size',
    help: 'Checks per batch forwarded to a peer owner',
    buckets: [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024],
    registers: [this.registry],
  });

  readonly peerDecisions = new Counter({
    name: 'rate_limiting_peer_decisions_total',
    help: 'Checks decided here as the owner for a peer that received them (counted as decisions by that peer)',
    registers: [this.registry],
  });

  readonly forwardErrors = new Counter({
    name: 'rate_limiting_forward_errors_total',
    help: 'Forwarded checks that failed and were decided another way',
    registers: [this.registry],
  });

  readonly ringChanges = new Counter({
    name: 'rate_limiting_ring_changes_total',
    help: 'Membership changes that rebuilt the ring',
    registers: [this.registry],
  });

  readonly epochBumps = new Counter({
    name: 'rate_limiting_shard_epoch_bumps_total',
    help: 'Times this worker marked its users for re-reading from Redis, by reason',
    labelNames: ['reason'] as const,
    registers: [this.registry],
  });

  readonly staleRefreshes = new Counter({
    name: 'rate_limiting_stale_refreshes_total',
    help: 'Users re-read from Redis before deciding again after an epoch bump, by result',
    labelNames: ['result'] as const,
    registers: [this.registry],
  });

  // --- Accounts (src/accounts) ---
  readonly accountChanges = new Counter({
    name: 'rate_limiting_account_changes_total',
    help: 'Admin changes (users, API keys) read back from the audit log and applied to the caches',
    registers: [this.registry],
  });

  readonly accountChangeFeedUp = new Gauge({
    name: 'rate_limiting_account_change_feed_up',
    help: '1 when the last poll of the audit log for account changes succeeded (min over workers)',
    registers: [this.registry],
    aggregator: 'min',
  });

  // --- Usage history (src/analytics) ---
  readonly usageBufferedRows = new Gauge({
    name: 'rate_limiting_usage_buffered_rows',
    help: 'Usage aggregates (user, key, tier, minute) in memory waiting to be written to the database',
    registers: [this.registry],
  });

  readonly usageLag = new Gauge({
    name: 'rate_limiting_usage_recording_lag_seconds',
    help: 'Age of the oldest usage aggregate not yet written to the database',
    registers: [this.registry],
    aggregator: 'max',
  });

  readonly usageDropped = new Counter({
    name: 'rate_limiting_usage_dropped_total',
    help: 'Decisions whose usage was dropped because too much waited for the database',
    registers: [this.registry],
  });

  readonly usageFlushes = new Counter({
    name: 'rate_limiting_usage_flushes_total',
    help: 'Usage writes to the database, by result (failed writes are kept and retried)',
    labelNames: ['result'] as const,
    registers: [this.registry],
  });

  readonly usageRetentionDeleted = new Counter({
    name: 'rate_limiting_usage_retention_deleted_rows_total',
    help: 'Usage rows deleted by the retention job, by table',
    labelNames: ['table'] as const,
    registers: [this.registry],
  });

  private readonly decisionSeries = new Map<string, CounterSeries>();

  constructor(options: { processMetrics?: boolean } = {}) {
    if (options.processMetrics !== false) collectDefaultMetrics({ register: this.registry });
  }

  /** Decisions this process made (or forwarded), by path — for /rate-limiting/status. */
  decisionsByPath(): Record<string, number> {
    const byPath: Record<string, number> = { local: 0, forwarded: 0, redis: 0, fallback: 0 };
    for (const v of this.decisions.values()) {
      const path = String(v.labels.path);
      byPath[path] = (byPath[path] ?? 0) + v.value;
    }
    return byPath;
  }

  private batches = { count: 0, checks: 0 };
  private lastSyncLagSeconds = 0;

  /** One batch of `size` checks forwarded to a peer. */
  observeForwardBatch(size: number): void {
    this.forwardBatchSize.observe(size);
    this.batches.count++;
    this.batches.checks += size;
  }

  /** Forwarded batches so far: how many, and their mean size. */
  forwardBatchSummary(): { batches: number; mean_size: number } {
    const { count, checks } = this.batches;
    return { batches: count, mean_size: count === 0 ? 0 : Math.round((checks / count) * 10) / 10 };
  }

  setSyncLag(seconds: number): void {
    this.syncLag.set(seconds);
    this.lastSyncLagSeconds = seconds;
  }

  /** The last reported sync lag, in ms. */
  syncLagMs(): number {
    return this.lastSyncLagSeconds * 1000;
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
