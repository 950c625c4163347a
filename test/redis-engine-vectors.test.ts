import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { decide, newUserState, type Decision } from '../src/node/engine.js';
import type { EffectiveLimits } from '../src/node/limits.js';
import { createLogger } from '../src/observability/logger.js';
import { RedisConnection } from '../src/storage/redis/connection.js';
import { RedisScripts } from '../src/storage/redis/scripts.js';
import { pick, randomInt, seededRandom } from './helpers/random.js';
import { RedisServer } from './helpers/redis-server.js';
import { loadVectors, projectDecision } from './vectors/vectors.js';

const DAY = 86_400_000;
// Keys expire at their window's end, so the timeline must lie in the future of the real clock.
const EPOCH = Math.ceil((Date.now() + 30 * DAY) / DAY) * DAY;

let server: RedisServer;
let connection: RedisConnection;
let scripts: RedisScripts;

beforeAll(async () => {
  server = await RedisServer.start();
  connection = new RedisConnection(
    { endpoint: server.endpoint, topology: 'standalone', sentinelMaster: '', database: 0, password: '', poolSize: 2, connectTimeoutMs: 2000, commandTimeoutMs: 5000 },
    createLogger('silent'),
  );
  expect(await connection.start(5000)).toBe(true);
  scripts = new RedisScripts(connection, 60_000);
});

afterAll(async () => {
  await connection?.close();
  await server?.stop();
});

function comparable(d: Decision) {
  const { now: _now, ...rest } = d;
  return rest;
}

describe('decision vectors through the Redis decide script', () => {
  const file = loadVectors();
  it.each(file.vectors.map((v, i) => [v.name, v, i] as const))('%s', async (_name, vector, index) => {
    const limits = file.profiles[vector.profile]!;
    const userId = `vector-${index}`;
    for (const [n, step] of vector.steps.entries()) {
      for (let r = 0; r < (step.repeat ?? 1); r++) {
        const decision = await scripts.decide(userId, limits, step.cost, EPOCH + step.at);
        expect(projectDecision(decision, step.expect, EPOCH), `step ${n + 1} (at ${step.at}, cost ${step.cost})`).toEqual(step.expect);
      }
    }
  });
});

describe('generated sequences: the TypeScript engine and the Lua script agree decision by decision', () => {
  function randomLimits(rand: () => number): EffectiveLimits {
    const short = rand() < 0.3;
    const minuteMs = short ? pick(rand, [1000, 2000]) : 60_000;
    const hourMs = minuteMs * pick(rand, [3, 5, 60]);
    return {
      tier: 'gen',
      burst: randomInt(rand, 1, 12),
      perMinute: randomInt(rand, 1, 15),
      perHour: randomInt(rand, 3, 60),
      perDay: randomInt(rand, 3, 90),
      throttlePerMinute: randomInt(rand, 1, 5),
      quotaEnabled: rand() < 0.85,
      overage: pick(rand, ['block', 'allow', 'throttle'] as const),
      graceMs: pick(rand, [0, 0, minuteMs / 2, minuteMs * 3]),
      minuteMs,
      hourMs,
      dayMs: hourMs * pick(rand, [2, 4, 24]),
    };
  }

  it('over 2000 random sequences (costs, peeks, window boundaries, overrides, grace, overage modes)', async () => {
    const SEQUENCES = 2000;
    const rand = seededRandom(20261204);
    let compared = 0;
    let admitted = 0;
    const run = async (seq: number, seed: number) => {
      const r = seededRandom(seed);
      const limits = randomLimits(r);
      const state = newUserState();
      let now = EPOCH + randomInt(r, 0, 5) * limits.minuteMs + randomInt(r, 0, 3) * 7;
      const steps = randomInt(r, 10, 40);
      for (let i = 0; i < steps; i++) {
        now += pick(r, [0, 0, 0, 1, 17, Math.floor(limits.minuteMs / 7), limits.minuteMs - 1, limits.minuteMs, limits.hourMs, limits.graceMs + 1]);
        const cost = pick(r, [0, 1, 1, 1, 2, 3, randomInt(r, 1, 20)]);
        const expected = decide(state, limits, cost, now);
        const actual = await scripts.decide(`gen-${seq}`, limits, cost, now);
        expect(comparable(actual), `sequence ${seq} step ${i}: ${JSON.stringify({ limits, cost, at: now - EPOCH })}`).toEqual(comparable(expected));
        compared++;
        if (expected.allowed) admitted++;
      }
    };
    const seeds = Array.from({ length: SEQUENCES }, () => Math.floor(rand() * 2 ** 31));
    const CONCURRENT = 64;
    for (let i = 0; i < SEQUENCES; i += CONCURRENT) {
      await Promise.all(seeds.slice(i, i + CONCURRENT).map((seed, j) => run(i + j, seed)));
    }
    expect(compared).toBeGreaterThan(40_000);
    // Both outcomes are well represented.
    expect(admitted / compared).toBeGreaterThan(0.2);
    expect(admitted / compared).toBeLessThan(0.9);
  }, 300_000);
});
