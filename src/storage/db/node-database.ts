import { mkdirSync, rmSync } from 'node:fs';
import { join, resolve } from 'node:path';
import type { Config } from '../../config/types.js';
import type { Logger } from '../../observability/logger.js';
import type { Database } from './database.js';
import { isUnavailable } from './errors.js';
import { migrate, SchemaMismatchError } from './migrations.js';
import { openPglite } from './pglite.js';
import { connectServedPglite, servePglite } from './pglite-server.js';
import { openPostgres, type PostgresSettings } from './postgres.js';

/**
 * Which database a node uses, and who opens what (see database.ts):
 *  - SQL_DATABASE_ENDPOINT set: PostgreSQL; the primary runs the migrations, every worker
 *    opens its own pool;
 *  - otherwise the embedded default: the primary owns one PGlite (PGLITE_DATA_DIR, by
 *    default data/pglite/<node id>), migrates it and serves it on a unix socket; workers
 *    reach it through the same `pg` path.
 * The endpoint may also be a unix-socket directory (`/run/pg:5432`), which is how the local
 * cluster launcher shares one served PGlite between its nodes.
 */
export function postgresSettings(config: Config): PostgresSettings | null {
  const endpoint = config.monitoring.sql_database_endpoint.trim();
  if (endpoint === '') return null;
  const colon = endpoint.lastIndexOf(':');
  const port = colon > 0 && /^\d+$/.test(endpoint.slice(colon + 1)) ? Number(endpoint.slice(colon + 1)) : 5432;
  const host = colon > 0 && /^\d+$/.test(endpoint.slice(colon + 1)) ? endpoint.slice(0, colon) : endpoint;
  const { database } = config;
  return {
    host: host.replace(/^\[(.*)\]$/, '$1'),
    port,
    database: host.startsWith('/') && database.name === 'rate_limiting' ? 'postgres' : database.name,
    user: database.user,
    password: database.password,
    ssl: database.ssl,
    poolSize: database.pool_size,
    connectTimeoutMs: database.connection_timeout * 1000,
    statementTimeoutMs: database.statement_timeout * 1000,
  };
}

export const PGLITE_SOCKET_ENV = 'RATE_LIMITING_PGLITE_SOCKET_DIR';

export interface PrimaryDatabase {
  /** Where the served PGlite listens (workers get it in PGLITE_SOCKET_ENV), or null with PostgreSQL. */
  socketDir: string | null;
  close(): Promise<void>;
}

/**
 * The primary's part. Returns at once: the database comes up in the background while the
 * workers already serve checks (users unknown, keys unverifiable, until it answers). A
 * schema newer than this code stops the node: `onFatal` is called with the reason.
 * The embedded database is served on a unix socket in `<nodeDir>/pglite`, inside the
 * node's private directory (so a node killed outright leaves nothing the next start does
 * not remove).
 */
export function startPrimaryDatabase(config: Config, nodeId: string, nodeDir: string, logger: Logger, onFatal: (message: string) => void): PrimaryDatabase {
  const log = logger.child({ component: 'database' });
  const settings = postgresSettings(config);
  let closing = false;
  const fatal = (err: unknown): boolean => {
    if (err instanceof SchemaMismatchError) {
      onFatal(`refusing to start: ${err.message}`);
      return true;
    }
    return false;
  };

  if (settings !== null) {
    const db = openPostgres({ ...settings, poolSize: 1 }, { logger: log });
    const migrated = (async () => {
      for (let attempt = 0; !closing; attempt++) {
        try {
          const report = await migrate(db);
          log.info({ version: report.version, applied: report.applied, host: settings.host }, 'database schema ready (PostgreSQL)');
          return;
        } catch (err) {
          if (fatal(err)) return;
          if (attempt === 0 || !isUnavailable(err)) log.warn({ err: (err as Error).message }, 'database not ready; retrying');
          await new Promise((r) => setTimeout(r, Math.min(5000, 250 * 2 ** attempt)));
        }
      }
    })();
    return {
      socketDir: null,
      async close() {
        closing = true;
        await migrated;
        await db.close();
      },
    };
  }

  const dataDir = config.database.pglite_dir === 'memory' ? 'memory' : resolve(config.database.pglite_dir || join('data', 'pglite', nodeId));
  const socketDir = join(nodeDir, 'pglite');
  const ready = (async () => {
    if (dataDir !== 'memory') mkdirSync(dataDir, { recursive: true });
    const db = await openPglite(dataDir);
    try {
      const report = await migrate(db);
      const server = await servePglite(db, { socketDir, logger: log });
      log.info({ data_dir: dataDir, version: report.version }, 'embedded PGlite ready and served to the workers');
      return { db, server };
    } catch (err) {
      await db.close();
      throw err;
    }
  })();
  ready.catch((err: unknown) => {
    if (!fatal(err)) onFatal(`the embedded database could not start: ${(err as Error).message}`);
  });
  return {
    socketDir,
    async close() {
      try {
        const { db, server } = await ready;
        await server.close();
        await db.close();
      } catch {
        // it never started
      } finally {
        rmSync(socketDir, { recursive: true, force: true });
      }
    },
  };
}

/** A worker's connection: its own PostgreSQL pool, or the primary's served PGlite. */
export function openWorkerDatabase(config: Config, logger: Logger): Database | null {
  const log = logger.child({ component: 'database' });
  const settings = postgresSettings(config);
  if (settings !== null) return openPostgres(settings, { logger: log });
  const socketDir = process.env[PGLITE_SOCKET_ENV];
  if (!socketDir) return null;
  return connectServedPglite(socketDir, {
    poolSize: Math.min(4, config.database.pool_size),
    connectTimeoutMs: config.database.connection_timeout * 1000,
    statementTimeoutMs: config.database.statement_timeout * 1000,
    logger: log,
  });
}
