import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { computeAccuracy, replayReference, type ObservedDecision } from '../bench/reference/accuracy.js';
import { ReferenceModel, type RefDecision, type RefLimitName, type RefLimits } from '../bench/reference/model.js';
import { pick, randomInt, seededRandom } from './helpers/random.js';

/**
 * The accuracy benchmark's judge (bench/reference) against timelines computed by hand from
 * docs/semantics.md. Arithmetic is in the comments; M = minuteMs, debts in units
 * (a request of cost c adds c × M, the bucket repays R units per ms, admits while
 * debt + c × M ≤ B × M).
 */

const T0 = 1_767_225_600_000; // 2026-01-01T00:00:00Z: a UTC day, hour and minute boundary
const MIN = 60_000;
const HOUR = 3_600_000;
const DAY = 86_400_000;

function limitsOf(overrides: Partial<RefLimits> = {}): RefLimits {
  return {
    burst: 10, perMinute: 60, perHour: 1000, perDay: 10_000, throttlePerMinute: 6, quotaEnabled: true,
    overage: 'block', graceMs: 0, minuteMs: MIN, hourMs: HOUR, dayMs: DAY, ...overrides,
  };
}

/** One user's timeline; `at` is relative to T0. */
function user(limits: RefLimits, id = 'u') {
  const model = new ReferenceModel();
  return {
    model,
    at: (t: number, cost = 1): RefDecision => model.decide(id, limits, cost, T0 + t),
    peekAt: (t: number, cost = 1): RefDecision => model.peek(id, limits, cost, T0 + t),
  };
}

function denial(limitedBy: RefLimitName, retryAfterMs: number | null) {
  return { allowed: false, code: limitedBy === 'day' ? 'QUOTA_EXCEEDED' : 'RATE_LIMITED', limitedBy, retryAfterMs };
}

describe('reference model: burst bucket', () => {
  it('admits B back-to-back from rest, then one every 60/R s', () => {
    // B = 5, R = 30: capacity 5 × 60 000 = 300 000 units, repaid 30 per ms; 60/R s = 2 000 ms.
    const u = user(limitsOf({ burst: 5, perMinute: 30 }));
    const first = u.at(0);
    expect(first).toMatchObject({ allowed: true, code: 'OK', limitedBy: null, retryAfterMs: 0, quotaUsed: 1, charged: 1 });
    // debt 60 000 → (300 000 − 60 000) / 60 000 = 4 left; minute 30 − 1; hour 1000 − 1; day 10 000 − 1.
    expect(first.remaining).toEqual({ burst: 4, minute: 29, hour: 999, day: 9999 });
    for (let i = 2; i <= 5; i++) expect(u.at(0).allowed).toBe(true);
    // debt 300 000; a 6th needs debt ≤ 240 000: repay 60 000 at 30/ms = 2 000 ms.
    expect(u.at(0)).toMatchObject(denial('burst', 2000));
    expect(u.at(0).remaining).toEqual({ burst: 0, minute: 25, hour: 995, day: 9995 });
    // At 1 999 the debt is 300 000 − 59 970 = 240 030: still 30 units (1 ms) short.
    expect(u.at(1999)).toMatchObject(denial('burst', 1));
    expect(u.at(2000)).toMatchObject({ allowed: true, code: 'OK' }); // debt 240 000 + 60 000 = 300 000
    expect(u.at(2000)).toMatchObject(denial('burst', 2000));
    expect(u.at(3999)).toMatchObject(denial('burst', 1));
    expect(u.at(4000).allowed).toBe(true);
    // At 10 000 the debt is 300 000 − 30 × 6 000 = 120 000: 3 whole tokens, one taken → 2 left.
    expect(u.at(10_000).remaining.burst).toBe(2);
    expect(u.at(10_000).remaining.minute).toBe(30 - 9);
  });

  it('refills R per shortened minute window', () => {
    // M = 2 000 ms, B = 4, R = 8: a request is 2 000 units, the bucket repays 8 per ms,
    // so one request per 2 000 / 8 = 250 ms after 4 back-to-back.
    const u = user(limitsOf({ burst: 4, perMinute: 8, perHour: 100, minuteMs: 2000, hourMs: 10_000, dayMs: 20_000 }));
    for (let i = 0; i < 4; i++) expect(u.at(0).allowed).toBe(true);
    expect(u.at(0)).toMatchObject(denial('burst', 250)); // debt 8 000 − 6 000 = 2 000 units → 250 ms
    expect(u.at(250).allowed).toBe(true);
    expect(u.at(400)).toMatchObject(denial('burst', 100)); // debt 8 000 − 8 × 150 = 6 800 → 800 units short
    // At 500: 6 800 − 8 × 100 = 6 000 + 2 000 = 8 000: the 6th admission, the minute has 8 − 6 left.
    expect(u.at(500)).toMatchObject({ allowed: true, remaining: { burst: 0, minute: 2 } });
  });
});

describe('reference model: fixed windows', () => {
  it('minute window: 59 999 is still the old window, 60 000 the new one', () => {
    // B = R = 3: burst debt after 3 at t = 0 is 180 000; by 59 999 it is 180 000 − 3 × 59 999 = 3,
    // and 3 + 60 000 ≤ 180 000, so only the minute window (3 + 1 > 3) refuses.
    const u = user(limitsOf({ burst: 3, perMinute: 3 }));
    for (let i = 0; i < 3; i++) expect(u.at(0).allowed).toBe(true);
    expect(u.at(59_999)).toMatchObject(denial('minute', 1));
    const next = u.at(60_000);
    expect(next).toMatchObject({ allowed: true, code: 'OK' });
    expect(next.remaining.minute).toBe(2);
    expect(next.remaining.hour).toBe(1000 - 4);
  });

  it('hour window: 3 599 999 vs 3 600 000', () => {
    const u = user(limitsOf({ burst: 10, perMinute: 10, perHour: 4 }));
    expect(u.at(0, 4).remaining.hour).toBe(0);
    // Minute 59 of the hour is a fresh minute and the bucket is full; only the hour refuses.
    expect(u.at(3_599_999)).toMatchObject(denial('hour', 1));
    expect(u.at(HOUR)).toMatchObject({ allowed: true, remaining: { hour: 3 } });
  });

  it('day window (block, no grace): 86 399 999 vs 86 400 000', () => {
    const u = user(limitsOf({ perDay: 3 }));
    expect(u.at(0, 3)).toMatchObject({ allowed: true, quotaUsed: 3, remaining: { day: 0 } });
    expect(u.at(DAY - 1)).toMatchObject({ ...denial('day', 1), quotaUsed: 3 });
    expect(u.at(DAY)).toMatchObject({ allowed: true, code: 'OK', quotaUsed: 1, remaining: { day: 2 } });
  });

  it('windows are aligned to the epoch, not to the first request', () => {
    // B = R = 2. First request 30 s into the minute: debt 60 000.
    const u = user(limitsOf({ burst: 2, perMinute: 2 }));
    expect(u.at(30_000).allowed).toBe(true);
    // At 59 000: debt 60 000 − 2 × 29 000 = 2 000; + 60 000 = 62 000 ≤ 120 000; minute 2 ≤ 2.
    expect(u.at(59_000)).toMatchObject({ allowed: true, remaining: { minute: 0 } });
    // At 59 500: burst 62 000 − 1 000 + 60 000 = 121 000 > 120 000 (1 000 units = 500 ms short);
    // minute refuses until the epoch-aligned boundary 60 000 (not 90 000). Both lift at
    // 60 000: a tie, so the longer window (minute) is named.
    expect(u.at(59_500)).toMatchObject(denial('minute', 500));
    expect(u.at(60_000)).toMatchObject({ allowed: true, remaining: { burst: 0, minute: 1 } });
  });
});

describe('reference model: all or nothing', () => {
  it('charges cost > 1 to every limit at once, and nothing on a denial', () => {
    // B = R = 10 (capacity 600 000 units, repaid 10 per ms), H = 100, D = 1000.
    const u = user(limitsOf({ burst: 10, perMinute: 10, perHour: 100, perDay: 1000 }));
    const eight = u.at(0, 8);
    expect(eight).toMatchObject({ allowed: true, code: 'OK', quotaUsed: 8, charged: 8 });
    expect(eight.remaining).toEqual({ burst: 2, minute: 2, hour: 92, day: 992 });
    // cost 3: burst 480 000 + 180 000 = 660 000 > 600 000 (60 000 short → lifts at 6 000);
    // minute 8 + 3 > 10 (lifts at 60 000). The minute lifts last; at 6 000 it still
    // refuses, so the request passes first at 60 000.
    const three = u.at(0, 3);
    expect(three).toMatchObject({ ...denial('minute', 60_000), quotaUsed: 8, charged: 0 });
    expect(three.remaining).toEqual({ burst: 2, minute: 2, hour: 92, day: 992 });
    // Nothing was charged: cost 2 still fits exactly.
    expect(u.at(0, 2)).toMatchObject({ allowed: true, remaining: { burst: 0, minute: 0, hour: 90, day: 990 }, quotaUsed: 10 });
    // At 60 000 the debt 600 000 is repaid (10 × 60 000) and the minute is new: cost 10 fits.
    expect(u.at(60_000, 10)).toMatchObject({ allowed: true, remaining: { burst: 0, minute: 0 } });
  });

  it('a denial by the day limit alone charges nothing either', () => {
    const u = user(limitsOf({ perDay: 5 }));
    expect(u.at(0, 3).allowed).toBe(true);
    // 3 + 3 > 5 with block and no grace: until the next day window.
    expect(u.at(1000, 3)).toMatchObject({ ...denial('day', DAY - 1000), quotaUsed: 3 });
    expect(u.at(1000, 2)).toMatchObject({ allowed: true, code: 'OK', quotaUsed: 5, remaining: { day: 0, minute: 55 } });
  });
});

describe('reference model: peeks (cost 0)', () => {
  it('answers a user it has never seen without taking a place', () => {
    const u = user(limitsOf({ burst: 2, perMinute: 2 }));
    const peek = u.at(0, 0);
    expect(peek).toEqual({
      allowed: true, code: 'OK', limitedBy: null, retryAfterMs: 0, quotaUsed: 0, charged: 0, at: T0,
      remaining: { burst: 2, minute: 2, hour: 1000, day: 10_000 },
    });
    expect(u.model.userCount).toBe(0);
  });

  it('answers as cost 1 would, and charges nothing', () => {
    // B = R = 2: after two at 0 the debt is 120 000.
    const u = user(limitsOf({ burst: 2, perMinute: 2 }));
    u.at(0, 0);
    u.at(0, 0);
    expect(u.at(0).allowed).toBe(true); // the peeks took nothing
    expect(u.at(0).allowed).toBe(true);
    // A third: burst 120 000 + 60 000 > 120 000, 60 000 short = 30 000 ms at 2/ms; minute 3 > 2
    // until 60 000, which lifts last.
    const peek = u.at(10_000, 0);
    expect(peek).toMatchObject({ ...denial('minute', 50_000), charged: 0, quotaUsed: 2 });
    expect(u.at(10_000, 1)).toEqual(peek);
  });

  it('never starts a grace period', () => {
    // D = 1, grace 10 s. A peek after the quota is used answers GRACE but starts nothing.
    const u = user(limitsOf({ perDay: 1, graceMs: 10_000 }));
    expect(u.at(0).code).toBe('OK');
    expect(u.at(1000, 0)).toMatchObject({ allowed: true, code: 'GRACE', quotaUsed: 1, charged: 0 });
    // Grace starts with the first admitted request, at 5 000: GRACE until 15 000 exclusive.
    expect(u.at(5000)).toMatchObject({ allowed: true, code: 'GRACE', quotaUsed: 2 });
    expect(u.at(14_999)).toMatchObject({ allowed: true, code: 'GRACE', quotaUsed: 3 });
    expect(u.at(15_000)).toMatchObject({ ...denial('day', DAY - 15_000), quotaUsed: 3 });
  });
});

describe('reference model: retry_after_ms', () => {
  it('is null when the request can never pass', () => {
    // cost > B: the bucket never holds 6 (R = 10 so the minute would admit 6).
    expect(user(limitsOf({ burst: 5, perMinute: 10 })).at(0, 6)).toMatchObject(denial('burst', null));
    // cost > R (B = 10 would admit it): the minute never admits 6.
    expect(user(limitsOf({ burst: 10, perMinute: 5 })).at(0, 6)).toMatchObject(denial('minute', null));
    // cost > H.
    expect(user(limitsOf({ burst: 10, perMinute: 10, perHour: 5 })).at(0, 6)).toMatchObject(denial('hour', null));
    // cost > D, block, no grace: every day window refuses it.
    expect(user(limitsOf({ perDay: 5 })).at(0, 6)).toMatchObject(denial('day', null));
    // cost > D and > T under throttle, no grace: every day window runs out and throttles it.
    expect(user(limitsOf({ perDay: 5, overage: 'throttle', throttlePerMinute: 1 })).at(0, 6)).toMatchObject(denial('day', null));
  });

  it('is not null for cost > D with grace or allow: each day window can admit it', () => {
    // Fresh user, D = 5, cost 6: the quota runs out, grace has not begun → GRACE at once.
    const grace = user(limitsOf({ perDay: 5, graceMs: 1000 }));
    expect(grace.at(0, 6)).toMatchObject({ allowed: true, code: 'GRACE', quotaUsed: 6 });
    // At 1 000 grace is over (0 + 1 000, exclusive) → block until the next day window, where
    // grace starts again. (The burst bucket also refuses: 360 000 − 10 000 + 360 000 > 600 000,
    // lifting at 12 000; the day lifts last.)
    expect(grace.at(1000, 6)).toMatchObject(denial('day', DAY - 1000));
    expect(grace.at(DAY, 6)).toMatchObject({ allowed: true, code: 'GRACE', quotaUsed: 6 });
    // allow: admitted as OVERAGE straight away.
    expect(user(limitsOf({ perDay: 5, overage: 'allow' })).at(0, 6)).toMatchObject({ allowed: true, code: 'OVERAGE', quotaUsed: 6 });
  });

  it('counts a grace period ending while waiting', () => {
    // B = R = 1 (one per minute), D = 1, grace 30 s, block.
    const u = user(limitsOf({ burst: 1, perMinute: 1, perDay: 1, graceMs: 30_000 }));
    expect(u.at(0).code).toBe('OK');
    // At 60 000 the bucket is full again and the minute new; the quota runs out → grace starts.
    expect(u.at(60_000)).toMatchObject({ allowed: true, code: 'GRACE', quotaUsed: 2 });
    // At 70 000: burst debt 60 000 − 10 000 = 50 000 → lifts at 120 000; minute lifts at
    // 120 000 (tie → minute). The day admits now (grace), but grace ends at 90 000, so at
    // 120 000 the quota blocks; the request passes first in the next day window.
    expect(u.at(70_000)).toMatchObject(denial('minute', DAY - 70_000));
    expect(u.at(80_000, 0)).toMatchObject(denial('minute', DAY - 80_000));
    expect(u.at(120_000)).toMatchObject(denial('day', DAY - 120_000));
  });

  it('is exact: no earlier time passes, and the retry time does (brute force, shortened windows)', () => {
    // Probes every ms with `peek`, which changes nothing. Windows are 100 / 300 / 600 ms so
    // a whole day window is cheap to scan.
    const rand = seededRandom(20260101);
    const base = { minuteMs: 100, hourMs: 300, dayMs: 600, burst: 3, perMinute: 4, perHour: 7, perDay: 9, throttlePerMinute: 1 };
    const profiles: RefLimits[] = [
      limitsOf({ ...base, overage: 'block', graceMs: 0 }),
      limitsOf({ ...base, overage: 'block', graceMs: 150 }),
      limitsOf({ ...base, overage: 'allow', graceMs: 0 }),
      limitsOf({ ...base, overage: 'throttle', graceMs: 0 }),
      limitsOf({ ...base, overage: 'throttle', graceMs: 120 }),
      limitsOf({ ...base, quotaEnabled: false }),
    ];
    let denials = 0;
    let nulls = 0;
    for (const limits of profiles) {
      const u = user(limits);
      let t = 0;
      for (let i = 0; i < 40; i++) {
        t += randomInt(rand, 0, 60);
        const cost = pick(rand, [0, 1, 1, 1, 2, 3, 4, 5, 8, 10]);
        const asked = Math.max(cost, 1);
        const d = u.at(t, cost);
        if (d.allowed) continue;
        denials += 1;
        // After three day windows every window is fresh and the bucket long refilled.
        const horizon = 3 * limits.dayMs;
        let firstPass: number | null = null;
        for (let wait = 0; wait <= horizon && firstPass === null; wait++) {
          if (u.peekAt(t + wait, asked).allowed) firstPass = wait;
        }
        expect({ t, cost, retryAfterMs: d.retryAfterMs }).toEqual({ t, cost, retryAfterMs: firstPass });
        if (firstPass === null) nulls += 1;
      }
    }
    expect(denials).toBeGreaterThan(50);
    expect(nulls).toBeGreaterThan(0);
  });
});

describe('reference model: grace', () => {
  // Shortened windows: minute 1 000, hour 10 000, day 20 000 ms; D = 2, grace 3 000 ms, block.
  const limits = limitsOf({ burst: 10, perMinute: 10, perHour: 100, perDay: 2, graceMs: 3000, minuteMs: 1000, hourMs: 10_000, dayMs: 20_000 });

  it('starts at the first admission that finds the quota run out, ends exclusive, restarts next day', () => {
    const u = user(limits);
    expect(u.at(0, 2)).toMatchObject({ allowed: true, code: 'OK', quotaUsed: 2, remaining: { day: 0 } });
    expect(u.at(500)).toMatchObject({ allowed: true, code: 'GRACE', quotaUsed: 3 }); // grace from 500
    expect(u.at(3499)).toMatchObject({ allowed: true, code: 'GRACE', quotaUsed: 4 }); // < 500 + 3 000
    expect(u.at(3500)).toMatchObject({ ...denial('day', 20_000 - 3500), quotaUsed: 4, remaining: { day: 0 } });
    expect(u.at(19_999)).toMatchObject(denial('day', 1));
    // Next day window: 0 + 3 > 2 runs out again and grace starts again, at 20 000.
    expect(u.at(20_000, 3)).toMatchObject({ allowed: true, code: 'GRACE', quotaUsed: 3 });
    expect(u.at(22_999)).toMatchObject({ allowed: true, code: 'GRACE', quotaUsed: 4 });
    expect(u.at(23_000)).toMatchObject({ ...denial('day', 40_000 - 23_000), quotaUsed: 4 });
  });

  it('is not started by a request another limit denies', () => {
    // B = R = 2 per 1 000 ms minute (a request is 1 000 units, repaid 2 per ms).
    const u = user({ ...limits, burst: 2, perMinute: 2 });
    expect(u.at(0, 2).code).toBe('OK');
    // At 100: minute 2 + 1 > 2 (lifts 1 000); burst 2 000 − 200 + 1 000 > 2 000 (lifts 500).
    // The day would say GRACE, but the request is denied, so grace does not start.
    expect(u.at(100)).toMatchObject(denial('minute', 900));
    expect(u.at(1000)).toMatchObject({ allowed: true, code: 'GRACE' }); // grace from 1 000
    expect(u.at(3999)).toMatchObject({ allowed: true, code: 'GRACE' }); // (would be over if it began at 100)
    expect(u.at(4000)).toMatchObject(denial('day', 16_000));
  });
});

describe('reference model: overage handling', () => {
  it('allow: admitted as OVERAGE, usage counts past the quota, other limits still apply', () => {
    const u = user(limitsOf({ burst: 10, perMinute: 4, perDay: 2, overage: 'allow' }));
    expect(u.at(0, 2)).toMatchObject({ allowed: true, code: 'OK', quotaUsed: 2 });
    expect(u.at(0)).toMatchObject({ allowed: true, code: 'OVERAGE', quotaUsed: 3, remaining: { day: 0, minute: 1 } });
    expect(u.at(0)).toMatchObject({ allowed: true, code: 'OVERAGE', quotaUsed: 4, remaining: { minute: 0 } });
    expect(u.at(0)).toMatchObject({ ...denial('minute', 60_000), quotaUsed: 4 }); // 4 + 1 > R = 4
    expect(u.at(60_000, 3)).toMatchObject({ allowed: true, code: 'OVERAGE', quotaUsed: 7 });
    expect(u.at(DAY, 2)).toMatchObject({ allowed: true, code: 'OK', quotaUsed: 2 });
  });

  it('throttle: OVERAGE while the minute usage stays within T, else QUOTA_EXCEEDED by day', () => {
    // R = 4, T = 1, D = 2, B = 10.
    const u = user(limitsOf({ burst: 10, perMinute: 4, perDay: 2, overage: 'throttle', throttlePerMinute: 1 }));
    // Reaching the quota exactly is not overage: minute reports R − 2.
    expect(u.at(0, 2)).toMatchObject({ allowed: true, code: 'OK', remaining: { minute: 2 } });
    // 2 + 1 > D → throttle: minute usage 2 + 1 > T = 1 → refused by the day until the next
    // minute; the minute reports the reduced rate: max(0, 1 − 2) = 0.
    expect(u.at(0)).toMatchObject({ ...denial('day', 60_000), remaining: { minute: 0 } });
    expect(u.at(60_000)).toMatchObject({ allowed: true, code: 'OVERAGE', quotaUsed: 3, remaining: { minute: 0 } });
    expect(u.at(60_000)).toMatchObject(denial('day', 60_000));
    // cost 2 > T: no minute ever admits it in overage; the next day window's quota does.
    expect(u.at(120_000, 2)).toMatchObject(denial('day', DAY - 120_000));
    // cost 5 > R: the minute never lifts; the day never does either (5 > D, no grace, 5 > T):
    // a tie of two "never"s goes to the longer window, the day.
    expect(u.at(120_000, 5)).toMatchObject(denial('day', null));
    expect(u.at(DAY, 2)).toMatchObject({ allowed: true, code: 'OK', quotaUsed: 2 });
  });

  it('throttle: a cost above R but within D is named minute', () => {
    // R = 4, D = 6, T = 1. After 4 at 0 the quota has 2 left.
    const u = user(limitsOf({ burst: 10, perMinute: 4, perDay: 6, overage: 'throttle', throttlePerMinute: 1 }));
    expect(u.at(0, 4).allowed).toBe(true);
    // cost 5 at 60 000: 4 + 5 > 6 → throttle refuses (5 > T), lifting at the next day window
    // (5 ≤ D); the minute refuses for ever (5 > R) → minute lifts last: RATE_LIMITED, null.
    expect(u.at(60_000, 5)).toMatchObject(denial('minute', null));
    // cost 3 ≤ R: only the throttle refuses (3 > T): until the next day window.
    expect(u.at(60_000, 3)).toMatchObject(denial('day', DAY - 60_000));
  });

  it('block: QUOTA_EXCEEDED by day until the next day window', () => {
    const u = user(limitsOf({ perDay: 2, overage: 'block' }));
    expect(u.at(0, 2).allowed).toBe(true);
    expect(u.at(0)).toMatchObject({ ...denial('day', DAY), quotaUsed: 2, remaining: { day: 0 } });
    expect(u.at(DAY - 1, 0)).toMatchObject(denial('day', 1));
  });

  it('quota disabled: the day window counts and reports but never denies', () => {
    // throttle and grace configured, and both ignored.
    const u = user(limitsOf({ burst: 10, perMinute: 10, perDay: 2, quotaEnabled: false, overage: 'throttle', throttlePerMinute: 1, graceMs: 5000 }));
    expect(u.at(0, 3)).toMatchObject({ allowed: true, code: 'OK', quotaUsed: 3, remaining: { day: 0, minute: 7 } });
    expect(u.at(0, 2)).toMatchObject({ allowed: true, code: 'OK', quotaUsed: 5 });
    // cost 6: burst 300 000 + 360 000 > 600 000 (lifts 6 000), minute 11 > 10 (lifts 60 000).
    expect(u.at(0, 6)).toMatchObject(denial('minute', 60_000));
    expect(u.at(DAY)).toMatchObject({ allowed: true, code: 'OK', quotaUsed: 1 });
  });
});

describe('reference model: limited_by', () => {
  it('ties between minute and hour go to the hour', () => {
    // B = R = H = 5. cost 5 at 3 570 000 (minute 59 of hour 0).
    const u = user(limitsOf({ burst: 5, perMinute: 5, perHour: 5 }));
    expect(u.at(3_570_000, 5).allowed).toBe(true);
    // At 3 590 000: burst 300 000 − 100 000 + 60 000 ≤ 300 000 admits; minute and hour both
    // lift at 3 600 000.
    expect(u.at(3_590_000)).toMatchObject(denial('hour', 10_000));
  });

  it('ties between hour and day go to the day', () => {
    const u = user(limitsOf({ perHour: 5, perDay: 5 }));
    expect(u.at(86_000_000, 5).allowed).toBe(true);
    // Hour (82 800 000 – 86 400 000) and day both full; both lift at 86 400 000.
    expect(u.at(86_100_000)).toMatchObject(denial('day', 300_000));
  });

  it('ties between burst and minute go to the minute', () => {
    // B = R = 1: the bucket is full again 60 000 ms after one request, when the minute ends.
    const u = user(limitsOf({ burst: 1, perMinute: 1 }));
    expect(u.at(0).allowed).toBe(true);
    expect(u.at(0)).toMatchObject(denial('minute', 60_000));
  });

  it('names the limit that lifts last, not the longest window', () => {
    // B = R = 1; a request at 59 000 empties the bucket until 119 000, the minute ends at 60 000.
    const u = user(limitsOf({ burst: 1, perMinute: 1 }));
    expect(u.at(59_000).allowed).toBe(true);
    expect(u.at(59_500)).toMatchObject(denial('burst', 59_500));
  });

  it('ties between two limits that never lift go to the longer window', () => {
    // cost 12 > B = 10 and > R = 10.
    expect(user(limitsOf({ burst: 10, perMinute: 10 })).at(0, 12)).toMatchObject(denial('minute', null));
    // cost 12 > H = 11 and > D = 11 (block, no grace); burst B = R = 20 admits.
    expect(user(limitsOf({ burst: 20, perMinute: 20, perHour: 11, perDay: 11 })).at(0, 12)).toMatchObject(denial('day', null));
  });
});

describe('reference model: time', () => {
  it('never lets a user clock go backwards; peeks do not move it', () => {
    const u = user(limitsOf());
    expect(u.at(1000).at).toBe(T0 + 1000);
    expect(u.at(500).at).toBe(T0 + 1000); // out of order: decided at the user's latest time
    expect(u.at(5000, 0).at).toBe(T0 + 5000);
    expect(u.at(2000).at).toBe(T0 + 2000); // the peek at 5 000 did not move the clock
    expect(u.peekAt(0).at).toBe(T0 + 2000);
  });

  it('keeps users apart', () => {
    const model = new ReferenceModel();
    const limits = limitsOf({ burst: 1, perMinute: 1 });
    expect(model.decide('a', limits, 1, T0).allowed).toBe(true);
    expect(model.decide('b', limits, 1, T0).allowed).toBe(true);
    expect(model.decide('a', limits, 1, T0).allowed).toBe(false);
    expect(model.userCount).toBe(2);
  });

  it('rejects a negative or fractional cost', () => {
    const model = new ReferenceModel();
    expect(() => model.decide('a', limitsOf(), -1, T0)).toThrow(RangeError);
    expect(() => model.decide('a', limitsOf(), 1.5, T0)).toThrow(RangeError);
  });
});

/** The vectors another engineer computed by hand for the engine; our model must agree. */
interface VectorFile {
  epoch: number;
  profiles: Record<string, RefLimits & { tier: string }>;
  vectors: {
    name: string;
    profile: string;
    steps: {
      at: number;
      cost: number;
      repeat?: number;
      expect: {
        allowed?: boolean;
        code?: string;
        limited_by?: RefLimitName | null;
        retry_after_ms?: number | null;
        remaining?: Partial<Record<RefLimitName, number>>;
        quota_used?: number;
      };
    }[];
  }[];
}

function dropUndefined<T extends object>(value: T): Partial<T> {
  return Object.fromEntries(Object.entries(value).filter(([, v]) => v !== undefined)) as Partial<T>;
}

describe('reference model: cross-check with test/vectors/decisions.json', () => {
  const file = JSON.parse(readFileSync(new URL('./vectors/decisions.json', import.meta.url), 'utf8')) as VectorFile;
  // reset_at, limit and grace_started are not part of the reference's answer and are not compared.
  it.each(file.vectors.map((v) => [v.name, v] as const))('%s', (_name, vector) => {
    const profile = file.profiles[vector.profile];
    if (profile === undefined) throw new Error(`unknown profile ${vector.profile}`);
    const model = new ReferenceModel();
    vector.steps.forEach((step, index) => {
      for (let i = 0; i < (step.repeat ?? 1); i++) {
        const d = model.decide('u', profile, step.cost, file.epoch + step.at);
        const { allowed, code, limited_by, retry_after_ms, remaining, quota_used } = step.expect;
        const want = dropUndefined({ allowed, code, limited_by, retry_after_ms, remaining, quota_used });
        const got: typeof want = {};
        if (want.allowed !== undefined) got.allowed = d.allowed;
        if (want.code !== undefined) got.code = d.code;
        if (want.limited_by !== undefined) got.limited_by = d.limitedBy;
        if (want.retry_after_ms !== undefined) got.retry_after_ms = d.retryAfterMs;
        if (want.quota_used !== undefined) got.quota_used = d.quotaUsed;
        if (want.remaining !== undefined) {
          got.remaining = Object.fromEntries(Object.keys(want.remaining).map((k) => [k, d.remaining[k as RefLimitName]]));
        }
        expect({ step: index, ...got }).toEqual({ step: index, ...want });
      }
    });
  });
});

describe('accuracy', () => {
  // Tier a: B = R = 1 per minute, H = 10, D = 100. Tier b: B = R = H = 5, D = 100.
  const tiers: Record<string, RefLimits> = {
    a: limitsOf({ burst: 1, perMinute: 1, perHour: 10, perDay: 100 }),
    b: limitsOf({ burst: 5, perMinute: 5, perHour: 5, perDay: 100 }),
  };
  const limitsFor = (tier: string): RefLimits => {
    const limits = tiers[tier];
    if (limits === undefined) throw new Error(`no tier ${tier}`);
    return limits;
  };
  const obs = (userId: string, tier: string, at: number, cost: number, allowedBySystem: boolean): ObservedDecision => ({
    userId, tier, at: T0 + at, cost, allowedBySystem,
  });

  // Reference for user u (tier a): 0 admit; 30 000 deny (bucket and minute full);
  // 60 000 admit (new minute, bucket repaid); 90 000 deny.
  // Reference for user v (tier b): 0 cost 3 admit (debt 180 000); 1 000 cost 1 admit
  // (175 000 + 60 000 ≤ 300 000, minute 4, hour 4); 2 000 cost 2 deny (230 000 + 120 000
  // > 300 000, minute 6 > 5, hour 6 > 5: the hour lifts last).
  const exact: ObservedDecision[] = [
    obs('u', 'a', 0, 1, true), obs('u', 'a', 30_000, 1, false), obs('u', 'a', 60_000, 1, true), obs('u', 'a', 90_000, 1, false),
    obs('v', 'b', 0, 3, true), obs('v', 'b', 1000, 1, true), obs('v', 'b', 2000, 2, false),
  ];

  it('replays each user independently, in time order, answering in input order', () => {
    const shuffled = [exact[6]!, exact[3]!, exact[0]!, exact[5]!, exact[2]!, exact[4]!, exact[1]!];
    expect(replayReference(shuffled, limitsFor).map((d) => d.allowed)).toEqual([false, false, true, true, true, true, false]);
  });

  it('keeps the input order for equal times', () => {
    // Tier b: cost 5 then cost 1 at the same time → the first passes, the second does not.
    const five = obs('w', 'b', 0, 5, true);
    const one = obs('w', 'b', 0, 1, true);
    expect(replayReference([five, one], limitsFor).map((d) => d.allowed)).toEqual([true, false]);
    expect(replayReference([one, five], limitsFor).map((d) => d.allowed)).toEqual([true, false]);
  });

  it('is 1.0 everywhere when the system is exact', () => {
    const report = computeAccuracy([...exact].reverse(), limitsFor);
    expect(report.accuracy).toBe(1);
    expect(report.disagreementCount).toBe(0);
    for (const scope of [report.overall, ...Object.values(report.byTier)]) {
      for (const figures of [scope.byWindow.minute, scope.byWindow.hour, scope.byWindow.day, scope.perDecision]) {
        expect(figures.costUnits).toMatchObject({ absError: 0, overAdmission: 0, falseDenials: 0, accuracy: 1 });
        expect(figures.requests.accuracy).toBe(1);
      }
      expect(scope.agreement.rate).toBe(1);
    }
    // E in cost units: u 1 + 1, v 3 + 1 = 6; requests 2 + 2 = 4.
    expect(report.overall.byWindow.minute.costUnits.expected).toBe(6);
    expect(report.overall.byWindow.minute.requests.expected).toBe(4);
    // Groups: u has minutes 0 and 1, v minute 0 → 3; hours: u, v → 2.
    expect(report.overall.byWindow.minute.groups).toBe(3);
    expect(report.overall.byWindow.hour.groups).toBe(2);
    expect(report.overall.perDecision.groups).toBe(7);
  });

  it('counts one over-admission', () => {
    // The system admits v's cost-2 request at 2 000 that the reference denies.
    const observed = exact.map((o, i) => (i === 6 ? { ...o, allowedBySystem: true } : o));
    const report = computeAccuracy(observed, limitsFor);
    // Minute: ΣE = 6, Σ|A − E| = 2 (units) → 1 − 2/6; requests ΣE = 4, error 1 → 0.75.
    expect(report.accuracy).toBeCloseTo(1 - 2 / 6, 12);
    expect(report.overall.byWindow.minute.costUnits).toMatchObject({ expected: 6, admitted: 8, absError: 2, overAdmission: 2, falseDenials: 0 });
    expect(report.overall.byWindow.minute.requests).toMatchObject({ expected: 4, admitted: 5, absError: 1, overAdmission: 1, falseDenials: 0, accuracy: 0.75 });
    expect(report.overall.agreement).toMatchObject({ decisions: 7, agreed: 6, systemOnly: 1, referenceOnly: 0 });
    // Per tier: a is exact; b has ΣE = 4 units, error 2 → 0.5.
    expect(report.byTier.a!.byWindow.minute.costUnits.accuracy).toBe(1);
    expect(report.byTier.b!.byWindow.minute.costUnits).toMatchObject({ expected: 4, absError: 2, overAdmission: 2, accuracy: 0.5 });
    expect(report.byTier.b!.byWindow.day.requests).toMatchObject({ expected: 2, admitted: 3, accuracy: 0.5 });
    expect(report.disagreements).toHaveLength(1);
    expect(report.disagreements[0]).toMatchObject({ index: 6, reference: { allowed: false, limitedBy: 'hour' } });
  });

  it('counts one false denial', () => {
    // The system denies u's request at 60 000 that the reference admits.
    const observed = exact.map((o, i) => (i === 2 ? { ...o, allowedBySystem: false } : o));
    const report = computeAccuracy(observed, limitsFor);
    expect(report.overall.byWindow.minute.costUnits).toMatchObject({ expected: 6, admitted: 5, absError: 1, overAdmission: 0, falseDenials: 1 });
    expect(report.accuracy).toBeCloseTo(1 - 1 / 6, 12);
    expect(report.byTier.a!.byWindow.hour.costUnits).toMatchObject({ expected: 2, admitted: 1, falseDenials: 1, accuracy: 0.5 });
    expect(report.byTier.b!.byWindow.hour.costUnits.accuracy).toBe(1);
    expect(report.overall.agreement).toMatchObject({ agreed: 6, systemOnly: 0, referenceOnly: 1 });
  });

  it('nets errors out within a window, not across windows', () => {
    // u's system admits at 30 000 (minute 0) and denies at 60 000 (minute 1): per minute two
    // errors of 1 (E = 1 and 1, A = 2 and 0); per hour and day they cancel (E = A = 2).
    const observed = exact.map((o, i) => (i === 1 ? { ...o, allowedBySystem: true } : i === 2 ? { ...o, allowedBySystem: false } : o));
    const report = computeAccuracy(observed, limitsFor);
    const a = report.byTier.a!;
    expect(a.byWindow.minute.costUnits).toMatchObject({ expected: 2, admitted: 2, absError: 2, overAdmission: 1, falseDenials: 1, accuracy: 0 });
    expect(a.byWindow.hour.costUnits).toMatchObject({ absError: 0, accuracy: 1 });
    expect(a.byWindow.day.costUnits).toMatchObject({ absError: 0, accuracy: 1 });
    expect(a.perDecision.costUnits).toMatchObject({ absError: 2, accuracy: 0 });
    expect(a.agreement).toMatchObject({ decisions: 4, agreed: 2, rate: 0.5 });
    // Overall minute: ΣE = 6, error 2.
    expect(report.accuracy).toBeCloseTo(1 - 2 / 6, 12);
    expect(report.overall.byWindow.hour.costUnits.accuracy).toBe(1);
  });

  it('lets the reference decide from its own state, not the system’s', () => {
    // Tier a, user x: the system wrongly admits at 0 and at 10 000. The reference admits at
    // 0, denies at 10 000, and (its bucket having only the one request) admits at 60 000,
    // which the system — having over-admitted — denies.
    const observed = [obs('x', 'a', 0, 1, true), obs('x', 'a', 10_000, 1, true), obs('x', 'a', 60_000, 1, false)];
    expect(replayReference(observed, limitsFor).map((d) => d.allowed)).toEqual([true, false, true]);
    const report = computeAccuracy(observed, limitsFor);
    expect(report.overall.byWindow.minute.costUnits).toMatchObject({ expected: 2, admitted: 2, overAdmission: 1, falseDenials: 1 });
    expect(report.overall.byWindow.hour.costUnits).toMatchObject({ overAdmission: 0, falseDenials: 0 });
  });

  it('counts peeks only in the agreement', () => {
    // A peek the system says passes and the reference denies (u's bucket is empty at 10 000).
    const observed = [obs('u', 'a', 0, 1, true), obs('u', 'a', 10_000, 0, true)];
    const report = computeAccuracy(observed, limitsFor);
    expect(report.overall.byWindow.minute.costUnits).toMatchObject({ expected: 1, admitted: 1, absError: 0 });
    expect(report.overall.byWindow.minute.requests).toMatchObject({ expected: 1, admitted: 1, absError: 0 });
    expect(report.overall.agreement).toMatchObject({ decisions: 2, agreed: 1, peeks: 1, peeksAgreed: 0, systemOnly: 1 });
  });

  it('groups by the tier’s own (shortened) windows', () => {
    // Minute 1 000, hour 3 000, day 6 000 ms; B = 10 and R = 10 per short minute.
    const short = limitsOf({ burst: 10, perMinute: 10, perHour: 100, perDay: 100, minuteMs: 1000, hourMs: 3000, dayMs: 6000 });
    const observed = [0, 999, 1000, 2500, 3000, 6500].map((t) => obs('s', 'short', t, 1, true));
    const report = computeAccuracy(observed, () => short);
    // Minutes [0,1000) [1000,2000) [2000,3000) [3000,4000) [6000,7000): 5; hours [0,3000)
    // [3000,6000) [6000,9000): 3; days [0,6000) [6000,12000): 2.
    expect(report.overall.byWindow.minute.groups).toBe(5);
    expect(report.overall.byWindow.hour.groups).toBe(3);
    expect(report.overall.byWindow.day.groups).toBe(2);
    expect(report.accuracy).toBe(1);
  });

  it('reports an error with nothing expected as accuracy 0', () => {
    // cost 2 > B = R = 1: the reference never admits it; the system did.
    const report = computeAccuracy([obs('u', 'a', 0, 2, true)], limitsFor);
    expect(report.overall.byWindow.day.costUnits).toMatchObject({ expected: 0, admitted: 2, overAdmission: 2, accuracy: 0 });
  });
});
