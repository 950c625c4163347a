/**
 * One query interface over both SQL backends: PostgreSQL through a `pg` pool
 * (`openPostgres`, also how worker processes reach a PGlite served by their primary) and
 * PGlite in this process (`openPglite`, the embedded default).
 *
 * Who owns what:
 * - With PostgreSQL configured, every process opens its own pool with `openPostgres` and
 *   closes it at shutdown.
 * - With the embedded default, the node's primary process owns the one PGlite
 *   (`openPglite`), runs the migrations, and serves it to its workers on a unix socket
 *   (`servePglite` in pglite-server.ts). Workers connect with `connectServedPglite`, which
 *   is `openPostgres` pointed at that socket. Nobody else opens the PGlite data directory.
 *
 * SQL written against this interface must run unchanged on PostgreSQL 15 and on PGlite
 * (PostgreSQL 18 in WASM). Values come back typed by the driver, which differs between the
 * two for some types (`bigint` is a string from `pg` and a number from PGlite; `bytea` a
 * Buffer or a Uint8Array): readers convert explicitly (see `sql-values.ts`).
 */
export interface QueryResult<R> {
  rows: R[];
  /** Rows returned, or rows changed by an INSERT/UPDATE/DELETE without RETURNING. */
  rowCount: number;
}

export interface Queryable {
  /**
   * Runs one statement with `$1…` parameters. Without parameters the text may hold several
   * statements (a migration); the result is then the last statement's.
   * Throws DatabaseUnavailableError when the database cannot answer now.
   */
  query<R = Record<string, unknown>>(sql: string, params?: unknown[]): Promise<QueryResult<R>>;
}

export type DatabaseKind = 'postgres' | 'pglite';

export interface Database extends Queryable {
  readonly kind: DatabaseKind;
  /**
   * Runs `fn` in one transaction: committed when it resolves, rolled back when it throws
   * (the error is rethrown).
   * NOTE: inside `fn` use only `tx`. A query on the database itself waits for a free
   * connection, and with PGlite (one session) that is the one `fn` holds: it deadlocks.
   */
  transaction<T>(fn: (tx: Queryable) => Promise<T>): Promise<T>;
  /** Closes every connection; called once by whoever opened it, at shutdown. */
  close(): Promise<void>;
}

export { DatabaseUnavailableError } from './errors.js';
export { openPostgres, type PostgresSettings } from './postgres.js';
export { openPglite, PgliteDatabase } from './pglite.js';
