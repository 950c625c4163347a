import cluster, { type Worker } from 'node:cluster';
import { randomBytes } from 'node:crypto';
import { mkdirSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AggregatorRegistry } from 'prom-client';
import type { Config } from '../config/types.js';
import type { Logger } from '../observability/logger.js';
import { PGLITE_SOCKET_ENV, startPrimaryDatabase } from '../storage/db/node-database.js';
import { IPC_INVALIDATE } from '../accounts/invalidation-transports.js';
import { PushGateway } from '../observability/pushgateway.js';

/** IPC between the primary and its workers. */
export type PrimaryMessage =
  | { type: 'rl:shutdown' }
  | { type: 'rl:metrics-response'; id: number; body: string; contentType: string; error?: string };
export type WorkerMessage = { type: 'rl:metrics-request'; id: number } | { type: 'rl:ready'; index: number };

export const WORKER_INDEX_ENV = 'RATE_LIMITING_WORKER_INDEX';
export const LOCAL_SECRET_ENV = 'RATE_LIMITING_LOCAL_SECRET';
/** A directory private to the node where its workers serve each other on unix sockets. */
export const SIBLING_SOCKET_ENV = 'RATE_LIMITING_SIBLING_SOCKET_DIR';

const RESTART_MIN_MS = 100;
const RESTART_MAX_MS = 5000;
/** A worker that ran this long before crashing restarts without backoff. */
const STABLE_MS = 30_000;
const SHUTDOWN_WAIT_MS = 25_000;

/**
 * The node primary: forks `workers` workers that all serve the API port (node:cluster
 * hands connections out round-robin), restarts a crashed worker with backoff, serves
 * node-wide metrics to any worker that is asked for /metrics, and on SIGTERM asks every
 * worker to drain (flush to Redis, leave the ring) before exiting.
 */
export async function runPrimary(config: Config, logger: Logger, nodeId: string): Promise<void> {
  const log = logger.child({ component: 'primary' });
  // The node's private directory: its workers' unix sockets (to each other and to the
  // embedded database); removed when the node exits.
  const nodeDir = nodeSocketDir();
  process.on('exit', () => rmSync(nodeDir, { recursive: true, force: true }));
  const database = startPrimaryDatabase(config, nodeId, nodeDir, logger, (message) => {
    log.fatal(message);
    // The workers leave when the IPC channel closes.
    process.exit(3);
  });
  const aggregator = new AggregatorRegistry();
  let pushgateway: PushGateway | null = null;
  if (config.monitoring.custom_metrics_endpoint !== '') {
    pushgateway = new PushGateway({
      endpoint: config.monitoring.custom_metrics_endpoint,
      job: 'rate_limiting',
      instance: nodeId,
      intervalMs: config.monitoring.push_interval_seconds * 1000,
      text: async () => ({ body: await aggregator.clusterMetrics(), contentType: aggregator.contentType }),
      logger: log,
    });
  }
  const localSecret = randomBytes(24).toString('hex');
  const byIndex = new Map<number, { worker: Worker; startedAt: number; backoff: number }>();
  let stopping = false;

  const fork = (index: number, backoff = RESTART_MIN_MS): void => {
    const env: Record<string, string> = { [WORKER_INDEX_ENV]: String(index), [LOCAL_SECRET_ENV]: localSecret, [SIBLING_SOCKET_ENV]: nodeDir };
    if (database.socketDir !== null) env[PGLITE_SOCKET_ENV] = database.socketDir;
    const worker = cluster.fork(env);
    byIndex.set(index, { worker, startedAt: Date.now(), backoff });
    worker.on('message', (message: WorkerMessage | { type: typeof IPC_INVALIDATE; event: unknown }) => {
      if (message?.type === IPC_INVALIDATE) {
        // Cache invalidation between this node's workers (without Redis): hand it to all.
        for (const { worker: w } of byIndex.values()) if (w.isConnected()) w.send(message);
        return;
      }
      if (message?.type !== 'rl:metrics-request') return;
      aggregator.clusterMetrics().then(
        (body) => worker.send({ type: 'rl:metrics-response', id: message.id, body, contentType: aggregator.contentType } satisfies PrimaryMessage),
        (err: Error) => worker.send({ type: 'rl:metrics-response', id: message.id, body: '', contentType: 'text/plain', error: err.message } satisfies PrimaryMessage),
      );
    });
    worker.on('exit', (code, signal) => {
      if (byIndex.get(index)?.worker !== worker) return;
      if (stopping) {
        byIndex.delete(index);
        return;
      }
      const slot = byIndex.get(index)!;
      const stable = Date.now() - slot.startedAt > STABLE_MS;
      const delay = stable ? RESTART_MIN_MS : slot.backoff;
      log.error({ worker: index, pid: worker.process.pid, code, signal, restart_in_ms: delay }, 'worker exited; restarting it');
      setTimeout(() => {
        if (!stopping) fork(index, stable ? RESTART_MIN_MS : Math.min(slot.backoff * 2, RESTART_MAX_MS));
      }, delay);
    });
  };

  for (let i = 0; i < config.service.workers; i++) fork(i);
  const durable = config.redis.endpoint !== '';
  log.info(
    { workers: config.service.workers, pid: process.pid, port: config.service.port, mode: config.limiter.mode, redis: durable ? config.redis.endpoint : null },
    durable
      ? `node primary started; counters are written behind to Redis every ${config.redis.sync_interval_ms} ms`
      : 'node primary started; durability OFF: no REDIS_ENDPOINT configured, counters live in memory only and are lost on restart',
  );
  if (pushgateway !== null) {
    log.info({ url: pushgateway.url, interval_s: config.monitoring.push_interval_seconds }, 'pushing node metrics to the Pushgateway');
    pushgateway.start();
  }

  const stop = (signal: string): void => {
    if (stopping) return;
    stopping = true;
    pushgateway?.stop();
    log.info({ signal }, 'draining workers');
    const exits = [...byIndex.values()].map(
      ({ worker }) =>
        new Promise<void>((resolve) => {
          if (worker.isDead()) return resolve();
          worker.once('exit', () => resolve());
          worker.send({ type: 'rl:shutdown' } satisfies PrimaryMessage);
        }),
    );
    const timeout = setTimeout(() => {
      log.error('workers did not drain in time; killing them');
      for (const { worker } of byIndex.values()) worker.process.kill('SIGKILL');
    }, SHUTDOWN_WAIT_MS);
    void Promise.all(exits)
      .then(() => {
        clearTimeout(timeout);
        log.info('all workers drained');
        return database.close();
      })
      .finally(() => process.exit(0));
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}

/**
 * The node's private directory for its unix sockets, named after the primary's pid. A
 * node killed outright (SIGKILL) cannot remove its own, so those of primaries no longer
 * running are removed here.
 */
function nodeSocketDir(): string {
  const base = tmpdir();
  for (const name of readdirSync(base)) {
    const pid = /^rl-node-(\d+)$/.exec(name)?.[1];
    if (pid !== undefined && Number(pid) !== process.pid && !running(Number(pid))) rmSync(join(base, name), { recursive: true, force: true });
  }
  const dir = join(base, `rl-node-${process.pid}`);
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { mode: 0o700 });
  return dir;
}

function running(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}
