import { describe, expect, it } from 'vitest';
import {
  DEFAULT_PATTERN_OPTIONS,
  analyzeUser,
  detectDenialJumps,
  detectSpikes,
  hourOfDayProfile,
  type HourPoint,
} from '../src/analytics/patterns.js';
import { randomInt, seededRandom } from './helpers/random.js';

const HOUR = 3_600_000;
const DAY = 24 * HOUR;
/** Monday 16 March 2026, 10:20 UTC: the last complete hour is 09:00–10:00. */
const NOW = Date.UTC(2026, 2, 16, 10, 20);
const LAST = Date.UTC(2026, 2, 16, 9);
const USER = 'user_1';

interface Traffic {
  requests: number;
  denied?: number;
}

/**
 * One point per hour from 16 days before the last complete hour up to it (enough for a
 * 14-day baseline of each of the 3 recent hours). `traffic` returning null leaves the hour out.
 */
function history(traffic: (hourStart: number, hourOfDay: number, weekday: number) => Traffic | null): HourPoint[] {
  const points: HourPoint[] = [];
  for (let t = LAST - 16 * DAY; t <= LAST; t += HOUR) {
    const date = new Date(t);
    const hour = traffic(t, date.getUTCHours(), date.getUTCDay());
    if (hour !== null) points.push({ hourStart: t, requests: hour.requests, denied: hour.denied ?? 0, cost: hour.requests * 10 });
  }
  return points;
}

/** Replaces (or adds) the point of one hour. */
function withHour(points: HourPoint[], hourStart: number, traffic: Traffic): HourPoint[] {
  const rest = points.filter((p) => p.hourStart !== hourStart);
  return [...rest, { hourStart, requests: traffic.requests, denied: traffic.denied ?? 0, cost: 0 }];
}

describe('hour-of-day profile', () => {
  it('of a constant history: every hour has the same mean, no deviation and no peak', () => {
    const profile = hourOfDayProfile(
      history(() => ({ requests: 50 })),
      { now: NOW, days: 14 },
    );
    expect(profile).toEqual({
      days: 14,
      window_start: '2026-03-02T10:00:00.000Z',
      window_end: '2026-03-16T10:00:00.000Z',
      overall_mean: 50,
      hourly_means_std: 0,
      peak_threshold: 75,
      hours: Array.from({ length: 24 }, (_, hour) => ({ hour, mean: 50, std: 0 })),
      peak_hours: [],
    });
  });

  it('finds a planted peak at 14:00 (5× the other hours) and nothing else, with its figures', () => {
    const profile = hourOfDayProfile(
      history((_t, hour) => ({ requests: hour === 14 ? 100 : 20 })),
      { now: NOW },
    );
    // Hourly means: 23 × 20 and one 100. A = 560 / 24 = 23.3333;
    // S² = (23 × (10/3)² + (230/3)²) / 24 = 255.5556, S = 15.9861;
    // threshold = max(A + S, 1.5 A) = max(39.3194, 35); 14:00 is (100 − A) / S = √23 σ above.
    expect(profile.overall_mean).toBe(23.3333);
    expect(profile.hourly_means_std).toBe(15.9861);
    expect(profile.peak_threshold).toBe(39.3194);
    expect(profile.hours[14]).toEqual({ hour: 14, mean: 100, std: 0 });
    expect(profile.hours[13]).toEqual({ hour: 13, mean: 20, std: 0 });
    expect(profile.peak_hours).toEqual([{ hour: 14, mean: 100, std: 0, ratio: 4.2857, sigmas: 4.7958 }]);
  });

  it('finds the planted peak through noise', () => {
    const rand = seededRandom(7);
    const points = history((_t, hour) => ({ requests: hour === 14 ? randomInt(rand, 90, 110) : randomInt(rand, 15, 25) }));
    const { peak_hours } = hourOfDayProfile(points, { now: NOW });
    expect(peak_hours.map((p) => p.hour)).toEqual([14]);
    expect(peak_hours[0]!.mean).toBeGreaterThan(90);
    expect(peak_hours[0]!.ratio).toBeGreaterThan(4);
    expect(peak_hours[0]!.ratio).toBeLessThan(5);
  });

  it('counts missing hours as zero', () => {
    // 10:00 has 28 requests on 7 of the 14 days and no point on the others.
    const points: HourPoint[] = [];
    for (let day = 2; day <= 14; day += 2) points.push({ hourStart: Date.UTC(2026, 2, 16, 10) - day * DAY, requests: 28, denied: 0, cost: 0 });
    const profile = hourOfDayProfile(points, { now: NOW });
    expect(profile.hours[10]).toEqual({ hour: 10, mean: 14, std: 14 });
    expect(profile.hours[11]).toEqual({ hour: 11, mean: 0, std: 0 });
    expect(profile.overall_mean).toBe(0.5833); // 14 / 24
  });
});

describe('spikes', () => {
  it('a flat noisy history has no findings and no peak hours', () => {
    for (const seed of [1, 2, 3, 4, 5]) {
      const rand = seededRandom(seed);
      const points = history(() => ({ requests: 100 + randomInt(rand, -10, 10), denied: randomInt(rand, 0, 3) }));
      const result = analyzeUser(USER, points, { now: NOW });
      expect(result.findings).toEqual([]);
      expect(result.peak_hours).toEqual([]);
      expect(result.profile.overall_mean).toBeGreaterThan(95);
      expect(result.profile.overall_mean).toBeLessThan(105);
    }
  });

  it('a planted 10× spike in the latest complete hour is exactly one finding, with its figures', () => {
    const points = withHour(
      history(() => ({ requests: 50 })),
      LAST,
      { requests: 500 },
    );
    // μ = 50, σ = 0, floored to √50 = 7.0711; z = 450 / 7.0711 = 63.6396.
    expect(detectSpikes(points, { now: NOW, userId: USER })).toEqual([
      {
        kind: 'spike',
        user_id: USER,
        hour_start: '2026-03-16T09:00:00.000Z',
        observed: 500,
        baseline_mean: 50,
        baseline_std: 7.0711,
        z: 63.6396,
        detail:
          '500 requests in the hour from 09:00 UTC against 50 ± 7.07 at that hour over the previous 14 days' +
          ' (σ 0 raised to the floor max(σ, √μ, 1)): z = 63.64 ≥ 3',
      },
    ]);
  });

  it('finds the planted spike through noise, and only it', () => {
    const rand = seededRandom(11);
    const points = withHour(
      history(() => ({ requests: randomInt(rand, 45, 55), denied: 1 })),
      LAST,
      { requests: 500, denied: 10 },
    );
    const { findings } = analyzeUser(USER, points, { now: NOW });
    expect(findings.map((f) => [f.kind, f.hour_start])).toEqual([['spike', '2026-03-16T09:00:00.000Z']]);
    expect(findings[0]!.observed).toBe(500);
    expect(findings[0]!.z).toBeGreaterThan(DEFAULT_PATTERN_OPTIONS.zThreshold);
    expect(findings[0]!.baseline_mean).toBeGreaterThan(45);
    expect(findings[0]!.baseline_mean).toBeLessThan(55);
  });

  it('the morning ramp-up that happens every weekday is not a spike, even on Monday after a quiet weekend', () => {
    const rand = seededRandom(3);
    const weekend = (weekday: number): boolean => weekday === 0 || weekday === 6;
    const points = history((_t, hour, weekday) => {
      if (weekend(weekday)) return { requests: randomInt(rand, 0, 3) };
      return hour >= 8 && hour < 18 ? { requests: randomInt(rand, 270, 330), denied: randomInt(rand, 0, 5) } : { requests: randomInt(rand, 3, 7) };
    });

    // The history does ramp up: Monday 08:00 is far above the 24 hours before it, which a
    // detector without an hour-of-day baseline (EWMA ± 3σ) would flag.
    const at = (t: number): number => points.find((p) => p.hourStart === t)?.requests ?? 0;
    const monday8 = at(LAST - HOUR);
    const dayBefore = points.filter((p) => p.hourStart >= LAST - HOUR - DAY && p.hourStart < LAST - HOUR);
    const dayBeforeMean = dayBefore.reduce((sum, p) => sum + p.requests, 0) / 24;
    expect(monday8 / dayBeforeMean).toBeGreaterThan(50);

    const result = analyzeUser(USER, points, { now: NOW });
    expect(result.findings).toEqual([]);
    expect(result.peak_hours.map((p) => p.hour)).toEqual([8, 9, 10, 11, 12, 13, 14, 15, 16, 17]);
  });

  it('a jump from 0 to 3 requests is below the volume floor; without the floor it would be a spike', () => {
    const points = [{ hourStart: LAST, requests: 3, denied: 3, cost: 3 }];
    expect(analyzeUser(USER, points, { now: NOW }).findings).toEqual([]);

    // What the volume floor holds back: μ = 0, σ floored to 1, z = 3. No denial jump
    // either way, since there is no baseline traffic to jump from.
    const unguarded = analyzeUser(USER, points, { now: NOW, minRequests: 1 }).findings;
    expect(unguarded.map((f) => [f.kind, f.observed, f.baseline_mean, f.baseline_std, f.z])).toEqual([['spike', 3, 0, 1, 3]]);
  });

  it('counts missing hours of the baseline as zero', () => {
    // 10:00 had 30 requests on one of the previous 14 days and no point on the others.
    // As zeros: μ = 30/14, σ = 30·√13/14, z = √13. Skipping them would give 30 ± 0 and z = 0.
    const now = Date.UTC(2026, 2, 16, 11, 20);
    const ten = Date.UTC(2026, 2, 16, 10);
    const points: HourPoint[] = [
      { hourStart: ten - 5 * DAY, requests: 30, denied: 0, cost: 0 },
      { hourStart: ten, requests: 30, denied: 0, cost: 0 },
    ];
    const findings = detectSpikes(points, { now, userId: USER });
    expect(findings.map((f) => [f.hour_start, f.observed, f.baseline_mean, f.baseline_std, f.z])).toEqual([
      ['2026-03-16T10:00:00.000Z', 30, 2.1429, 7.7262, 3.6056],
    ]);

    // Explicit zero points are the same as missing ones.
    const zeros = [...points];
    for (let day = 1; day <= 14; day++) if (day !== 5) zeros.push({ hourStart: ten - day * DAY, requests: 0, denied: 0, cost: 0 });
    expect(analyzeUser(USER, zeros, { now })).toEqual(analyzeUser(USER, points, { now }));
  });

  it('ignores the hour in progress', () => {
    const points = withHour(
      history(() => ({ requests: 50, denied: 1 })),
      LAST + HOUR,
      { requests: 100_000, denied: 100_000 },
    );
    expect(analyzeUser(USER, points, { now: NOW }).findings).toEqual([]);
  });
});

describe('denial jumps', () => {
  const steady = (requests: number, denied: number): HourPoint[] => history(() => ({ requests, denied }));

  it('a planted jump from 5% to 40% is one finding with both rates', () => {
    const points = withHour(steady(100, 5), LAST, { requests: 100, denied: 40 });
    expect(detectDenialJumps(points, { now: NOW, userId: USER })).toEqual([
      {
        kind: 'denial_jump',
        user_id: USER,
        hour_start: '2026-03-16T09:00:00.000Z',
        observed: 0.4,
        baseline_mean: 0.05,
        baseline_rate: 0.05,
        requests: 100,
        denied: 40,
        detail:
          'Denial rate 40.0% (40 of 100 requests) in the hour from 09:00 UTC,' +
          ' up from 5.0% over the previous 24 hours (+35 points, 8×)',
      },
    ]);
    // The request count did not change, so analyzeUser adds no spike.
    expect(analyzeUser(USER, points, { now: NOW }).findings.map((f) => f.kind)).toEqual(['denial_jump']);
  });

  it('a steadily high denial rate is not a jump', () => {
    const points = withHour(steady(100, 40), LAST, { requests: 100, denied: 45 });
    expect(analyzeUser(USER, points, { now: NOW }).findings).toEqual([]);
  });

  it('needs both the absolute rise and the factor', () => {
    // 2% → 10%: 5× but only +8 points.
    expect(detectDenialJumps(withHour(steady(100, 2), LAST, { requests: 100, denied: 10 }), { now: NOW, userId: USER })).toEqual([]);
    // 50% → 75%: +25 points but only 1.5×.
    expect(detectDenialJumps(withHour(steady(100, 50), LAST, { requests: 100, denied: 75 }), { now: NOW, userId: USER })).toEqual([]);
    // 10% → 30%: exactly +20 points and 3×, a jump although 0.1 + 0.2 = 0.30000000000000004.
    const atThreshold = detectDenialJumps(withHour(steady(100, 10), LAST, { requests: 100, denied: 30 }), { now: NOW, userId: USER });
    expect(atThreshold.map((f) => [f.observed, f.baseline_rate])).toEqual([[0.3, 0.1]]);
  });

  it('needs baseline traffic to jump from', () => {
    const before = (requests: number): HourPoint[] => [
      { hourStart: LAST - 5 * HOUR, requests, denied: 0, cost: 0 },
      { hourStart: LAST, requests: 100, denied: 50, cost: 0 },
    ];
    expect(detectDenialJumps(before(19), { now: NOW, userId: USER })).toEqual([]);
    expect(detectDenialJumps(before(20), { now: NOW, userId: USER }).map((f) => [f.observed, f.baseline_rate])).toEqual([[0.5, 0]]);
  });

  it('needs the minimum of requests in the hour', () => {
    const points = withHour(steady(100, 5), LAST, { requests: 10, denied: 10 });
    expect(detectDenialJumps(points, { now: NOW, userId: USER })).toEqual([]);
    expect(detectDenialJumps(points, { now: NOW, userId: USER, minRequests: 10 }).map((f) => f.observed)).toEqual([1]);
  });
});

describe('analyzeUser', () => {
  it('orders findings by hour, then spike before denial jump, whatever the order of the points', () => {
    let points = steady();
    points = withHour(points, LAST - 2 * HOUR, { requests: 100, denied: 50 }); // 07:00: denial jump only
    points = withHour(points, LAST - HOUR, { requests: 1000, denied: 50 }); // 08:00: spike only
    points = withHour(points, LAST, { requests: 1000, denied: 500 }); // 09:00: spike and denial jump
    const expected = [
      ['2026-03-16T07:00:00.000Z', 'denial_jump'],
      ['2026-03-16T08:00:00.000Z', 'spike'],
      ['2026-03-16T09:00:00.000Z', 'spike'],
      ['2026-03-16T09:00:00.000Z', 'denial_jump'],
    ];
    const result = analyzeUser(USER, points, { now: NOW });
    expect(result.user_id).toBe(USER);
    expect(result.findings.map((f) => [f.hour_start, f.kind])).toEqual(expected);
    expect(result.findings.every((f) => f.user_id === USER)).toBe(true);

    const rand = seededRandom(5);
    const shuffled = points.map((p) => ({ p, key: rand() })).sort((a, b) => a.key - b.key).map(({ p }) => p);
    expect(analyzeUser(USER, shuffled, { now: NOW })).toEqual(result);

    function steady(): HourPoint[] {
      return history(() => ({ requests: 100, denied: 5 }));
    }
  });

  it('has the documented defaults and rejects nonsense', () => {
    expect(DEFAULT_PATTERN_OPTIONS).toEqual({
      days: 14,
      recentHours: 3,
      zThreshold: 3,
      minRequests: 20,
      baselineHours: 24,
      minIncrease: 0.2,
      denialMinRatio: 2,
      peakMinSigmas: 1,
      peakMinRatio: 1.5,
    });
    expect(() => analyzeUser(USER, [], { now: NOW, days: 0 })).toThrow(RangeError);
    expect(() => analyzeUser(USER, [], { now: Number.NaN })).toThrow(RangeError);
    expect(() => analyzeUser(USER, [{ hourStart: LAST, requests: -1, denied: 0, cost: 0 }], { now: NOW })).toThrow(RangeError);
  });
});
