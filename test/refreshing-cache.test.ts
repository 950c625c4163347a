import { describe, expect, it } from 'vitest';
import { RefreshingCache } from '../src/accounts/refreshing-cache.js';

describe('RefreshingCache', () => {
  /** Ids starting with "x" do not exist. */
  function cache(maxEntries: number, maxMissing = 10) {
    const clock = { ms: 1_000_000 };
    const loads: string[] = [];
    const c = new RefreshingCache<{ id: string }>({
      load: async (id) => {
        loads.push(id);
        return id.startsWith('x') ? null : { id };
      },
      clock: () => clock.ms,
      maxEntries,
      maxMissing,
      refreshAfterMs: 60_000,
      missingTtlMs: 5_000,
      retryAfterMs: 1_000,
    });
    return { c, clock, loads };
  }

  it('orders found entries for eviction by their use, to the second', async () => {
    const { c, clock, loads } = cache(2);
    await c.get('a');
    await c.get('b');
    // Used within the second it was loaded: a keeps its place and is the oldest.
    expect(c.getFound('a')).toEqual({ id: 'a' });
    await c.get('c');
    expect(c.getFound('a')).toBeUndefined();
    expect(c.getFound('b')).toEqual({ id: 'b' });

    // A use a second later moves b to the front: c is evicted next.
    clock.ms += 1000;
    expect(c.getFound('b')).toEqual({ id: 'b' });
    await c.get('d');
    expect(c.getFound('c')).toBeUndefined();
    expect(c.getFound('b')).toEqual({ id: 'b' });
    expect(loads).toEqual(['a', 'b', 'c', 'd']);
  });

  it('evicts the missing id asked for longest ago, and re-checks one once it is due', async () => {
    const { c, clock, loads } = cache(10, 2);
    expect(await c.get('xa')).toEqual({ state: 'missing' });
    expect(await c.get('xb')).toEqual({ state: 'missing' });
    expect(c.get('xa')).toEqual({ state: 'missing' });
    await c.get('xc');
    expect(c.size.missing).toBe(2);
    // xb went, xa (asked again) stayed: answered without a load.
    expect(c.get('xa')).toEqual({ state: 'missing' });
    await c.get('xb');
    expect(loads).toEqual(['xa', 'xb', 'xc', 'xb']);

    // Past the missing TTL: still answered from memory, with one re-check in the background.
    clock.ms += 5_000;
    expect(c.get('xb')).toEqual({ state: 'missing' });
    expect(c.get('xb')).toEqual({ state: 'missing' });
    await new Promise((r) => setImmediate(r));
    expect(loads).toEqual(['xa', 'xb', 'xc', 'xb', 'xb']);
  });

  it('answers a due entry from memory and reloads it once in the background', async () => {
    const { c, clock, loads } = cache(10);
    await c.get('a');
    clock.ms += 60_000;
    expect(c.getFound('a')).toEqual({ id: 'a' });
    expect(c.getFound('a')).toEqual({ id: 'a' });
    await new Promise((r) => setImmediate(r));
    expect(loads).toEqual(['a', 'a']);
  });

  it('drops the entries a secondary key names, and keeps its index no larger than the cache', async () => {
    const clock = { ms: 1_000_000 };
    let version = 1;
    const owners: Record<string, string> = { k1: 'alice', k2: 'alice', k3: 'bob', k4: 'bob', k5: 'carol' };
    const c = new RefreshingCache<{ id: string; owner: string; version: number }>({
      load: async (id) => ({ id, owner: owners[id]!, version }),
      clock: () => clock.ms,
      maxEntries: 3,
      maxMissing: 10,
      refreshAfterMs: 60_000,
      missingTtlMs: 5_000,
      retryAfterMs: 1_000,
      indexBy: (v) => [`owner:${v.owner}`, `id:${v.id}`],
    });
    for (const id of ['k1', 'k2', 'k3']) await c.get(id);
    expect(c.size).toEqual({ found: 3, missing: 0, indexed: 5 });
    c.deleteIndexed('owner:alice');
    expect([c.getFound('k1'), c.getFound('k2'), c.getFound('k3')?.id]).toEqual([undefined, undefined, 'k3']);
    expect(c.size).toEqual({ found: 1, missing: 0, indexed: 2 });
    // Evicted and replaced entries leave the index as well.
    for (const id of ['k4', 'k5', 'k1', 'k2']) await c.get(id);
    expect(c.getFound('k3')).toBeUndefined();
    expect(c.size).toEqual({ found: 3, missing: 0, indexed: 5 });
    version = 2;
    clock.ms += 60_000;
    c.getFound('k5');
    await new Promise((r) => setImmediate(r));
    expect(c.getFound('k5')?.version).toBe(2);
    expect(c.size.indexed).toBe(5);
    c.deleteIndexed('id:k5');
    c.deleteIndexed('owner:nobody');
    expect(c.size).toEqual({ found: 2, missing: 0, indexed: 3 });
    c.clear();
    expect(c.size).toEqual({ found: 0, missing: 0, indexed: 0 });
  });

  it('does not cache a load overtaken by a deletion of its id or of its secondary key, and caches the others', async () => {
    const releases = new Map<string, () => void>();
    const c = new RefreshingCache<{ id: string; owner: string }>({
      load: (id) => new Promise((resolve) => releases.set(id, () => resolve({ id, owner: id.startsWith('a') ? 'alice' : 'bob' }))),
      clock: () => 1_000_000,
      maxEntries: 10,
      maxMissing: 10,
      refreshAfterMs: 60_000,
      missingTtlMs: 5_000,
      retryAfterMs: 1_000,
      indexBy: (v) => [`owner:${v.owner}`],
    });
    const pending = ['a1', 'a2', 'b1', 'b2'].map((id) => c.get(id));
    c.delete('a1'); // its own id
    c.deleteIndexed('owner:bob'); // b1's and b2's owner, not yet known to the cache
    c.delete('zz'); // someone else
    for (const release of releases.values()) release();
    await Promise.all(pending);
    expect(['a1', 'a2', 'b1', 'b2'].map((id) => c.getFound(id)?.id)).toEqual([undefined, 'a2', undefined, undefined]);
    // Once nothing is in flight, earlier deletions no longer matter.
    releases.clear();
    const again = c.get('b1');
    releases.get('b1')!();
    await again;
    expect(c.getFound('b1')?.id).toBe('b1');
  });
});
