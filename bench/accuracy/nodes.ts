/**
 * The processes an accuracy scenario starts: its own redis-server, a shared database, and
 * nodes of `dist/src/main.js` (primary and workers) in process groups of their own, all
 * killed when the benchmark exits.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ROOT, freeNodePort, freePort, waitForRedis } from '../lib/processes.js';

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Every process group this benchmark started; killed on exit if still alive. */
const liveGroups = new Set<number>();
function killAll(): void {
  for (const pid of liveGroups) {
    signalGroup(pid, 'SIGCONT');
    signalGroup(pid, 'SIGKILL');
  }
}
process.once('exit', killAll);
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    killAll();
    process.exit(130);
  });
}

function signalGroup(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pid, signal);
  } catch {
    // already gone
  }
}

export function tail(text: string, max = 4000): string {
  return text.length <= max ? text : `…${text.slice(-max)}`;
}

/** A redis-server of the benchmark's own, without persistence; killable and restartable empty. */
export class RedisServer {
  private child: ChildProcess | null = null;
  private exited: Promise<void> = Promise.resolve();

  private constructor(readonly port: number) {}

  static async start(): Promise<RedisServer> {
    const server = new RedisServer(await freePort());
    await server.spawn();
    return server;
  }

  get endpoint(): string {
    return `127.0.0.1:${this.port}`;
  }

  private async spawn(): Promise<void> {
    const child = spawn('redis-server', ['--port', String(this.port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--loglevel', 'warning'], {
      stdio: 'ignore',
      detached: true,
    });
    this.child = child;
    liveGroups.add(child.pid!);
    this.exited = new Promise((resolve) => child.once('exit', () => resolve()));
    await waitForRedis(this.port);
  }

  /** SIGKILL: everything it held is gone. */
  async kill(): Promise<void> {
    const child = this.child;
    if (child === null) return;
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await this.exited;
    liveGroups.delete(child.pid!);
    this.child = null;
  }

  /** A fresh, empty server on the same port. */
  async restart(): Promise<void> {
    await this.kill();
    await this.spawn();
  }
}

/** One PGlite served on a unix socket: the account database every node of a run shares. */
export interface SharedDatabase {
  env: Record<string, string>;
  stop(): Promise<void>;
}

export async function startSharedDatabase(): Promise<SharedDatabase> {
  const socketDir = mkdtempSync(join(tmpdir(), 'rl-accuracy-db-'));
  let output = '';
  const child = spawn(process.execPath, [join(ROOT, 'dist/scripts/pglite-server.js'), socketDir, 'memory'], {
    cwd: ROOT,
    env: { PATH: process.env.PATH ?? '' },
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true,
  });
  liveGroups.add(child.pid!);
  child.stdout!.on('data', (c: Buffer) => (output += c.toString()));
  child.stderr!.on('data', (c: Buffer) => (output += c.toString()));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const stop = async (): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
    await exited;
    clearTimeout(timer);
    liveGroups.delete(child.pid!);
    rmSync(socketDir, { recursive: true, force: true });
  };
  const deadline = Date.now() + 60_000;
  while (!existsSync(join(socketDir, '.s.PGSQL.5432'))) {
    if (child.exitCode !== null || Date.now() > deadline) {
      await stop();
      throw new Error(`the PGlite server did not start:\n${tail(output)}`);
    }
    await sleep(100);
  }
  return {
    env: {
      SQL_DATABASE_ENDPOINT: `${socketDir}:5432`,
      SQL_DATABASE_NAME: 'postgres',
      SQL_DATABASE_USER: 'postgres',
      SQL_DATABASE_PASSWORD: '',
      // The served PGlite takes 64 connections; 4 nodes × 2 workers × 10 (the default) would not fit.
      SQL_DATABASE_POOL_SIZE: '3',
    },
    stop,
  };
}

/** A node: `node dist/src/main.js` (primary + workers) in its own process group. */
export class NodeProcess {
  private output = '';
  readonly exited: Promise<void>;

  private constructor(
    readonly name: string,
    readonly port: number,
    private readonly child: ChildProcess,
  ) {
    child.stdout!.on('data', (c: Buffer) => this.append(c));
    child.stderr!.on('data', (c: Buffer) => this.append(c));
    this.exited = new Promise((resolve) => child.once('exit', () => resolve()));
  }

  private append(chunk: Buffer): void {
    this.output = tail(this.output + chunk.toString(), 64_000);
  }

  static async start(name: string, env: Record<string, string>, workers: number, taken: Set<number>): Promise<NodeProcess> {
    const port = await freeNodePort(workers, taken);
    const child = spawn(process.execPath, [join(ROOT, 'dist/src/main.js')], {
      cwd: ROOT,
      env: {
        PATH: process.env.PATH ?? '',
        LOG_LEVEL: 'warn',
        RATE_LIMITING_API_HOST: '127.0.0.1',
        ...env,
        NODE_ID: name,
        RATE_LIMITING_API_PORT: String(port),
        RATE_LIMITING_WORKERS: String(workers),
      },
      stdio: ['ignore', 'pipe', 'pipe'],
      // Its own process group, so the whole node can be killed or stopped at once.
      detached: true,
    });
    liveGroups.add(child.pid!);
    const node = new NodeProcess(name, port, child);
    const deadline = Date.now() + 60_000;
    for (;;) {
      if (child.exitCode !== null) throw new Error(`${name} exited early:\n${tail(node.output)}`);
      try {
        const res = await fetch(`${node.url}/health`, { headers: { connection: 'close' } });
        if (res.ok) return node;
      } catch {
        // not listening yet
      }
      if (Date.now() > deadline) {
        await node.kill();
        throw new Error(`${name} did not become ready:\n${tail(node.output)}`);
      }
      await sleep(200);
    }
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  get pid(): number {
    return this.child.pid!;
  }

  log(): string {
    return this.output;
  }

  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  workerPids(): number[] {
    try {
      return execFileSync('pgrep', ['-P', String(this.pid)], { encoding: 'utf8' }).split('\n').filter(Boolean).map(Number);
    } catch {
      return [];
    }
  }

  /** kill -9 of the whole node: primary and workers. */
  async kill(): Promise<void> {
    signalGroup(this.pid, 'SIGCONT');
    signalGroup(this.pid, 'SIGKILL');
    await this.exited;
    liveGroups.delete(this.pid);
  }

  suspend(): void {
    signalGroup(this.pid, 'SIGSTOP');
  }

  resume(): void {
    signalGroup(this.pid, 'SIGCONT');
  }

  /** SIGTERM (drain), then SIGKILL of the group after `graceMs`. */
  async stop(graceMs = 3000): Promise<void> {
    if (!this.running) {
      signalGroup(this.pid, 'SIGKILL');
      liveGroups.delete(this.pid);
      return;
    }
    signalGroup(this.pid, 'SIGCONT');
    this.child.kill('SIGTERM');
    const timer = setTimeout(() => signalGroup(this.pid, 'SIGKILL'), graceMs);
    await this.exited;
    clearTimeout(timer);
    // Workers leave when the primary's IPC channel closes; make sure none lingers.
    signalGroup(this.pid, 'SIGKILL');
    liveGroups.delete(this.pid);
  }
}

interface StatusBody {
  pid: number;
  cluster: { members: Array<{ id: string; suspected: boolean }> } | null;
}

async function status(node: NodeProcess): Promise<StatusBody | null> {
  try {
    const res = await fetch(`${node.url}/rate-limiting/status`, { headers: { connection: 'close' }, signal: AbortSignal.timeout(3000) });
    return (await res.json()) as StatusBody;
  } catch {
    return null;
  }
}

/** Waits until every worker of every node sees `members` ring members, none suspected. */
export async function waitForRing(nodes: NodeProcess[], members: number, timeoutMs = 60_000): Promise<number> {
  const started = Date.now();
  for (;;) {
    // Fresh connections, so both workers of a node get asked over the repeated calls.
    const views = await Promise.all(nodes.flatMap((n) => [status(n), status(n), status(n), status(n)]));
    const ok = views.every((v) => v !== null && v.cluster !== null && v.cluster.members.length === members && v.cluster.members.every((m) => !m.suspected));
    if (ok) return Date.now() - started;
    if (Date.now() - started > timeoutMs) {
      throw new Error(`the ring did not reach ${members} members: ${JSON.stringify(views.map((v) => v?.cluster?.members.length ?? null))}`);
    }
    await sleep(250);
  }
}

