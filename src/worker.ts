import { hostname } from 'node:os';
import type { FastifyInstance } from 'fastify';
import { buildApp } from './api/app.js';
import type { Config } from './config/types.js';
import { Decider } from './node/decider.js';
import { Shard } from './node/shard.js';
import { TierPolicy } from './node/tiers.js';
import type { Logger } from './observability/logger.js';
import { Metrics } from './observability/metrics.js';
import { DecisionSli } from './observability/sli.js';

export interface RunningWorker {
  app: FastifyInstance;
  /** The port actually listened on (differs from config when it is 0). */
  port: number;
  close(): Promise<void>;
}

export function nodeIdOf(config: Config): string {
  return config.service.node_id || `${hostname()}-${config.service.port}`;
}

export interface BuiltNode {
  app: FastifyInstance;
  shard: Shard;
  metrics: Metrics;
  nodeId: string;
}

/**
 * Wiring of one serving process: creates every component in order. `clock` is
 * injectable so tests can drive time; production passes `Date.now`.
 */
export async function buildNode(config: Config, logger: Logger, clock: () => number = Date.now): Promise<BuiltNode> {
  const metrics = new Metrics();
  const sli = new DecisionSli(config.service.decision_timeout * 1000, clock);
  const shard = new Shard(config.limiter.max_users_in_memory);
  const tiers = new TierPolicy(config);
  const decider = new Decider({ shard, tiers, metrics, sli, clock });
  const nodeId = nodeIdOf(config);
  const startedAt = clock();

  metrics.shardSize = () => shard.size;
  metrics.configInfo.set(
    {
      mode: 'local',
      durability: 'memory',
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

  const app = await buildApp({
    config,
    decider,
    tiers,
    metrics,
    logger,
    clock,
    status: {
      nodeId,
      startedAt,
      mode: 'local',
      durability: () => 'memory',
      redisConnected: () => false,
      problems: () => [],
      shardUsers: () => shard.size,
      maxUsers: shard.maxUsers,
      sli: () => sli.snapshot(),
    },
  });
  return { app, shard, metrics, nodeId };
}

/** Builds the node, listens, and closes it in reverse order on `close()`. */
export async function startWorker(config: Config, logger: Logger): Promise<RunningWorker> {
  const { app, nodeId } = await buildNode(config, logger);
  const address = await app.listen({ port: config.service.port, host: config.service.host });
  const port = Number(new URL(address).port);
  logger.info(
    { node_id: nodeId, address, mode: 'local' },
    'listening; durability OFF: no REDIS_ENDPOINT configured, counters live in memory only and are lost on restart',
  );

  return {
    app,
    port,
    async close() {
      await app.close();
    },
  };
}
