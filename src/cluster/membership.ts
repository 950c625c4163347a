import type { Logger } from '../observability/logger.js';
import type { RedisConnection } from '../storage/redis/connection.js';
import { MEMBERS_KEY, MEMBERSHIP_CHANNEL } from '../storage/redis/keys.js';
import type { Member } from './ring.js';

/**
 * Who is in the ring. Three sources, chosen once at start:
 *  - local:  this node's own workers (no Redis, no static peers);
 *  - static: every worker of every node listed in CLUSTER_PEERS;
 *  - redis:  every worker that heartbeats into the registry in Redis.
 * A source calls `onChange` with the full member list whenever it changes.
 */
export interface MembershipSource {
  readonly kind: 'local' | 'static' | 'redis';
  start(onChange: (members: Member[]) => void): Promise<void>;
  /** Leaves the ring (graceful shutdown). */
  stop(): Promise<void>;
}

/** Members of one node: `<nodeId>/<i>` at `host:basePort+i`. */
export function nodeMembers(nodeId: string, host: string, basePort: number, workers: number): Member[] {
  const h = host.includes(':') ? `[${host}]` : host;
  return Array.from({ length: workers }, (_, i) => ({ id: `${nodeId}/${i}`, nodeId, address: `${h}:${basePort + i}` }));
}

export class FixedMembership implements MembershipSource {
  constructor(
    readonly kind: 'local' | 'static',
    private readonly members: Member[],
  ) {}

  async start(onChange: (members: Member[]) => void): Promise<void> {
    onChange(this.members);
  }

  async stop(): Promise<void> {}
}

/** Parses CLUSTER_PEERS (`nodeId@host:apiPort,…`) into members, peer ports derived from API ports. */
export function staticMembers(peers: string, workers: number, peerPortOffset: number): Member[] {
  return peers
    .split(',')
    .map((p) => p.trim())
    .filter(Boolean)
    .flatMap((entry) => {
      const match = /^([^@\s]+)@\[?([^\]\s]+?)\]?:(\d+)$/.exec(entry);
      if (!match) throw new Error(`CLUSTER_PEERS entry is not nodeId@host:port: ${entry}`);
      return nodeMembers(match[1]!, match[2]!, Number(match[3]) + peerPortOffset, workers);
    });
}

interface RegistryEntry {
  nodeId: string;
  address: string;
  expiresAt: number;
}

/**
 * The Redis registry: a hash `{rl:cluster}:members` of member id → {nodeId, address,
 * expiresAt}. Every member refreshes its entry each heartbeat, reads the others, and
 * drops entries past their expiry; joins and leaves are also published so everyone
 * re-reads at once. While Redis is unreachable the last known membership stays.
 */
export class RedisMembership implements MembershipSource {
  readonly kind = 'redis';
  private timer: NodeJS.Timeout | null = null;
  private onChange: (members: Member[]) => void = () => {};
  private last = '';

  constructor(
    private readonly self: Member,
    private readonly connection: RedisConnection,
    private readonly options: { heartbeatMs: number; ttlMs: number; clock: () => number; logger: Logger },
  ) {}

  async start(onChange: (members: Member[]) => void): Promise<void> {
    this.onChange = onChange;
    // Until Redis answers, the ring holds this member alone (it can still decide its own users).
    onChange([this.self]);
    await this.connection.subscribe(MEMBERSHIP_CHANNEL, () => void this.refresh(false));
    await this.beat(true);
    this.timer = setInterval(() => void this.beat(false), this.options.heartbeatMs);
    this.timer.unref();
  }

  private async beat(announce: boolean): Promise<void> {
    const { clock } = this.options;
    try {
      const client = this.connection.client();
      const entry: RegistryEntry = { nodeId: this.self.nodeId, address: this.self.address, expiresAt: clock() + this.options.ttlMs };
      const created = await client.hset(MEMBERS_KEY, this.self.id, JSON.stringify(entry));
      if (announce || created === 1) await this.connection.publish(MEMBERSHIP_CHANNEL, `join ${this.self.id}`);
    } catch (err) {
      this.options.logger.debug({ err: (err as Error).message }, 'membership heartbeat failed');
      return;
    }
    await this.refresh(true);
  }

  /** Reads the registry; `prune` also deletes expired entries. */
  private async refresh(prune: boolean): Promise<void> {
    let raw: Record<string, string>;
    try {
      raw = await this.connection.client().hgetall(MEMBERS_KEY);
    } catch {
      return;
    }
    const now = this.options.clock();
    const members: Member[] = [];
    const expired: string[] = [];
    for (const [id, json] of Object.entries(raw)) {
      let entry: RegistryEntry;
      try {
        entry = JSON.parse(json) as RegistryEntry;
      } catch {
        expired.push(id);
        continue;
      }
      if (id === this.self.id) continue;
      if (entry.expiresAt <= now) expired.push(id);
      else members.push({ id, nodeId: entry.nodeId, address: entry.address });
    }
    members.push(this.self);
    if (prune && expired.length > 0) {
      // Concurrent pruners may race; deleting an entry twice is harmless.
      await this.connection.client().hdel(MEMBERS_KEY, ...expired).catch(() => 0);
      this.options.logger.info({ members: expired }, 'members left (heartbeat expired)');
    }
    const signature = members.map((m) => `${m.id}=${m.address}`).sort().join(',');
    if (signature !== this.last) {
      this.last = signature;
      this.onChange(members);
    }
  }

  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    try {
      await this.connection.client().hdel(MEMBERS_KEY, this.self.id);
      await this.connection.publish(MEMBERSHIP_CHANNEL, `leave ${this.self.id}`);
    } catch {
      // Redis away: the entry expires on its own.
    }
  }
}
