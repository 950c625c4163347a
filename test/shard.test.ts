import { describe, expect, it } from 'vitest';
import { loadConfig } from '../src/config/load.js';
import { resolveLimits } from '../src/node/limits.js';
import { Shard } from '../src/node/shard.js';

const LIMITS = resolveLimits(loadConfig({}, '/nonexistent').config, 'basic');

describe('Shard', () => {
  it('evicts the user decided longest ago', () => {
    const shard = new Shard({ maxUsers: 2, tracking: false, maxEvictedDirty: 10 });
    const t = 1_000_000;
    shard.decide('a', LIMITS, 1, t);
    shard.decide('b', LIMITS, 1, t);
    shard.decide('a', LIMITS, 1, t + 1);
    shard.decide('c', LIMITS, 1, t + 2);
    expect(shard.peek('b')).toBeUndefined();
    expect(shard.peek('a')?.minuteCount).toBe(2);
    expect(shard.size).toBe(2);
  });

  it('keeps an evicted user with unflushed changes aside and revives it, counters intact', () => {
    const shard = new Shard({ maxUsers: 1, tracking: true, maxEvictedDirty: 10 });
    const t = 1_000_000;
    shard.decide('a', LIMITS, 3, t);
    shard.decide('b', LIMITS, 1, t);
    expect(shard.evictedDirty.has('a')).toBe(true);
    shard.decide('a', LIMITS, 1, t + 10);
    expect(shard.peek('a')?.minuteCount).toBe(4);
    expect(shard.dirty.get('a')?.pendingMinute).toBe(4);
  });
});
