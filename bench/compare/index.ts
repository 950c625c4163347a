/**
 * Side by side in one run (issue 7, item 4): the Fastify ceiling, rate-limiter-flexible
 * (memory, Redis), @fastify/rate-limit (Redis store), our node in `local` and `redis` mode
 * and our 3-node cluster behind the round-robin gateway. Same machine, same key set, same
 * load generators, the same number of workers for every server.
 *
 *  - Capacity: closed-loop saturation (wrk when installed, else autocannon; runLoad of
 *    bench/lib/load.ts), rounds visiting the targets in a rotating order; the median round.
 *  - Latency: open-loop at fixed fractions (50 %, 80 %) of each target's own capacity,
 *    coordinated omission corrected (bench/lib/latency.ts, in a process of its own).
 */
import { readFileSync } from 'node:fs';
import { runOpenLoop, type OpenLoopResult } from '../lib/latency.js';
import { pickGenerator, runLoad, type LoadResult } from '../lib/load.js';
import { startRedis, type Target } from '../lib/processes.js';
import { progress } from '../lib/progress.js';
import { machineLine, markdownTable, median, table, writeResult, type Row } from '../lib/report.js';
import { PEER_POINTS, PEER_WINDOW_SECONDS, startCluster, startHello, startNode, startPeer } from './targets.js';

export interface CompareOptions {
  /** One closed-loop capacity round per target (s). */
  durationSeconds: number;
  /** Closed-loop warm-up per target before the rounds (s). */
  warmupSeconds: number;
  rounds: number;
  /** Closed-loop keep-alive connections. */
  connections: number;
  /** Distinct user ids: the same key set for every target. */
  users: number;
  /** Each open-loop latency run (s), after 1 s of warm-up at the same rate. */
  latencySeconds: number;
  /** Open-loop keep-alive connections (default 128). */
  latencyConnections?: number;
  /** Worker processes of every server and of every cluster node (default 2, the seed's budget). */
  workers?: number;
  /** Fractions of each target's capacity the latency runs use (default [0.5, 0.8]). */
  levels?: number[];
  /** Rest after every target has started, before any load (s; default 10): our nodes' embedded database boots meanwhile. */
  settleSeconds?: number;
  /**
   * When every user is sent once to a target (default `each`: before every measured step
   * on it, so our node's 60 s memory of unknown users holds through the step; `once`:
   * before the warm-up only, so later steps include its periodic re-lookups).
   */
  prime?: 'each' | 'once';
  /** Only targets whose name contains this (the ceiling always runs). */
  only?: string;
  /** Print the result as JSON on stdout (tables and logs go to stderr). */
  json?: boolean;
}

interface Spec {
  name: string;
  start(): Promise<Target>;
}

interface Measured {
  name: string;
  error?: string;
  capacity: LoadResult[];
  /** Closed-loop saturation through the open-loop generator itself: the base of the latency rates. */
  ownCapacity?: OpenLoopResult;
  /** Generator CPU (% of one core) during each capacity round. */
  capacityCpu: number[];
  latency: Record<string, OpenLoopResult>;
}

const CEILING = 'fastify hello-world (ceiling)';
const CLUSTER_NODES = 3;

/** CPU time (ms) of this process and of its waited-for children (wrk), from /proc. */
function cpuMsWithChildren(): number {
  try {
    const stat = readFileSync('/proc/self/stat', 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // Fields 14-17 of stat (utime stime cutime cstime), counted from after the comm field.
    const ticks = [11, 12, 13, 14].reduce((sum, i) => sum + Number(fields[i]), 0);
    return ticks * 10; // USER_HZ is 100 on Linux
  } catch {
    const usage = process.cpuUsage();
    return (usage.user + usage.system) / 1000;
  }
}

function specs(workers: number, redisEndpoint: string): Spec[] {
  const w = `${workers} worker${workers === 1 ? '' : 's'}`;
  return [
    { name: CEILING, start: () => startHello(workers) },
    { name: 'rate-limiter-flexible memory', start: () => startPeer(`rlf memory, ${w}`, 'rlf', workers, 'memory', redisEndpoint, 4) },
    { name: 'rate-limiter-flexible redis', start: () => startPeer(`rlf redis, ${w}`, 'rlf', workers, 'redis', redisEndpoint, 4) },
    { name: '@fastify/rate-limit redis', start: () => startPeer(`@fastify/rate-limit redis, ${w}`, 'fastify-rate-limit', workers, 'redis', redisEndpoint, 5) },
    {
      name: 'ours, 1 node, local mode',
      start: () => startNode('ours local', workers, { REDIS_ENDPOINT: redisEndpoint, REDIS_DATABASE: '1', RATE_LIMITING_MODE: 'local' }),
    },
    {
      name: 'ours, 1 node, redis mode',
      start: () => startNode('ours redis', workers, { REDIS_ENDPOINT: redisEndpoint, REDIS_DATABASE: '2', RATE_LIMITING_MODE: 'redis' }),
    },
    {
      name: `ours, ${CLUSTER_NODES}-node cluster + gateway`,
      start: () => startCluster('ours cluster', CLUSTER_NODES, workers, redisEndpoint, { REDIS_DATABASE: '3', RATE_LIMITING_MODE: 'local' }),
    },
  ];
}

/** Sends one check for every user (32 in flight). */
async function prime(target: Target, users: number): Promise<void> {
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < users) {
      const i = next++;
      const res = await fetch(`${target.url}${target.path}`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: `{"user_id":"bench-user-${i}"}`,
      });
      await res.arrayBuffer();
      if (res.status >= 500) throw new Error(`priming: status ${res.status}`);
    }
  };
  await Promise.all(Array.from({ length: 32 }, worker));
}

const ms = (v: number): string => (Number.isFinite(v) ? (v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2)) : '-');

/** `npm run bench -- compare`: returns false when a target failed to start or to answer. */
export async function compare(options: CompareOptions): Promise<boolean> {
  const log = options.json ? (line: string) => process.stderr.write(`${line}\n`) : (line: string) => console.log(line);
  const workers = options.workers ?? 2;
  const levels = options.levels ?? [0.5, 0.8];
  const latencyConnections = options.latencyConnections ?? 128;
  const primeEach = (options.prime ?? 'each') === 'each';
  const generator = pickGenerator();
  const redis = await startRedis();
  const all = specs(workers, redis.endpoint);
  const chosen = all.filter((s) => s.name === CEILING || options.only === undefined || s.name.includes(options.only));
  const measured: Measured[] = chosen.map((s) => ({ name: s.name, capacity: [], capacityCpu: [], latency: {} }));
  const running: Array<{ spec: Spec; m: Measured; target: Target }> = [];
  const steps = chosen.length * (4 + options.rounds + levels.length);
  const bar = progress('compare', steps);
  let step = 0;
  const advance = (note: string): void => bar.update(++step, note);
  let ok = true;
  const ceiling = (): Measured => measured.find((m) => m.name === CEILING)!;

  try {
    for (const [i, spec] of chosen.entries()) {
      bar.update(step, `starting ${spec.name}`);
      try {
        running.push({ spec, m: measured[i]!, target: await spec.start() });
      } catch (err) {
        ok = false;
        measured[i]!.error = (err as Error).message.split('\n')[0]!;
        log(`\n${spec.name}: failed to start: ${(err as Error).message.slice(0, 2000)}`);
      }
      advance(`started ${spec.name}`);
    }
    if (!running.some((r) => r.spec.name === CEILING)) throw new Error('the ceiling did not start');
    bar.update(step, `settling ${options.settleSeconds ?? 10} s`);
    await new Promise((r) => setTimeout(r, (options.settleSeconds ?? 10) * 1000));

    const closed = (target: Target, seconds: number) =>
      runLoad(generator, { url: target.url, path: target.path, connections: options.connections, users: options.users, durationSeconds: seconds });
    // A target that fails under load is marked and left out of the later steps.
    const guarded = async (m: Measured, what: string, run: () => Promise<void>): Promise<void> => {
      if (m.error !== undefined) return;
      try {
        await run();
      } catch (err) {
        ok = false;
        m.error = `failed during ${what}: ${(err as Error).message.split('\n')[0]}`;
        log(`\n${m.name}: ${m.error}`);
      }
    };
    // Every user once, on every target: our node looks an unknown user up in its account
    // database on first sight (then remembers the absence for a while); peers just count 1.
    for (const { spec, m, target } of running) {
      bar.update(step, `priming ${options.users} users on ${spec.name}`);
      await guarded(m, 'priming', () => prime(target, options.users));
      advance(`primed ${spec.name}`);
    }
    for (const { spec, m, target } of running) {
      bar.update(step, `warm-up ${spec.name}`);
      await guarded(m, 'warm-up', async () => void (await closed(target, options.warmupSeconds)));
      advance(`warm-up ${spec.name}`);
    }
    for (let round = 0; round < options.rounds; round++) {
      // A rotating order: drift of the machine reaches every target alike.
      const order = running.map((_, i) => running[(i + round) % running.length]!);
      for (const { spec, m, target } of order) {
        bar.update(step, `round ${round + 1}/${options.rounds} ${spec.name}`);
        await guarded(m, `capacity round ${round + 1}`, async () => {
          if (primeEach) await prime(target, options.users);
          const cpuBefore = cpuMsWithChildren();
          const started = Date.now();
          const result = await closed(target, options.durationSeconds);
          m.capacityCpu.push((100 * (cpuMsWithChildren() - cpuBefore)) / (Date.now() - started));
          m.capacity.push(result);
        });
        advance(`round ${round + 1}/${options.rounds} ${spec.name}: ${Math.round(m.capacity[round]?.requestsPerSecond ?? NaN)} req/s`);
      }
    }
    if (ceiling().error !== undefined) throw new Error(`the ceiling ${ceiling().error}`);
    // The latency rates are fractions of what the open-loop generator itself can push
    // through the target (closed loop, same connections as wrk): it costs more CPU per
    // request than wrk, and it shares the cores with the server.
    for (const { spec, m, target } of running) {
      bar.update(step, `closed loop via the latency generator ${spec.name}`);
      await guarded(m, 'closed loop via the latency generator', async () => {
        if (primeEach) await prime(target, options.users);
        m.ownCapacity = await runOpenLoop({
          url: target.url, path: target.path, mode: 'closed', ratePerSecond: 0, durationSeconds: options.durationSeconds,
          warmupSeconds: 1, connections: options.connections, users: options.users,
        });
      });
      advance(`closed loop via the latency generator ${spec.name}: ${Math.round(m.ownCapacity?.achievedRate ?? NaN)} req/s`);
    }
    for (const level of levels) {
      for (const { spec, m, target } of running) {
        bar.update(step, `latency ${Math.round(level * 100)}% ${spec.name}`);
        await guarded(m, `latency at ${level * 100} %`, async () => {
          const capacity = m.ownCapacity?.achievedRate ?? NaN;
          if (!Number.isFinite(capacity) || capacity <= 0) return;
          if (primeEach) await prime(target, options.users);
          m.latency[String(level)] = await runOpenLoop({
            url: target.url,
            path: target.path,
            ratePerSecond: Math.max(1, Math.round(level * capacity)),
            durationSeconds: options.latencySeconds,
            warmupSeconds: 1,
            connections: latencyConnections,
            users: options.users,
          });
        });
        advance(`latency ${Math.round(level * 100)}% ${spec.name}`);
      }
    }
  } finally {
    bar.finish();
    await Promise.all(running.map(({ target }) => target.stop().catch(() => undefined)));
    await redis.stop();
  }

  const top = ceiling();
  const notes: string[] = [];
  const rows: Row[] = measured.map((m) => {
    if (m.error !== undefined) return { target: m.name, 'capacity req/s': m.capacity.length === 0 ? 'failed' : Math.round(median(m.capacity.map((r) => r.requestsPerSecond))), 'vs ceiling': m.error.slice(0, 80) };
    const capacity = median(m.capacity.map((r) => r.requestsPerSecond));
    const ratio = median(m.capacity.map((r, i) => r.requestsPerSecond / top.capacity[i]!.requestsPerSecond));
    const row: Row = {
      target: m.name,
      'capacity req/s': Math.round(capacity),
      'vs ceiling': ratio.toFixed(2),
      'latency base req/s': Math.round(m.ownCapacity?.achievedRate ?? NaN),
    };
    for (const level of levels) {
      const r = m.latency[String(level)];
      row[`p50/p90/p99/p99.9 ms @${Math.round(level * 100)}%`] = r ? [r.p50Ms, r.p90Ms, r.p99Ms, r.p999Ms].map(ms).join(' / ') : '-';
    }
    const highest = m.latency[String(levels[levels.length - 1])];
    row[`allowed/denied @${Math.round(levels[levels.length - 1]! * 100)}%`] = highest ? `${highest.allowed}/${highest.denied}` : '-';
    row['gen CPU % (cap / ' + levels.map((l) => `${Math.round(l * 100)}%`).join(' / ') + ')'] = [
      median(m.capacityCpu),
      ...levels.map((l) => m.latency[String(l)]?.cpuPercent ?? NaN),
    ]
      .map((v) => (Number.isFinite(v) ? v.toFixed(0) : '-'))
      .join(' / ');
    for (const level of levels) {
      const r = m.latency[String(level)];
      if (!r) continue;
      const trouble: string[] = [];
      if (r.achievedRate < 0.97 * r.intendedRate) trouble.push(`answered ${Math.round(r.achievedRate)} of ${r.intendedRate} req/s intended`);
      if (r.errors + r.timeouts + r.unsent + r.otherStatus > 0) trouble.push(`${r.errors} errors, ${r.timeouts} timeouts, ${r.unsent} never sent, ${r.otherStatus} other statuses`);
      if (r.generatorLagP99Ms > 5) trouble.push(`generator lag p99 ${ms(r.generatorLagP99Ms)} ms`);
      // Our service answers 200 both ways: say what the header count and the body sample saw.
      if (m.name.startsWith('ours') || r.sampledDenied > 0) {
        trouble.push(`denied by Retry-After ${r.denied - r.status429} of ${r.status2xx} 200s; body sample ${r.sampledDenied}/${r.sampled} with "allowed":false`);
      }
      if (trouble.length > 0) notes.push(`${m.name} @${Math.round(level * 100)}% (${r.intendedRate} req/s): ${trouble.join('; ')}`);
    }
    const failures = m.capacity.reduce((sum, r) => sum + r.failures, 0);
    if (failures > 0) notes.push(`${m.name}: ${failures} non-2xx answers or socket errors in the capacity rounds (a peer's 429s count here)`);
    if (m.capacity.some((r, i) => r.requestsPerSecond / top.capacity[i]!.requestsPerSecond > 1.05 && m !== top)) {
      notes.push(`${m.name}: faster than the ceiling in some round (noise of a shared machine)`);
    }
    return row;
  });

  const how = [
    `Machine: ${machineLine()}. Every server runs ${workers} worker processes (node:cluster; the seed's budget); the ${CLUSTER_NODES}-node cluster runs ` +
      `${CLUSTER_NODES} such nodes (${CLUSTER_NODES * workers} workers, ${CLUSTER_NODES} primaries) plus the gateway (one process) on the same cores, so it shows the cost of the cluster, not its scaling.`,
    `Redis: one redis-server of the benchmark's own shared by every target that uses Redis (a database each).`,
    `Keys: ${options.users} distinct user ids {"user_id":"bench-user-<n>"} cycled in order, the same bodies for every target. ` +
      `Peers limit each user to ${PEER_POINTS} per ${PEER_WINDOW_SECONDS} s (our default tier's per-minute figure; rate-limiter-flexible memory counts per worker). ` +
      `Ours uses its default tier (basic: 60/min, burst 10, 1000/h, 10000/day).`,
    `Capacity: closed loop, ${generator} (1 thread, ${options.connections} connections), ${options.warmupSeconds} s warm-up per target, then ${options.rounds} rounds of ${options.durationSeconds} s ` +
      `visiting the targets in a rotating order; capacity and ratio are medians over rounds (the ratio per round against the ceiling of that round).`,
    `Latency: open loop (bench/lib/latency.ts, its own process, ${latencyConnections} keep-alive connections) at ${levels.map((l) => `${l * 100} %`).join(' and ')} of the latency base, ` +
      `${options.latencySeconds} s after 1 s of warm-up; latency counted from each request's intended send time (coordinated omission corrected; requests are issued in ~1 ms timer ticks, so ~0.5 ms of that is the generator's granularity). ` +
      `Latency base: the same generator's own closed-loop saturation of that target (${options.connections} connections, ${options.durationSeconds} s), since it costs more CPU per request than ${generator} and shares the 2 cores with the server; 80 % of ${generator}'s capacity would overload the server for it.`,
    `Before the load: ${options.settleSeconds ?? 10} s of rest after all targets started. Priming: every user sent once to a target ` +
      (primeEach
        ? `before each measured step on it (untimed). Our node looks each unknown user up in its account database on first sight (afterwards it answers from memory and re-checks in the background); ` +
          `priming before each step keeps those first lookups out of the figures.`
        : `once, before its warm-up; the first lookup of each unknown user falls in the warm-up.`),
    `Allowed/denied: a 429 is a denial; our service answers 200 both ways, so a 200 carrying Retry-After is counted as a denial (the body of every 50th 200 is also checked for "allowed":false).`,
    `Generator CPU: % of one core used by the load generator (for capacity, ${generator} ${generator === 'autocannon' ? 'inside the benchmark process' : 'as a child process'}); it shares the cores with the servers.`,
  ];
  const text = `\n${table(rows)}\n\n${notes.map((n) => `- ${n}`).join('\n')}\n`;
  if (options.json) process.stderr.write(text);
  else console.log(text);
  const markdown = [
    '# Comparison: throughput and latency side by side',
    '',
    `Command: \`npm run bench -- compare --duration ${options.durationSeconds} --rounds ${options.rounds} --connections ${options.connections} --users ${options.users} --latency-duration ${options.latencySeconds}\``,
    '',
    `Date: ${new Date().toISOString()}`,
    '',
    ...how.map((h) => `- ${h}`),
    '',
    markdownTable(rows),
    '',
    ...notes.map((n) => `- ${n}`),
    '',
  ].join('\n');
  const json = { options: { ...options, workers, levels, latencyConnections }, generator, machine: machineLine(), method: how, rows, notes, measured };
  const path = writeResult('compare', markdown, json);
  if (options.json) console.log(JSON.stringify(json, null, 2));
  else log(`report: ${path}`);
  return ok;
}
