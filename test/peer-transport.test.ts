import { afterEach, describe, expect, it } from 'vitest';
import { PeerClient } from '../src/cluster/peer-client.js';
import type { CheckOutcome } from '../src/node/decider.js';
import * as grpc from '@grpc/grpc-js';
import { SECRET_HEADER, peerService, type PeerAnswer, type PeerDecideRequest, type WireBatch, type WireResults } from '../src/cluster/peer-protocol.js';
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

function result(request: PeerDecideRequest): CheckOutcome {
  const allowed = request.cost < 5;
  return {
    userId: request.user_id,
    tier: request.tier || 'basic',
    path: 'local',
    state: 'memory',
    decision: {
      allowed, code: allowed ? 'OK' : 'RATE_LIMITED', limitedBy: allowed ? null : 'burst', retryAfterMs: allowed ? 0 : null,
      limits: {
        burst: { limit: 10, remaining: 9, reset_at: 1 }, minute: { limit: 100, remaining: 90.5, reset_at: 60_000 },
        hour: { limit: 1000, remaining: 0, reset_at: 3_600_000 }, day: { limit: 2 ** 40, remaining: 2 ** 40 - 1, reset_at: 1_790_000_000_000 },
      },
      quotaUsed: request.cost, charged: request.cost, graceStarted: false, now: 42,
    },
  };
}

async function server(decide: (requests: PeerDecideRequest[]) => PeerAnswer[] | Promise<PeerAnswer[]>) {
  const port = await freePort();
  const batches: number[] = [];
  const s = await startPeerServer({
    host: '127.0.0.1', port, fallbackToFreePort: false, secret: SECRET, logger: createLogger('silent'),
    handler: {
      decideBatch: (_from, checks) => {
        batches.push(checks.user_ids.length);
        return decide(checks.user_ids.map((userId, i) => ({ user_id: userId, tier: checks.tiers[i]!, cost: checks.costs[i]! })));
      },
      health: () => ({ member: 'n/0', status: 'serving', epoch: 3 }),
      resetQuota: async () => undefined,
    },
  });
  servers.push(s);
  return { port: s.port, batches };
}

function client(port: number, options: Partial<ConstructorParameters<typeof PeerClient>[0]> = {}) {
  const c = new PeerClient({ memberId: 'n/0', address: `127.0.0.1:${port}`, selfId: 'me/0', secret: SECRET, deadlineMs: 2000, batchLimit: 100, batchWaitUs: 0, maxInFlight: 1, ...options });
  clients.push(c);
  return c;
}

/** An owner that answers the batch holding user `first` only once `answerFirst` is called. */
async function gatedServer() {
  let answerFirst: () => void = () => undefined;
  const first = new Promise<void>((resolve) => (answerFirst = resolve));
  const s = await server(async (requests) => {
    if (requests[0]!.user_id === 'first') await first;
    return requests.map(result);
  });
  return { ...s, answerFirst: () => answerFirst() };
}

/** Check `first`, then `turns` event-loop turns of `perTurn` checks while it is unanswered; then it is answered. */
async function behindFirst(c: PeerClient, answerFirst: () => void, turns: number, perTurn: number): Promise<CheckOutcome[]> {
  const pending = [c.decide({ user_id: 'first', tier: '', cost: 1 })];
  for (let turn = 0; turn < turns; turn++) {
    await new Promise((r) => setTimeout(r, 20));
    for (let i = 0; i < perTurn; i++) pending.push(c.decide({ user_id: `t${turn}-${i}`, tier: '', cost: 1 }));
  }
  await new Promise((r) => setTimeout(r, 20));
  answerFirst();
  return Promise.all(pending);
}

describe('peer transport (gRPC, batched)', () => {
  it('sends the checks of one event-loop turn as one batch and answers each in order', async () => {
    const { port, batches } = await server(async (requests) => requests.map(result));
    const sizes: number[] = [];
    const c = client(port, { onBatch: (n) => sizes.push(n) });
    const answers = await Promise.all(Array.from({ length: 40 }, (_, i) => c.decide({ user_id: `u${i}`, tier: '', cost: i % 7 })));
    expect(batches).toEqual([40]);
    expect(sizes).toEqual([40]);
    expect(answers.map((a) => a.decision.quotaUsed)).toEqual(Array.from({ length: 40 }, (_, i) => i % 7));
    expect(answers.map((a) => a.userId)).toEqual(Array.from({ length: 40 }, (_, i) => `u${i}`));
    // Every figure crosses the wire as it was decided (charged is the owner's business).
    const { charged: _charged, ...decided } = result({ user_id: 'u6', tier: '', cost: 6 }).decision;
    expect(answers[6]).toEqual({ userId: 'u6', tier: 'basic', path: 'local', state: 'memory', decision: { ...decided, charged: 0 } });
    expect(answers[1]!.decision).toMatchObject({ allowed: true, code: 'OK', limitedBy: null, retryAfterMs: 0 });
  });

  it('answers a check the owner could not decide with its error, and the others with theirs', async () => {
    const { port } = await server(async (requests) => requests.map((r) => (r.user_id === 'bad' ? new Error('no such luck') : result(r))));
    const c = client(port);
    const [good, bad, refused] = await Promise.allSettled([
      c.decide({ user_id: 'good', tier: 'pro', cost: 1 }),
      c.decide({ user_id: 'bad', tier: '', cost: 1 }),
      c.decide({ user_id: 'other', tier: '', cost: 9 }),
    ]);
    expect(good).toMatchObject({ status: 'fulfilled', value: { userId: 'good', tier: 'pro', decision: { allowed: true } } });
    expect(String((bad as PromiseRejectedResult).reason)).toMatch(/no such luck/);
    expect(refused).toMatchObject({ status: 'fulfilled', value: { decision: { allowed: false, code: 'RATE_LIMITED', limitedBy: 'burst', retryAfterMs: null } } });
  });

  it('splits at the batch limit', async () => {
    const { port, batches } = await server(async (requests) => requests.map(result));
    const c = client(port, { batchLimit: 16 });
    await Promise.all(Array.from({ length: 40 }, (_, i) => c.decide({ user_id: `u${i}`, tier: '', cost: 1 })));
    expect(batches).toEqual([16, 16, 8]);
  });

  it('holds checks back while a batch awaits its answer, then sends them as one batch', async () => {
    const { port, batches, answerFirst } = await gatedServer();
    const answers = await behindFirst(client(port), answerFirst, 5, 6);
    expect(answers.map((a) => a.userId)).toEqual(['first', ...Array.from({ length: 30 }, (_, k) => `t${Math.floor(k / 6)}-${k % 6}`)]);
    expect(batches).toEqual([1, 30]);
  });

  it('without an in-flight limit sends a batch every event-loop turn', async () => {
    const { port, batches, answerFirst } = await gatedServer();
    await behindFirst(client(port, { maxInFlight: 0 }), answerFirst, 3, 4);
    expect(batches).toEqual([1, 4, 4, 4]);
  });

  it('lets held checks go when the batch ahead of them fails, rather than waiting on a stuck peer', async () => {
    // A stopped owner: nothing is ever answered.
    const { port } = await server(() => new Promise<PeerAnswer[]>(() => undefined));
    const c = client(port, { deadlineMs: 150 });
    const started = Date.now();
    const ahead = c.decide({ user_id: 'ahead', tier: '', cost: 1 });
    await new Promise((r) => setTimeout(r, 20));
    const held = Array.from({ length: 5 }, (_, i) => c.decide({ user_id: `held-${i}`, tier: '', cost: 1 }));
    const settled = await Promise.allSettled([ahead, ...held]);
    // Every check fails by the first batch's deadline (its callers then decide in Redis).
    expect(settled.map((r) => r.status)).toEqual(Array(6).fill('rejected'));
    expect(String((settled[0] as PromiseRejectedResult).reason)).toMatch(/deadline/);
    expect(Date.now() - started).toBeLessThan(140 + 150);
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

  it('answers a malformed batch (lists of different lengths, no user) with an error per check, deciding nothing', async () => {
    const { port, batches } = await server(async (requests) => requests.map(result));
    const Service = peerService();
    const raw = new Service(`127.0.0.1:${port}`, grpc.credentials.createInsecure()) as unknown as { Decide(m: grpc.Metadata): grpc.ClientDuplexStream<WireBatch, WireResults>; close(): void };
    const metadata = new grpc.Metadata();
    metadata.set(SECRET_HEADER, SECRET);
    const stream = raw.Decide(metadata);
    const answers: WireResults[] = [];
    stream.on('data', (a: WireResults) => answers.push(a));
    stream.write({ id: 1, from: 'x/0', user_ids: ['a', 'b'], tiers: [''], costs: [1, 1] });
    stream.write({ id: 2, from: 'x/0', user_ids: ['a', ''], tiers: ['', ''], costs: [1, 1] });
    stream.write({ id: 3, from: 'x/0', user_ids: ['a'], tiers: [''], costs: [2] });
    for (let i = 0; i < 50 && answers.length < 3; i++) await new Promise((r) => setTimeout(r, 20));
    stream.end();
    raw.close();
    expect(answers.map((a) => a.id)).toEqual([1, 2, 3]);
    expect(answers[0]!.errors).toEqual(Array(2).fill('malformed batch: 2 user_ids, 1 tiers and 2 costs (one of each per check)'));
    expect(answers[1]!.errors).toEqual(Array(2).fill('malformed batch: a check without a user_id'));
    expect(answers[2]).toMatchObject({ errors: [], tiers: ['basic'] });
    expect(batches).toEqual([1]);
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
