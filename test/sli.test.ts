import { describe, expect, it } from 'vitest';
import { DecisionSli } from '../src/observability/sli.js';

describe('decision SLI window', () => {
  it('computes percentiles and the within-timeout share from what was recorded', () => {
    const now = 1_000_000;
    const sli = new DecisionSli(5, () => now);
    for (let i = 0; i < 98; i++) sli.record(0.01);
    sli.record(2);
    sli.record(50);
    const snap = sli.snapshot();
    expect(snap.decisions).toBe(100);
    expect(snap.p50Ms).toBeGreaterThanOrEqual(0.01);
    expect(snap.p50Ms).toBeLessThan(0.0107);
    expect(snap.p99Ms).toBeGreaterThanOrEqual(2);
    expect(snap.p99Ms).toBeLessThan(2.15);
    expect(snap.withinTimeoutRatio).toBeCloseTo(0.99, 5);
  });

  it('forgets decisions older than the window', () => {
    let now = 1_000_000;
    const sli = new DecisionSli(5, () => now, 300_000, 10_000);
    sli.record(100);
    now += 150_000;
    sli.record(0.5);
    expect(sli.snapshot().decisions).toBe(2);
    now += 160_000;
    const snap = sli.snapshot();
    expect(snap.decisions).toBe(1);
    expect(snap.withinTimeoutRatio).toBe(1);
    now += 400_000;
    expect(sli.snapshot()).toMatchObject({ decisions: 0, p50Ms: null, p99Ms: null });
  });

  it('reuses a slot after the window wraps around', () => {
    let now = 0;
    const sli = new DecisionSli(5, () => now, 30_000, 10_000);
    sli.record(1);
    now = 30_000; // same slot index, a new period
    sli.record(3);
    expect(sli.snapshot().decisions).toBe(1);
  });
});
