import { afterEach, describe, expect, it } from 'vitest';
import { PeerClient } from '../src/cluster/peer-client.js';
import type { PeerDecideRequest, PeerDecideResult } from '../src/cluster/peer-protocol.js';
import { startPeerServer, type PeerServer } from '../src/cluster/peer-server.js';
import { createLogger } from '../src/observability/logger.js';
import { freePort } from './helpers/ports.js';

const SECRET = 'test-cluster-secret';
const servers: PeerServer[] = [];
const clients: PeerClient[] = [];
afterEach(async () => {
  for (const c of clients.splice(0)) c.close();
  await Promise.all(servers.splice(0).map((s) => s.close()));
});

function result(request: PeerDecideRequest): PeerDecideResult {
  return {
    allowed: request.cost < 5, code: request.cost < 5 ? 'OK' : 'RATE_LIMITED', limited_by: '', retry_after_ms: 0,
    burst: { limit: 10, remaining: 9, reset_at: 1 }, minute: null, hour: null, day: null,
    quota_used: request.cost, decided_at: 42, tier: request.tier || 'basic', path: 'local', state: 'memory', error: '',
  };
}

async function server(decide: (requests: PeerDecideRequest[]) => Promise<PeerDecideResult[]>) {
  const port = await freePort();
  const batches: number[] = [];
  const s = await startPeerServer({
    host: '127.0.0.1', port, fallbackToFreePort: false, secret: SECRET, logger: createLogger('silent'),
    handler: {
      decideBatch: async (_from, requests) => {
        batches.push(requests.length);
        return decide(requests);
      },
      health: () => ({ member: 'n/0', status: 'serving', epoch: 3 }),
      resetQuota: async () => undefined,
    },
  });
  servers.push(s);
  return { port: s.port, batches };
}

function client(port: number, options: Partial<ConstructorParameters<typeof PeerClient>[0]> = {}) {
  const c = new PeerClient({ memberId: 'n/0', address: `127.0.0.1:${port}`, selfId: 'me/0', secret: SECRET, deadlineMs: 2000, batchLimit: 100, batchWaitUs: 0, ...options });
  clients.push(c);
  return c;
}

describe('peer transport (gRPC, batched)', () => {
  it('sends the checks of one event-loop turn as one batch and answers each in order', async () => {
    const { port, batches } = await server(async (requests) => requests.map(result));
    const sizes: number[] = [];
    const c = client(port, { onBatch: (n) => sizes.push(n) });
    const answers = await Promise.all(Array.from({ length: 40 }, (_, i) => c.decide({ user_id: `u${i}`, tier: '', cost: i % 7 })));
    expect(batches).toEqual([40]);
    expect(sizes).toEqual([40]);
    expect(answers.map((a) => a.quota_used)).toEqual(Array.from({ length: 40 }, (_, i) => i % 7));
    expect(answers[6]).toMatchObject({ allowed: false, code: 'RATE_LIMITED', decided_at: 42 });
  });

  it('splits at the batch limit', async () => {
    const { port, batches } = await server(async (requests) => requests.map(result));
    const c = client(port, { batchLimit: 16 });
    await Promise.all(Array.from({ length: 40 }, (_, i) => c.decide({ user_id: `u${i}`, tier: '', cost: 1 })));
    expect(batches).toEqual([16, 16, 8]);
  });

  it('fails every waiter of a batch on an error, a timeout or a wrong-length answer', async () => {
    const failing = await server(async () => {
      throw new Error('boom');
    });
    const c1 = client(failing.port);
    const r1 = await Promise.allSettled([c1.decide({ user_id: 'a', tier: '', cost: 1 }), c1.decide({ user_id: 'b', tier: '', cost: 1 })]);
    expect(r1.map((r) => r.status)).toEqual(['rejected', 'rejected']);

    const short = await server(async (requests) => requests.slice(1).map(result));
    const c2 = client(short.port);
    const r2 = await Promise.allSettled([c2.decide({ user_id: 'a', tier: '', cost: 1 }), c2.decide({ user_id: 'b', tier: '', cost: 1 })]);
    expect(r2.map((r) => r.status)).toEqual(['rejected', 'rejected']);
    expect(String((r2[0] as PromiseRejectedResult).reason)).toMatch(/answered 1 results for 2 checks/);

    const slow = await server((requests) => new Promise((r) => setTimeout(() => r(requests.map(result)), 1000)));
    const c3 = client(slow.port, { deadlineMs: 100 });
    const started = Date.now();
    await expect(c3.decide({ user_id: 'a', tier: '', cost: 1 })).rejects.toThrow(/deadline/i);
    expect(Date.now() - started).toBeLessThan(900);
  });

  it('refuses calls without the cluster secret', async () => {
    const { port, batches } = await server(async (requests) => requests.map(result));
    const c = client(port, { secret: 'wrong' });
    await expect(c.decide({ user_id: 'a', tier: '', cost: 1 })).rejects.toThrow(/UNAUTHENTICATED|cluster secret/);
    await expect(c.health(false, 1000)).rejects.toThrow(/cluster secret/);
    expect(batches).toEqual([]);
    expect(await client(port).health(true, 1000)).toEqual({ member: 'n/0', status: 'serving', epoch: 3 });
  });
});
