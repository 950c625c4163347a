import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { postJson, startNodeProcess, type NodeProcess } from './helpers/node-process.js';
import { freePort } from './helpers/ports.js';

const started: NodeProcess[] = [];
afterEach(async () => {
  await Promise.all(started.splice(0).map((n) => n.kill()));
});

async function start(env: Record<string, string> = {}): Promise<NodeProcess> {
  const node = await startNodeProcess(env);
  started.push(node);
  return node;
}

/**
 * /health answers once one worker serves; tests about the two workers together wait until
 * both serve their peers and the API (under a loaded test run the second can come up a few
 * seconds later; only a worker that serves adds its figures to /metrics).
 */
async function startBothWorkers(env: Record<string, string> = {}): Promise<NodeProcess> {
  const node = await start(env);
  const dir = join(tmpdir(), `rl-node-${node.child.pid}`);
  const listening = (index: number): boolean => new RegExp(`"worker":${index},[^\n]*"msg":"worker listening"`).test(node.output());
  const serving = (): boolean =>
    existsSync(join(dir, 'peer-0.sock')) && existsSync(join(dir, 'peer-1.sock')) && listening(0) && listening(1);
  for (let i = 0; i < 150 && !serving(); i++) await new Promise((r) => setTimeout(r, 100));
  // Not both within 15 s: fail here, with what the node said (a worker that crashed at start shows why).
  if (!serving()) throw new Error(`both workers did not come up within 15 s:\n${node.output()}`);
  return node;
}

describe('the node process (npm start)', () => {
  it('admits exactly burst_limit of 70 back-to-back checks for a fresh basic user', async () => {
    const node = await start();
    let allowed = 0;
    for (let i = 0; i < 70; i++) {
      const res = await postJson(`${node.url}/rate-limiting/check`, { user_id: 'fresh-basic-user', tier: 'basic' });
      expect(res.status).toBe(200);
      if (res.body.allowed) allowed++;
    }
    expect(allowed).toBe(10);
  });

  it('matches all three of the seed\'s test scenarios', async () => {
    const node = await start();
    const res = await postJson(`${node.url}/rate-limiting/test`, {
      test_scenarios: [
        { user_id: 'basic_user', tier: 'basic', requests: 70 },
        { user_id: 'premium_user', tier: 'premium', requests: 350 },
        { user_id: 'enterprise_user', tier: 'enterprise', requests: 1100 },
      ],
    });
    expect(res.status).toBe(200);
    expect(res.body.all_match).toBe(true);
    expect(res.body.results.map((r: { allowed: number }) => r.allowed)).toEqual([10, 50, 200]);
  });

  it('says loudly that durability is off without Redis, and exits 0 on SIGTERM', async () => {
    const node = await startBothWorkers();
    const health = await (await fetch(`${node.url}/health`)).json();
    expect(health).toMatchObject({ status: 'healthy', redis_connected: false, durability: 'memory' });
    expect(node.output()).toMatch(/durability OFF/);
    // Both workers hold a stream to each other; neither waits on the other's to end
    // (it used to take ~10 s, until gRPC's keepalive gave up).
    expect(node.workerPids(), node.output()).toHaveLength(2);
    const modes = new Set<string>();
    for (let i = 0; i < 40; i++) {
      const res = await fetch(`${node.url}/rate-limiting/check`, { method: 'POST', headers: { 'content-type': 'application/json', connection: 'close' }, body: JSON.stringify({ user_id: `u${i}` }) });
      modes.add(((await res.json()) as { mode: string }).mode);
    }
    expect(modes).toEqual(new Set(['local', 'forwarded']));
    const stopping = Date.now();
    expect(await node.stop()).toBe(0);
    expect(Date.now() - stopping).toBeLessThan(5000);
  });

  it('starts both workers when a derived peer port is taken (siblings talk over unix sockets)', async () => {
    // Something else holds worker 1's derived peer port (API port + 1000 + 1); an API port
    // whose derived port some other process holds already is passed over.
    const holder = createServer();
    let port = 0;
    for (let attempt = 0; attempt < 20 && port === 0; attempt++) {
      const candidate = await freePort();
      const held = await new Promise<boolean>((resolve) => {
        holder.once('error', () => resolve(false));
        holder.listen(candidate + 1001, '127.0.0.1', () => resolve(true));
      });
      holder.removeAllListeners('error');
      if (held) port = candidate;
    }
    expect(port).toBeGreaterThan(0);
    try {
      const node = await startBothWorkers({ RATE_LIMITING_API_PORT: String(port) });
      expect(node.output()).toMatch(/peer port taken; using one the OS picks/);
      expect(node.workerPids()).toHaveLength(2);
      const modes = new Set<string>();
      for (let i = 0; i < 40; i++) modes.add((await postJson(`${node.url}/rate-limiting/check`, { user_id: `taken-${i}` })).body.mode as string);
      expect(modes).toEqual(new Set(['local', 'forwarded']));
      // The status shows where each worker is really reached, not the derived port: each
      // worker's own bound address, and its sibling's unix socket.
      const views = new Map<string, Array<{ id: string; address: string; self: boolean }>>();
      for (let i = 0; i < 40 && views.size < 2; i++) {
        const res = await fetch(`${node.url}/rate-limiting/status`, { headers: { connection: 'close' } });
        const body = (await res.json()) as { cluster: { self: string; members: Array<{ id: string; address: string; self: boolean }> } };
        views.set(body.cluster.self, body.cluster.members);
      }
      expect(views.size).toBe(2);
      for (const members of views.values()) {
        expect(members).toHaveLength(2);
        for (const m of members) {
          expect(m.address).not.toBe(`127.0.0.1:${port + 1001}`);
          expect(m.address).toMatch(m.self ? /^127\.0\.0\.1:\d+$/ : /^unix:.*peer-[01]\.sock$/);
        }
      }
    } finally {
      await new Promise((resolve) => holder.close(resolve));
    }
  });

  it('keeps its unix sockets (workers, embedded database) in a directory of its own, and removes those of nodes killed outright', async () => {
    // The pid of a process that has exited: its directory is stale.
    const gone = spawnSync('true').pid!;
    const stale = join(tmpdir(), `rl-node-${gone}`);
    mkdirSync(stale, { recursive: true });
    const node = await startBothWorkers();
    expect(existsSync(stale)).toBe(false);
    const own = join(tmpdir(), `rl-node-${node.child.pid}`);
    expect(existsSync(join(own, 'peer-0.sock')) && existsSync(join(own, 'peer-1.sock'))).toBe(true);
    // The embedded database is served from the same directory (it comes up in the background).
    const served = (): boolean => existsSync(join(own, 'pglite')) && readdirSync(join(own, 'pglite')).some((f) => f.startsWith('.s.PGSQL'));
    for (let i = 0; i < 100 && !served(); i++) await new Promise((r) => setTimeout(r, 100));
    expect(served()).toBe(true);
    expect(await node.stop()).toBe(0);
    expect(existsSync(own)).toBe(false);
  });

  it('reports its heap limit in /metrics, summed over its workers, as NODE_OPTIONS sets it', async () => {
    const metric = async (node: NodeProcess): Promise<number> => {
      const text = await (await fetch(`${node.url}/metrics`)).text();
      return Number(/^rate_limiting_heap_limit_bytes (\S+)$/m.exec(text)?.[1]);
    };
    const MB = 1024 * 1024;
    // Metrics are gathered from every worker: both must serve.
    const capped = await metric(await startBothWorkers({ NODE_OPTIONS: '--max-old-space-size=200' }));
    // Two workers, each 200 MB of old space plus its young generation (tens of MB).
    expect(capped).toBeGreaterThanOrEqual(2 * 200 * MB);
    expect(capped).toBeLessThan(2 * 300 * MB);
    expect(await metric(await startBothWorkers())).toBeGreaterThan(2 * 300 * MB);
  });

  it('answers /metrics at once while a crashed worker restarts, with the serving worker\'s figures', async () => {
    const node = await startBothWorkers();
    const [killed, other] = node.workerPids();
    process.kill(killed!, 'SIGKILL');
    // The primary forks a replacement after 100 ms; it needs far longer to serve.
    let pids: number[] = [];
    for (let i = 0; i < 100; i++) {
      pids = node.workerPids();
      if (pids.length === 2 && !pids.includes(killed!)) break;
      await new Promise((r) => setTimeout(r, 20));
    }
    expect(pids).toContain(other);
    expect(pids).not.toContain(killed);
    const started = Date.now();
    const res = await fetch(`${node.url}/metrics`);
    const text = await res.text();
    expect(res.status).toBe(200);
    expect(Date.now() - started).toBeLessThan(2000);
    expect(text).toMatch(/^rate_limiting_heap_limit_bytes \d/m);
  });

  it('exits non-zero naming the variable when an environment value is bad', async () => {
    const node = await startNodeProcess({ RATE_LIMIT_BASIC_REQUESTS_PER_MINUTE: 'sixty', QUOTA_OVERAGE_HANDLING: 'refund' }, { waitReady: false });
    started.push(node);
    const code = await node.exited;
    expect(code).toBe(2);
    expect(node.output()).toContain('RATE_LIMIT_BASIC_REQUESTS_PER_MINUTE: expected an integer, got "sixty"');
    expect(node.output()).toContain('QUOTA_OVERAGE_HANDLING');
  });

  it('never logs an API key or an authorization header', async () => {
    const node = await start({ LOG_LEVEL: 'trace' });
    await fetch(`${node.url}/rate-limiting/check`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: 'Bearer super-secret-token' },
      body: JSON.stringify({ user_id: 'u', api_key: 'sk_live_do_not_log_me' }),
    });
    await node.stop();
    expect(node.output()).not.toContain('super-secret-token');
    expect(node.output()).not.toContain('sk_live_do_not_log_me');
  });
});
