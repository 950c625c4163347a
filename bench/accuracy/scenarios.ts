/**
 * The accuracy scenarios: each starts real processes of its own (a redis-server, nodes of
 * `dist/src/main.js` with their primary and workers), drives a seeded workload through them
 * with an open-loop client of bounded concurrency, injects its fault mid-run, stops
 * everything in `finally`, and hands back what every node answered.
 *
 * Windows are shortened through the nodes' configuration (minute 3 s, hour 15 s, day 60 s)
 * so a run crosses minute, hour and day boundaries; the reference is given the same limits,
 * built from the very environment the nodes are started with (`refLimitsFromEnv`), never
 * from `src/`.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ROOT, freeNodePort, freePort, waitForRedis } from '../lib/processes.js';
import type { RefLimits } from '../reference/model.js';
import { requestBody, type TierFigures, type WindowLengths, type Workload, type WorkloadRequest } from './workloads.js';

// ---------------------------------------------------------------------------------------
// Configuration the nodes get, and the reference limits read back from it
// ---------------------------------------------------------------------------------------

/** Shortened windows: minute 3 s, hour 15 s (5 minutes), day 60 s (4 hours). */
export const WINDOWS: WindowLengths = { minuteMs: 3000, hourMs: 15_000, dayMs: 60_000 };

/** Small limits, so hour and day bind within a run. */
export const TIERS: Record<string, TierFigures> = {
  basic: { burst: 4, perMinute: 10, perHour: 30, perDay: 80 },
  premium: { burst: 10, perMinute: 30, perHour: 100, perDay: 250 },
  enterprise: { burst: 30, perMinute: 100, perHour: 300, perDay: 800 },
};

const GRACE_SECONDS = 4;
const OVERAGE = 'block';

/** The limit and window configuration of every node, as environment variables. */
export function limitEnvironment(): Record<string, string> {
  const env: Record<string, string> = {
    RATE_LIMITING_MINUTE_MS: String(WINDOWS.minuteMs),
    RATE_LIMITING_HOUR_MS: String(WINDOWS.hourMs),
    QUOTA_RESET_INTERVAL: String(WINDOWS.dayMs / 1000),
    QUOTA_MANAGEMENT_ENABLED: 'true',
    QUOTA_GRACE_PERIOD: String(GRACE_SECONDS),
    QUOTA_OVERAGE_HANDLING: OVERAGE,
    USER_TIER_DEFAULT: 'basic',
  };
  for (const [tier, f] of Object.entries(TIERS)) {
    const t = tier.toUpperCase();
    env[`USER_TIER_${t}_ENABLED`] = 'true';
    env[`RATE_LIMIT_${t}_BURST_LIMIT`] = String(f.burst);
    env[`RATE_LIMIT_${t}_REQUESTS_PER_MINUTE`] = String(f.perMinute);
    env[`RATE_LIMIT_${t}_REQUESTS_PER_HOUR`] = String(f.perHour);
    env[`RATE_LIMIT_${t}_REQUESTS_PER_DAY`] = String(f.perDay);
    env[`RATE_LIMIT_${t}_THROTTLE_REQUESTS_PER_MINUTE`] = String(Math.max(1, Math.floor(f.perMinute / 10)));
  }
  return env;
}

function envNumber(env: Record<string, string>, name: string): number {
  const value = Number(env[name]);
  if (env[name] === undefined || !Number.isInteger(value)) throw new Error(`the benchmark's node environment lacks an integer ${name}`);
  return value;
}

/** The reference's limits of `tier`, read from the environment the nodes were given. */
export function refLimitsFromEnv(env: Record<string, string>, tier: string): RefLimits {
  const t = tier.toUpperCase();
  const overage = env.QUOTA_OVERAGE_HANDLING;
  if (overage !== 'block' && overage !== 'allow' && overage !== 'throttle') throw new Error(`unexpected QUOTA_OVERAGE_HANDLING ${overage}`);
  return {
    burst: envNumber(env, `RATE_LIMIT_${t}_BURST_LIMIT`),
    perMinute: envNumber(env, `RATE_LIMIT_${t}_REQUESTS_PER_MINUTE`),
    perHour: envNumber(env, `RATE_LIMIT_${t}_REQUESTS_PER_HOUR`),
    perDay: envNumber(env, `RATE_LIMIT_${t}_REQUESTS_PER_DAY`),
    throttlePerMinute: envNumber(env, `RATE_LIMIT_${t}_THROTTLE_REQUESTS_PER_MINUTE`),
    quotaEnabled: env.QUOTA_MANAGEMENT_ENABLED === 'true',
    overage,
    graceMs: envNumber(env, 'QUOTA_GRACE_PERIOD') * 1000,
    minuteMs: envNumber(env, 'RATE_LIMITING_MINUTE_MS'),
    hourMs: envNumber(env, 'RATE_LIMITING_HOUR_MS'),
    dayMs: envNumber(env, 'QUOTA_RESET_INTERVAL') * 1000,
  };
}

// ---------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

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

function tail(text: string, max = 4000): string {
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

// ---------------------------------------------------------------------------------------
// The load: an open-loop client with bounded concurrency
// ---------------------------------------------------------------------------------------

/** One answered check, as the client saw it. */
export interface Answer {
  /** Index of the request in the workload. */
  index: number;
  allowed: boolean;
  /** `decided_at`: the deciding node's time. */
  decidedAt: number;
  /** `quota.current_usage` after the decision: orders one user's decisions made in one ms. */
  dayUsage: number;
  code: string;
  mode: string;
  receivedAt: number;
}

export interface LoadRun {
  answers: Answer[];
  /** Requests without a decision (connection errors, timeouts, non-200), by reason. */
  unanswered: Map<string, number>;
  unansweredCount: number;
  sent: number;
  /** ms the client fell behind the schedule at worst. */
  maxLagMs: number;
  startedAt: number;
  /** Replaces the node URLs requests go to, round-robin (e.g. without a dead node). */
  setTargets(urls: string[]): void;
  /** Resolves once every request has been sent and answered (or failed). */
  done: Promise<void>;
}

export interface LoadOptions {
  concurrency: number;
  timeoutMs: number;
  onProgress?: (completed: number) => void;
}

function post(agent: http.Agent, target: URL, body: string, timeoutMs: number): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request(
      {
        agent,
        host: target.hostname,
        port: target.port,
        path: '/rate-limiting/check',
        method: 'POST',
        headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString() }));
        res.on('error', reject);
      },
    );
    req.setTimeout(timeoutMs, () => req.destroy(new Error('timeout')));
    req.on('error', reject);
    req.end(body);
  });
}

function reasonOf(err: unknown): string {
  const e = err as NodeJS.ErrnoException;
  return e.code ?? e.message ?? 'error';
}

/**
 * Sends every request of `workload` at its scheduled time (or as soon as a slot frees when
 * behind), round-robin over the targets, at most `concurrency` in flight; never retries
 * (a retried check could be charged twice).
 */
export function startLoad(workload: Workload, urls: string[], options: LoadOptions): LoadRun {
  const agent = new http.Agent({ keepAlive: true, maxSockets: options.concurrency, maxFreeSockets: options.concurrency });
  let targets = urls.map((u) => new URL(u));
  let next = 0;
  const run: LoadRun = {
    answers: [],
    unanswered: new Map(),
    unansweredCount: 0,
    sent: 0,
    maxLagMs: 0,
    startedAt: Date.now(),
    setTargets(replacement: string[]) {
      targets = replacement.map((u) => new URL(u));
    },
    done: Promise.resolve(),
  };
  const fail = (reason: string): void => {
    run.unanswered.set(reason, (run.unanswered.get(reason) ?? 0) + 1);
    run.unansweredCount += 1;
  };
  let inFlight = 0;
  let completed = 0;
  let wake: (() => void) | null = null;

  const one = async (index: number, request: WorkloadRequest): Promise<void> => {
    const target = targets[next++ % targets.length]!;
    try {
      const res = await post(agent, target, requestBody(request), options.timeoutMs);
      if (res.status !== 200) {
        fail(`HTTP ${res.status}`);
        return;
      }
      const body = JSON.parse(res.text) as { allowed: boolean; decided_at: number; code: string; mode: string; quota?: { current_usage?: number } };
      if (typeof body.decided_at !== 'number' || typeof body.allowed !== 'boolean') {
        fail('answer without decided_at/allowed');
        return;
      }
      run.answers.push({
        index,
        allowed: body.allowed,
        decidedAt: body.decided_at,
        dayUsage: body.quota?.current_usage ?? 0,
        code: body.code,
        mode: body.mode,
        receivedAt: Date.now(),
      });
    } catch (err) {
      fail(reasonOf(err));
    }
  };

  run.done = (async () => {
    const requests = workload.requests;
    for (let i = 0; i < requests.length; i++) {
      const request = requests[i]!;
      const due = run.startedAt + request.at;
      const now = Date.now();
      if (due > now + 1) await sleep(due - now);
      else run.maxLagMs = Math.max(run.maxLagMs, now - due);
      while (inFlight >= options.concurrency) await new Promise<void>((r) => (wake = r));
      inFlight += 1;
      run.sent += 1;
      void one(i, request).finally(() => {
        inFlight -= 1;
        completed += 1;
        options.onProgress?.(completed);
        const w = wake;
        wake = null;
        w?.();
      });
    }
    while (inFlight > 0) await new Promise<void>((r) => (wake = r));
    agent.destroy();
  })();
  return run;
}

// ---------------------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------------------

export interface ScenarioContext {
  redis: RedisServer;
  nodes: NodeProcess[];
  load: LoadRun;
  /** Environment every node of this scenario gets (a joining node too). */
  nodeEnv: Record<string, string>;
  durationMs: number;
  /** Starts one more node of this scenario. */
  addNode(name: string): Promise<NodeProcess>;
  /** Notes what happened when, relative to the start of the load. */
  note(text: string): void;
  /** Waits until `share` of the planned duration has passed since the load started. */
  at(share: number): Promise<void>;
}

export interface Scenario {
  name: string;
  title: string;
  /** Accuracy (headline figure) the scenario must reach. */
  bar: number;
  nodes: number;
  env?: Record<string, string>;
  /** The fault, run alongside the load. */
  fault?: (ctx: ScenarioContext) => Promise<void>;
}

const WORKERS = 2;

export const SCENARIOS: Scenario[] = [
  { name: 'single', title: 'single node (2 workers), Redis write-behind', bar: 1, nodes: 1 },
  { name: 'cluster', title: '3-node cluster, round-robin, steady', bar: 0.999, nodes: 3 },
  {
    name: 'node-kill',
    title: '3 nodes, one killed (-9) mid-run',
    bar: 0.99,
    nodes: 3,
    async fault(ctx) {
      await ctx.at(0.35);
      const victim = ctx.nodes[2]!;
      ctx.load.setTargets(ctx.nodes.slice(0, 2).map((n) => n.url));
      await victim.kill();
      ctx.note(`kill -9 ${victim.name} (primary and workers); load continues on the other two`);
      try {
        await waitForRing(ctx.nodes.slice(0, 2), 2 * WORKERS, 30_000);
        ctx.note('ring shrank to the survivors');
      } catch (err) {
        ctx.note(`ring did not shrink: ${(err as Error).message}`);
      }
    },
  },
  {
    name: 'node-stop',
    title: '3 nodes, one SIGSTOPped for 5 s, then resumed',
    bar: 0.99,
    nodes: 3,
    async fault(ctx) {
      await ctx.at(0.3);
      const sleeper = ctx.nodes[2]!;
      ctx.load.setTargets(ctx.nodes.slice(0, 2).map((n) => n.url));
      await sleep(200);
      sleeper.suspend();
      ctx.note(`SIGSTOP ${sleeper.name}; load goes to the other two`);
      await sleep(5000);
      sleeper.resume();
      ctx.note(`SIGCONT ${sleeper.name}`);
      await sleep(1000);
      ctx.load.setTargets(ctx.nodes.map((n) => n.url));
      ctx.note(`${sleeper.name} gets load again`);
    },
  },
  {
    name: 'worker-kill',
    title: '3 nodes, one worker process killed (-9) mid-run',
    bar: 0.99,
    nodes: 3,
    async fault(ctx) {
      await ctx.at(0.35);
      const node = ctx.nodes[0]!;
      const [victim] = node.workerPids();
      if (victim === undefined) throw new Error(`${node.name} has no worker processes`);
      process.kill(victim, 'SIGKILL');
      ctx.note(`kill -9 worker pid ${victim} of ${node.name}`);
      const deadline = Date.now() + 30_000;
      while (!(node.workerPids().length === WORKERS && !node.workerPids().includes(victim))) {
        if (Date.now() > deadline) {
          ctx.note('the worker was not restarted within 30 s');
          return;
        }
        await sleep(100);
      }
      ctx.note('the primary restarted the worker');
    },
  },
  {
    name: 'redis-restart',
    title: '3 nodes, redis-server killed and restarted empty mid-run',
    bar: 0.99,
    nodes: 3,
    async fault(ctx) {
      await ctx.at(0.35);
      await ctx.redis.kill();
      ctx.note('kill -9 redis-server');
      await sleep(3000);
      await ctx.redis.restart();
      ctx.note('redis-server restarted, empty, on the same port');
    },
  },
  {
    name: 'node-join',
    title: '3 nodes, a 4th joining mid-run',
    bar: 0.99,
    nodes: 3,
    async fault(ctx) {
      await ctx.at(0.3);
      ctx.note('starting a 4th node');
      const joiner = await ctx.addNode('node-4');
      try {
        await waitForRing(ctx.nodes, 4 * WORKERS, 30_000);
        ctx.note('ring has 4 nodes');
      } catch (err) {
        ctx.note(`ring did not converge: ${(err as Error).message}`);
      }
      ctx.load.setTargets(ctx.nodes.map((n) => n.url));
      ctx.note(`${joiner.name} gets load`);
    },
  },
  { name: 'redis-mode', title: '3 nodes, redis decision mode (every decision in Redis)', bar: 0.999, nodes: 3, env: { RATE_LIMITING_MODE: 'redis' } },
];

/** The scenarios of `npm run bench:quick`. */
export const QUICK_SCENARIOS = ['single', 'cluster', 'node-kill'];

export interface ScenarioRun {
  answers: Answer[];
  unanswered: Map<string, number>;
  unansweredCount: number;
  sent: number;
  maxLagMs: number;
  loadMs: number;
  /** Epoch ms the load started at. */
  startedAt: number;
  /** What the warm-up traffic got (its own users; judged apart, not part of the figures). */
  warmup: { answers: Answer[]; unansweredCount: number } | null;
  events: string[];
  nodeEnv: Record<string, string>;
  /** Error of the fault step, if it threw. */
  faultError: string | null;
  modes: Record<string, number>;
  /** The last lines each node wrote (warnings and errors; LOG_LEVEL=warn). */
  logs: Record<string, string>;
}

export interface RunOptions {
  workload: Workload;
  /** Traffic of other users sent first, once the ring is up (JIT, connections, caches). */
  warmup?: Workload;
  durationMs: number;
  concurrency: number;
  database: SharedDatabase;
  onProgress?: (completed: number) => void;
  onPhase?: (phase: string) => void;
}

/** Runs one scenario end to end; every process it started is stopped before it returns. */
export async function runScenario(scenario: Scenario, options: RunOptions): Promise<ScenarioRun> {
  const taken = new Set<number>();
  const nodes: NodeProcess[] = [];
  const events: string[] = [];
  let redis: RedisServer | null = null;
  try {
    options.onPhase?.('starting redis-server and nodes');
    redis = await RedisServer.start();
    const nodeEnv = { ...limitEnvironment(), ...options.database.env, REDIS_ENDPOINT: redis.endpoint, USAGE_ANALYTICS_ENABLED: 'false', ...scenario.env };
    const started = await Promise.allSettled(Array.from({ length: scenario.nodes }, (_, i) => NodeProcess.start(`node-${i + 1}`, nodeEnv, WORKERS, taken)));
    for (const s of started) if (s.status === 'fulfilled') nodes.push(s.value);
    const failed = started.find((s) => s.status === 'rejected');
    if (failed) throw (failed as PromiseRejectedResult).reason;
    options.onPhase?.('waiting for the ring');
    await waitForRing(nodes, scenario.nodes * WORKERS);

    let warmup: ScenarioRun['warmup'] = null;
    if (options.warmup) {
      options.onPhase?.('warm-up');
      const w = startLoad(options.warmup, nodes.map((n) => n.url), { concurrency: options.concurrency, timeoutMs: 5000 });
      await w.done;
      warmup = { answers: w.answers, unansweredCount: w.unansweredCount };
    }
    options.onPhase?.('load');
    const load = startLoad(options.workload, nodes.map((n) => n.url), { concurrency: options.concurrency, timeoutMs: 5000, onProgress: options.onProgress });
    const note = (text: string): void => {
      const now = Date.now();
      events.push(`${((now - load.startedAt) / 1000).toFixed(1)} s (epoch ms ${now}): ${text}`);
    };
    const ctx: ScenarioContext = {
      redis,
      nodes,
      load,
      nodeEnv,
      durationMs: options.durationMs,
      note,
      addNode: async (name) => {
        const node = await NodeProcess.start(name, nodeEnv, WORKERS, taken);
        nodes.push(node);
        return node;
      },
      at: async (share) => {
        const wait = load.startedAt + share * options.durationMs - Date.now();
        if (wait > 0) await sleep(wait);
      },
    };
    let faultError: string | null = null;
    const fault = scenario.fault ? scenario.fault(ctx).catch((err: unknown) => {
      faultError = (err as Error).message;
      note(`fault step failed: ${faultError}`);
    }) : Promise.resolve();
    await Promise.all([load.done, fault]);
    const loadMs = Date.now() - load.startedAt;
    const modes: Record<string, number> = {};
    for (const a of load.answers) modes[a.mode] = (modes[a.mode] ?? 0) + 1;
    return {
      answers: load.answers,
      unanswered: load.unanswered,
      unansweredCount: load.unansweredCount,
      sent: load.sent,
      maxLagMs: load.maxLagMs,
      loadMs,
      startedAt: load.startedAt,
      warmup,
      events,
      nodeEnv,
      faultError,
      modes,
      logs: Object.fromEntries(nodes.map((n) => [n.name, tail(n.log(), 3000)])),
    };
  } finally {
    options.onPhase?.('stopping');
    await Promise.all(nodes.map((n) => n.stop()));
    await redis?.kill();
  }
}
