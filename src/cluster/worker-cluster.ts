import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { networkInterfaces } from 'node:os';
import { join } from 'node:path';
import type { Config } from '../config/types.js';
import type { Decider } from '../node/decider.js';
import type { Shard } from '../node/shard.js';
import type { Logger } from '../observability/logger.js';
import type { Metrics } from '../observability/metrics.js';
import type { RedisConnection } from '../storage/redis/connection.js';
import { CLUSTER_SECRET_KEY } from '../storage/redis/keys.js';
import { ClusterView } from './cluster-view.js';
import { FixedMembership, RedisMembership, nodeMembers, staticMembers, type MembershipSource } from './membership.js';
import type { PeerAnswer } from './peer-protocol.js';
import { startPeerServer, type PeerServer } from './peer-server.js';
import type { Member } from './ring.js';

/**
 * The host other members reach this node at: ADVERTISE_HOST; else the listen address if
 * it is a specific one; else, inside a container, its first external IPv4 address; else
 * loopback (several nodes on one machine).
 */
export function advertiseHost(config: Config): string {
  if (config.cluster.advertise_host !== '') return config.cluster.advertise_host;
  const host = config.service.host;
  if (host !== '0.0.0.0' && host !== '::' && host !== '') return host;
  if (existsSync('/.dockerenv') || process.env.KUBERNETES_SERVICE_HOST !== undefined) {
    for (const addresses of Object.values(networkInterfaces())) {
      const external = addresses?.find((a) => a.family === 'IPv4' && !a.internal);
      if (external) return external.address;
    }
  }
  return '127.0.0.1';
}

/** The cluster secret: configured, else shared through Redis (first node sets it), else per node. */
async function resolveSecret(config: Config, redis: RedisConnection | null, localSecret: string | undefined): Promise<string> {
  if (config.cluster.secret !== '') return config.cluster.secret;
  if (redis !== null && config.cluster.peers === '') {
    const client = redis.client();
    await client.set(CLUSTER_SECRET_KEY, randomBytes(24).toString('hex'), 'NX');
    const shared = await client.get(CLUSTER_SECRET_KEY);
    if (shared) return shared;
  }
  return localSecret ?? randomBytes(24).toString('hex');
}

export interface WorkerClusterOptions {
  config: Config;
  nodeId: string;
  workerIndex: number;
  shard: Shard;
  metrics: Metrics;
  logger: Logger;
  redis: RedisConnection | null;
  clock: () => number;
  /** Secret shared by this node's workers when nothing else provides one (set by the primary). */
  localSecret?: string;
  /** A directory private to this node where its workers serve each other on unix sockets (set by the primary). */
  siblingSocketDir?: string;
}

/**
 * Everything one worker needs to take part in the ring: its peer server, its view of the
 * ring with a client per peer, the membership source, and a watchdog that notices when
 * this worker stalled long enough for peers to have suspected it.
 */
export class WorkerCluster {
  private constructor(
    readonly view: ClusterView,
    private readonly server: PeerServer,
    private readonly membership: MembershipSource,
    private readonly watchdog: NodeJS.Timeout,
  ) {}

  get membershipKind(): MembershipSource['kind'] {
    return this.membership.kind;
  }

  /** Deadline of a forwarded batch: half the decision timeout, so a fallback still fits. */
  static forwardDeadlineMs(config: Config): number {
    return Math.max(20, Math.round(config.service.decision_timeout * 500));
  }

  /**
   * Creates the view (the decider routes through it), then `attach` starts the server and
   * membership once the decider exists.
   */
  static createView(options: WorkerClusterOptions, self: Member, secret: string): ClusterView {
    const { config } = options;
    return new ClusterView({
      self,
      secret,
      deadlineMs: WorkerCluster.forwardDeadlineMs(config),
      batchLimit: config.cluster.batch_limit,
      batchWaitUs: config.cluster.batch_wait_us,
      maxInFlight: config.cluster.max_batches_in_flight,
      healthIntervalMs: config.cluster.health_interval_ms,
      ...(options.siblingSocketDir !== undefined ? { siblingSocket: (index: number) => siblingSocketPath(options.siblingSocketDir!, index) } : {}),
      ring: { vnodes: config.cluster.vnodes, cacheSize: Math.ceil(Math.min(config.limiter.max_users_in_memory, 1_000_000) / 2) },
      shard: options.shard,
      metrics: options.metrics,
      logger: options.logger.child({ component: 'cluster' }),
    });
  }

  static async start(options: WorkerClusterOptions, decider: () => Decider): Promise<{ cluster: WorkerCluster; view: ClusterView }> {
    const { config, nodeId, workerIndex, shard, metrics, logger, redis, clock } = options;
    const log = logger.child({ component: 'cluster', member: `${nodeId}/${workerIndex}` });
    const secret = await resolveSecret(config, redis?.connected ? redis : null, options.localSecret);
    const host = advertiseHost(config);
    const peerPort = config.service.port + config.cluster.peer_port_offset + workerIndex;
    const dynamic = config.cluster.peers === '' && redis !== null;
    // Only static peers reach a worker at its derived port. With membership in Redis the
    // port is advertised; a node alone (no Redis, no peers) is reached by its siblings on
    // unix sockets. Either way a taken port (another process, or an outgoing connection's
    // ephemeral port) must not keep the worker from starting: the OS picks another.
    const alone = config.cluster.peers === '' && redis === null && options.siblingSocketDir !== undefined;

    let view: ClusterView | null = null;
    const server = await startPeerServer({
      host: config.service.host,
      port: peerPort,
      fallbackToFreePort: dynamic || alone,
      secret,
      logger: log,
      ...(options.siblingSocketDir !== undefined ? { unixPath: siblingSocketPath(options.siblingSocketDir, workerIndex) } : {}),
      handler: {
        decideBatch: (_from, checks) => {
          const d = decider();
          const n = checks.user_ids.length;
          const answers = new Array<PeerAnswer | Promise<PeerAnswer>>(n);
          let waiting = false;
          for (let i = 0; i < n; i++) {
            const tier = checks.tiers[i];
            try {
              const outcome = d.decideForPeer({ userId: checks.user_ids[i]!, tier: tier === '' ? undefined : tier, cost: checks.costs[i]! });
              if (outcome instanceof Promise) {
                waiting = true;
                answers[i] = outcome.catch((err: unknown) => asError(err));
              } else {
                answers[i] = outcome;
              }
            } catch (err) {
              answers[i] = asError(err);
            }
          }
          // Users in memory are answered in this turn; only loads from Redis are waited for.
          return waiting ? Promise.all(answers) : (answers as PeerAnswer[]);
        },
        resetQuota: (userId) => decider().resetOwned(userId),
        health: (from, youWereSuspected) => {
          if (youWereSuspected) {
            shard.epoch++;
            metrics.epochBumps.inc({ reason: 'suspected' });
            log.warn({ by: from }, 'a peer suspected this worker; re-reading users from Redis before deciding for them');
          }
          return { member: `${nodeId}/${workerIndex}`, status: 'serving', epoch: shard.epoch };
        },
      },
    });

    const self: Member = { id: `${nodeId}/${workerIndex}`, nodeId, address: `${host.includes(':') ? `[${host}]` : host}:${server.port}` };
    view = WorkerCluster.createView(options, self, secret);

    let membership: MembershipSource;
    if (config.cluster.peers !== '') {
      const members = staticMembers(config.cluster.peers, config.service.workers, config.cluster.peer_port_offset);
      if (!members.some((m) => m.id === self.id)) log.warn({ self: self.id }, 'this node is not in CLUSTER_PEERS; it forwards but owns no users of the others');
      membership = new FixedMembership('static', members);
    } else if (redis !== null) {
      membership = new RedisMembership(self, redis, { heartbeatMs: config.cluster.heartbeat_ms, ttlMs: config.cluster.member_ttl_ms, clock, logger: log });
    } else {
      const base = config.service.port + config.cluster.peer_port_offset;
      membership = new FixedMembership('local', nodeMembers(nodeId, host, base, config.service.workers));
    }
    const ring = view;
    await membership.start((members) => ring.update(members));

    // A stall longer than a forward's deadline may have let peers suspect this worker.
    const stallMs = WorkerCluster.forwardDeadlineMs(config);
    let last = Date.now();
    const watchdog = setInterval(() => {
      const now = Date.now();
      if (now - last > stallMs + 100) {
        shard.epoch++;
        metrics.epochBumps.inc({ reason: 'stall' });
        log.warn({ stalled_ms: now - last - 100 }, 'this worker stalled; re-reading users from Redis before deciding for them');
      }
      last = now;
    }, 100);
    watchdog.unref();

    log.info({ peer_address: self.address, membership: membership.kind }, 'joined the ring');
    return { cluster: new WorkerCluster(view, server, membership, watchdog), view };
  }

  /** Leaves the ring, then stops serving peers. */
  async stop(): Promise<void> {
    clearInterval(this.watchdog);
    await this.membership.stop();
    // Our own streams to peers end first (nothing is forwarded any more: the API is closed),
    // so that peers stopping at the same time, such as our siblings, are not left waiting
    // on them before their servers can shut down.
    this.view.close();
    await this.server.close();
  }
}

/** The unix socket worker `index` of a node serves its siblings on. */
export function siblingSocketPath(dir: string, index: number): string {
  return join(dir, `peer-${index}.sock`);
}

function asError(err: unknown): Error {
  return err instanceof Error ? err : new Error(String(err));
}
