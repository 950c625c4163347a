import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { postJson, startNodeProcess, type NodeProcess } from './helpers/node-process.js';
import { RedisServer } from './helpers/redis-server.js';
import { throwawayPostgresEnv } from './helpers/databases.js';

const SYNC_MS = 100;
/** Generous limits so that nearly every request is admitted and counted. */
const WIDE_LIMITS = {
  RATE_LIMIT_BASIC_BURST_LIMIT: '1000000',
  RATE_LIMIT_BASIC_REQUESTS_PER_MINUTE: '1000000',
  RATE_LIMIT_BASIC_REQUESTS_PER_HOUR: '1000000',
  RATE_LIMIT_BASIC_REQUESTS_PER_DAY: '1000000',
  // One long quota window, so a run never straddles two.
  QUOTA_RESET_INTERVAL: '31536000',
  REDIS_SYNC_INTERVAL_MS: String(SYNC_MS),
};

const started: NodeProcess[] = [];
const servers: RedisServer[] = [];
let database: Awaited<ReturnType<typeof throwawayPostgresEnv>>;
beforeAll(async () => {
  database = await throwawayPostgresEnv();
});
afterAll(async () => {
  await database.dispose();
});
afterEach(async () => {
  await Promise.all(started.splice(0).map((n) => n.kill()));
  await Promise.all(servers.splice(0).map((s) => s.stop()));
});

async function startRedis(): Promise<RedisServer> {
  const server = await RedisServer.start();
  servers.push(server);
  return server;
}

async function startNode(env: Record<string, string>): Promise<NodeProcess> {
  const node = await startNodeProcess({ ...WIDE_LIMITS, ...database.env, ...env });
  started.push(node);
  return node;
}

interface Traffic {
  /** Admitted cost per user, with the deciding node's time of each admission. */
  admitted: Map<string, number[]>;
  /**
   * Checks decided in Redis because a forward to the owning worker failed: the owner may
   * have charged them too, so they can be counted twice (never lost).
   */
  retried: Map<string, number>;
  errors: number;
  stop(): Promise<void>;
}

/** Closed-loop checks over `users` from `concurrency` loops until stopped. */
function traffic(url: string, users: string[], concurrency = 8): Traffic {
  const admitted = new Map<string, number[]>(users.map((u) => [u, []]));
  const retried = new Map<string, number>();
  let running = true;
  const state = { errors: 0 };
  let next = 0;
  const loop = async () => {
    while (running) {
      const user = users[next++ % users.length]!;
      try {
        const res = await postJson(`${url}/rate-limiting/check`, { user_id: user });
        if (res.status !== 200) state.errors++;
        else if (res.body.allowed) admitted.get(user)!.push(res.body.decided_at);
        if (res.body.mode === 'redis' || res.body.mode === 'fallback') retried.set(user, (retried.get(user) ?? 0) + 1);
      } catch {
        if (running) state.errors++;
      }
    }
  };
  const loops = Array.from({ length: concurrency }, loop);
  return {
    admitted,
    retried,
    get errors() {
      return state.errors;
    },
    async stop() {
      running = false;
      await Promise.all(loops);
    },
  };
}

async function usage(url: string, user: string): Promise<number> {
  const res = await fetch(`${url}/rate-limiting/quota/${encodeURIComponent(user)}`);
  return ((await res.json()) as any).quota.current_usage;
}

const USERS = Array.from({ length: 20 }, (_, i) => `durable-${i}`);

describe('durability across node restarts (real processes)', () => {
  it('kill -9 under traffic loses at most the hits of the last sync interval', async () => {
    const redis = await startRedis();
    const env = { REDIS_ENDPOINT: redis.endpoint };
    const node = await startNode(env);
    const load = traffic(node.url, USERS);
    await new Promise((r) => setTimeout(r, 2500));
    const killedAt = Date.now();
    await node.kill();
    await load.stop();

    const restarted = await startNode(env);
    let lost = 0;
    let admittedTotal = 0;
    let lateAdmissions = 0;
    // What a crash can lose: the changes of the interval not yet flushed plus the flush in flight.
    const window = 2 * SYNC_MS + 150;
    for (const user of USERS) {
      const times = load.admitted.get(user)!;
      const recovered = await usage(restarted.url, user);
      expect(recovered, user).toBeLessThanOrEqual(times.length);
      lost += times.length - recovered;
      admittedTotal += times.length;
      lateAdmissions += times.filter((t) => t > killedAt - window).length;
    }
    expect(admittedTotal).toBeGreaterThan(200);
    expect(lost).toBeLessThanOrEqual(lateAdmissions);
    console.log(`kill -9: admitted ${admittedTotal}, lost ${lost}, bound ${lateAdmissions} (admissions in the last ${window} ms)`);
  });

  it('a graceful SIGTERM loses nothing', async () => {
    const redis = await startRedis();
    const env = { REDIS_ENDPOINT: redis.endpoint };
    const node = await startNode(env);
    const load = traffic(node.url, USERS);
    await new Promise((r) => setTimeout(r, 1500));
    await load.stop();
    expect(await node.stop()).toBe(0);

    const restarted = await startNode(env);
    for (const user of USERS) {
      const admitted = load.admitted.get(user)!.length;
      const recovered = await usage(restarted.url, user);
      expect(recovered, user).toBeGreaterThanOrEqual(admitted);
      expect(recovered, user).toBeLessThanOrEqual(admitted + (load.retried.get(user) ?? 0));
    }
  });

  it('survives redis-server dying under traffic and re-seeds a fresh one', async () => {
    const redis = await startRedis();
    const env = { REDIS_ENDPOINT: redis.endpoint };
    const node = await startNode(env);
    const load = traffic(node.url, USERS);
    await new Promise((r) => setTimeout(r, 1000));
    await redis.kill();
    await new Promise((r) => setTimeout(r, 1000));
    const health = await (await fetch(`${node.url}/health`)).json();
    expect(health).toMatchObject({ status: 'degraded', redis_connected: false });
    await redis.restart();
    await new Promise((r) => setTimeout(r, 1000));
    await load.stop();
    expect(load.errors).toBe(0);

    // Within a few sync intervals Redis holds the full counters again.
    const deadline = Date.now() + 5000;
    const client = redis.client();
    const { readStoredState } = await import('../src/storage/redis/keys.js');
    const dayStart = Date.now() - (Date.now() % 31_536_000_000);
    for (const user of USERS) {
      const expected = load.admitted.get(user)!.length;
      for (;;) {
        const state = await readStoredState(client, user);
        const stored = state?.dayStart === dayStart ? state.dayCount : 0;
        if (stored >= expected && stored <= expected + (load.retried.get(user) ?? 0)) break;
        if (Date.now() > deadline) throw new Error(`${user}: redis holds ${stored}, expected ${expected}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    }
    client.disconnect();
    expect(((await (await fetch(`${node.url}/health`)).json()) as any).status).toBe('healthy');

    // A node restarted after that recovers them.
    await node.kill();
    const restarted = await startNode(env);
    for (const user of USERS) {
      const admitted = load.admitted.get(user)!.length;
      const recovered = await usage(restarted.url, user);
      expect(recovered, user).toBeGreaterThanOrEqual(admitted);
      expect(recovered, user).toBeLessThanOrEqual(admitted + (load.retried.get(user) ?? 0));
    }
  });
});
