/**
 * Benchmark entry: `npm run bench -- <name> [options]`. Each benchmark starts its own
 * processes, prints a table and writes bench/results/<name>.md; the exit code is 1 when a
 * benchmark misses its bar.
 *
 *   throughput [--duration s] [--warmup s] [--connections n] [--rounds n] [--users n] [--only name]
 *   accuracy   [--only scenario] [--json] [--seed n]    every accuracy scenario (tens of minutes)
 *   quick      [--only scenario] [--json]               single, cluster, node-kill; small (< 3 min)
 *   compare    [--duration s] [--rounds n] [--latency-duration s] [--only name] [--json]
 *              capacity and open-loop latency beside hello-world, rate-limiter-flexible, @fastify/rate-limit
 *   scale      [--users n] [--decisions n] [--rounds n] [--heap-cap MB] [--json]   memory with 1M users (and a capped heap); engine ns/decision
 *   usage-flush [--users n] [--minutes n]   one minute of usage written into PGlite, rollups with and without page room
 *   redis-cpu  [--users n] [--flushes n] [--rounds n]   Redis CPU per user flushed by write-behind, beside a GET+SET floor
 *   all        (the default) every benchmark above but quick, one after the other
 */
import { accuracy } from './accuracy/index.js';
import { compare } from './compare/index.js';
import { scale } from './compare/scale.js';
import { redisCpu } from './redis-cpu.js';
import { throughput } from './throughput.js';
import { usageFlush } from './usage-flush.js';

function option(args: string[], name: string, fallback: number): number {
  const index = args.indexOf(`--${name}`);
  if (index < 0) return fallback;
  const value = Number(args[index + 1]);
  if (!Number.isFinite(value) || value <= 0) throw new Error(`--${name} needs a positive number`);
  return value;
}

function text(args: string[], name: string): string | undefined {
  const index = args.indexOf(`--${name}`);
  if (index < 0) return undefined;
  const value = args[index + 1];
  if (value === undefined || value.startsWith('--')) throw new Error(`--${name} needs a value`);
  return value;
}

/** Options without a value. */
const FLAGS = ['--json'];

/** Every benchmark by name; each resolves to true when it reached its bars. */
const BENCHMARKS: Record<string, (args: string[]) => Promise<boolean>> = {
  throughput: (args) => {
    const only = text(args, 'only');
    return throughput({
      durationSeconds: option(args, 'duration', 10),
      warmupSeconds: option(args, 'warmup', 3),
      connections: option(args, 'connections', 50),
      rounds: option(args, 'rounds', 3),
      users: option(args, 'users', 10_000),
      ...(only !== undefined ? { only } : {}),
    });
  },
  accuracy: (args) => {
    const only = text(args, 'only');
    return accuracy({ quick: false, json: args.includes('--json'), seed: option(args, 'seed', 7), ...(only !== undefined ? { only } : {}) });
  },
  quick: (args) => {
    const only = text(args, 'only');
    return accuracy({ quick: true, json: args.includes('--json'), seed: option(args, 'seed', 7), ...(only !== undefined ? { only } : {}) });
  },
  compare: (args) => {
    const only = text(args, 'only');
    return compare({
      durationSeconds: option(args, 'duration', 10),
      warmupSeconds: option(args, 'warmup', 3),
      rounds: option(args, 'rounds', 5),
      connections: option(args, 'connections', 50),
      users: option(args, 'users', 10_000),
      latencySeconds: option(args, 'latency-duration', 10),
      json: args.includes('--json'),
      ...(only !== undefined ? { only } : {}),
    });
  },
  scale: (args) =>
    scale({
      users: option(args, 'users', 1_000_000),
      decisions: option(args, 'decisions', 1_000_000),
      keys: option(args, 'keys', 10_000),
      rounds: option(args, 'rounds', 5),
      heapCapMb: option(args, 'heap-cap', 400),
      json: args.includes('--json'),
    }),
  'usage-flush': (args) => usageFlush({ users: option(args, 'users', 10_000), minutes: option(args, 'minutes', 9) }),
  'redis-cpu': (args) => redisCpu({ users: option(args, 'users', 2000), flushes: option(args, 'flushes', 50), rounds: option(args, 'rounds', 5) }),
};

/** `npm run bench`: everything, in turn (tens of minutes); true when every part reached its bars. */
BENCHMARKS.all = async () => {
  let ok = true;
  for (const name of ['throughput', 'accuracy', 'compare', 'scale', 'usage-flush', 'redis-cpu']) {
    console.error(`\n=== ${name}`);
    ok = (await BENCHMARKS[name]!([name])) && ok;
  }
  return ok;
};

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  // The name is the first word that is neither an option nor an option's value.
  const takesValue = (word: string | undefined): boolean => word !== undefined && word.startsWith('--') && !FLAGS.includes(word);
  const name = args.find((a, i) => !a.startsWith('--') && !takesValue(args[i - 1])) ?? 'all';
  const run = BENCHMARKS[name];
  if (run === undefined) {
    console.error(`unknown benchmark ${name}; available: ${Object.keys(BENCHMARKS).join(', ')}`);
    process.exitCode = 2;
    return;
  }
  process.exitCode = (await run(args)) ? 0 : 1;
}

await main();
