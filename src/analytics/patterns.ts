/**
 * Pattern analysis of one user's hourly usage: when the user is usually busy (the
 * hour-of-day profile and its peak hours), and whether the latest complete hours depart
 * from that habit (request spikes, denial-rate jumps). Pure functions of an hourly series
 * and an injected `now`: no clock, no I/O, the same input always gives the same output.
 *
 * Why a z-score per hour of day rather than an EWMA. Traffic to an LLM API follows the
 * working day of whoever calls it: little at night, a ramp-up in the morning, a plateau,
 * a fall in the evening. An EWMA ± k·σ band has no seasonal term, so it tracks the last
 * few hours: every morning's ramp-up lands far above the night-time average and would be
 * flagged, every day, for every user; and once a real spike has dragged the average up,
 * the next one hides behind it. Comparing an hour with the *same hour of day* on the
 * previous days puts the daily cycle into the baseline: 09:00 is compared with the
 * previous mornings at 09:00, never with 03:00. Holt-Winters would also handle the cycle
 * but needs per-user tuning; the z-score needs none, and its figures explain themselves.
 * Weekdays and weekends share one baseline: quiet weekend days widen σ, which makes a
 * weekday spike harder to flag, not easier, so the error goes toward silence. For the
 * same reason only upward departures are findings: a quiet Saturday is not an anomaly.
 *
 * The rules (all thresholds are options, defaults in DEFAULT_PATTERN_OPTIONS):
 * - Window. The last complete hour is the one that ended at or before `now`; the hour in
 *   progress is never read. The profile covers the `days × 24` complete hours ending with
 *   it, so every hour of day has exactly `days` samples. Missing hours count as 0.
 *   Standard deviations are population deviations (divide by n).
 * - Peak hour. Let A be the mean of the 24 hourly means (the user's average requests per
 *   hour) and S their standard deviation. Hour h is a peak hour when its mean is > 0,
 *   ≥ A + peakMinSigmas·S and ≥ peakMinRatio·A (1 σ and 1.5× by default). The σ condition
 *   picks out hours that stand apart from the others; the ratio condition keeps a flat day,
 *   whose S is near 0, from making every slightly busier hour a peak. When more than about
 *   half of the day is busy, the busy hours are the norm and none of them is a peak.
 * - Spike. For each of the `recentHours` latest complete hours, the baseline is that hour
 *   of day on each of the previous `days` days: mean μ and deviation σ of those requests.
 *   z = (observed − μ) / max(σ, √μ, 1): the floor √μ is the spread of a Poisson count of
 *   that mean, so a near-constant history does not turn noise into huge z, and 1 keeps an
 *   empty history from dividing by 0. A finding needs z ≥ zThreshold and
 *   observed ≥ minRequests, so 0 → 3 requests is not a spike.
 * - Denial jump. For each recent hour with ≥ minRequests requests, the baseline rate is
 *   denied / requests summed over the previous `baselineHours` hours (pooled, so busy
 *   hours weigh more). A finding needs rate ≥ baseline + minIncrease and
 *   rate ≥ denialMinRatio × baseline, and a baseline of ≥ minRequests requests: with no
 *   traffic before, there is nothing to jump from.
 *
 * Findings are ordered by hour, then kind (spike before denial_jump); numbers are rounded
 * to 4 decimals. Every function throws RangeError on an option out of range or a point
 * with a non-finite or negative figure. A caller that runs this on a schedule can deduplicate findings on
 * (user_id, kind, hour_start), since one hour stays "recent" for `recentHours` runs.
 */

const HOUR_MS = 3_600_000;
const DAY_MS = 24 * HOUR_MS;
/** Comparisons at a threshold tolerate float error: 0.05 + 0.2 is 0.25000000000000006. */
const EPSILON = 1e-9;
const DECIMALS = 4;

/** One hour of one user's usage. Hours without traffic may be absent: they count as zero. */
export interface HourPoint {
  /** Epoch ms of the UTC hour boundary; a value inside the hour is floored to it. */
  hourStart: number;
  requests: number;
  denied: number;
  cost: number;
}

export interface PatternOptions {
  /** Days of history for the hour-of-day profile and the spike baseline. */
  days: number;
  /** How many of the latest complete hours are checked for spikes and denial jumps. */
  recentHours: number;
  /** z-score at or above which an hour is a spike. */
  zThreshold: number;
  /** Requests an hour needs before it can be a spike or a denial jump. */
  minRequests: number;
  /** Hours before the checked hour whose pooled denial rate is the baseline. */
  baselineHours: number;
  /** Absolute rise of the denial rate (0.2 = 20 points) a denial jump needs. */
  minIncrease: number;
  /** Factor over the baseline denial rate a denial jump needs. */
  denialMinRatio: number;
  /** Standard deviations of the hourly means a peak hour must be above their average. */
  peakMinSigmas: number;
  /** Factor over the average hourly mean a peak hour needs. */
  peakMinRatio: number;
}

export const DEFAULT_PATTERN_OPTIONS: Readonly<PatternOptions> = Object.freeze({
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

/** `now` is required; every other option falls back to DEFAULT_PATTERN_OPTIONS. */
export type ProfileOptions = { now: number } & Partial<Pick<PatternOptions, 'days' | 'peakMinSigmas' | 'peakMinRatio'>>;
export type SpikeOptions = { now: number; userId: string } & Partial<
  Pick<PatternOptions, 'days' | 'recentHours' | 'zThreshold' | 'minRequests'>
>;
export type DenialJumpOptions = { now: number; userId: string } & Partial<
  Pick<PatternOptions, 'recentHours' | 'baselineHours' | 'minRequests' | 'minIncrease' | 'denialMinRatio'>
>;
export type AnalyzeOptions = { now: number } & Partial<PatternOptions>;

/** Requests at one UTC hour of day over the profile window. */
export interface HourOfDayStat {
  /** 0..23, UTC. */
  hour: number;
  mean: number;
  std: number;
}

export interface PeakHour extends HourOfDayStat {
  /** mean / overall_mean. */
  ratio: number;
  /** (mean − overall_mean) / hourly_means_std; 0 when all hours are equal. */
  sigmas: number;
}

export interface HourOfDayProfile {
  days: number;
  /** ISO, inclusive: the first hour of the window. */
  window_start: string;
  /** ISO, exclusive: the end of the last complete hour. */
  window_end: string;
  /** The mean of the 24 hourly means: the user's average requests per hour. */
  overall_mean: number;
  /** The standard deviation of the 24 hourly means. */
  hourly_means_std: number;
  /** The mean an hour needs to be a peak hour: max(A + k·S, ratio·A). */
  peak_threshold: number;
  /** 24 entries, hour 0 first. */
  hours: HourOfDayStat[];
  /** Ascending by hour. */
  peak_hours: PeakHour[];
}

export type FindingKind = 'spike' | 'denial_jump';

/**
 * One departure from the user's habit, with the figures that led to it. `observed` and
 * `baseline_mean` are in the finding's unit: requests in the hour for a spike, a denial
 * rate (0..1) for a denial jump, where `baseline_rate` repeats `baseline_mean`.
 */
export interface Finding {
  kind: FindingKind;
  user_id: string;
  /** ISO start of the hour the finding is about. */
  hour_start: string;
  observed: number;
  baseline_mean: number;
  /** Spike: the σ used for z, after the floor max(σ, √μ, 1). */
  baseline_std?: number;
  /** Spike: (observed − baseline_mean) / baseline_std. */
  z?: number;
  /** Denial jump: denied / requests over the baseline hours. */
  baseline_rate?: number;
  /** Denial jump: the hour's requests and denials. */
  requests?: number;
  denied?: number;
  /** One line for a human. */
  detail: string;
}

export interface UserPatterns {
  user_id: string;
  profile: Omit<HourOfDayProfile, 'peak_hours'>;
  peak_hours: PeakHour[];
  findings: Finding[];
}

interface HourTotals {
  requests: number;
  denied: number;
}

type HourIndex = ReadonlyMap<number, HourTotals>;

const KIND_ORDER: readonly FindingKind[] = ['spike', 'denial_jump'];
const NO_TRAFFIC: HourTotals = Object.freeze({ requests: 0, denied: 0 });

/** The mean and standard deviation of `requests` per UTC hour of day, and the peak hours. */
export function hourOfDayProfile(points: readonly HourPoint[], options: ProfileOptions): HourOfDayProfile {
  return profileOf(indexHours(points), resolve(options));
}

/** Spikes among the latest complete hours, oldest first. */
export function detectSpikes(points: readonly HourPoint[], options: SpikeOptions): Finding[] {
  return spikesOf(indexHours(points), resolve(options), options.userId);
}

/** Denial-rate jumps among the latest complete hours, oldest first. */
export function detectDenialJumps(points: readonly HourPoint[], options: DenialJumpOptions): Finding[] {
  return denialJumpsOf(indexHours(points), resolve(options), options.userId);
}

/** The profile, peak hours and findings of one user, findings ordered by hour then kind. */
export function analyzeUser(userId: string, points: readonly HourPoint[], options: AnalyzeOptions): UserPatterns {
  const index = indexHours(points);
  const resolved = resolve(options);
  const { peak_hours, ...profile } = profileOf(index, resolved);
  const findings = [...spikesOf(index, resolved, userId), ...denialJumpsOf(index, resolved, userId)];
  findings.sort(
    (a, b) => Date.parse(a.hour_start) - Date.parse(b.hour_start) || KIND_ORDER.indexOf(a.kind) - KIND_ORDER.indexOf(b.kind),
  );
  return { user_id: userId, profile, peak_hours, findings };
}

type Resolved = PatternOptions & { now: number };

function profileOf(index: HourIndex, options: Resolved): HourOfDayProfile {
  const { days, now, peakMinSigmas, peakMinRatio } = options;
  const end = lastCompleteHour(now) + HOUR_MS;
  const start = end - days * DAY_MS;
  const stats: HourOfDayStat[] = [];
  for (let hour = 0; hour < 24; hour++) {
    const first = start + ((hour - hourOfDay(start) + 24) % 24) * HOUR_MS;
    const samples: number[] = [];
    for (let t = first; t < end; t += DAY_MS) samples.push(at(index, t).requests);
    stats.push({ hour, ...meanStd(samples) });
  }

  const overall = meanStd(stats.map((s) => s.mean));
  const threshold = Math.max(overall.mean + peakMinSigmas * overall.std, peakMinRatio * overall.mean);
  const peaks = stats
    .filter((s) => s.mean > 0 && s.mean >= threshold - EPSILON)
    .map((s) => ({
      hour: s.hour,
      mean: round(s.mean),
      std: round(s.std),
      ratio: round(s.mean / overall.mean),
      sigmas: overall.std === 0 ? 0 : round((s.mean - overall.mean) / overall.std),
    }));

  return {
    days,
    window_start: new Date(start).toISOString(),
    window_end: new Date(end).toISOString(),
    overall_mean: round(overall.mean),
    hourly_means_std: round(overall.std),
    peak_threshold: round(threshold),
    hours: stats.map((s) => ({ hour: s.hour, mean: round(s.mean), std: round(s.std) })),
    peak_hours: peaks,
  };
}

function spikesOf(index: HourIndex, options: Resolved, userId: string): Finding[] {
  const { days, zThreshold, minRequests } = options;
  const findings: Finding[] = [];
  for (const hourStart of recentHours(options)) {
    const observed = at(index, hourStart).requests;
    if (observed < minRequests) continue;
    const samples: number[] = [];
    for (let day = 1; day <= days; day++) samples.push(at(index, hourStart - day * DAY_MS).requests);
    const { mean, std } = meanStd(samples);
    const scale = Math.max(std, Math.sqrt(mean), 1);
    const z = (observed - mean) / scale;
    if (z < zThreshold - EPSILON) continue;

    const floored = scale > std ? ` (σ ${fmt(std)} raised to the floor max(σ, √μ, 1))` : '';
    findings.push({
      kind: 'spike',
      user_id: userId,
      hour_start: iso(hourStart),
      observed: round(observed),
      baseline_mean: round(mean),
      baseline_std: round(scale),
      z: round(z),
      detail:
        `${fmt(observed)} requests in the hour from ${clock(hourStart)} UTC against ${fmt(mean)} ± ${fmt(scale)}` +
        ` at that hour over the previous ${days} days${floored}: z = ${fmt(z)} ≥ ${fmt(zThreshold)}`,
    });
  }
  return findings;
}

function denialJumpsOf(index: HourIndex, options: Resolved, userId: string): Finding[] {
  const { baselineHours, minRequests, minIncrease, denialMinRatio } = options;
  const findings: Finding[] = [];
  for (const hourStart of recentHours(options)) {
    const { requests, denied } = at(index, hourStart);
    if (requests < minRequests || requests === 0) continue;
    let baseRequests = 0;
    let baseDenied = 0;
    for (let back = 1; back <= baselineHours; back++) {
      const totals = at(index, hourStart - back * HOUR_MS);
      baseRequests += totals.requests;
      baseDenied += totals.denied;
    }
    if (baseRequests < minRequests || baseRequests === 0) continue;

    const rate = denied / requests;
    const baseRate = baseDenied / baseRequests;
    if (rate < baseRate + minIncrease - EPSILON || rate < denialMinRatio * baseRate - EPSILON) continue;

    const factor = baseRate === 0 ? '' : `, ${fmt(rate / baseRate)}×`;
    findings.push({
      kind: 'denial_jump',
      user_id: userId,
      hour_start: iso(hourStart),
      observed: round(rate),
      baseline_mean: round(baseRate),
      baseline_rate: round(baseRate),
      requests: round(requests),
      denied: round(denied),
      detail:
        `Denial rate ${percent(rate)} (${fmt(denied)} of ${fmt(requests)} requests) in the hour from ${clock(hourStart)} UTC,` +
        ` up from ${percent(baseRate)} over the previous ${baselineHours} hours (+${fmt((rate - baseRate) * 100)} points${factor})`,
    });
  }
  return findings;
}

/** Sums the points per UTC hour; throws RangeError on a non-finite or negative figure. */
function indexHours(points: readonly HourPoint[]): HourIndex {
  const index = new Map<number, HourTotals>();
  points.forEach((point, i) => {
    const { hourStart, requests, denied } = point;
    if (!Number.isFinite(hourStart) || !Number.isFinite(requests) || !Number.isFinite(denied) || requests < 0 || denied < 0) {
      throw new RangeError(`patterns: point ${i} needs a finite hourStart and non-negative finite requests and denied`);
    }
    const hour = Math.floor(hourStart / HOUR_MS) * HOUR_MS;
    const totals = index.get(hour);
    if (totals === undefined) index.set(hour, { requests, denied });
    else {
      totals.requests += requests;
      totals.denied += denied;
    }
  });
  return index;
}

function resolve(options: { now: number } & Partial<PatternOptions>): Resolved {
  const resolved: Resolved = { ...DEFAULT_PATTERN_OPTIONS, now: options.now };
  for (const key of Object.keys(DEFAULT_PATTERN_OPTIONS) as (keyof PatternOptions)[]) {
    const value = options[key];
    if (value !== undefined) resolved[key] = value;
  }
  if (!Number.isFinite(resolved.now)) throw new RangeError('patterns: now must be a finite epoch ms');
  for (const key of ['days', 'recentHours', 'baselineHours'] as const) {
    if (!Number.isInteger(resolved[key]) || resolved[key] < 1) throw new RangeError(`patterns: ${key} must be an integer ≥ 1`);
  }
  for (const key of ['zThreshold', 'minRequests', 'minIncrease', 'denialMinRatio', 'peakMinSigmas', 'peakMinRatio'] as const) {
    if (!Number.isFinite(resolved[key]) || resolved[key] < 0) throw new RangeError(`patterns: ${key} must be a finite number ≥ 0`);
  }
  return resolved;
}

/** Start of the last hour that ended at or before `now`. */
function lastCompleteHour(now: number): number {
  return Math.floor(now / HOUR_MS) * HOUR_MS - HOUR_MS;
}

/** Starts of the `recentHours` latest complete hours, oldest first. */
function recentHours(options: Resolved): number[] {
  const last = lastCompleteHour(options.now);
  const hours: number[] = [];
  for (let back = options.recentHours - 1; back >= 0; back--) hours.push(last - back * HOUR_MS);
  return hours;
}

function at(index: HourIndex, hourStart: number): HourTotals {
  return index.get(hourStart) ?? NO_TRAFFIC;
}

function hourOfDay(epochMs: number): number {
  return ((Math.floor(epochMs / HOUR_MS) % 24) + 24) % 24;
}

/** Population mean and standard deviation; both 0 for no values. */
function meanStd(values: readonly number[]): { mean: number; std: number } {
  if (values.length === 0) return { mean: 0, std: 0 };
  const mean = values.reduce((sum, v) => sum + v, 0) / values.length;
  const variance = values.reduce((sum, v) => sum + (v - mean) ** 2, 0) / values.length;
  return { mean, std: Math.sqrt(variance) };
}

function round(value: number, decimals = DECIMALS): number {
  const factor = 10 ** decimals;
  return Math.round(value * factor) / factor + 0; // + 0 turns -0 into 0
}

function fmt(value: number): string {
  return String(round(value, 2));
}

function percent(rate: number): string {
  return `${(rate * 100).toFixed(1)}%`;
}

function iso(epochMs: number): string {
  return new Date(epochMs).toISOString();
}

function clock(epochMs: number): string {
  return iso(epochMs).slice(11, 16);
}
