/**
 * Scale (issue 7, item 5):
 *  (a) memory of one node of ours holding `users` active users (default 1M), RSS and heap,
 *      against the same node idle; and, in fresh processes of their own, our engine's
 *      counters (Shard) and rate-limiter-flexible's RateLimiterMemory holding as many keys;
 *  (b) the engine alone, ns per decision: our Shard.decide against
 *      RateLimiterMemory.consume, same keys in the same order, same number of decisions,
 *      in interleaved rounds of one fresh process.
 *
 * The in-process parts run in child processes of this module (`--expose-gc`, nothing else
 * on their event loop); the parent only starts, drives and reads.
 */
import { fork } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { parentOf, ROOT, sumSamples, type Target } from '../lib/processes.js';
import { progress, type Progress } from '../lib/progress.js';
import { machineLine, markdownTable, median, table, writeResult, type Row } from '../lib/report.js';
import { PEER_POINTS, PEER_WINDOW_SECONDS, startNode } from './targets.js';

export interface ScaleOptions {
  /** Distinct active users driven through the node (default 1 000 000). */
  users: number;
  /** Workers of the node (default 2). */
  workers?: number;
  /** Checks per /rate-limiting/check/batch request (default and most 1000). */
  batchSize?: number;
  /** Batch requests in flight (default 8). */
  concurrency?: number;
  /** Give the node a Redis (local mode, write-behind) as a deployment would (default false: memory only). */
  redis?: boolean;
  /** Decisions per engine round (default 1 000 000). */
  decisions: number;
  /** Distinct keys of the engine rounds (default 10 000). */
  keys: number;
  /** Measured engine rounds (plus one warm-up round, not counted). */
  rounds: number;
  /**
   * Also drive a second node whose processes have their JavaScript heap capped at this many
   * MB (`NODE_OPTIONS=--max-old-space-size`), beside the uncapped one; 0 skips it.
   */
  heapCapMb?: number;
  /** Skip part (a) or (b). */
  skipMemory?: boolean;
  skipEngine?: boolean;
  /** Print the result as JSON on stdout (tables and logs go to stderr). */
  json?: boolean;
}

const CHILD_ENV = 'RL_BENCH_SCALE_CHILD';
const MB = 1024 * 1024;

// ---------------------------------------------------------------------------------------
// Child processes: fresh heaps for the in-process measurements.

interface HeldKeysResult {
  what: string;
  keys: number;
  rssBefore: number;
  rssAfter: number;
  heapBefore: number;
  heapAfter: number;
  seconds: number;
}

interface EngineRound {
  ours: number;
  oursAwaited: number;
  /** The engine's decide() on a plain Map of UserState, without the Shard (LRU, entries). */
  bare: number;
  rlf: number;
  oursAllowed: number;
  rlfAllowed: number;
}

async function ourShard(maxUsers: number) {
  // Imported from dist/src like the node itself runs it.
  const { Shard } = await import('../../src/node/shard.js');
  const { tierLimitsTable } = await import('../../src/node/limits.js');
  const { loadConfig } = await import('../../src/config/load.js');
  const { config } = loadConfig({}, ROOT);
  const limits = tierLimitsTable(config).get(config.user_tiers.default_tier)!;
  const shard = new Shard({ maxUsers: Math.max(1000, maxUsers), tracking: false, maxEvictedDirty: 0 });
  return { shard, limits };
}

function settle(): void {
  const gc = (globalThis as { gc?: () => void }).gc;
  if (gc) for (let i = 0; i < 3; i++) gc();
}

/** Holds `keys` distinct keys in our Shard or in RateLimiterMemory; memory before and after. */
async function holdKeys(what: 'ours' | 'rlf', keys: number): Promise<HeldKeysResult> {
  const ids = Array.from({ length: keys }, (_, i) => `scale-user-${i}`);
  const ours = what === 'ours' ? await ourShard(keys) : null;
  const { RateLimiterMemory } = await import('rate-limiter-flexible');
  settle();
  const before = process.memoryUsage();
  const started = performance.now();
  if (ours) {
    const now = Date.now();
    for (const id of ids) ours.shard.decide(id, ours.limits, 1, now);
  } else {
    const limiter = new RateLimiterMemory({ points: PEER_POINTS, duration: PEER_WINDOW_SECONDS });
    for (let i = 0; i < ids.length; i += 1000) {
      await Promise.all(ids.slice(i, i + 1000).map((id) => limiter.consume(id, 1).catch(() => undefined)));
    }
    (globalThis as { keep?: unknown }).keep = limiter;
  }
  const seconds = (performance.now() - started) / 1000;
  settle();
  const after = process.memoryUsage();
  (globalThis as { keep2?: unknown }).keep2 = ours;
  return { what, keys, rssBefore: before.rss, rssAfter: after.rss, heapBefore: before.heapUsed, heapAfter: after.heapUsed, seconds };
}

/** Interleaved rounds of both engines on the same key sequence. */
async function engineRounds(decisions: number, keys: number, rounds: number): Promise<EngineRound[]> {
  const { RateLimiterMemory } = await import('rate-limiter-flexible');
  const ids = Array.from({ length: keys }, (_, i) => `bench-user-${i}`);
  const runOurs = async (awaited: boolean): Promise<[number, number]> => {
    const { shard, limits } = await ourShard(keys);
    settle();
    let allowed = 0;
    const started = performance.now();
    if (awaited) {
      for (let i = 0; i < decisions; i++) {
        const decision = await Promise.resolve(shard.decide(ids[i % keys]!, limits, 1, Date.now()));
        if (decision.allowed) allowed++;
      }
    } else {
      for (let i = 0; i < decisions; i++) if (shard.decide(ids[i % keys]!, limits, 1, Date.now()).allowed) allowed++;
    }
    return [((performance.now() - started) * 1e6) / decisions, allowed];
  };
  const runRlf = async (): Promise<[number, number]> => {
    const limiter = new RateLimiterMemory({ points: PEER_POINTS, duration: PEER_WINDOW_SECONDS });
    settle();
    let allowed = 0;
    const started = performance.now();
    for (let i = 0; i < decisions; i++) {
      try {
        await limiter.consume(ids[i % keys]!, 1);
        allowed++;
      } catch {
        // denied
      }
    }
    return [((performance.now() - started) * 1e6) / decisions, allowed];
  };
  const runBare = async (): Promise<number> => {
    const { decide, newUserState } = await import('../../src/node/engine.js');
    const { limits } = await ourShard(keys);
    const states = new Map<string, ReturnType<typeof newUserState>>();
    settle();
    const started = performance.now();
    for (let i = 0; i < decisions; i++) {
      const id = ids[i % keys]!;
      let state = states.get(id);
      if (state === undefined) states.set(id, (state = newUserState()));
      decide(state, limits, 1, Date.now());
    }
    return ((performance.now() - started) * 1e6) / decisions;
  };
  const results: EngineRound[] = [];
  for (let round = 0; round <= rounds; round++) {
    const round_: Partial<EngineRound> = {};
    // Alternate which goes first; round 0 is a warm-up.
    const order = round % 2 === 0 ? (['ours', 'rlf', 'awaited', 'bare'] as const) : (['rlf', 'bare', 'awaited', 'ours'] as const);
    for (const which of order) {
      if (which === 'rlf') [round_.rlf, round_.rlfAllowed] = await runRlf();
      else if (which === 'bare') round_.bare = await runBare();
      else if (which === 'ours') [round_.ours, round_.oursAllowed] = await runOurs(false);
      else [round_.oursAwaited] = await runOurs(true);
    }
    if (round > 0) results.push(round_ as EngineRound);
    process.send?.({ progress: round });
  }
  return results;
}

type ChildTask = { task: 'hold'; what: 'ours' | 'rlf'; keys: number } | { task: 'engine'; decisions: number; keys: number; rounds: number };

function inChild<T>(task: ChildTask, onProgress?: (n: number) => void): Promise<T> {
  const child = fork(fileURLToPath(import.meta.url), [], {
    env: { ...process.env, [CHILD_ENV]: '1' },
    execArgv: ['--expose-gc', '--max-old-space-size=8192'],
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  return new Promise((resolve, reject) => {
    child.on('message', (m: { result?: T; error?: string; progress?: number }) => {
      if (m.progress !== undefined) onProgress?.(m.progress);
      else if (m.error !== undefined) reject(new Error(m.error));
      else resolve(m.result as T);
    });
    child.on('exit', (code) => reject(new Error(`scale child exited (${code})`)));
    child.send(task);
  });
}

if (process.env[CHILD_ENV] === '1' && process.send !== undefined) {
  process.once('message', (task: ChildTask) => {
    const run = task.task === 'hold' ? holdKeys(task.what, task.keys) : engineRounds(task.decisions, task.keys, task.rounds);
    run.then(
      (result) => process.send!({ result }, () => process.exit(0)),
      (err: Error) => process.send!({ error: err.stack ?? err.message }, () => process.exit(1)),
    );
  });
}

// ---------------------------------------------------------------------------------------
// The node: memory idle and with `users` users.

interface NodeMemory {
  /** RSS of the primary and every child of it (its workers), from /proc. */
  rssTotal: number;
  /** Sum over the workers (their /metrics, aggregated by the primary). */
  rssWorkers: number;
  heapUsedWorkers: number;
  heapTotalWorkers: number;
  shardUsers: number;
  processes: number;
}

function rssOf(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  return Number(/VmRSS:\s+(\d+) kB/.exec(status)?.[1] ?? 0) * 1024;
}

async function nodeMemory(target: Target): Promise<NodeMemory> {
  const status = (await (await fetch(`${target.url}/rate-limiting/status`)).json()) as { pid: number };
  const primary = parentOf(status.pid);
  const children = readdirSync('/proc')
    .filter((d) => /^\d+$/.test(d))
    .map(Number)
    .filter((pid) => {
      try {
        return parentOf(pid) === primary;
      } catch {
        return false;
      }
    });
  const text = await (await fetch(`${target.url}/metrics`)).text();
  const metric = (name: string): number => Number(new RegExp(`^${name} ([0-9.eE+-]+)$`, 'm').exec(text)?.[1] ?? NaN);
  return {
    rssTotal: rssOf(primary) + children.reduce((sum, pid) => sum + rssOf(pid), 0),
    rssWorkers: metric('process_resident_memory_bytes'),
    heapUsedWorkers: metric('nodejs_heap_size_used_bytes'),
    heapTotalWorkers: metric('nodejs_heap_size_total_bytes'),
    shardUsers: metric('rate_limiting_shard_users') || sumSamples(text, 'rate_limiting_shard_users'),
    processes: 1 + children.length,
  };
}

async function driveUsers(target: Target, users: number, batchSize: number, concurrency: number, bar: Progress): Promise<{ seconds: number; denied: number; failed: number }> {
  let next = 0;
  let done = 0;
  let denied = 0;
  let failed = 0;
  const started = performance.now();
  const worker = async (): Promise<void> => {
    while (next < users) {
      const from = next;
      const count = Math.min(batchSize, users - from);
      next += count;
      const checks = Array.from({ length: count }, (_, i) => ({ user_id: `scale-user-${from + i}` }));
      const res = await fetch(`${target.url}/rate-limiting/check/batch`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ checks }),
      });
      if (res.status !== 200) {
        failed += count;
        await res.arrayBuffer();
      } else {
        const body = (await res.json()) as { results: Array<{ allowed: boolean }> };
        for (const r of body.results) if (!r.allowed) denied++;
      }
      done += count;
      bar.update(done, `${done} users`);
    }
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
  return { seconds: (performance.now() - started) / 1000, denied, failed };
}

const mb = (bytes: number): string => (Number.isFinite(bytes) ? (bytes / MB).toFixed(0) : '-');
const perUser = (delta: number, users: number): string => (Number.isFinite(delta) && users > 0 ? (delta / users).toFixed(0) : '-');
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** `npm run bench -- scale`: returns false when the node failed to start or to take every user. */
export async function scale(options: ScaleOptions): Promise<boolean> {
  const log = options.json ? (line: string) => process.stderr.write(`${line}\n`) : (line: string) => console.log(line);
  const workers = options.workers ?? 2;
  const batchSize = Math.min(1000, options.batchSize ?? 1000);
  const concurrency = options.concurrency ?? 8;
  let ok = true;
  const notes: string[] = [];
  const memoryRows: Row[] = [];
  const engineRows: Row[] = [];
  const json: Record<string, unknown> = { options: { ...options, workers, batchSize, concurrency }, machine: machineLine() };

  if (!options.skipMemory) {
    const heapCap = options.heapCapMb ?? 0;
    for (const cap of heapCap > 0 ? [0, heapCap] : [0]) {
      const env: Record<string, string> = { RATE_LIMITING_MAX_USERS_IN_MEMORY: String(Math.max(1000, options.users * 2)) };
      if (cap > 0) env.NODE_OPTIONS = `--max-old-space-size=${cap}`;
      const label = `our node (${workers} workers${options.redis ? ', Redis write-behind' : ', no Redis'}${cap > 0 ? `, heap capped at ${cap} MB` : ''})`;
      let redis: { endpoint: string; stop(): Promise<void> } | null = null;
      if (options.redis) {
        const { startRedis } = await import('../lib/processes.js');
        redis = await startRedis();
        env.REDIS_ENDPOINT = redis.endpoint;
      }
      let target: Target | null = null;
      const bar = progress(`scale: users${cap > 0 ? ` (heap capped at ${cap} MB)` : ''}`, options.users);
      try {
        target = await startNode('ours, memory', workers, env);
        // The primary boots its embedded database (PGlite) after /health answers; let it finish.
        await sleep(15_000);
        const idle = await nodeMemory(target);
        const drive = await driveUsers(target, options.users, batchSize, concurrency, bar);
        bar.finish(`${options.users} users in ${drive.seconds.toFixed(1)} s`);
        await sleep(3000);
        const loaded = await nodeMemory(target);
        if (drive.failed > 0 || loaded.shardUsers < options.users) {
          ok = false;
          notes.push(`${label}: holds ${loaded.shardUsers} users of ${options.users} driven (${drive.failed} checks failed)`);
        }
        notes.push(
          `${label}: driving ${options.users} users took ${drive.seconds.toFixed(1)} s (${Math.round(options.users / drive.seconds)} users/s, batches of ${batchSize}, ${concurrency} in flight; ` +
            `the new users of a batch cost the node one query of its account database); ${drive.denied} denied.`,
        );
        const row = (name: string, m: NodeMemory): Row => ({
          what: name,
          users: m.shardUsers,
          'RSS MB (all processes)': mb(m.rssTotal),
          'RSS MB (workers)': mb(m.rssWorkers),
          'heap used MB (workers)': mb(m.heapUsedWorkers),
          'bytes/user RSS': '',
          'bytes/user heap': '',
        });
        memoryRows.push(row(`${label}, idle`, idle));
        memoryRows.push({
          ...row(`${label}, ${options.users} users`, loaded),
          'bytes/user RSS': perUser(loaded.rssWorkers - idle.rssWorkers, options.users),
          'bytes/user heap': perUser(loaded.heapUsedWorkers - idle.heapUsedWorkers, options.users),
        });
        json[cap > 0 ? 'node_capped' : 'node'] = { idle, loaded, drive };
      } catch (err) {
        ok = false;
        bar.finish('failed');
        notes.push(`${label}: ${(err as Error).message.split('\n')[0]}`);
      } finally {
        await target?.stop();
        await redis?.stop();
      }
    }

    for (const what of ['ours', 'rlf'] as const) {
      log(`scale: ${what === 'ours' ? 'our Shard' : 'RateLimiterMemory'} holding ${options.users} keys in one process…`);
      try {
        const held = await inChild<HeldKeysResult>({ task: 'hold', what, keys: options.users });
        memoryRows.push({
          what: what === 'ours' ? 'our engine alone (Shard, one process)' : `rate-limiter-flexible RateLimiterMemory (one process)`,
          users: held.keys,
          'RSS MB (all processes)': mb(held.rssAfter),
          'RSS MB (workers)': '',
          'heap used MB (workers)': `${mb(held.heapAfter)} (heap used)`,
          'bytes/user RSS': perUser(held.rssAfter - held.rssBefore, held.keys),
          'bytes/user heap': perUser(held.heapAfter - held.heapBefore, held.keys),
        });
        json[`held_${what}`] = held;
      } catch (err) {
        ok = false;
        notes.push(`${what} held keys: ${(err as Error).message.split('\n')[0]}`);
      }
    }
  }

  if (!options.skipEngine) {
    const bar = progress('scale: engine rounds', options.rounds + 1);
    try {
      const rounds = await inChild<EngineRound[]>({ task: 'engine', decisions: options.decisions, keys: options.keys, rounds: options.rounds }, (n) =>
        bar.update(n + 1, `round ${n}`),
      );
      bar.finish();
      const ours = median(rounds.map((r) => r.ours));
      const awaited = median(rounds.map((r) => r.oursAwaited));
      const rlf = median(rounds.map((r) => r.rlf));
      const bare = median(rounds.map((r) => r.bare));
      const share = (allowed: number): string => `${((100 * allowed) / options.decisions).toFixed(1)} %`;
      engineRows.push(
        { engine: 'ours: Shard.decide (synchronous)', 'ns/decision': ours.toFixed(0), 'vs ours': '1.00', allowed: share(median(rounds.map((r) => r.oursAllowed))), rounds: rounds.map((r) => r.ours.toFixed(0)).join(' ') },
        { engine: 'ours: Shard.decide, awaited', 'ns/decision': awaited.toFixed(0), 'vs ours': (awaited / ours).toFixed(2), allowed: share(median(rounds.map((r) => r.oursAllowed))), rounds: rounds.map((r) => r.oursAwaited.toFixed(0)).join(' ') },
        { engine: 'ours: engine decide() on a Map (no Shard)', 'ns/decision': bare.toFixed(0), 'vs ours': (bare / ours).toFixed(2), allowed: share(median(rounds.map((r) => r.oursAllowed))), rounds: rounds.map((r) => r.bare.toFixed(0)).join(' ') },
        { engine: 'rate-limiter-flexible: await RateLimiterMemory.consume', 'ns/decision': rlf.toFixed(0), 'vs ours': (rlf / ours).toFixed(2), allowed: share(median(rounds.map((r) => r.rlfAllowed))), rounds: rounds.map((r) => r.rlf.toFixed(0)).join(' ') },
      );
      json.engine = rounds;
    } catch (err) {
      ok = false;
      bar.finish('failed');
      notes.push(`engine: ${(err as Error).message.split('\n')[0]}`);
    }
  }

  const how = [
    `Machine: ${machineLine()}.`,
    `Node memory: our node (dist/src/main.js, ${workers} workers, PGlite in memory, usage analytics off, RATE_LIMITING_MAX_USERS_IN_MEMORY raised so no user is evicted${options.redis ? ', local mode with Redis write-behind' : ', no Redis'}) ` +
      `idle 15 s after start (its embedded database booted), then after ${options.users} distinct users were checked once each through /rate-limiting/check/batch and 3 s of rest. ` +
      `RSS of all processes is the primary plus its workers from /proc; the workers' RSS and heap come from the node's /metrics (summed over workers, no forced GC, so heap includes garbage). ` +
      `Bytes/user = (loaded − idle) / users, over the workers (the primary holds no user state).` +
      (options.heapCapMb ? ` Then the same for a node started with NODE_OPTIONS=--max-old-space-size=${options.heapCapMb} (every process of it): V8 collects sooner instead of growing the heap.` : ''),
    `Held keys: a fresh process (--expose-gc, GC forced before and after) holding the same number of keys: our Shard (the node's counters, LRU of UserState entries) and RateLimiterMemory (${PEER_POINTS} points per ${PEER_WINDOW_SECONDS} s, a Map entry and an unref'd timer per key).`,
    `Engine: one fresh process; per round ${options.decisions} decisions over ${options.keys} keys cycled in order, each engine starting empty; ` +
      `our Shard.decide of the default tier with Date.now() per decision, the same awaited (what an async API costs), the engine's decide() on a plain Map (the Shard's share), and await RateLimiterMemory.consume (${PEER_POINTS}/${PEER_WINDOW_SECONDS} s). ` +
      `Order alternates each round; ${options.rounds} measured rounds after one warm-up; medians. Allowed shares differ because the limits differ (ours: burst 10, 60/min).`,
  ];
  const text = [memoryRows.length ? table(memoryRows) : '', engineRows.length ? table(engineRows) : '', notes.map((n) => `- ${n}`).join('\n')].filter(Boolean).join('\n\n');
  if (options.json) process.stderr.write(`\n${text}\n`);
  else console.log(`\n${text}\n`);
  const command =
    `npm run bench -- scale --users ${options.users} --workers ${workers} --decisions ${options.decisions} --keys ${options.keys} --rounds ${options.rounds}` +
    (options.redis ? ' --redis' : '') +
    ` --heap-cap ${options.heapCapMb ?? 0}`;
  const markdown = [
    '# Scale: memory per node and engine cost per decision',
    '',
    `Command: \`${command}\``,
    '',
    `Date: ${new Date().toISOString()}`,
    '',
    ...how.map((h) => `- ${h}`),
    '',
    ...(memoryRows.length ? ['## Memory', '', markdownTable(memoryRows), ''] : []),
    ...(engineRows.length ? ['## Engine alone', '', markdownTable(engineRows), ''] : []),
    ...notes.map((n) => `- ${n}`),
    '',
  ].join('\n');
  Object.assign(json, { method: how, memory: memoryRows, engineRows, notes });
  const path = writeResult('scale', markdown, json);
  if (options.json) console.log(JSON.stringify(json, null, 2));
  else log(`report: ${path}`);
  return ok;
}
