import { describe, expect, it } from 'vitest';
import { defaultConfig } from '../src/config/defaults.js';
import { loadConfig } from '../src/config/load.js';
import { decayedDebt, decide, expectedAdmittedFromRest, newUserState, type UserState } from '../src/node/engine.js';
import { resolveLimits, type EffectiveLimits } from '../src/node/limits.js';
import { TierPolicy } from '../src/node/tiers.js';
import { pick, randomInt, seededRandom } from './helpers/random.js';

const DAY = 86_400_000;
const T0 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

function limitsOf(overrides: Partial<EffectiveLimits> = {}): EffectiveLimits {
  return {
    tier: 't', burst: 10, perMinute: 60, perHour: 1000, perDay: 10_000, throttlePerMinute: 6, quotaEnabled: true,
    overage: 'block', graceMs: 300_000, minuteMs: 60_000, hourMs: 3_600_000, dayMs: DAY, ...overrides,
  };
}

function configWith(env: Record<string, string> = {}) {
  return loadConfig(env, '/nonexistent-dir').config;
}

describe('engine', () => {
  it('admits B back-to-back from rest, then one per 60/R seconds', () => {
    const state = newUserState();
    const limits = limitsOf();
    const allowed = Array.from({ length: 70 }, () => decide(state, limits, 1, T0).allowed).filter(Boolean).length;
    expect(allowed).toBe(10);
    // Over the next minute the bucket refills one request per second.
    let later = 0;
    for (let t = 1; t <= 50; t++) if (decide(state, limits, 1, T0 + t * 1000).allowed) later++;
    expect(later).toBe(50);
    expect(decide(state, limits, 1, T0 + 50_000).code).toBe('RATE_LIMITED');
  });

  it('leaves the state untouched on a denial and on a peek', () => {
    const state = newUserState();
    const limits = limitsOf({ burst: 2 });
    decide(state, limits, 2, T0);
    const before = { ...state };
    expect(decide(state, limits, 1, T0).allowed).toBe(false);
    expect(decide(state, limits, 0, T0 + 5000).allowed).toBe(true);
    expect(state).toEqual(before);
  });

  it('charges nothing of an all-or-nothing request that one limit refuses', () => {
    const state = newUserState();
    const limits = limitsOf({ burst: 100, perMinute: 100, perHour: 5 });
    expect(decide(state, limits, 4, T0).allowed).toBe(true);
    const denied = decide(state, limits, 2, T0);
    expect(denied).toMatchObject({ allowed: false, limitedBy: 'hour', charged: 0 });
    expect(denied.limits.minute.remaining).toBe(96);
    expect(decide(state, limits, 1, T0).allowed).toBe(true);
  });

  it('counts a fresh window at the exact boundary, not a millisecond before', () => {
    const state = newUserState();
    const limits = limitsOf({ burst: 10, perMinute: 5 });
    const minuteEnd = T0 + 60_000;
    expect(decide(state, limits, 5, minuteEnd - 1_000).allowed).toBe(true);
    expect(decide(state, limits, 1, minuteEnd - 1).limitedBy).toBe('minute');
    expect(decide(state, limits, 1, minuteEnd)).toMatchObject({ allowed: true });
    expect(state.minuteCount).toBe(1);
  });

  it('never admits a cost above a limit\'s size, and says so with retry_after_ms null', () => {
    const state = newUserState();
    const decision = decide(state, limitsOf(), 11, T0);
    expect(decision).toMatchObject({ allowed: false, limitedBy: 'burst', retryAfterMs: null, code: 'RATE_LIMITED' });
  });

  it('retry_after_ms is the earliest time the same request passes (generated states)', () => {
    const rand = seededRandom(7);
    const modes = ['block', 'allow', 'throttle'] as const;
    let checkedDenials = 0;
    for (let round = 0; round < 400; round++) {
      const limits = limitsOf({
        burst: randomInt(rand, 1, 8),
        perMinute: randomInt(rand, 1, 12),
        perHour: randomInt(rand, 5, 40),
        perDay: randomInt(rand, 5, 60),
        throttlePerMinute: randomInt(rand, 1, 4),
        overage: pick(rand, modes),
        graceMs: pick(rand, [0, 0, 45_000]),
      });
      const state = newUserState();
      let now = T0 + randomInt(rand, 0, 3) * 3_500_000;
      for (let i = 0; i < 60; i++) {
        now += pick(rand, [0, 0, 1, 250, 999, 4000, 20_000, 61_000]);
        const cost = randomInt(rand, 0, 4);
        const snapshot: UserState = { ...state };
        const decision = decide(state, limits, cost, now);
        if (decision.allowed || decision.retryAfterMs === null) continue;
        checkedDenials++;
        const at = now + decision.retryAfterMs;
        expect(decide({ ...snapshot }, limits, cost, at).allowed, `passes at +${decision.retryAfterMs}`).toBe(true);
        if (decision.retryAfterMs > 0) {
          expect(decide({ ...snapshot }, limits, cost, at - 1).allowed, `not before +${decision.retryAfterMs}`).toBe(false);
        }
      }
    }
    expect(checkedDenials).toBeGreaterThan(500);
  });

  it('remaining never goes negative and usage never exceeds a limit outside grace and overage', () => {
    const rand = seededRandom(11);
    const limits = limitsOf({ burst: 4, perMinute: 6, perHour: 20, perDay: 30, graceMs: 0 });
    const state = newUserState();
    let now = T0;
    for (let i = 0; i < 5000; i++) {
      now += randomInt(rand, 0, 3000);
      const d = decide(state, limits, randomInt(rand, 0, 3), now);
      for (const s of Object.values(d.limits)) expect(s.remaining).toBeGreaterThanOrEqual(0);
      expect(state.minuteCount).toBeLessThanOrEqual(6);
      expect(state.hourCount).toBeLessThanOrEqual(20);
      expect(state.dayCount).toBeLessThanOrEqual(30);
    }
  });

  it('decayedDebt repays R units per ms and never goes below zero or backwards in time', () => {
    expect(decayedDebt(600_000, T0, T0 + 1000, 60)).toBe(540_000);
    expect(decayedDebt(600_000, T0, T0 + 10_000, 60)).toBe(0);
    expect(decayedDebt(600_000, T0, T0 + 10 * DAY, 1_000_000_000)).toBe(0);
    expect(decayedDebt(600_000, T0, T0 - 5000, 60)).toBe(600_000);
  });

  it('the closed form for an instant burst from rest matches the engine, for every overage mode', () => {
    const rand = seededRandom(3);
    for (let round = 0; round < 500; round++) {
      const limits = limitsOf({
        burst: randomInt(rand, 1, 30),
        perMinute: randomInt(rand, 1, 30),
        perHour: randomInt(rand, 1, 40),
        perDay: randomInt(rand, 1, 40),
        throttlePerMinute: randomInt(rand, 1, 10),
        quotaEnabled: rand() < 0.8,
        overage: pick(rand, ['block', 'allow', 'throttle'] as const),
        graceMs: pick(rand, [0, 300_000]),
      });
      const requests = randomInt(rand, 1, 80);
      const cost = randomInt(rand, 1, 3);
      const state = newUserState();
      let admitted = 0;
      for (let i = 0; i < requests; i++) if (decide(state, limits, cost, T0 + 5).allowed) admitted++;
      expect(expectedAdmittedFromRest(limits, requests, cost), JSON.stringify({ limits, requests, cost })).toBe(admitted);
    }
  });
});

describe('limits from tiers, overrides and disabled tiers', () => {
  it('resolves a tier with per-user overrides of any figure', () => {
    const config = configWith();
    const limits = resolveLimits(config, 'basic', { burst_limit: 3, requests_per_day: 50 });
    expect(limits).toMatchObject({ burst: 3, perMinute: 60, perHour: 1000, perDay: 50, throttlePerMinute: 6 });
    const state = newUserState();
    expect(Array.from({ length: 10 }, () => decide(state, limits, 1, T0).allowed).filter(Boolean)).toHaveLength(3);
  });

  it('keeps the tier\'s throttle share when R is overridden', () => {
    const limits = resolveLimits(configWith(), 'premium', { requests_per_minute: 1000 });
    expect(limits.throttlePerMinute).toBe(100);
  });

  it('places unknown users in the hinted tier when enabled, else in default_tier', () => {
    const tiers = new TierPolicy(configWith({ USER_TIER_PREMIUM_ENABLED: 'false' }));
    expect(tiers.tierForHint('enterprise')).toBe('enterprise');
    expect(tiers.tierForHint('premium')).toBe('basic');
    expect(tiers.tierForHint(undefined)).toBe('basic');
    expect(tiers.limitsOf('premium').tier).toBe('basic');
    expect(tiers.limitsOf('enterprise').burst).toBe(200);
  });

  it('uses the seed\'s figures by default', () => {
    const raw = defaultConfig();
    expect(raw.rate_limits.basic).toEqual({ requests_per_minute: 60, requests_per_hour: 1000, requests_per_day: 10000, burst_limit: 10 });
    const limits = new TierPolicy(configWith()).limitsOf('enterprise');
    expect(limits).toMatchObject({ burst: 200, perMinute: 1000, perHour: 20000, perDay: 200000, overage: 'block', graceMs: 300_000, dayMs: DAY });
  });
});
