/**
 * `npm run bench -- redis-cpu`: what write-behind costs Redis, per user flushed. The
 * reconcile script is run on a batch of users in steady state (every key present, the
 * owner's version current: nothing surprises it), in calls of as many users as the
 * reconciler sends, and redis-server's CPU time is read from /proc. Side by side, in the
 * same run and server, the floor of any read-modify-write of a user's state in a script:
 * one GET and one SET of the same 80 bytes per user in a loop, with the same arguments
 * (outside Redis Cluster the keys travel newline-separated in one argument, as the
 * reconciler sends them).
 */
import { readFileSync } from 'node:fs';
import { Redis } from 'ioredis';
import { stateKey, windowStart } from '../src/storage/redis/keys.js';
import { FLUSH, FLUSH_WINDOW, FlushBatch } from '../src/storage/redis/scripts.js';
import { startRedis, treeCpuMicros } from './lib/processes.js';
import { median, reportMarkdown, table, writeResult, type Row } from './lib/report.js';

export interface RedisCpuOptions {
  /** Users per flush (one batch). */
  users: number;
  /** Flushes measured per variant and round. */
  flushes: number;
  rounds: number;
}

const USERS_PER_CALL = 200; // as the worker's reconciler (src/worker.ts)
const SLACK_MS = 5000;

/** The floor: read and write each user's 80-byte state, nothing decided; keys passed as reconcile takes them. */
const FLOOR_LUA = `
local names, at = ARGV[3], 1
for index = 1, #ARGV[1] / 192 do
  local nl = string.find(names, '\\n', at, true)
  local key = string.sub(names, at, nl - 1)
  at = nl + 1
  local stored = redis.call('GET', key)
  if stored then redis.call('SET', key, stored, 'KEEPTTL') end
end
return {}`;

/** A flush of `users` users in steady state: flush number `n` (from 0) of the same window. */
function steadyBatch(userIds: string[], n: number, now: number): FlushBatch {
  const batch = new FlushBatch(userIds.length);
  const v = batch.values;
  const starts = [windowStart(now, 60_000), windowStart(now, 3_600_000), windowStart(now, 86_400_000)];
  for (const userId of userIds) {
    const at = batch.add(userId);
    v[at + FLUSH.writeBucket] = 1;
    v[at + FLUSH.ownerDebt] = 3;
    v[at + FLUSH.ownerAt] = now + n;
    v[at + FLUSH.baseVersion] = n - 1;
    v[at + FLUSH.baseDebt] = 2;
    v[at + FLUSH.baseAt] = now;
    v[at + FLUSH.perMinute] = 100 / 60_000;
    v[at + FLUSH.dayStart] = starts[2]!;
    v[at + FLUSH.graceAt] = -1;
    v[at + FLUSH.minuteMs] = 60_000;
    v[at + FLUSH.hourMs] = 3_600_000;
    v[at + FLUSH.dayMs] = 86_400_000;
    for (let k = 0; k < 3; k++) {
      const w = at + FLUSH.windows + 4 * k;
      v[w + FLUSH_WINDOW.sent] = 1;
      v[w + FLUSH_WINDOW.start] = starts[k]!;
      v[w + FLUSH_WINDOW.delta] = 1;
      v[w + FLUSH_WINDOW.full] = n + 1;
    }
  }
  return batch;
}

export async function redisCpu(options: RedisCpuOptions): Promise<boolean> {
  const redis = await startRedis();
  const [host, port] = redis.endpoint.split(':');
  const client = new Redis({ host: host!, port: Number(port) });
  const reconcileLua = readFileSync(new URL('../src/storage/redis/lua/reconcile.lua', import.meta.url), 'utf8');
  client.defineCommand('rlReconcile', { lua: reconcileLua });
  client.defineCommand('rlFloor', { lua: FLOOR_LUA });
  type Call = (numKeys: number, ...args: Array<string | number | Buffer>) => Promise<unknown[]>;
  const commands = client as unknown as { rlReconcile: Call; rlFloor: Call };
  // Keys expire after their windows: the clock must be the real one.
  const now = Date.now();
  const userIds = Array.from({ length: options.users }, (_, i) => `bench-user-${i}`);
  const variants = [
    { name: 'reconcile.lua (steady state, nothing surprising)', command: commands.rlReconcile.bind(client), flushes: 0, redis: [] as number[], node: [] as number[] },
    { name: 'floor: GET + SET of 80 bytes per user', command: commands.rlFloor.bind(client), flushes: 0, redis: [] as number[], node: [] as number[] },
  ];
  let surprises = 0;
  try {
    for (let round = 0; round <= options.rounds; round++) {
      for (const variant of variants) {
        const redisBefore = treeCpuMicros(redis.pid);
        const nodeBefore = process.cpuUsage();
        for (let f = 0; f < options.flushes; f++) {
          // Each reconcile sees the version the previous one wrote (the floor leaves it as it is).
          const batch = steadyBatch(userIds, variant.flushes++, now);
          const calls: Array<Promise<unknown[]>> = [];
          for (let from = 0; from < options.users; from += USERS_PER_CALL) {
            const to = Math.min(options.users, from + USERS_PER_CALL);
            let names = '';
            for (let i = from; i < to; i++) names += `${stateKey(userIds[i]!)}\n`;
            calls.push(variant.command(0, batch.bytes(from, to), SLACK_MS, names));
          }
          for (const reply of await Promise.all(calls)) if (variant === variants[0]) surprises += reply.length / 9;
        }
        const node = process.cpuUsage(nodeBefore);
        // Round 0 is a warm-up (keys created, scripts compiled).
        if (round === 0) continue;
        const perUser = options.flushes * options.users;
        variant.redis.push((treeCpuMicros(redis.pid) - redisBefore) / perUser);
        variant.node.push((node.user + node.system) / perUser);
      }
    }
  } finally {
    client.disconnect();
    await redis.stop();
  }
  if (surprises > 0) throw new Error(`reconcile reported ${surprises} surprises in steady state: the batch is not what the owner would send`);

  const floor = median(variants[1]!.redis);
  const rows: Row[] = variants.map((v) => ({
    variant: v.name,
    'redis µs per user': median(v.redis).toFixed(2),
    'client µs per user': median(v.node).toFixed(2),
    'vs floor': (median(v.redis) / floor).toFixed(2),
  }));
  console.log(`\n${table(rows)}\n`);
  const markdown = reportMarkdown({
    title: 'Redis CPU per user flushed by write-behind',
    command: `npm run bench -- redis-cpu --users ${options.users} --flushes ${options.flushes} --rounds ${options.rounds}`,
    method:
      `One redis-server of the bench's own; flushes of ${options.users} users each, in script calls of ` +
      `${USERS_PER_CALL} users (as the reconciler sends them), ${options.flushes} flushes per variant and round, variants in turn, ` +
      `${options.rounds} rounds after a warm-up; redis-server's CPU time from /proc (10 ms ticks), medians of the rounds. ` +
      `The client column is this process building the batch and sending it (ioredis).`,
    rows,
  });
  console.log(`report: ${writeResult('redis-cpu', markdown, { options, rows })}`);
  return true;
}
