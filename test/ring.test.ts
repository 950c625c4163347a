import { describe, expect, it } from 'vitest';
import { nodeMembers, staticMembers } from '../src/cluster/membership.js';
import { Ring, DEFAULT_RING_OPTIONS } from '../src/cluster/ring.js';

describe('the ring', () => {
  const members = ['node-a', 'node-b', 'node-c'].flatMap((n, i) => nodeMembers(n, '127.0.0.1', 20_000 + i * 10, 2));

  it('splits 100k users over 3 nodes × 2 workers within ±10% of even', () => {
    const ring = new Ring(members, DEFAULT_RING_OPTIONS);
    const counts = new Map<string, number>();
    for (let i = 0; i < 100_000; i++) {
      const owner = ring.ownerOf(`user-${i}`).id;
      counts.set(owner, (counts.get(owner) ?? 0) + 1);
    }
    expect(counts.size).toBe(6);
    for (const [member, count] of counts) {
      expect(Math.abs(count / (100_000 / 6) - 1), member).toBeLessThan(0.1);
    }
  });

  it('remembers owners in bounded generations without changing any answer', () => {
    const small = new Ring(members, { vnodes: DEFAULT_RING_OPTIONS.vnodes, cacheSize: 7 });
    const large = new Ring(members, DEFAULT_RING_OPTIONS);
    // Repeats, interleaved, so users are found in the recent and the older generation and
    // looked up afresh after both have turned over.
    for (let round = 0; round < 3; round++) {
      for (let i = 0; i < 500; i++) {
        const user = `u${(i * 7 + round) % 40}-${i % 3 === 0 ? i : 0}`;
        expect(small.ownerOf(user).id, user).toBe(large.ownerOf(user).id);
      }
    }
    const generations = small as unknown as { recent: Map<string, unknown>; older: Map<string, unknown> };
    expect(generations.recent.size).toBeLessThanOrEqual(7);
    expect(generations.older.size).toBeLessThanOrEqual(7);
  });

  it('is the same on every member, whatever order members are listed in', () => {
    const a = new Ring(members);
    const b = new Ring([...members].reverse());
    for (let i = 0; i < 2000; i++) expect(a.ownerOf(`u${i}`).id).toBe(b.ownerOf(`u${i}`).id);
  });

  it('moves only the users of a member that leaves (consistent hashing)', () => {
    const before = new Ring(members);
    const after = new Ring(members.filter((m) => m.id !== 'node-b/1'));
    let moved = 0;
    for (let i = 0; i < 20_000; i++) {
      const was = before.ownerOf(`u${i}`).id;
      const now = after.ownerOf(`u${i}`).id;
      if (was !== now) {
        moved++;
        expect(was).toBe('node-b/1');
      }
    }
    expect(moved / 20_000).toBeGreaterThan(0.1);
    expect(moved / 20_000).toBeLessThan(0.25);
  });

  it('parses static peers and derives every worker\'s peer port from the node\'s API port', () => {
    expect(staticMembers('a@10.0.0.1:9098, b@[::1]:9198', 2, 1000)).toEqual([
      { id: 'a/0', nodeId: 'a', address: '10.0.0.1:10098' },
      { id: 'a/1', nodeId: 'a', address: '10.0.0.1:10099' },
      { id: 'b/0', nodeId: 'b', address: '[::1]:10198' },
      { id: 'b/1', nodeId: 'b', address: '[::1]:10199' },
    ]);
    expect(() => staticMembers('nope', 2, 1000)).toThrow(/nodeId@host:port/);
  });
});
