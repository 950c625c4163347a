/**
 * The servers of the side-by-side comparison, each started as real processes on free
 * ports: the Fastify ceiling, the peers (rate-limiter-flexible, @fastify/rate-limit) and
 * our service as one node (local / redis mode) and as a 3-node cluster behind the
 * round-robin gateway of scripts/gateway.ts.
 */
import { freeNodePort, freePort, spawnServer, startHello, type Target } from '../lib/processes.js';

/** Our node's environment in every comparison target: cheap start, nothing recorded. */
export const NODE_BASE_ENV: Record<string, string> = {
  USAGE_ANALYTICS_ENABLED: 'false',
  PGLITE_DATA_DIR: 'memory',
};

/** Per-user limit of the peers: our default tier's per-minute figure (basic: 60 per 60 s). */
export const PEER_POINTS = 60;
export const PEER_WINDOW_SECONDS = 60;

/** One node of ours (`dist/src/main.js`) with `workers` workers and extra environment. */
export async function startNode(name: string, workers: number, env: Record<string, string>, port?: number): Promise<Target> {
  const apiPort = port ?? (await freeNodePort(workers));
  return spawnServer({
    name,
    script: 'src/main.js',
    env: { ...NODE_BASE_ENV, RATE_LIMITING_API_HOST: '127.0.0.1', RATE_LIMITING_API_PORT: String(apiPort), RATE_LIMITING_WORKERS: String(workers), ...env },
    port: apiPort,
    readyPath: '/health',
    path: '/rate-limiting/check',
  });
}

export function startPeer(name: string, script: 'rlf' | 'fastify-rate-limit', workers: number, store: 'memory' | 'redis', redisEndpoint: string, db: number): Promise<Target> {
  return freePort().then((port) =>
    spawnServer({
      name,
      script: `bench/servers/${script}.js`,
      args: [
        String(port), String(workers), '--store', store, '--redis', redisEndpoint, '--db', String(db),
        '--points', String(PEER_POINTS), '--duration', String(PEER_WINDOW_SECONDS),
      ],
      port,
      readyPath: '/',
      path: '/rate-limiting/check',
    }),
  );
}

export { startHello };

interface StatusBody {
  cluster: { members: Array<{ id: string; suspected: boolean }> } | null;
}

/** Waits until every worker of every node sees `expected` ring members, none suspected. */
async function waitForRing(urls: string[], expected: number, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    let ok = true;
    for (const url of urls) {
      // Several reads, so that (round-robin) every worker of the node answers at least once.
      for (let i = 0; i < 4 && ok; i++) {
        try {
          const body = (await (await fetch(`${url}/rate-limiting/status`)).json()) as StatusBody;
          const members = body.cluster?.members ?? [];
          ok = members.length === expected && members.every((m) => !m.suspected);
        } catch {
          ok = false;
        }
      }
      if (!ok) break;
    }
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`the cluster ring did not reach ${expected} members in ${timeoutMs / 1000} s`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

/**
 * `nodes` nodes of ours sharing one Redis (they find each other through it, as
 * scripts/cluster.ts starts them) and the round-robin gateway of scripts/gateway.ts in its
 * own process in front; the target is the gateway.
 */
export async function startCluster(name: string, nodes: number, workers: number, redisEndpoint: string, env: Record<string, string>): Promise<Target> {
  const started: Target[] = [];
  try {
    for (let i = 0; i < nodes; i++) {
      started.push(await startNode(`${name} node-${i + 1}`, workers, { REDIS_ENDPOINT: redisEndpoint, NODE_ID: `bench-node-${i + 1}`, ...env }));
    }
    await waitForRing(started.map((t) => t.url), nodes * workers, 60_000);
    const port = await freePort();
    const gateway = await spawnServer({
      name: `${name} gateway`,
      script: 'scripts/gateway.js',
      args: [String(port), ...started.map((t) => t.url)],
      port,
      readyPath: '/health',
      path: '/rate-limiting/check',
    });
    started.push(gateway);
    return {
      name,
      url: gateway.url,
      path: gateway.path,
      async stop() {
        await gateway.stop();
        await Promise.all(started.slice(0, -1).map((t) => t.stop()));
      },
    };
  } catch (err) {
    await Promise.all(started.map((t) => t.stop()));
    throw err;
  }
}
