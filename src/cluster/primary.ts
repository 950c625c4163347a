import cluster, { type Worker } from 'node:cluster';
import { randomBytes } from 'node:crypto';
import { mkdirSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AggregatorRegistry, Registry } from 'prom-client';
import type { Config } from '../config/types.js';
import type { Logger } from '../observability/logger.js';
import { PGLITE_SOCKET_ENV, startPrimaryDatabase } from '../storage/db/node-database.js';
import { IPC_INVALIDATE } from '../accounts/invalidation-transports.js';
import { PushGateway } from '../observability/pushgateway.js';

/** IPC between the primary and its workers. */
export type PrimaryMessage =
  | { type: 'rl:shutdown' }
  | { type: 'rl:metrics-response'; id: number; body: string; contentType: string; error?: string }
  /** The primary gathering the node's metrics: each ready worker answers with its own. */
  | { type: 'rl:metrics-collect'; id: number };
export type WorkerMessage =
  | { type: 'rl:metrics-request'; id: number }
  /** The worker serves, and answers `rl:metrics-collect` from now on. */
  | { type: 'rl:ready'; index: number }
  | { type: 'rl:metrics-part'; id: number; metrics?: object[]; error?: string };

export const WORKER_INDEX_ENV = 'RATE_LIMITING_WORKER_INDEX';
export const LOCAL_SECRET_ENV = 'RATE_LIMITING_LOCAL_SECRET';
/** A directory private to the node where its workers serve each other on unix sockets. */
export const SIBLING_SOCKET_ENV = 'RATE_LIMITING_SIBLING_SOCKET_DIR';

const RESTART_MIN_MS = 100;
const RESTART_MAX_MS = 5000;
/** A worker that ran this long before crashing restarts without backoff. */
const STABLE_MS = 30_000;
const SHUTDOWN_WAIT_MS = 25_000;
/** How long the primary waits for every ready worker's metrics. */
const METRICS_WAIT_MS = 4000;

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
  const byIndex = new Map<number, { worker: Worker; startedAt: number; backoff: number; ready: boolean }>();
  const metrics = new NodeMetrics(() => [...byIndex.values()].filter((w) => w.ready && w.worker.isConnected()).map((w) => w.worker));
  let pushgateway: PushGateway | null = null;
  if (config.monitoring.custom_metrics_endpoint !== '') {
    pushgateway = new PushGateway({
      endpoint: config.monitoring.custom_metrics_endpoint,
      job: 'rate_limiting',
      instance: nodeId,
      intervalMs: config.monitoring.push_interval_seconds * 1000,
      text: () => metrics.gather(),
      logger: log,
    });
  }
  const localSecret = randomBytes(24).toString('hex');
  let stopping = false;

  const fork = (index: number, backoff = RESTART_MIN_MS): void => {
    const env: Record<string, string> = { [WORKER_INDEX_ENV]: String(index), [LOCAL_SECRET_ENV]: localSecret, [SIBLING_SOCKET_ENV]: nodeDir };
    if (database.socketDir !== null) env[PGLITE_SOCKET_ENV] = database.socketDir;
    const worker = cluster.fork(env);
    const slot = { worker, startedAt: Date.now(), backoff, ready: false };
    byIndex.set(index, slot);
    worker.on('message', (message: WorkerMessage | { type: typeof IPC_INVALIDATE; event: unknown }) => {
      if (message?.type === IPC_INVALIDATE) {
        // Cache invalidation between this node's workers (without Redis): hand it to all.
        for (const { worker: w } of byIndex.values()) if (w.isConnected()) w.send(message);
        return;
      }
      if (message?.type === 'rl:ready') slot.ready = true;
      if (message?.type === 'rl:metrics-part') metrics.received(worker, message);
      if (message?.type !== 'rl:metrics-request') return;
      metrics.gather().then(
        ({ body, contentType }) => worker.send({ type: 'rl:metrics-response', id: message.id, body, contentType } satisfies PrimaryMessage),
        (err: Error) => worker.send({ type: 'rl:metrics-response', id: message.id, body: '', contentType: 'text/plain', error: err.message } satisfies PrimaryMessage),
      );
    });
    worker.on('exit', (code, signal) => {
      slot.ready = false;
      metrics.exited(worker);
      if (byIndex.get(index)?.worker !== worker) return;
      if (stopping) {
        byIndex.delete(index);
        return;
      }
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
 * The node's metrics: every ready worker's registry, aggregated as prom-client's cluster
 * mode does (sums unless a metric says otherwise). Only workers that said they are ready
 * are asked: prom-client's own cluster mode asked every connected worker, and one still
 * starting (or restarting after a crash) could not answer yet, so every scrape in that
 * window failed after 5 s.
 */
class NodeMetrics {
  private next = 0;
  private readonly pending = new Map<number, { parts: object[][]; waiting: Set<number>; settle(err?: Error): void }>();

  constructor(private readonly readyWorkers: () => Worker[]) {}

  gather(): Promise<{ body: string; contentType: string }> {
    const workers = this.readyWorkers();
    const id = ++this.next;
    return new Promise<object[][]>((resolve, reject) => {
      const parts: object[][] = [];
      const settle = (err?: Error): void => {
        clearTimeout(timer);
        this.pending.delete(id);
        if (err) reject(err);
        else resolve(parts);
      };
      const timer = setTimeout(() => settle(new Error(`a worker did not send its metrics within ${METRICS_WAIT_MS} ms`)), METRICS_WAIT_MS);
      this.pending.set(id, { parts, waiting: new Set(workers.map((w) => w.id)), settle });
      if (workers.length === 0) return settle();
      for (const worker of workers) worker.send({ type: 'rl:metrics-collect', id } satisfies PrimaryMessage);
    }).then(async (parts) => {
      const registry = AggregatorRegistry.aggregate(parts);
      return { body: await registry.metrics(), contentType: Registry.PROMETHEUS_CONTENT_TYPE };
    });
  }

  received(worker: Worker, message: Extract<WorkerMessage, { type: 'rl:metrics-part' }>): void {
    const request = this.pending.get(message.id);
    if (request === undefined || !request.waiting.delete(worker.id)) return;
    if (message.error !== undefined || message.metrics === undefined) return request.settle(new Error(message.error ?? 'a worker sent no metrics'));
    request.parts.push(message.metrics);
    if (request.waiting.size === 0) request.settle();
  }

  /** A worker that exits is no longer waited for: its figures went with it. */
  exited(worker: Worker): void {
    for (const request of [...this.pending.values()]) {
      if (request.waiting.delete(worker.id) && request.waiting.size === 0) request.settle();
    }
  }
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
