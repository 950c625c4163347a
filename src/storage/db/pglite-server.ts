/**
 * Serves the primary's PGlite to the node's worker processes over a unix socket, speaking
 * the PostgreSQL wire protocol, so a worker reaches it with the ordinary `pg` pool
 * (`connectServedPglite`) and the same `Database` interface as a real server.
 *
 * Who owns what:
 * - The primary opens the PGlite (`openPglite`), runs `migrate`, then calls `servePglite`
 *   before forking workers. At shutdown it closes the server after the workers have
 *   stopped, then the database.
 * - Each worker opens a small pool with `connectServedPglite(socketDir)` and closes it at
 *   its own shutdown. A worker never opens the data directory.
 *
 * How clients share one session: PGlite has a single session, and the wire protocol spreads
 * one query over several messages (Parse, Bind, Execute, Sync) that may arrive in several
 * socket reads. A connection takes the session lock (session-lock.ts, shared with the
 * primary's own queries) at the first message of an exchange and keeps it until PGlite
 * reports the session idle again (ReadyForQuery `I`): the end of a query outside a
 * transaction, or COMMIT/ROLLBACK. So exchanges and whole transactions of different clients
 * never interleave. (`@electric-sql/pglite-socket` 0.2.17 was evaluated and not used: it
 * queues single messages, and with a parameter large enough to span two socket reads, one
 * client's Bind ran against another client's Parse; it also pins PGlite 0.5.14 exactly.)
 *
 * NOTE: one session also means session state is shared: clients must not use SET (use
 * SET LOCAL inside a transaction), named prepared statements, temporary tables or LISTEN.
 * Start-up parameters such as `statement_timeout` are ignored; the pg client's own
 * `query_timeout` still applies, and it includes the wait for the session.
 * NOTE: a client that holds the session longer than `maxHoldMs` (a transaction left open)
 * is disconnected and its transaction rolled back, so one stuck worker cannot stop the
 * others for longer than that. A client that disconnects mid-exchange gets the same.
 */
import { randomInt } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, rmSync } from 'node:fs';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import type { Logger } from '../../observability/logger.js';
import type { Database } from './database.js';
import type { PgliteDatabase } from './pglite.js';
import {
  authenticationOk,
  backendKeyData,
  CANCEL_REQUEST,
  errorResponse,
  GSSENC_REQUEST,
  lastReadyStatus,
  MessageReader,
  parameterStatus,
  PROTOCOL_V3,
  readyForQuery,
  simpleQuery,
  SSL_REQUEST,
  syncMessage,
  TERMINATE,
} from './pg-wire.js';
import { openPostgres } from './postgres.js';

export interface PgliteServerOptions {
  /** Directory of the socket (created with mode 0700 if missing); the socket is `<socketDir>/.s.PGSQL.<port>`. */
  socketDir: string;
  /** Only names the socket file (the pg convention); default 5432. */
  port?: number;
  /** Connections served at once; default 64. */
  maxConnections?: number;
  /** Longest one connection may hold the session; default 30 s. */
  maxHoldMs?: number;
  logger?: Logger;
}

export interface PgliteServer {
  readonly socketDir: string;
  readonly port: number;
  /** Full path of the socket file. */
  readonly socketPath: string;
  /** Connections open now. */
  readonly connections: number;
  /** Stops accepting, disconnects every client (rolling back what they left open), removes the socket. */
  close(): Promise<void>;
}

const DEFAULT_PORT = 5432;
/** Longest unix socket path on Linux (sun_path is 108 bytes with the terminating NUL). */
const MAX_SOCKET_PATH = 107;
const REPORTED_SETTINGS = ['server_version', 'server_encoding', 'client_encoding', 'DateStyle', 'TimeZone', 'integer_datetimes', 'standard_conforming_strings'];

/** Starts serving `db` on a unix socket; resolves once it accepts connections. */
export async function servePglite(db: PgliteDatabase, options: PgliteServerOptions): Promise<PgliteServer> {
  const port = options.port ?? DEFAULT_PORT;
  const socketPath = join(options.socketDir, `.s.PGSQL.${port}`);
  if (Buffer.byteLength(socketPath) > MAX_SOCKET_PATH) {
    throw new Error(`socket path too long for a unix socket (${Buffer.byteLength(socketPath)} > ${MAX_SOCKET_PATH} bytes): ${socketPath}`);
  }
  if (!existsSync(options.socketDir)) mkdirSync(options.socketDir, { recursive: true, mode: 0o700 });
  await removeStaleSocket(socketPath);

  const settings = await db.query<Record<string, string>>(
    `select ${REPORTED_SETTINGS.map((name) => `current_setting('${name}') as "${name}"`).join(', ')}`,
  );
  const startup = Buffer.concat([
    authenticationOk(),
    ...REPORTED_SETTINGS.map((name) => parameterStatus(name, settings.rows[0]?.[name] ?? '')),
  ]);

  const served = new Set<ServedConnection>();
  const context: ServeContext = {
    db,
    startup,
    maxHoldMs: options.maxHoldMs ?? 30_000,
    logger: options.logger,
    nextId: 1,
  };
  const maxConnections = options.maxConnections ?? 64;
  const server: Server = createServer((socket) => {
    const connection = new ServedConnection(socket, context, served.size >= maxConnections);
    served.add(connection);
    void connection.finished.then(() => served.delete(connection));
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(socketPath, () => {
      server.off('error', reject);
      resolve();
    });
  });
  server.on('error', (err) => options.logger?.error({ err: err.message }, 'pglite server error'));
  chmodSync(socketPath, 0o600);
  options.logger?.info({ socket: socketPath }, 'serving the embedded database to workers');

  let closing: Promise<void> | null = null;
  return {
    socketDir: options.socketDir,
    port,
    socketPath,
    get connections() {
      return served.size;
    },
    close() {
      closing ??= (async () => {
        const stopped = new Promise<void>((resolve) => server.close(() => resolve()));
        const connections = [...served];
        for (const connection of connections) connection.disconnect();
        await Promise.all(connections.map((c) => c.finished));
        await stopped;
        rmSync(socketPath, { force: true });
      })();
      return closing;
    },
  };
}

export interface ServedPgliteClientOptions {
  port?: number;
  poolSize?: number;
  connectTimeoutMs?: number;
  statementTimeoutMs?: number;
  logger?: Logger;
}

/** A worker's connection to the PGlite its primary serves in `socketDir`: `openPostgres` over the socket. */
export function connectServedPglite(socketDir: string, options: ServedPgliteClientOptions = {}): Database {
  return openPostgres(
    {
      host: socketDir,
      port: options.port ?? DEFAULT_PORT,
      database: 'postgres',
      user: 'postgres',
      password: '',
      ssl: false,
      poolSize: options.poolSize ?? 4,
      connectTimeoutMs: options.connectTimeoutMs ?? 5_000,
      statementTimeoutMs: options.statementTimeoutMs ?? 10_000,
    },
    { kind: 'pglite', ...(options.logger ? { logger: options.logger } : {}) },
  );
}

/** A socket file left by a process that died is removed; one that answers is someone else's. */
async function removeStaleSocket(socketPath: string): Promise<void> {
  if (!existsSync(socketPath)) return;
  const live = await new Promise<boolean>((resolve) => {
    const probe = createConnection(socketPath);
    probe.once('connect', () => {
      probe.destroy();
      resolve(true);
    });
    probe.once('error', () => resolve(false));
  });
  if (live) throw new Error(`another process already serves a database on ${socketPath}`);
  rmSync(socketPath, { force: true });
}

interface ServeContext {
  db: PgliteDatabase;
  /** AuthenticationOk and the ParameterStatus messages every connection gets. */
  startup: Buffer;
  maxHoldMs: number;
  logger: Logger | undefined;
  nextId: number;
}

/** One client connection: start-up, then exchanges run while holding the session. */
class ServedConnection {
  private readonly reader = new MessageReader();
  private readonly pending: Buffer[] = [];
  private readonly id: number;
  private started = false;
  /** The server refused the client and is ending the connection. */
  private ending = false;
  private closed = false;
  private cleanedUp = false;
  private pumping = false;
  private releaseSession: (() => void) | null = null;
  private holdTimer: NodeJS.Timeout | null = null;
  private resolveFinished!: () => void;
  /** Resolves once the socket is closed and the session is released (rolled back if needed). */
  readonly finished = new Promise<void>((resolve) => (this.resolveFinished = resolve));

  constructor(
    private readonly socket: Socket,
    private readonly context: ServeContext,
    private readonly rejected: boolean,
  ) {
    this.id = context.nextId++;
    socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('error', (err) => context.logger?.debug({ err: err.message, connection: this.id }, 'pglite client socket error'));
    socket.on('close', () => this.onClose());
  }

  /** Closes the connection from the server side (shutdown, or holding the session too long). */
  disconnect(): void {
    this.socket.destroy();
  }

  private onData(chunk: Buffer): void {
    if (this.closed || this.ending) return;
    this.reader.push(chunk);
    try {
      for (;;) {
        if (!this.started) {
          const message = this.reader.nextStartup();
          if (message === null) break;
          this.onStartup(message);
          if (this.ending) return;
        } else {
          const message = this.reader.next();
          if (message === null) break;
          this.pending.push(message);
        }
      }
    } catch (err) {
      this.fail('08P01', (err as Error).message);
      return;
    }
    void this.pump();
  }

  private onStartup(message: Buffer): void {
    const code = message.readInt32BE(4);
    if (code === SSL_REQUEST || code === GSSENC_REQUEST) {
      this.socket.write('N');
      return;
    }
    if (code === CANCEL_REQUEST) {
      // There is no separate backend to interrupt; the statement runs to its end.
      this.ending = true;
      this.socket.end();
      return;
    }
    if (code !== PROTOCOL_V3) {
      this.fail('08P01', `unsupported protocol version ${code}`);
      return;
    }
    if (this.rejected) {
      this.fail('53300', 'too many connections to the embedded database');
      return;
    }
    this.started = true;
    this.socket.write(Buffer.concat([this.context.startup, backendKeyData(this.id, randomInt(2 ** 31)), readyForQuery('I')]));
  }

  /** Runs pending messages in order, each holding the session; never two at once. */
  private async pump(): Promise<void> {
    if (this.pumping) return;
    this.pumping = true;
    try {
      while (this.pending.length > 0 && !this.closed) {
        const message = this.pending.shift()!;
        if (message[0] === TERMINATE) {
          this.ending = true;
          this.socket.end();
          break;
        }
        if (this.releaseSession === null) {
          this.releaseSession = await this.context.db.session.acquire();
          this.holdTimer = setTimeout(() => this.onHeldTooLong(), this.context.maxHoldMs);
          if (this.closed) break;
        }
        const output = await this.context.db.pglite.execProtocolRaw(message);
        // A copy: the socket may send it after PGlite has reused its memory.
        if (output.length > 0 && !this.closed) this.socket.write(Buffer.from(output));
        if (lastReadyStatus(output) === 'I') this.release();
      }
    } catch (err) {
      this.context.logger?.error({ err: (err as Error).message, connection: this.id }, 'embedded database failed serving a client');
      this.socket.destroy();
    } finally {
      this.pumping = false;
      if (this.closed) await this.cleanUp();
    }
  }

  private onHeldTooLong(): void {
    this.context.logger?.warn({ connection: this.id, max_hold_ms: this.context.maxHoldMs }, 'a client held the embedded database too long; disconnecting it');
    this.socket.destroy();
  }

  private onClose(): void {
    if (this.closed) return;
    this.closed = true;
    this.pending.length = 0;
    if (!this.pumping) void this.cleanUp();
  }

  /** After the socket closed: leave the session idle (end the exchange, roll back) and hand it on. */
  private async cleanUp(): Promise<void> {
    if (this.cleanedUp) return;
    this.cleanedUp = true;
    if (this.releaseSession !== null) {
      try {
        const { pglite } = this.context.db;
        let status = lastReadyStatus(await pglite.execProtocolRaw(syncMessage()));
        if (status !== 'I') status = lastReadyStatus(await pglite.execProtocolRaw(simpleQuery('ROLLBACK')));
        if (status !== 'I') this.context.logger?.error({ connection: this.id, status }, 'could not return the embedded database to idle');
      } catch (err) {
        this.context.logger?.error({ err: (err as Error).message, connection: this.id }, 'could not roll back a disconnected client');
      }
      this.release();
    }
    this.resolveFinished();
  }

  private release(): void {
    if (this.holdTimer !== null) clearTimeout(this.holdTimer);
    this.holdTimer = null;
    const release = this.releaseSession;
    this.releaseSession = null;
    release?.();
  }

  private fail(sqlState: string, text: string): void {
    this.ending = true;
    this.socket.end(errorResponse(sqlState, text));
  }
}
