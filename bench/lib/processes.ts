import { spawn, type ChildProcess } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { fileURLToPath } from 'node:url';

export const ROOT = fileURLToPath(new URL('../../..', import.meta.url));

export interface Target {
  name: string;
  url: string;
  path: string;
  /** Request bodies to send instead of the generated user ids. */
  bodies?: string[];
  /** The server's process id (its workers and helpers are its descendants); none for a target of several servers. */
  pid?: number;
  stop(): Promise<void>;
}

/** The fields of /proc/<pid>/stat after the command name (which may hold spaces): state is [0], ppid [1]. */
function statFields(pid: number): string[] {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  return stat.slice(stat.lastIndexOf(')') + 2).split(' ');
}

export function parentOf(pid: number): number {
  return Number(statFields(pid)[1]);
}

/** `root` and every living descendant of it, now. */
export function processTree(root: number): number[] {
  const children = new Map<number, number[]>();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const parent = parentOf(Number(entry));
      children.set(parent, [...(children.get(parent) ?? []), Number(entry)]);
    } catch {
      // exited meanwhile
    }
  }
  const tree = [root];
  for (let i = 0; i < tree.length; i++) tree.push(...(children.get(tree[i]!) ?? []));
  return tree;
}

/** CPU time (user + system, µs; 10 ms ticks) of `root` and its living descendants, from /proc. */
export function treeCpuMicros(root: number): number {
  let ticks = 0;
  for (const pid of processTree(root)) {
    try {
      const fields = statFields(pid);
      ticks += Number(fields[11]) + Number(fields[12]);
    } catch {
      // exited meanwhile
    }
  }
  return ticks * 10_000;
}

/** A TCP port free on 127.0.0.1 right now (the OS picks it). */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => resolve(typeof address === 'object' && address ? address.port : 0));
    });
  });
}

async function portIsFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = createServer();
    server.once('error', () => resolve(false));
    server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)));
  });
}

/**
 * A base port below the kernel's ephemeral range (32768 and up on Linux) with `base + o`
 * free for every offset: ports a launcher derives from one base, which the kernel will not
 * hand to another process's outgoing connection or port-0 listener meanwhile.
 */
export async function freePortBlock(offsets: readonly number[]): Promise<number> {
  const low = 10_000 - Math.min(0, ...offsets);
  const high = 32_000 - Math.max(0, ...offsets);
  for (let attempt = 0; attempt < 100; attempt++) {
    const base = low + Math.floor(Math.random() * (high - low));
    if ((await Promise.all(offsets.map((o) => portIsFree(base + o)))).every(Boolean)) return base;
  }
  throw new Error('no block of free ports');
}

/**
 * A free API port whose derived peer ports (API port + 1000 + worker) are free too; ports
 * in `taken` (handed out earlier in the same run, not yet bound) are skipped and the new
 * ones added.
 */
export async function freeNodePort(workers: number, taken: Set<number> = new Set()): Promise<number> {
  for (let attempt = 0; attempt < 50; attempt++) {
    const port = await freePort();
    if (port + 1000 + workers > 65_535) continue;
    const derived = Array.from({ length: workers }, (_, i) => port + 1000 + i);
    if ([port, ...derived].some((p) => taken.has(p))) continue;
    if ((await Promise.all(derived.map(portIsFree))).every(Boolean)) {
      [port, ...derived].forEach((p) => taken.add(p));
      return port;
    }
  }
  throw new Error('no free port with free peer ports');
}

/** Waits until a redis-server answers PING on `port` (10 s at most). */
export async function waitForRedis(port: number): Promise<void> {
  const { Redis } = await import('ioredis');
  const deadline = Date.now() + 10_000;
  for (;;) {
    const client = new Redis({ port, host: '127.0.0.1', lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
    client.on('error', () => undefined);
    try {
      await client.connect();
      await client.ping();
      client.disconnect();
      return;
    } catch {
      client.disconnect();
      if (Date.now() > deadline) throw new Error(`redis-server did not start on ${port}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

/** Spawns a node script from dist/ and waits until `readyPath` answers on its port. */
export async function spawnServer(options: {
  name: string;
  script: string;
  args?: string[];
  env?: Record<string, string>;
  port: number;
  readyPath: string;
  path: string;
}): Promise<Target> {
  let output = '';
  // BENCH_NODE_ARGS (e.g. "--cpu-prof --cpu-prof-dir=/tmp/prof") goes to every server the
  // bench starts; node:cluster passes it on to the workers.
  const nodeArgs = process.env.BENCH_NODE_ARGS?.split(' ').filter(Boolean) ?? [];
  const child: ChildProcess = spawn(process.execPath, [...nodeArgs, fileURLToPath(new URL(`../../${options.script}`, import.meta.url)), ...(options.args ?? [])], {
    cwd: ROOT,
    env: { PATH: process.env.PATH ?? '', LOG_LEVEL: 'warn', ...options.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  child.stdout!.on('data', (c: Buffer) => (output += c.toString()));
  child.stderr!.on('data', (c: Buffer) => (output += c.toString()));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const url = `http://127.0.0.1:${options.port}`;
  const deadline = Date.now() + 30_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`${options.name} exited early:\n${output}`);
    try {
      const res = await fetch(url + options.readyPath);
      if (res.status < 500) break;
    } catch {
      // not up yet
    }
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`${options.name} did not start:\n${output}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    name: options.name,
    url,
    path: options.path,
    pid: child.pid!,
    async stop() {
      if (child.exitCode === null) child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(timer);
    },
  };
}

/** The bare Fastify hello-world POST: the ceiling (`checkShaped`: answering a check's bytes). */
export async function startHello(workers = 1, checkShaped = false): Promise<Target> {
  const port = await freePort();
  const args = [String(port), String(workers), ...(checkShaped ? ['--check-shaped'] : [])];
  return spawnServer({ name: 'fastify hello-world', script: 'bench/servers/hello.js', args, port, readyPath: '/', path: '/hello' });
}

/**
 * One node of ours (`npm start`), on a free port, with extra environment; its embedded
 * PGlite in memory unless `env` says otherwise (a bench leaves no data directories).
 */
export async function startOurNode(name: string, env: Record<string, string> = {}): Promise<Target> {
  const port = await freePort();
  return spawnServer({
    name,
    script: 'src/main.js',
    env: { RATE_LIMITING_API_HOST: '127.0.0.1', RATE_LIMITING_API_PORT: String(port), PGLITE_DATA_DIR: 'memory', ...env },
    port,
    readyPath: '/health',
    path: '/rate-limiting/check',
  });
}

export interface RedisProcess {
  endpoint: string;
  /** The redis-server's process id (to read its CPU time). */
  pid: number;
  stop(): Promise<void>;
}

/** A redis-server of the benchmark's own, without persistence, on a free port. */
export async function startRedis(): Promise<RedisProcess> {
  const port = await freePort();
  const child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { stdio: 'ignore' });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  await waitForRedis(port);
  return {
    endpoint: `127.0.0.1:${port}`,
    pid: child.pid!,
    async stop() {
      child.kill('SIGKILL');
      await exited;
    },
  };
}

/** Reads one un-labelled sample from a node's /metrics. */
export async function scrapeMetric(target: Target, name: string): Promise<number> {
  const text = await (await fetch(`${target.url}/metrics`)).text();
  const match = new RegExp(`^${name} ([0-9.eE+-]+)$`, 'm').exec(text);
  return match ? Number(match[1]) : NaN;
}

/**
 * A node with `users` stored users (and one API key each, with `keys`), made through its
 * admin API once its embedded database answers; the target's bodies name them.
 */
export async function startNodeWithAccounts(name: string, users: number, by: 'user_id' | 'api_key', env: Record<string, string> = {}): Promise<Target> {
  const token = 'bench-admin-token';
  const target = await startOurNode(name, { ADMIN_TOKEN: token, ...env });
  const headers = { authorization: `Bearer ${token}`, 'content-type': 'application/json' };
  const deadline = Date.now() + 120_000;
  while ((await fetch(`${target.url}/admin/users?limit=1`, { headers })).status !== 200) {
    if (Date.now() > deadline) throw new Error(`${name}: the account database did not come up`);
    await new Promise((r) => setTimeout(r, 250));
  }
  const bodies: string[] = [];
  for (let i = 0; i < users; i += 50) {
    const chunk = await Promise.all(
      Array.from({ length: Math.min(50, users - i) }, async (_, j) => {
        const userId = `bench-stored-${i + j}`;
        await fetch(`${target.url}/admin/users`, { method: 'POST', headers, body: JSON.stringify({ user_id: userId, tier: 'enterprise' }) });
        if (by === 'user_id') return JSON.stringify({ user_id: userId });
        const res = await fetch(`${target.url}/admin/users/${userId}/keys`, { method: 'POST', headers, body: '{}' });
        return JSON.stringify({ api_key: ((await res.json()) as { key: string }).key });
      }),
    );
    bodies.push(...chunk);
  }
  return { ...target, bodies };
}

/** Sum of every sample of `name` whose labels contain `labelMatch`. */
export function sumSamples(text: string, name: string, labelMatch = ''): number {
  let sum = 0;
  for (const line of text.split('\n')) {
    if (line.startsWith(`${name}{`) && line.includes(labelMatch)) sum += Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return sum;
}
