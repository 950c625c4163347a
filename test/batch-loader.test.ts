import { afterEach, describe, expect, it, vi } from 'vitest';
import { BatchLoader } from '../src/accounts/batch-loader.js';

describe('BatchLoader', () => {
  it('sends the ids of one turn as one batch, each id once, and answers every caller', async () => {
    const calls: string[][] = [];
    const loader = new BatchLoader<string>({
      loadMany: async (ids) => {
        calls.push(ids);
        return new Map(ids.filter((id) => id.startsWith('known')).map((id) => [id, `value of ${id}`]));
      },
    });
    const answers = await Promise.all([loader.load('known-a'), loader.load('other'), loader.load('known-a'), loader.load('known-b')]);
    expect(calls).toEqual([['known-a', 'other', 'known-b']]);
    expect(answers).toEqual(['value of known-a', null, 'value of known-a', 'value of known-b']);
    // A later turn is a new batch.
    expect(await loader.load('known-c')).toBe('value of known-c');
    expect(calls).toHaveLength(2);
  });

  afterEach(() => vi.useRealTimers());

  it('gathers background loads over several turns into one batch, and a foreground load takes them along', async () => {
    vi.useFakeTimers();
    const calls: string[][] = [];
    const loader = new BatchLoader<string>({ backgroundWaitMs: 100, loadMany: async (ids) => (calls.push(ids), new Map(ids.map((id) => [id, id]))) });
    const gathered = [loader.load('a', true)];
    await vi.advanceTimersByTimeAsync(40);
    gathered.push(loader.load('b', true));
    await vi.advanceTimersByTimeAsync(40);
    gathered.push(loader.load('c', true));
    expect(calls).toEqual([]);
    await vi.advanceTimersByTimeAsync(20);
    expect(await Promise.all(gathered)).toEqual(['a', 'b', 'c']);
    expect(calls).toEqual([['a', 'b', 'c']]);

    const waiting = loader.load('d', true);
    await vi.advanceTimersByTimeAsync(10);
    const both = Promise.all([loader.load('e'), waiting]);
    await vi.advanceTimersByTimeAsync(1);
    expect(await both).toEqual(['e', 'd']);
    expect(calls).toEqual([['a', 'b', 'c'], ['d', 'e']]);
    // Nothing left behind: the background timer went with the foreground batch.
    await vi.advanceTimersByTimeAsync(200);
    expect(calls).toHaveLength(2);
  });

  it('sends background loads at once when they fill a batch', async () => {
    vi.useFakeTimers();
    const sizes: number[] = [];
    const loader = new BatchLoader<number>({ maxBatch: 3, backgroundWaitMs: 1000, loadMany: async (ids) => (sizes.push(ids.length), new Map()) });
    const all = Array.from({ length: 3 }, (_, i) => loader.load(`id-${i}`, true));
    await vi.advanceTimersByTimeAsync(1);
    expect(sizes).toEqual([3]);
    await Promise.all(all);
  });

  it('splits a turn into batches of at most maxBatch', async () => {
    const sizes: number[] = [];
    const loader = new BatchLoader<number>({ maxBatch: 3, loadMany: async (ids) => (sizes.push(ids.length), new Map()) });
    await Promise.all(Array.from({ length: 7 }, (_, i) => loader.load(`id-${i}`)));
    expect(sizes).toEqual([3, 3, 1]);
  });

  it('rejects every caller of a failed batch, and only those', async () => {
    const loader = new BatchLoader<number>({
      maxBatch: 2,
      loadMany: async (ids) => {
        if (ids.includes('bad')) throw new Error('database away');
        return new Map(ids.map((id) => [id, 1]));
      },
    });
    const results = await Promise.allSettled([loader.load('bad'), loader.load('x'), loader.load('y'), loader.load('bad')]);
    expect(results.map((r) => r.status)).toEqual(['rejected', 'rejected', 'fulfilled', 'rejected']);
    expect((results[0] as PromiseRejectedResult).reason).toEqual(new Error('database away'));
  });

  it('rejects the callers of a store that throws instead of rejecting', async () => {
    const loader = new BatchLoader<number>({
      loadMany: () => {
        throw new Error('not even a promise');
      },
    });
    await expect(loader.load('a')).rejects.toThrow('not even a promise');
  });
});
