import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { PGlite, type Results, type Transaction } from '@electric-sql/pglite';
import type { Database, Queryable, QueryResult } from './database.js';
import { classifyDatabaseError, DatabaseUnavailableError } from './errors.js';
import { SessionLock } from './session-lock.js';

/**
 * PostgreSQL's shared buffers in the embedded database. PGlite's own configuration asks
 * for 128 MB, all of it resident once touched; the embedded store (accounts, usage) reads
 * through the OS's page cache beyond this.
 */
const SHARED_BUFFERS = '32MB';

/**
 * Opens PGlite (PostgreSQL in WASM) in this process: file-backed in `dataDir`, or in
 * memory with `'memory'` (tests). Resolves once the database is ready.
 *
 * Memory (RSS of a node's idle primary, by hand): 818 MB on its first start — PGlite's
 * initdb leaves some 300 MB of WASM memory that only a full collection returns, and the
 * 128 MB of shared buffers were resident — and 334 MB on later starts; with 32 MB of
 * shared buffers and one collection after a first start, 375 MB and 214 MB.
 *
 * NOTE: a data directory must be opened by one process only; two PGlite instances on one
 * directory corrupt it. In a node that is the primary, which serves it to its workers
 * (pglite-server.ts).
 */
export async function openPglite(dataDir: string | 'memory'): Promise<PgliteDatabase> {
  try {
    const created = dataDir === 'memory' || !existsSync(join(dataDir, 'PG_VERSION'));
    const startParams = [...PGlite.defaultStartParams, '-c', `shared_buffers=${SHARED_BUFFERS}`];
    const pglite = await PGlite.create(dataDir === 'memory' ? { startParams } : { dataDir, startParams });
    if (created) {
      // Once PGlite's start has unwound: collected right away, the initdb memory is still held.
      await new Promise((resolve) => setImmediate(resolve));
      collectGarbage();
    }
    return new PgliteDatabase(pglite);
  } catch (err) {
    throw new DatabaseUnavailableError(`could not open the embedded database in ${dataDir}: ${(err as Error).message}`, { cause: err });
  }
}

/**
 * PGlite has a single session. Every use of it (a query, a transaction, a served client's
 * exchange) holds `session` for its whole length, so statements of different users never
 * interleave and a transaction sees no foreign statements.
 */
export class PgliteDatabase implements Database {
  readonly kind = 'pglite' as const;
  readonly session = new SessionLock();
  private closed = false;

  constructor(readonly pglite: PGlite) {}

  query<R = Record<string, unknown>>(sql: string, params?: unknown[]): Promise<QueryResult<R>> {
    return this.withSession(() => run<R>(this.pglite, sql, params));
  }

  transaction<T>(fn: (tx: Queryable) => Promise<T>): Promise<T> {
    return this.withSession(() =>
      this.pglite.transaction((tx) => fn({ query: <R>(sql: string, params?: unknown[]) => guarded(() => run<R>(tx, sql, params)) })),
    );
  }

  get isClosed(): boolean {
    return this.closed;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    // Waits for whoever holds the session, so a running transaction finishes first.
    await this.session.run(() => this.pglite.close());
  }

  private async withSession<T>(fn: () => Promise<T>): Promise<T> {
    if (this.closed) throw new DatabaseUnavailableError('the embedded database is closed');
    return this.session.run(() => guarded(fn));
  }
}

async function guarded<T>(fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    throw classifyDatabaseError(err);
  }
}

/** Without parameters the text may hold several statements (the simple protocol); the last result is returned. */
async function run<R>(target: PGlite | Transaction, sql: string, params?: unknown[]): Promise<QueryResult<R>> {
  if (params === undefined || params.length === 0) {
    const results = await target.exec(sql);
    return toResult<R>(results[results.length - 1] as Results<R> | undefined);
  }
  return toResult<R>(await target.query<R>(sql, params));
}

function toResult<R>(result: Results<R> | undefined): QueryResult<R> {
  const rows = result?.rows ?? [];
  return { rows, rowCount: Math.max(rows.length, result?.affectedRows ?? 0) };
}

/** One full collection now (V8's gc, reached without starting node with --expose-gc). */
function collectGarbage(): void {
  setFlagsFromString('--expose-gc');
  (runInNewContext('gc') as () => void)();
}
