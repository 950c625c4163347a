import { hostname } from 'node:os';
import type { FastifyInstance } from 'fastify';
import { buildApp } from './api/app.js';
import type { Config } from './config/types.js';
import { WorkerCluster } from './cluster/worker-cluster.js';
import { Decider, type RedisTier } from './node/decider.js';
import { Shard } from './node/shard.js';
import { TierPolicy } from './node/tiers.js';
import type { Logger } from './observability/logger.js';
import { Metrics } from './observability/metrics.js';
import { DecisionSli } from './observability/sli.js';
import { RedisConnection, type RedisSettings } from './storage/redis/connection.js';
import { Reconciler } from './storage/redis/reconciler.js';
import { RedisScripts } from './storage/redis/scripts.js';
import type { Database } from './storage/db/database.js';
import { ApiKeysRepository } from './accounts/api-keys-repository.js';
import { UsersRepository } from './accounts/users-repository.js';
import { KeyResolver, LAST_USED_FLUSH_MS } from './accounts/key-cache.js';
import { UserDirectory } from './accounts/user-directory.js';
import { UserLimits } from './accounts/user-limits.js';
import { InProcessInvalidationBus, type InvalidationBus } from './accounts/invalidation.js';
import { IpcInvalidationBus, RedisInvalidationBus } from './accounts/invalidation-transports.js';
import { AuditChangeFeed } from './accounts/change-feed.js';
import { UsageHistory } from './analytics/usage-history.js';

export interface BuiltNode {
  app: FastifyInstance;
  shard: Shard;
  metrics: Metrics;
  decider: Decider;
  nodeId: string;
  redis: RedisTier | null;
  reconciler: Reconciler | null;
  cluster: WorkerCluster | null;
  /** Usage history (recorder and retention); null without a database or with analytics off. */
  usage: UsageHistory | null;
  /** Stops taking requests, flushes what Redis has not seen, leaves the ring, closes every client. */
  close(): Promise<void>;
}

export interface RunningWorker extends BuiltNode {
  /** The port actually listened on (differs from config when it is 0). */
  port: number;
}

export interface NodeOptions {
  /** Index of this worker within its node (0 when running alone). */
  workerIndex: number;
  /** Take part in a ring (as a worker forked by the node primary). */
  cluster: boolean;
  /** Secret the node's workers share when nothing else provides one. */
  localSecret?: string;
  /** Directory where the node's workers serve each other on unix sockets (set by the primary). */
  siblingSocketDir?: string;
  /** Metrics text for /metrics; default: this process's own registry. */
  metricsText?: () => Promise<{ body: string; contentType: string }>;
  /**
   * The account database (users, API keys, admin API); the node closes it at shutdown.
   * Null runs without accounts: every user is unknown (tests only).
   */
  database?: Database | null;
}

export function nodeIdOf(config: Config): string {
  return config.service.node_id || `${hostname()}-${config.service.port}`;
}

export function redisSettings(config: Config): RedisSettings {
  const { redis, service } = config;
  return {
    endpoint: redis.endpoint,
    topology: redis.topology,
    sentinelMaster: redis.sentinel_master,
    database: redis.database,
    password: redis.password,
    poolSize: redis.connection_pool_size,
    connectTimeoutMs: redis.connection_timeout * 1000,
    // A Redis answer later than the decision timeout is useless to the caller.
    commandTimeoutMs: Math.max(1, Math.round(Math.min(redis.command_timeout, service.decision_timeout) * 1000)),
  };
}

/** How long cached users and keys (and the absence of users) are trusted without a change event. */
const CACHE_BACKSTOP_MS = 300_000;

/** Longest a graceful shutdown waits for Redis to take the last changes. */
const SHUTDOWN_FLUSH_MS = 10_000;

/**
 * Wiring of one serving process: creates every component in order and returns the
 * unstarted HTTP app with a `close()` that takes them down in reverse. `clock` is
 * injectable so tests can drive time; production passes `Date.now`.
 */
export async function buildNode(
  config: Config,
  logger: Logger,
  clock: () => number = Date.now,
  options: NodeOptions = { workerIndex: 0, cluster: false },
): Promise<BuiltNode> {
  const metrics = new Metrics();
  const sli = new DecisionSli(config.service.decision_timeout * 1000, clock);
  const tiers = new TierPolicy(config);
  const nodeId = nodeIdOf(config);
  const startedAt = clock();
  const mode = config.limiter.mode;
  const durable = config.redis.endpoint !== '';
  const workerLogger = options.cluster ? logger.child({ worker: options.workerIndex }) : logger;

  const maxUsers = Math.max(1000, Math.floor(config.limiter.max_users_in_memory / (options.cluster ? config.service.workers : 1)));
  const shard = new Shard({
    maxUsers,
    tracking: durable && mode === 'local',
    maxEvictedDirty: config.redis.max_unsynced_evicted_users,
    onDropped: (_entry, requests) => {
      metrics.syncDroppedUsers.inc();
      metrics.syncDroppedRequests.inc(requests);
    },
  });
  const fallbackShard = new Shard({ maxUsers: Math.min(maxUsers, 100_000), tracking: false, maxEvictedDirty: 0 });

  let redis: RedisTier | null = null;
  let reconciler: Reconciler | null = null;
  if (durable) {
    const connection = new RedisConnection(redisSettings(config), workerLogger.child({ component: 'redis' }));
    const slackMs = Math.max(60_000, config.redis.sync_interval_ms * 10);
    redis = { connection, scripts: new RedisScripts(connection, slackMs) };
    if (mode === 'local') {
      const sync = (reconciler = new Reconciler({
        shard,
        scripts: redis.scripts,
        connection,
        logger: workerLogger.child({ component: 'reconciler' }),
        intervalMs: config.redis.sync_interval_ms,
        maxBatch: 20_000,
        usersPerCall: 200,
        clock,
        metrics: {
          partitioned: (v) => metrics.partitioned.set(v),
          syncLagSeconds: (v) => metrics.setSyncLag(v),
          pending: (users, requests) => {
            metrics.syncPendingUsers.set(users);
            metrics.syncPendingRequests.set(requests);
          },
          flushed: (users, seconds) => {
            metrics.syncFlushedUsers.inc(users);
            metrics.syncFlushSeconds.observe(seconds);
          },
          flushFailed: (users) => metrics.syncFailedUsers.inc(users),
        },
      }));
      connection.on('reset', () => sync.reseedAll());
    }
    connection.on('up', () => metrics.redisUp.set(1));
    connection.on('down', () => metrics.redisUp.set(0));
    metrics.redisUp.set(0);
  }

  // Accounts: who a user is (stored tier and overrides, disabled) and which API keys are good.
  const database = options.database ?? null;
  let accounts: { db: Database; keys: KeyResolver; directory: UserDirectory; invalidation: InvalidationBus } | null = null;
  let feed: AuditChangeFeed | null = null;
  if (database !== null) {
    let invalidation: InvalidationBus;
    if (redis !== null) {
      const bus = new RedisInvalidationBus(redis.connection);
      await bus.start();
      invalidation = bus;
    } else {
      invalidation = options.cluster ? new IpcInvalidationBus() : new InProcessInvalidationBus();
    }
    const accountsLogger = workerLogger.child({ component: 'accounts' });
    // Admin changes arrive as events (below), so the caches' own reloads are only a backstop
    // for changes made around the admin API: every 5 minutes of use, not every 30-60 s.
    const keys = new KeyResolver({ store: new ApiKeysRepository(database, clock), clock, logger: accountsLogger, refreshAfterMs: CACHE_BACKSTOP_MS });
    const directory = new UserDirectory({
      store: new UsersRepository(database, clock), clock, logger: accountsLogger, refreshAfterMs: CACHE_BACKSTOP_MS, unknownTtlMs: CACHE_BACKSTOP_MS,
    });
    keys.listen(invalidation);
    directory.listen(invalidation);
    // The audit log read back (change-feed.ts): every admin change reaches this worker's
    // caches within about a second, also when a pub/sub message was lost or there is no Redis.
    const changes = new InProcessInvalidationBus((err, event) =>
      accountsLogger.warn({ err: (err as Error).message, event: event.type }, 'account change handler failed'),
    );
    keys.listen(changes);
    directory.listen(changes);
    feed = new AuditChangeFeed({
      db: database, deliver: (event) => changes.deliver(event), clock: Date.now, logger: accountsLogger,
      onPoll: (ok, delivered) => {
        metrics.accountChangeFeedUp.set(ok ? 1 : 0);
        metrics.accountChanges.inc(delivered);
      },
    });
    feed.start();
    keys.startFlushing(LAST_USED_FLUSH_MS);
    accounts = { db: database, keys, directory, invalidation };
  }
  const users = new UserLimits(config, tiers, accounts?.directory ?? null);

  // Usage history: every decision is aggregated here and flushed to the database.
  let usage: UsageHistory | null = null;
  if (database !== null && config.usage_analytics.enabled) {
    usage = new UsageHistory(config, database, clock, workerLogger.child({ component: 'usage' }), metrics);
    usage.start({ retention: options.workerIndex === 0 });
  }

  const decider = new Decider({
    shard, users, metrics, sli, clock, mode, redis, reconciler, cluster: null, fallback: config.limiter.fallback_policy, fallbackShard,
    usage: usage?.recorder ?? null,
  });

  metrics.shardSize = () => shard.size;
  metrics.configInfo.set(
    {
      mode,
      durability: durable ? 'redis' : 'memory',
      default_tier: config.user_tiers.default_tier,
      overage_handling: config.quota_management.overage_handling,
      quota_enabled: String(config.quota_management.enabled),
    },
    1,
  );
  for (const tier of tiers.names) {
    const limits = config.rate_limits[tier]!;
    for (const [name, value] of Object.entries(limits)) metrics.tierLimit.set({ tier, limit: name }, value);
  }

  if (redis !== null) {
    const connected = await redis.connection.start(config.redis.connection_timeout * 1000);
    if (!connected) workerLogger.warn({ endpoint: config.redis.endpoint }, 'redis not reachable at start; running from memory until it is');
    reconciler?.start();
  }

  let cluster: WorkerCluster | null = null;
  if (options.cluster) {
    const started = await WorkerCluster.start(
      {
        config, nodeId, workerIndex: options.workerIndex, shard, metrics, logger: workerLogger, redis: redis?.connection ?? null, clock,
        ...(options.localSecret !== undefined ? { localSecret: options.localSecret } : {}),
        ...(options.siblingSocketDir !== undefined ? { siblingSocketDir: options.siblingSocketDir } : {}),
      },
      () => decider,
    );
    cluster = started.cluster;
    decider.attachCluster(started.view);
  }

  const redisConnected = (): boolean => redis?.connection.connected ?? false;
  const app = await buildApp({
    config,
    decider,
    tiers,
    users,
    accounts,
    metrics,
    logger: workerLogger,
    clock,
    metricsText: options.metricsText ?? (async () => ({ body: await metrics.registry.metrics(), contentType: metrics.registry.contentType })),
    status: {
      nodeId,
      workerIndex: options.workerIndex,
      pid: process.pid,
      startedAt,
      mode,
      durability: () => (durable ? 'redis' : 'memory'),
      redisConnected,
      problems: () => {
        const problems: string[] = [];
        if (durable && !redisConnected()) {
          problems.push(
            mode === 'local'
              ? `redis unreachable: deciding from memory; ${shard.dirty.size} users' changes wait for it (durability paused)`
              : `redis unreachable: decisions follow the fallback policy (${config.limiter.fallback_policy})`,
          );
        }
        const suspected = cluster?.view.status().filter((m) => m.suspected).map((m) => m.id) ?? [];
        if (suspected.length > 0) problems.push(`peers suspected, their users decided in Redis: ${suspected.join(', ')}`);
        return problems;
      },
      shardUsers: () => shard.size,
      maxUsers: shard.maxUsers,
      sli: () => sli.snapshot(),
      sync: () =>
        durable
          ? {
              sync_interval_ms: config.redis.sync_interval_ms,
              pending_users: shard.dirty.size,
              evicted_unsynced_users: shard.evictedDirty.size,
              sync_lag_ms: Math.round(metrics.syncLagMs()),
            }
          : null,
      cluster: () =>
        cluster === null
          ? null
          : {
              self: cluster.view.selfId,
              membership: cluster.membershipKind,
              epoch: shard.epoch,
              members: cluster.view.status(),
              decisions_by_path: metrics.decisionsByPath(),
              forwarded_batches: metrics.forwardBatchSummary(),
            },
    },
  });

  return {
    app,
    shard,
    metrics,
    decider,
    nodeId,
    redis,
    reconciler,
    cluster,
    usage,
    async close() {
      await app.close();
      // Flush before leaving the ring, so the next owners load everything; checks peers
      // forward meanwhile are flushed by the second pass.
      if (reconciler !== null) await reconciler.flushAll(SHUTDOWN_FLUSH_MS);
      await cluster?.stop();
      if (reconciler !== null) {
        reconciler.stop();
        const flushed = await reconciler.flushAll(SHUTDOWN_FLUSH_MS);
        if (!flushed) workerLogger.error({ pending_users: shard.dirty.size }, 'shutdown: some changes could not be written to redis');
      }
      feed?.stop();
      await accounts?.keys.stop();
      await usage?.stop();
      await database?.close();
      await redis?.connection.close();
    },
  };
}

/** Builds the node and listens on the configured port. */
export async function startWorker(config: Config, logger: Logger, options?: NodeOptions): Promise<RunningWorker> {
  const node = await buildNode(config, logger, Date.now, options);
  const address = await node.app.listen({ port: config.service.port, host: config.service.host });
  const port = Number(new URL(address).port);
  const durable = config.redis.endpoint !== '';
  if (!options?.cluster) {
    logger.info(
      { node_id: node.nodeId, address, mode: config.limiter.mode, redis: durable ? config.redis.endpoint : null },
      durable
        ? `listening; counters are written behind to Redis every ${config.redis.sync_interval_ms} ms`
        : 'listening; durability OFF: no REDIS_ENDPOINT configured, counters live in memory only and are lost on restart',
    );
  } else {
    logger.info({ worker: options.workerIndex, address }, 'worker listening');
  }
  return { ...node, port };
}
