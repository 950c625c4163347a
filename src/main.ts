import cluster from 'node:cluster';
import { ConfigError, loadConfig, type LoadedConfig } from './config/load.js';
import { LOCAL_SECRET_ENV, SIBLING_SOCKET_ENV, WORKER_INDEX_ENV, runPrimary, type PrimaryMessage, type WorkerMessage } from './cluster/primary.js';
import { createLogger, type Logger } from './observability/logger.js';
import { nodeIdOf, startWorker, type RunningWorker } from './worker.js';
import { openWorkerDatabase } from './storage/db/node-database.js';

/**
 * Process entry (`npm start`). The primary validates the configuration and forks the
 * workers; each worker serves the API and owns its part of the ring.
 * Exit codes: 2 = bad configuration, 1 = failed to start.
 */
function configOrExit(): LoadedConfig {
  try {
    return loadConfig();
  } catch (err) {
    if (err instanceof ConfigError) {
      console.error(err.message);
      process.exit(2);
    }
    throw err;
  }
}

/** /metrics in a worker: the primary aggregates every worker's registry. */
function nodeMetrics(): () => Promise<{ body: string; contentType: string }> {
  let next = 0;
  const waiting = new Map<number, (m: Extract<PrimaryMessage, { type: 'rl:metrics-response' }>) => void>();
  process.on('message', (message: PrimaryMessage) => {
    if (message?.type === 'rl:metrics-response') waiting.get(message.id)?.(message);
  });
  return () =>
    new Promise((resolve, reject) => {
      const id = ++next;
      const timer = setTimeout(() => {
        waiting.delete(id);
        reject(new Error('the node primary did not answer the metrics request'));
      }, 5000);
      waiting.set(id, (m) => {
        clearTimeout(timer);
        waiting.delete(id);
        if (m.error) reject(new Error(m.error));
        else resolve({ body: m.body, contentType: m.contentType });
      });
      process.send!({ type: 'rl:metrics-request', id } satisfies WorkerMessage);
    });
}

async function runWorker({ config }: LoadedConfig, logger: Logger): Promise<void> {
  const index = Number(process.env[WORKER_INDEX_ENV] ?? 0);
  let worker: RunningWorker | undefined = undefined;
  let stopping = false;
  const stop = (reason: string): void => {
    if (stopping) return;
    stopping = true;
    logger.info({ worker: index, reason }, 'worker draining');
    const closing = worker ? worker.close() : Promise.resolve();
    closing.then(
      () => process.exit(0),
      (err: unknown) => {
        logger.error({ err }, 'worker shutdown failed');
        process.exit(1);
      },
    );
  };
  process.on('message', (message: PrimaryMessage) => {
    if (message?.type === 'rl:shutdown') stop('primary asked');
  });
  // The primary is gone (crashed or killed): do not linger holding the port.
  process.on('disconnect', () => stop('primary gone'));
  // Signals go to the whole process group; the primary coordinates the drain.
  process.on('SIGTERM', () => undefined);
  process.on('SIGINT', () => undefined);

  const metricsText = nodeMetrics();
  worker = await startWorker(config, logger, {
    workerIndex: index,
    cluster: true,
    ...(process.env[LOCAL_SECRET_ENV] !== undefined ? { localSecret: process.env[LOCAL_SECRET_ENV] } : {}),
    ...(process.env[SIBLING_SOCKET_ENV] ? { siblingSocketDir: process.env[SIBLING_SOCKET_ENV] } : {}),
    metricsText,
    database: openWorkerDatabase(config, logger),
  });
  // From now on this worker's metrics are part of the node's (see NodeMetrics in primary.ts).
  const registry = worker.metrics.registry;
  process.on('message', (message: PrimaryMessage) => {
    if (message?.type !== 'rl:metrics-collect') return;
    registry.getMetricsAsJSON().then(
      (metrics) => process.send!({ type: 'rl:metrics-part', id: message.id, metrics } satisfies WorkerMessage),
      (err: Error) => process.send!({ type: 'rl:metrics-part', id: message.id, error: err.message } satisfies WorkerMessage),
    );
  });
  process.send!({ type: 'rl:ready', index } satisfies WorkerMessage);
}

async function main(): Promise<void> {
  const loaded = configOrExit();
  const logger = createLogger(loaded.config.performance.log_level);
  if (cluster.isPrimary) {
    logger.info({ config_file: loaded.file ?? '(none: built-in defaults and environment)' }, 'configuration loaded');
    await runPrimary(loaded.config, logger, nodeIdOf(loaded.config));
  } else {
    await runWorker(loaded, logger);
  }
}

main().catch((err: unknown) => {
  console.error('failed to start:', err);
  process.exit(1);
});
