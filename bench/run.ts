/**
 * Benchmark entry: `npm run bench -- <name> [--duration s] [--connections n] [--rounds n]`.
 * Each benchmark starts its own processes, prints a table and writes bench/results/<name>.md.
 */
import { throughput } from './throughput.js';

function option(args: string[], name: string, fallback: number): number {
  const index = args.indexOf(`--${name}`);
  if (index < 0) return fallback;
  const value = Number(args[index + 1]);
  if (!Number.isFinite(value) || value <= 0) throw new Error(`--${name} needs a positive number`);
  return value;
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const name = args.find((a) => !a.startsWith('--')) ?? 'throughput';
  switch (name) {
    case 'throughput': {
      const ok = await throughput({
        durationSeconds: option(args, 'duration', 10),
        warmupSeconds: option(args, 'warmup', 3),
        connections: option(args, 'connections', 50),
        rounds: option(args, 'rounds', 3),
        users: option(args, 'users', 10_000),
        ...(args.includes('--only') ? { only: args[args.indexOf('--only') + 1]! } : {}),
      });
      process.exitCode = ok ? 0 : 1;
      return;
    }
    default:
      console.error(`unknown benchmark ${name}; available: throughput`);
      process.exitCode = 2;
  }
}

await main();
