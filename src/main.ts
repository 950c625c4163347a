import { ConfigError, loadConfig } from './config/load.js';
import { createLogger } from './observability/logger.js';
import { startWorker } from './worker.js';

/** Process entry: `npm start`. Exit codes: 2 = bad configuration, 1 = failed to start. */
async function main(): Promise<void> {
  let loaded;
  try {
    loaded = loadConfig();
  } catch (err) {
    if (err instanceof ConfigError) {
      console.error(err.message);
      process.exit(2);
    }
    throw err;
  }
  const { config, file } = loaded;
  const logger = createLogger(config.performance.log_level);
  logger.info({ config_file: file ?? '(none: built-in defaults and environment)' }, 'configuration loaded');

  const worker = await startWorker(config, logger);
  let stopping = false;
  const stop = (signal: string): void => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal }, 'shutting down');
    worker.close().then(
      () => process.exit(0),
      (err: unknown) => {
        logger.error({ err }, 'shutdown failed');
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}

main().catch((err: unknown) => {
  console.error('failed to start:', err);
  process.exit(1);
});
