import type { Logger } from '../observability/logger.js';
import type { Metrics } from '../observability/metrics.js';
import type { Shard } from '../node/shard.js';
import { PeerClient } from './peer-client.js';
import { Ring, workerIndexOf, type Member, type RingOptions } from './ring.js';

export type Route =
  | { kind: 'self' }
  | { kind: 'peer'; member: Member; client: PeerClient }
  | { kind: 'suspect'; member: Member };

const SELF: Route = { kind: 'self' };

export interface ClusterViewOptions {
  self: Member;
  secret: string;
  /** Deadline of a forwarded batch. */
  deadlineMs: number;
  batchLimit: number;
  batchWaitUs: number;
  /** Batches to one peer awaiting their answer at once (0: no limit). */
  maxInFlight: number;
  /** How often suspected peers are asked whether they are back. */
  healthIntervalMs: number;
  ring: RingOptions;
  shard: Shard;
  metrics: Metrics;
  logger: Logger;
  /** Where this node's worker `index` also serves peers on a unix socket; absent = TCP only. */
  siblingSocket?: (index: number) => string;
}

interface PeerState {
  member: Member;
  client: PeerClient;
  suspectedSince: number | null;
}

/**
 * This worker's view of the cluster: the ring, a batching client per remote member,
 * and which members it suspects. Ownership is read once per request through `route`.
 *
 * A member is suspected on the first failed or timed-out forward; its users are then
 * decided in Redis until it answers a health check, which also tells it that it was
 * suspected so it re-reads its users before trusting its memory again.
 */
export class ClusterView {
  private ring: Ring;
  private peers = new Map<string, PeerState>();
  private healthTimer: NodeJS.Timeout | null = null;
  private suspectedCount = 0;

  constructor(private readonly options: ClusterViewOptions) {
    this.ring = new Ring([options.self], options.ring);
    this.options.metrics.ringMembers.set(1);
  }

  get selfId(): string {
    return this.options.self.id;
  }

  get members(): readonly Member[] {
    return this.ring.members;
  }

  /** Installs a new member list; a changed ring makes this worker re-read its users. */
  update(members: Member[]): void {
    const withSelf = members.some((m) => m.id === this.options.self.id) ? members : [...members, this.options.self];
    const next = new Ring(withSelf, this.options.ring);
    if (next.sameAs(this.ring)) return;
    const before = this.ring.members.map((m) => m.id);
    this.ring = next;
    const { metrics, logger, shard } = this.options;
    metrics.ringChanges.inc();
    metrics.ringMembers.set(next.members.length);
    shard.epoch++;
    metrics.epochBumps.inc({ reason: 'ring' });
    for (const [id, peer] of this.peers) {
      const now = next.members.find((m) => m.id === id);
      if (!now || now.address !== peer.member.address) {
        peer.client.close();
        if (peer.suspectedSince !== null) this.suspectedCount--;
        this.peers.delete(id);
      }
    }
    for (const member of next.members) {
      if (member.id === this.options.self.id || this.peers.has(member.id)) continue;
      this.peers.set(member.id, { member, client: this.newClient(member), suspectedSince: null });
    }
    metrics.suspectedPeers.set(this.suspectedCount);
    logger.info({ before, after: next.members.map((m) => m.id) }, 'ring changed');
  }

  private newClient(member: Member): PeerClient {
    const { options } = this;
    // A worker of this node is reached over its unix socket: no TCP on the way.
    const sibling = options.siblingSocket !== undefined && member.nodeId === options.self.nodeId;
    return new PeerClient({
      memberId: member.id,
      address: sibling ? `unix:${options.siblingSocket!(workerIndexOf(member.id))}` : member.address,
      selfId: options.self.id,
      secret: options.secret,
      deadlineMs: options.deadlineMs,
      batchLimit: options.batchLimit,
      batchWaitUs: options.batchWaitUs,
      maxInFlight: options.maxInFlight,
      onBatch: (size) => options.metrics.observeForwardBatch(size),
    });
  }

  /** Who decides for `userId`: this worker, a healthy peer, or (a suspected peer) Redis. */
  route(userId: string): Route {
    if (this.ring.members.length === 1) return SELF;
    const owner = this.ring.ownerOf(userId);
    if (owner.id === this.options.self.id) return SELF;
    const peer = this.peers.get(owner.id);
    if (peer === undefined) return SELF;
    return peer.suspectedSince === null ? { kind: 'peer', member: owner, client: peer.client } : { kind: 'suspect', member: owner };
  }

  /** A forward to `memberId` failed or timed out. */
  suspect(memberId: string, reason: string): void {
    const peer = this.peers.get(memberId);
    if (peer === undefined || peer.suspectedSince !== null) return;
    peer.suspectedSince = Date.now();
    this.suspectedCount++;
    this.options.metrics.suspicions.inc();
    this.options.metrics.suspectedPeers.set(this.suspectedCount);
    this.options.logger.warn({ peer: memberId, reason }, 'peer suspected; deciding its users in Redis');
    this.healthTimer ??= setInterval(() => void this.checkSuspects(), this.options.healthIntervalMs);
    this.healthTimer.unref();
  }

  private async checkSuspects(): Promise<void> {
    const suspects = [...this.peers.values()].filter((p) => p.suspectedSince !== null);
    if (suspects.length === 0) {
      if (this.healthTimer) clearInterval(this.healthTimer);
      this.healthTimer = null;
      return;
    }
    await Promise.all(
      suspects.map(async (peer) => {
        try {
          await peer.client.health(true, this.options.deadlineMs);
        } catch {
          return;
        }
        if (peer.suspectedSince === null) return;
        const ms = Date.now() - peer.suspectedSince;
        peer.suspectedSince = null;
        this.suspectedCount--;
        this.options.metrics.recoveries.inc();
        this.options.metrics.suspectedPeers.set(this.suspectedCount);
        this.options.logger.info({ peer: peer.member.id, suspected_ms: ms }, 'peer answers again');
      }),
    );
  }

  status(): Array<{ id: string; address: string; self: boolean; via: 'unix' | 'tcp' | null; suspected: boolean; suspected_since: number | null }> {
    return this.ring.members.map((m) => {
      const peer = this.peers.get(m.id);
      const self = m.id === this.options.self.id;
      return {
        id: m.id,
        // Where this worker reaches the member: its own bound address (a node alone may have
        // let the OS pick the port), a sibling's unix socket, or the address peers gave.
        address: self ? this.options.self.address : (peer?.client.address ?? m.address),
        self,
        via: peer === undefined ? null : peer.client.address.startsWith('unix:') ? 'unix' : 'tcp',
        suspected: peer !== undefined && peer.suspectedSince !== null,
        suspected_since: peer?.suspectedSince ?? null,
      };
    });
  }

  close(): void {
    if (this.healthTimer) clearInterval(this.healthTimer);
    this.healthTimer = null;
    for (const peer of this.peers.values()) peer.client.close();
    this.peers.clear();
  }
}
