/**
 * The accuracy scenarios: each starts real processes of its own (a redis-server, nodes of
 * `dist/src/main.js` with their primary and workers: nodes.ts), drives a seeded workload
 * through them with an open-loop client of bounded concurrency (load.ts), injects its fault
 * mid-run, stops everything in `finally`, and hands back what every node answered.
 *
 * Windows are shortened through the nodes' configuration (minute 3 s, hour 15 s, day 60 s)
 * so a run crosses minute, hour and day boundaries; the reference is given the same limits,
 * built from the very environment the nodes are started with (`refLimitsFromEnv`), never
 * from `src/`.
 */
import type { RefLimits } from '../reference/model.js';
import { startLoad, type Answer, type LoadRun } from './load.js';
import { NodeProcess, RedisServer, sleep, tail, waitForRing, type SharedDatabase } from './nodes.js';
import type { TierFigures, WindowLengths, Workload } from './workloads.js';

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
