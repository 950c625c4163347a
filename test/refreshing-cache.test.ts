import { describe, expect, it } from 'vitest';
import { RefreshingCache } from '../src/accounts/refreshing-cache.js';

describe('RefreshingCache', () => {
  function cache(maxEntries: number) {
    const clock = { ms: 1_000_000 };
    const loads: string[] = [];
    const c = new RefreshingCache<{ id: string }>({
      load: async (id) => {
        loads.push(id);
        return { id };
      },
      clock: () => clock.ms,
      maxEntries,
      maxMissing: 10,
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

  it('answers a due entry from memory and reloads it once in the background', async () => {
    const { c, clock, loads } = cache(10);
    await c.get('a');
    clock.ms += 60_000;
    expect(c.getFound('a')).toEqual({ id: 'a' });
    expect(c.getFound('a')).toEqual({ id: 'a' });
    await new Promise((r) => setImmediate(r));
    expect(loads).toEqual(['a', 'a']);
  });
});
