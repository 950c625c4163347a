/**
 * One PGlite owned by this process (the "primary"), served on a unix socket to separate pg
 * pools and to child processes, as a node's workers reach it.
 */
import { spawn } from 'node:child_process';
import { existsSync, rmSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Database } from '../src/storage/db/database.js';
import { DatabaseUnavailableError } from '../src/storage/db/errors.js';
import { connectServedPglite, servePglite } from '../src/storage/db/pglite-server.js';
import { servedPglite, socketDir, type ServedPglite } from './helpers/databases.js';
import { ROOT } from './helpers/node-process.js';

/** Runs a script in a child Node process (plain pg, as another program would); resolves with its output. */
function child(script: string, env: Record<string, string>) {
  const proc = spawn(process.execPath, ['--input-type=module', '-e', script], { cwd: ROOT, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  proc.stdout.on('data', (d: Buffer) => (output += d.toString()));
  proc.stderr.on('data', (d: Buffer) => (output += d.toString()));
  const exited = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)));
  return {
    proc,
    exited,
    output: () => output,
    async waitFor(text: string, timeoutMs = 20_000) {
      const deadline = Date.now() + timeoutMs;
      while (!output.includes(text)) {
        if (Date.now() > deadline || proc.exitCode !== null) throw new Error(`child did not print "${text}":\n${output}`);
        await new Promise((r) => setTimeout(r, 20));
      }
    },
  };
}

const CONNECT = `import pg from 'pg'; const config = { host: process.env.DIR, port: 5432, user: 'postgres', database: 'postgres' };`;

/** Read-modify-write in a transaction, yielding between read and write so interleaving would lose updates. */
const INCREMENT = `${CONNECT}
  const pool = new pg.Pool({ ...config, max: 2 });
  const worker = async (n) => { for (let i = 0; i < n; i++) {
    const c = await pool.connect();
    try { await c.query('BEGIN'); const r = await c.query('SELECT v FROM counter WHERE id = 1');
      await new Promise((r) => setImmediate(r));
      await c.query('UPDATE counter SET v = $1 WHERE id = 1', [r.rows[0].v + 1]); await c.query('COMMIT'); }
    finally { c.release(); } } };
  await Promise.all([worker(Number(process.env.N)), worker(Number(process.env.N))]);
  await pool.end(); console.log('done');`;

async function increment(db: Database, times: number): Promise<void> {
  for (let i = 0; i < times; i++) {
    await db.transaction(async (tx) => {
      const r = await tx.query<{ v: number }>('SELECT v FROM counter WHERE id = 1');
      await new Promise((resolve) => setImmediate(resolve));
      await tx.query('UPDATE counter SET v = $1 WHERE id = 1', [Number(r.rows[0]!.v) + 1]);
    });
  }
}

describe('a PGlite served to several processes', () => {
  let served: ServedPglite;
  let a: Database;
  let b: Database;

  beforeAll(async () => {
    served = await servedPglite();
    await served.primary.query('CREATE TABLE counter (id integer PRIMARY KEY, v integer NOT NULL); CREATE TABLE items (id integer PRIMARY KEY, note text)');
    a = served.connect({ poolSize: 4 });
    b = served.connect({ poolSize: 4 });
  });
  afterAll(async () => {
    await served?.dispose();
  });

  it('answers concurrent queries of two pools correctly, including parameters larger than one socket read', async () => {
    const big = 'x'.repeat(300_000);
    const checks: Array<Promise<boolean>> = [];
    for (let i = 0; i < 60; i++) {
      checks.push(a.query<{ n: number; i: number }>('SELECT length($1::text) AS n, $2::int AS i', [big, i]).then((r) => r.rows[0]!.n === 300_000 && r.rows[0]!.i === i));
      checks.push(b.query<{ k: string }>('SELECT $1::text AS k', [`b${i}`]).then((r) => r.rows[0]!.k === `b${i}`));
      checks.push(b.query<{ s: number }>('SELECT $1::int + $2::int + $3::int AS s', [i, 1, 2]).then((r) => r.rows[0]!.s === i + 3));
    }
    const results = await Promise.all(checks);
    expect(results.filter((ok) => !ok)).toEqual([]);
  });

  it('runs transactions of two pools, two child processes and the primary without lost updates', async () => {
    await served.primary.query('INSERT INTO counter (id, v) VALUES (1, 0) ON CONFLICT (id) DO UPDATE SET v = 0');
    const children = [child(INCREMENT, { DIR: served.dir, N: '15' }), child(INCREMENT, { DIR: served.dir, N: '15' })];
    await Promise.all([increment(a, 20), increment(b, 20), increment(served.primary, 10), ...children.map((c) => c.waitFor('done'))]);
    expect(await Promise.all(children.map((c) => c.exited))).toEqual([0, 0]);
    const final = await a.query<{ v: number }>('SELECT v FROM counter WHERE id = 1');
    expect(Number(final.rows[0]!.v)).toBe(20 + 20 + 10 + 2 * 30);
  });

  it("keeps one client's open transaction invisible to the others until it commits", async () => {
    let committed = false;
    let answeredBeforeCommit: boolean | null = null;
    let other: Promise<string> | undefined;
    let primary: Promise<unknown> | undefined;
    await a.transaction(async (tx) => {
      await tx.query("INSERT INTO items (id, note) VALUES (1, 'uncommitted')");
      other = b.query<{ n: string }>('SELECT count(*)::text AS n FROM items WHERE id = 1').then((r) => {
        answeredBeforeCommit = !committed;
        return r.rows[0]!.n;
      });
      primary = served.primary.query('SELECT count(*)::text AS n FROM items WHERE id = 1');
      // More work in the transaction: round trips while the other queries wait for the session.
      for (let i = 0; i < 5; i++) await tx.query('SELECT $1::int', [i]);
      expect(answeredBeforeCommit).toBeNull();
      committed = true;
    });
    // Both waited for the commit and then saw the row.
    expect(await other).toBe('1');
    expect(answeredBeforeCommit).toBe(false);
    expect(((await primary) as { rows: Array<{ n: string }> }).rows[0]!.n).toBe('1');

    await expect(
      b.transaction(async (tx) => {
        await tx.query("INSERT INTO items (id, note) VALUES (2, 'rolled back')");
        throw new Error('abort');
      }),
    ).rejects.toThrow('abort');
    expect((await a.query('SELECT id FROM items WHERE id = 2')).rows).toEqual([]);
  });

  it('rolls back the transaction of a client process killed in the middle of it, and carries on', async () => {
    const holder = child(
      `${CONNECT} const c = new pg.Client(config); await c.connect(); await c.query('BEGIN');
       await c.query("INSERT INTO items (id, note) VALUES (3, 'from a process about to die')"); console.log('ready');
       setInterval(() => {}, 1000);`,
      { DIR: served.dir },
    );
    await holder.waitFor('ready');
    let settled = false;
    const waiting = b.query<{ n: string }>('SELECT count(*)::text AS n FROM items WHERE id = 3').then((r) => {
      settled = true;
      return r.rows[0]!.n;
    });
    for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r));
    expect(settled).toBe(false); // the dying client holds the session
    holder.proc.kill('SIGKILL');
    await holder.exited;
    expect(await waiting).toBe('0');
    expect((await a.query('SELECT 1 AS ok')).rows).toEqual([{ ok: 1 }]);
  });

  it('disconnects a client that holds the session too long and rolls its transaction back', async () => {
    const dir = socketDir();
    const strict = await servePglite(served.primary, { socketDir: dir, maxHoldMs: 300 });
    const slow = connectServedPglite(dir, { poolSize: 1 });
    try {
      const outcome = slow
        .transaction(async (tx) => {
          await tx.query("INSERT INTO items (id, note) VALUES (4, 'held too long')");
          await new Promise((r) => setTimeout(r, 1_000)); // a stuck worker
          await tx.query('SELECT 1');
        })
        .then(
          () => 'committed',
          (err: unknown) => err,
        );
      // Others are served again once the hold limit cut the stuck client off.
      expect((await a.query<{ n: string }>('SELECT count(*)::text AS n FROM items WHERE id = 4')).rows[0]!.n).toBe('0');
      expect(await outcome).toBeInstanceOf(DatabaseUnavailableError);
      expect((await slow.query('SELECT 2 AS two')).rows).toEqual([{ two: 2 }]); // the pool reconnects
    } finally {
      await slow.close();
      await strict.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('refuses connections beyond the limit as unavailable', async () => {
    const dir = socketDir();
    const small = await servePglite(served.primary, { socketDir: dir, maxConnections: 1 });
    const first = connectServedPglite(dir, { poolSize: 1 });
    const second = connectServedPglite(dir, { poolSize: 1 });
    try {
      await first.query('SELECT 1');
      await expect(second.query('SELECT 1')).rejects.toBeInstanceOf(DatabaseUnavailableError);
    } finally {
      await first.close();
      await second.close();
      await small.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('survives the server going away and coming back: typed errors meanwhile, the same pool afterwards', async () => {
    await a.query('SELECT 1'); // pooled connections are idle now
    await served.stop();
    const during = await a.query('SELECT 1').catch((e: unknown) => e);
    expect(during).toBeInstanceOf(DatabaseUnavailableError);
    await expect(b.transaction(async (tx) => tx.query('SELECT 1'))).rejects.toBeInstanceOf(DatabaseUnavailableError);
    await served.restart();
    expect((await a.query<{ v: number }>('SELECT 41 + 1 AS v')).rows).toEqual([{ v: 42 }]);
    expect(await b.transaction(async (tx) => (await tx.query<{ v: number }>('SELECT 7 AS v')).rows[0]!.v)).toBe(7);
  });

  it('refuses to serve on a socket another process already serves, and replaces one left by a dead process', async () => {
    await expect(servePglite(served.primary, { socketDir: served.dir })).rejects.toThrow(/already serves/);
    const dir = socketDir();
    const path = `${dir}/.s.PGSQL.5432`;
    const dead = child(`import net from 'node:net'; net.createServer().listen(process.env.SOCKET, () => console.log('ready'));`, { SOCKET: path });
    await dead.waitFor('ready');
    dead.proc.kill('SIGKILL');
    await dead.exited;
    expect(existsSync(path)).toBe(true); // left behind
    const replacement = await servePglite(served.primary, { socketDir: dir });
    const client = connectServedPglite(dir, { poolSize: 1 });
    try {
      expect((await client.query('SELECT 3 AS three')).rows).toEqual([{ three: 3 }]);
    } finally {
      await client.close();
      await replacement.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
