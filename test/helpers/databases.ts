import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import type { Database } from '../../src/storage/db/database.js';
import { openPglite, type PgliteDatabase } from '../../src/storage/db/pglite.js';
import { connectServedPglite, servePglite, type PgliteServer } from '../../src/storage/db/pglite-server.js';
import { openPostgres, type PostgresSettings } from '../../src/storage/db/postgres.js';

/** The machine's PostgreSQL (trust auth on loopback); tests make their own database on it. */
export const LOCAL_POSTGRES = { host: '127.0.0.1', port: 5432, user: process.env.PGUSER ?? 'postgres' };

export function postgresSettings(database: string, overrides: Partial<PostgresSettings> = {}): PostgresSettings {
  return {
    ...LOCAL_POSTGRES,
    database,
    password: '',
    ssl: false,
    poolSize: 4,
    connectTimeoutMs: 5_000,
    statementTimeoutMs: 10_000,
    ...overrides,
  };
}

export interface TestDatabase {
  db: Database;
  /** Drops everything the test made. */
  dispose(): Promise<void>;
}

/** A fresh database `rl_test_<random>` on the local PostgreSQL, dropped by `dispose`. */
export async function throwawayPostgres(): Promise<TestDatabase & { name: string }> {
  const name = `rl_test_${randomBytes(6).toString('hex')}`;
  const admin = new pg.Client({ ...LOCAL_POSTGRES, database: 'postgres' });
  await admin.connect();
  try {
    await admin.query(`CREATE DATABASE ${name}`);
  } finally {
    await admin.end();
  }
  const db = openPostgres(postgresSettings(name));
  return {
    name,
    db,
    async dispose() {
      await db.close();
      const dropper = new pg.Client({ ...LOCAL_POSTGRES, database: 'postgres' });
      await dropper.connect();
      try {
        await dropper.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      } finally {
        await dropper.end();
      }
    },
  };
}

export async function memoryPglite(): Promise<TestDatabase & { db: PgliteDatabase }> {
  const db = await openPglite('memory');
  return { db, dispose: () => db.close() };
}

/** A short socket directory (unix socket paths are limited to 107 bytes). */
export function socketDir(): string {
  return mkdtempSync(join(tmpdir(), 'rl-pg-'));
}

export interface ServedPglite {
  primary: PgliteDatabase;
  server: PgliteServer;
  dir: string;
  /** A worker-style pool over the socket. */
  connect(options?: { poolSize?: number; statementTimeoutMs?: number }): Database;
  /** Stops serving (clients see the database as unavailable); `restart` serves the same PGlite again. */
  stop(): Promise<void>;
  restart(): Promise<void>;
  dispose(): Promise<void>;
}

/** A PGlite in memory served on a unix socket, as a node's primary does. */
export async function servedPglite(primary?: PgliteDatabase): Promise<ServedPglite> {
  const db = primary ?? (await openPglite('memory'));
  const dir = socketDir();
  const clients: Database[] = [];
  const handle: ServedPglite = {
    primary: db,
    server: await servePglite(db, { socketDir: dir }),
    dir,
    connect(options = {}) {
      const client = connectServedPglite(dir, { connectTimeoutMs: 2_000, ...options });
      clients.push(client);
      return client;
    },
    async stop() {
      await handle.server.close();
    },
    async restart() {
      handle.server = await servePglite(db, { socketDir: dir });
    },
    async dispose() {
      for (const client of clients) await client.close();
      await handle.server.close();
      await db.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
  return handle;
}

/** A throwaway PostgreSQL database for node processes: the environment that points them at it. */
export async function throwawayPostgresEnv(): Promise<{ env: Record<string, string>; dispose(): Promise<void> }> {
  const created = await throwawayPostgres();
  await created.db.close();
  return {
    env: { SQL_DATABASE_ENDPOINT: `${LOCAL_POSTGRES.host}:${LOCAL_POSTGRES.port}`, SQL_DATABASE_NAME: created.name, SQL_DATABASE_USER: LOCAL_POSTGRES.user },
    async dispose() {
      const dropper = new pg.Client({ ...LOCAL_POSTGRES, database: 'postgres' });
      await dropper.connect();
      try {
        await dropper.query(`DROP DATABASE IF EXISTS ${created.name} WITH (FORCE)`);
      } finally {
        await dropper.end();
      }
    },
  };
}

/** The three ways the repositories reach a database, for `describe.each`. */
export interface DatabaseBackend {
  name: string;
  open(): Promise<{ db: Database; dispose(): Promise<void> }>;
}

export const DATABASE_BACKENDS: DatabaseBackend[] = [
  { name: 'PostgreSQL (throwaway database)', open: throwawayPostgres },
  { name: 'PGlite in memory', open: memoryPglite },
  {
    name: 'PGlite served over a unix socket',
    async open() {
      const served = await servedPglite();
      return { db: served.connect(), dispose: () => served.dispose() };
    },
  },
];
