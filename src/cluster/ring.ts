import HashRing from 'hashring';

/** A member of the ring: one worker of one node, reachable at its peer address. */
export interface Member {
  /** `<nodeId>/<workerIndex>` */
  id: string;
  nodeId: string;
  /** host:port of its peer gRPC server. */
  address: string;
}

/** The worker index in a member id `<nodeId>/<workerIndex>`. */
export function workerIndexOf(memberId: string): number {
  return Number(memberId.slice(memberId.lastIndexOf('/') + 1));
}

export interface RingOptions {
  /** Virtual nodes per member (each placed `replicas` = 4 times by ketama): more = more even. */
  vnodes: number;
  /** Keys whose owner is remembered without rehashing (up to twice this many, see ownerOf). */
  cacheSize: number;
}

export const DEFAULT_RING_OPTIONS: RingOptions = { vnodes: 160, cacheSize: 100_000 };

/**
 * Consistent hashing of user ids onto the members (ketama, md5, `vnodes` × 4 points per
 * member). Rebuilt, not mutated, when membership changes, so a decision reads one ring.
 */
export class Ring {
  private readonly ring: HashRing;
  private readonly byId: ReadonlyMap<string, Member>;
  readonly members: readonly Member[];
  private readonly cacheSize: number;
  /** Owners already looked up, in two generations: `recent`, and the one before it. */
  private recent = new Map<string, Member>();
  private older = new Map<string, Member>();

  constructor(members: Member[], options: RingOptions = DEFAULT_RING_OPTIONS) {
    if (members.length === 0) throw new Error('a ring needs at least one member');
    this.members = [...members].sort((a, b) => a.id.localeCompare(b.id));
    this.byId = new Map(this.members.map((m) => [m.id, m]));
    const servers: Record<string, { vnodes: number }> = {};
    for (const m of this.members) servers[m.id] = { vnodes: options.vnodes };
    // hashring's own cache (an LRU over a plain object) cost ~1 µs per check in a profile of
    // a loaded 2-worker node, more than the md5 it saves; ownerOf remembers owners instead.
    this.ring = new HashRing(servers, 'md5', { 'max cache size': 1 });
    this.cacheSize = Math.max(1, options.cacheSize);
  }

  /**
   * The member that owns `userId`. Remembered in a Map; when `recent` is full it becomes
   * `older` and a new one starts, so the users in use stay remembered and memory stays
   * bounded (2 × cacheSize) without per-entry LRU bookkeeping.
   */
  ownerOf(userId: string): Member {
    let owner = this.recent.get(userId);
    if (owner !== undefined) return owner;
    owner = this.older.get(userId) ?? this.byId.get(this.ring.get(userId))!;
    if (this.recent.size >= this.cacheSize) {
      this.older = this.recent;
      this.recent = new Map();
    }
    this.recent.set(userId, owner);
    return owner;
  }

  has(memberId: string): boolean {
    return this.byId.has(memberId);
  }

  /** Same members at the same addresses. */
  sameAs(other: Ring): boolean {
    return other.members.length === this.members.length && other.members.every((m) => this.byId.get(m.id)?.address === m.address);
  }
}
