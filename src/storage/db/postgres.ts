import pg from 'pg';
import type { Logger } from '../../observability/logger.js';
import type { Database, DatabaseKind, Queryable, QueryResult } from './database.js';
import { classifyDatabaseError, isUnavailable } from './errors.js';

export interface PostgresSettings {
  /** Host name or address; a path starting with `/` is a directory holding a unix socket. */
  host: string;
  port: number;
  database: string;
  user: string;
  password: string;
  ssl: boolean;
  /** Connections this process may open. */
  poolSize: number;
  /** Longest wait for a connection (connecting, or a free one from the pool). */
  connectTimeoutMs: number;
  /** Longest a statement may run; the client also gives up a little later than that. */
  statementTimeoutMs: number;
}

export interface PostgresOptions {
  logger?: Logger;
  /** What `kind` reports; `pglite` when the server is a PGlite served by the primary. */
  kind?: DatabaseKind;
}

/** Extra time the client waits beyond the server's statement timeout before giving up itself. */
const CLIENT_TIMEOUT_SLACK_MS = 1_000;

/**
 * Opens a `pg` pool (lazily: no connection is made until the first query). Connection
 * failures, timeouts and a server that went away surface as DatabaseUnavailableError; the
 * pool keeps working once the server is back (broken clients are discarded and replaced).
 */
export function openPostgres(settings: PostgresSettings, options: PostgresOptions = {}): Database {
  const pool = new pg.Pool({
    host: settings.host,
    port: settings.port,
    database: settings.database,
    user: settings.user,
    password: settings.password,
    ssl: settings.ssl,
    max: Math.max(1, settings.poolSize),
    connectionTimeoutMillis: settings.connectTimeoutMs,
    idleTimeoutMillis: 30_000,
    keepAlive: true,
    statement_timeout: settings.statementTimeoutMs,
    query_timeout: settings.statementTimeoutMs + CLIENT_TIMEOUT_SLACK_MS,
    application_name: 'rate-limiting-api',
  });
  return new PostgresDatabase(pool, options.kind ?? 'postgres', options.logger);
}

class PostgresDatabase implements Database {
  private closed = false;

  constructor(
    private readonly pool: pg.Pool,
    readonly kind: DatabaseKind,
    private readonly logger: Logger | undefined,
  ) {
    // NOTE: a pg client that loses its connection emits 'error'; without a listener that
    // is an uncaught exception and the process dies. The pool listens while a client is
    // idle and forwards to 'error' here; checked-out clients get a listener of their own.
    pool.on('error', (err) => this.logger?.warn({ err: err.message }, 'idle database connection lost'));
    pool.on('connect', (client) => {
      client.on('error', (err) => this.logger?.debug({ err: err.message }, 'database connection error'));
    });
  }

  async query<R = Record<string, unknown>>(sql: string, params?: unknown[]): Promise<QueryResult<R>> {
    for (let attempt = 1; ; attempt++) {
      try {
        return toResult<R>(await this.pool.query(sql, params));
      } catch (err) {
        if (!this.mayRetry(err, attempt)) throw classifyDatabaseError(err);
      }
    }
  }

  async transaction<T>(fn: (tx: Queryable) => Promise<T>): Promise<T> {
    const client = await this.begin();
    const tx: Queryable = {
      async query<R = Record<string, unknown>>(sql: string, params?: unknown[]): Promise<QueryResult<R>> {
        try {
          return toResult<R>(await client.query(sql, params));
        } catch (err) {
          throw classifyDatabaseError(err);
        }
      },
    };
    let broken: Error | undefined;
    try {
      const result = await fn(tx);
      await tx.query('COMMIT');
      return result;
    } catch (err) {
      if (isUnavailable(err)) {
        // The connection is gone or stuck: the server rolls back on its own; drop the client.
        broken = err as Error;
      } else {
        try {
          await client.query('ROLLBACK');
        } catch (rollbackErr) {
          broken = rollbackErr as Error;
        }
      }
      throw err;
    } finally {
      client.release(broken);
    }
  }

  /** A pooled client with a transaction begun on it. */
  private async begin(): Promise<pg.PoolClient> {
    for (let attempt = 1; ; attempt++) {
      let client: pg.PoolClient;
      try {
        client = await this.pool.connect();
      } catch (err) {
        throw classifyDatabaseError(err);
      }
      try {
        await client.query('BEGIN');
        return client;
      } catch (err) {
        client.release(err as Error);
        if (!this.mayRetry(err, attempt)) throw classifyDatabaseError(err);
      }
    }
  }

  /**
   * NOTE: after the server went away and came back, the pool may still hold connections
   * whose end it has not yet seen. Writing to one fails at once with EPIPE: the statement
   * never left this process, so it is safe to run on another connection (the broken one is
   * discarded). Any other failure may have happened after the server ran the statement and
   * is never retried.
   */
  private mayRetry(err: unknown, attempt: number): boolean {
    return (err as { code?: unknown }).code === 'EPIPE' && attempt <= this.pool.options.max;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.pool.end();
  }
}

/** A multi-statement text yields one result per statement; callers get the last. */
function toResult<R>(result: pg.QueryResult | pg.QueryResult[]): QueryResult<R> {
  const last = Array.isArray(result) ? result[result.length - 1] : result;
  const rows = (last?.rows ?? []) as R[];
  return { rows, rowCount: last?.rowCount ?? rows.length };
}
