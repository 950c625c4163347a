/**
 * openPostgres against servers that are not there, hang, are slow, or drop connections:
 * every such failure is a DatabaseUnavailableError, nothing crashes, and the pool works
 * again afterwards. Real servers only: the machine's PostgreSQL and sockets of our own.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DatabaseUnavailableError, isUnavailable } from '../src/storage/db/errors.js';
import { MIGRATIONS, migrate } from '../src/storage/db/migrations.js';
import { openPglite } from '../src/storage/db/pglite.js';
import { openPostgres } from '../src/storage/db/postgres.js';
import { LOCAL_POSTGRES, postgresSettings, throwawayPostgres } from './helpers/databases.js';
import { freePort } from './helpers/ports.js';

async function failure(promise: Promise<unknown>): Promise<unknown> {
  return promise.then(
    () => {
      throw new Error('expected a failure');
    },
    (err: unknown) => err,
  );
}

describe('openPostgres', () => {
  let database: Awaited<ReturnType<typeof throwawayPostgres>>;

  beforeAll(async () => {
    database = await throwawayPostgres();
  });
  afterAll(async () => {
    await database?.dispose();
  });

  it('reports a server that is not listening as unavailable, for queries and transactions', async () => {
    const db = openPostgres({ ...postgresSettings('postgres'), host: '127.0.0.1', port: await freePort(), connectTimeoutMs: 1_000 });
    try {
      const err = await failure(db.query('SELECT 1'));
      expect(err).toBeInstanceOf(DatabaseUnavailableError);
      expect((err as Error).message).toMatch(/ECONNREFUSED/);
      expect(await failure(db.transaction(async (tx) => tx.query('SELECT 1')))).toBeInstanceOf(DatabaseUnavailableError);
    } finally {
      await db.close();
    }
  });

  it('gives up connecting to a server that accepts but never answers, after the connect timeout', async () => {
    const sockets: Socket[] = [];
    const silent = createServer((socket) => void sockets.push(socket));
    const port = await freePort();
    await new Promise<void>((resolve) => silent.listen(port, '127.0.0.1', resolve));
    const db = openPostgres({ ...postgresSettings('postgres'), port, connectTimeoutMs: 300 });
    try {
      const started = Date.now();
      expect(await failure(db.query('SELECT 1'))).toBeInstanceOf(DatabaseUnavailableError);
      expect(Date.now() - started).toBeLessThan(5_000);
    } finally {
      await db.close();
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => silent.close(resolve));
    }
  });

  it('turns a statement timeout into unavailable, and the pool goes on', async () => {
    const db = openPostgres(postgresSettings(database.name, { statementTimeoutMs: 200, poolSize: 1 }));
    try {
      const err = await failure(db.query('SELECT pg_sleep(3)'));
      expect(err).toBeInstanceOf(DatabaseUnavailableError);
      expect((err as Error).message).toMatch(/statement timeout/);
      expect((await db.query('SELECT 1 AS one')).rows).toEqual([{ one: 1 }]);
    } finally {
      await db.close();
    }
  });

  it('survives the server dropping its connections, idle or inside a transaction', async () => {
    const db = openPostgres(postgresSettings(database.name, { poolSize: 3 }));
    const admin = new pg.Client({ ...LOCAL_POSTGRES, database: 'postgres' });
    await admin.connect();
    const terminateAll = () => admin.query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()', [database.name]);
    // The pool replaces what it lost (a connection whose end it has not seen yet may fail one query first).
    const recovered = async (): Promise<number | null> => {
      for (let i = 0; i < 5; i++) {
        const v = await db.query<{ v: number }>('SELECT 5 AS v').then((r) => r.rows[0]!.v, () => null);
        if (v !== null) return v;
      }
      return null;
    };
    try {
      await Promise.all([db.query('SELECT pg_sleep(0.05)'), db.query('SELECT pg_sleep(0.05)'), db.query('SELECT pg_sleep(0.05)')]);
      await terminateAll(); // three idle pooled connections die: their 'error' events must not crash us
      expect(await recovered()).toBe(5);

      // A transaction whose connection is killed between two statements: the 'error' event
      // arrives while the client is checked out (no pool listener then).
      let reachedKill = false;
      const outcome = await failure(
        db.transaction(async (tx) => {
          await tx.query('SELECT 1');
          reachedKill = true;
          await terminateAll();
          await new Promise((r) => setTimeout(r, 200));
          await tx.query('SELECT 2');
        }),
      );
      expect(reachedKill).toBe(true);
      expect(outcome).toBeInstanceOf(DatabaseUnavailableError);

      expect(await recovered()).toBe(5);
      expect(await db.transaction(async (tx) => (await tx.query<{ v: number }>('SELECT 6 AS v')).rows[0]!.v)).toBe(6);
    } finally {
      await admin.end();
      await db.close();
    }
  });

  it('passes errors that are not about availability through unchanged', async () => {
    const err = await failure(database.db.query('SELECT * FROM no_such_table'));
    expect(err).not.toBeInstanceOf(DatabaseUnavailableError);
    expect((err as { code?: string }).code).toBe('42P01');
  });
});

describe('availability errors', () => {
  it('classifies driver and server failures', () => {
    const withCode = (code: string) => Object.assign(new Error('x'), { code });
    for (const code of ['ECONNREFUSED', 'ECONNRESET', 'EPIPE', 'ENOENT', '57P01', '08006', '53300', '57014']) expect(isUnavailable(withCode(code)), code).toBe(true);
    for (const code of ['23505', '42P01', '22P02']) expect(isUnavailable(withCode(code)), code).toBe(false);
    expect(isUnavailable(new Error('timeout exceeded when trying to connect'))).toBe(true);
    expect(isUnavailable(new Error('Connection terminated unexpectedly'))).toBe(true);
    expect(isUnavailable(new AggregateError([withCode('ECONNREFUSED')]))).toBe(true);
    expect(isUnavailable(new Error('syntax error'))).toBe(false);
    expect(isUnavailable('not an error')).toBe(false);
  });

  it('a file-backed PGlite keeps its data across close and reopen, and the schema with it', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'rl-pglite-'));
    try {
      const first = await openPglite(join(dir, 'data'));
      expect((await first.query('SHOW shared_buffers')).rows).toEqual([{ shared_buffers: '32MB' }]);
      expect(await migrate(first)).toEqual({ applied: MIGRATIONS.map((m) => m.version), version: MIGRATIONS.length });
      await first.query("INSERT INTO users (user_id, tier) VALUES ('kept', 'basic')");
      await first.close();
      const again = await openPglite(join(dir, 'data'));
      try {
        // Its shared buffers are ours (32 MB), not PGlite's 128 MB, on a first start and after.
        expect((await again.query('SHOW shared_buffers')).rows).toEqual([{ shared_buffers: '32MB' }]);
        expect(await migrate(again)).toEqual({ applied: [], version: MIGRATIONS.length });
        expect((await again.query('SELECT user_id FROM users')).rows).toEqual([{ user_id: 'kept' }]);
      } finally {
        await again.close();
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a closed PGlite answers unavailable', async () => {
    const db = await openPglite('memory');
    await db.close();
    expect(await failure(db.query('SELECT 1'))).toBeInstanceOf(DatabaseUnavailableError);
    expect(await failure(db.transaction(async () => 1))).toBeInstanceOf(DatabaseUnavailableError);
  });
});
