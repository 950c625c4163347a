import type { FastifyInstance } from 'fastify';
import type { SliSnapshot } from '../../observability/sli.js';
import type { AppDeps } from '../app.js';

/** Live facts about the node, read on each /health and /status call. */
export interface ClusterStatus {
  self: string;
  membership: string;
  epoch: number;
  members: Array<{ id: string; address: string; self: boolean; via: 'unix' | 'tcp' | null; suspected: boolean; suspected_since: number | null }>;
  decisions_by_path: Record<string, number>;
  forwarded_batches: { batches: number; mean_size: number };
}

export interface NodeStatus {
  nodeId: string;
  workerIndex: number;
  pid: number;
  startedAt: number;
  /** How decisions are made: `local` (memory, write-behind) or `redis` (every decision in Redis). */
  mode: string;
  /** `memory` (nothing survives a restart) or `redis`. */
  durability(): 'memory' | 'redis';
  redisConnected(): boolean;
  /** Reasons the node is degraded; empty when healthy. */
  problems(): string[];
  shardUsers(): number;
  maxUsers: number;
  sli(): SliSnapshot;
  /** Write-behind state, or null without Redis. */
  sync(): { sync_interval_ms: number; pending_users: number; evicted_unsynced_users: number; sync_lag_ms: number } | null;
  /** The ring as this worker sees it, or null outside a cluster. */
  cluster(): ClusterStatus | null;
}

const healthSchema = {
  response: {
    200: {
      type: 'object',
      properties: {
        status: { type: 'string', enum: ['healthy', 'degraded'] },
        service: { type: 'string' },
        redis_connected: { type: 'boolean' },
        timestamp: { type: 'string', format: 'date-time' },
        node_id: { type: 'string' },
        mode: { type: 'string' },
        durability: { type: 'string', enum: ['memory', 'redis'] },
        uptime_seconds: { type: 'number' },
        problems: { type: 'array', items: { type: 'string' } },
      },
    },
  },
} as const;

const statusSchema = {
  response: {
    200: {
      type: 'object',
      properties: {
        service: { type: 'string' },
        node_id: { type: 'string' },
        worker: { type: 'integer' },
        pid: { type: 'integer' },
        mode: { type: 'string' },
        durability: { type: 'string' },
        uptime_seconds: { type: 'number' },
        cluster: {
          type: ['object', 'null'],
          properties: {
            self: { type: 'string' },
            membership: { type: 'string' },
            epoch: { type: 'integer' },
            members: {
              type: 'array',
              items: {
                type: 'object',
                properties: {
                  id: { type: 'string' },
                  address: { type: 'string' },
                  self: { type: 'boolean' },
                  via: { type: ['string', 'null'], enum: ['unix', 'tcp', null], description: 'how this worker reaches the member: a unix socket (same node) or TCP; null for itself' },
                  suspected: { type: 'boolean' },
                  suspected_since: { type: ['integer', 'null'] },
                },
              },
            },
            decisions_by_path: { type: 'object', additionalProperties: { type: 'integer' } },
            forwarded_batches: { type: 'object', properties: { batches: { type: 'integer' }, mean_size: { type: 'number' } } },
          },
        },
        shard: {
          type: 'object',
          properties: { users: { type: 'integer' }, max_users: { type: 'integer' } },
        },
        redis: {
          type: ['object', 'null'],
          properties: {
            connected: { type: 'boolean' },
            sync_interval_ms: { type: 'integer' },
            pending_users: { type: 'integer' },
            evicted_unsynced_users: { type: 'integer' },
            sync_lag_ms: { type: 'integer' },
          },
        },
        decisions: {
          type: 'object',
          properties: {
            window_seconds: { type: 'integer' },
            count: { type: 'integer' },
            decision_timeout_ms: { type: 'number' },
            within_timeout_ratio: { type: 'number' },
            p50_ms: { type: ['number', 'null'] },
            p99_ms: { type: ['number', 'null'] },
          },
        },
      },
    },
  },
} as const;

export function registerHealthRoutes(app: FastifyInstance, deps: AppDeps): void {
  const { status, config, clock } = deps;
  const uptime = (): number => Math.round((clock() - status.startedAt) / 100) / 10;

  app.get('/health', { schema: healthSchema }, async () => {
    const problems = status.problems();
    return {
      status: problems.length === 0 ? 'healthy' : 'degraded',
      service: config.service.name,
      redis_connected: status.redisConnected(),
      timestamp: new Date(clock()).toISOString(),
      node_id: status.nodeId,
      mode: status.mode,
      durability: status.durability(),
      uptime_seconds: uptime(),
      problems,
    };
  });

  app.get('/rate-limiting/status', { schema: statusSchema }, async () => {
    const sli = status.sli();
    return {
      service: config.service.name,
      node_id: status.nodeId,
      worker: status.workerIndex,
      pid: status.pid,
      mode: status.mode,
      durability: status.durability(),
      uptime_seconds: uptime(),
      cluster: status.cluster(),
      shard: { users: status.shardUsers(), max_users: status.maxUsers },
      redis: (() => {
        const sync = status.sync();
        return sync === null ? null : { connected: status.redisConnected(), ...sync };
      })(),
      decisions: {
        window_seconds: sli.windowSeconds,
        count: sli.decisions,
        decision_timeout_ms: config.service.decision_timeout * 1000,
        within_timeout_ratio: sli.withinTimeoutRatio,
        p50_ms: sli.p50Ms,
        p99_ms: sli.p99Ms,
      },
    };
  });

  // One scrape covers the whole node: under the primary, metricsText aggregates every worker.
  app.get('/metrics', async (_request, reply) => {
    const { body, contentType } = await deps.metricsText();
    return reply.type(contentType).send(body);
  });
}
