/**
 * The "postgres" of a local cluster (`npm run cluster`): one PGlite, migrated and served on
 * a unix socket so every node reaches it as PostgreSQL (SQL_DATABASE_ENDPOINT=<dir>:5432).
 *   node dist/scripts/pglite-server.js <socketDir> [dataDir | memory]
 */
import { migrate } from '../src/storage/db/migrations.js';
import { openPglite } from '../src/storage/db/pglite.js';
import { servePglite } from '../src/storage/db/pglite-server.js';
import { createLogger } from '../src/observability/logger.js';

export async function servePgliteProcess(socketDir: string, dataDir: string): Promise<() => Promise<void>> {
  const db = await openPglite(dataDir);
  await migrate(db);
  const server = await servePglite(db, { socketDir, logger: createLogger('warn', { component: 'pglite-server' }) });
  return async () => {
    await server.close();
    await db.close();
  };
}

if (process.argv[1]?.endsWith('pglite-server.js')) {
  const [socketDir, dataDir = 'memory'] = process.argv.slice(2);
  if (!socketDir) throw new Error('usage: pglite-server.js <socketDir> [dataDir | memory]');
  const stop = await servePgliteProcess(socketDir, dataDir);
  console.log(`pglite: serving ${dataDir} on ${socketDir}`);
  process.on('SIGTERM', () => void stop().then(() => process.exit(0)));
  process.on('SIGINT', () => void stop().then(() => process.exit(0)));
}
