/**
 * Usage analytics, pattern analysis and usage reports, behind the admin token:
 *
 * - GET /rate-limiting/analytics: time series, top consumers, denials by tier and limit,
 *   users near or over their quota (80/90/100 %), overage per user.
 * - GET /rate-limiting/analytics/patterns: hour-of-day profile, peak hours, spikes and
 *   denial-rate jumps per user (src/analytics/patterns.ts).
 * - GET /rate-limiting/reports/usage: requests, cost and overage per user, tier or key
 *   for a period, as JSON or CSV, for billing.
 *
 * Everything is read from the usage tables, which lag the decisions by at most one flush
 * interval (USAGE_FLUSH_INTERVAL_MS) per worker.
 */
import type { FastifyError, FastifyInstance } from 'fastify';
import type { UserLimits } from '../../accounts/user-limits.js';
import { analyzeUser, DEFAULT_PATTERN_OPTIONS, type UserPatterns } from '../../analytics/patterns.js';
import { LENGTH_MS, UsageStore, type Granularity, type Totals, type UsageFilter } from '../../analytics/store.js';
import { COUNTERS, DAY_MS, HOUR_MS, MINUTE_MS } from '../../analytics/usage-row.js';
import type { Config } from '../../config/types.js';
import { windowStart } from '../../node/engine.js';
import type { Queryable } from '../../storage/db/database.js';
import { DatabaseUnavailableError } from '../../storage/db/errors.js';
import { adminAuth } from '../admin-auth.js';
import { ApiError } from '../errors.js';
import { userIdSchema } from '../schemas.js';

export interface AnalyticsDeps {
  db: Queryable;
  users: UserLimits;
  config: Config;
  tiers: string[];
  clock: () => number;
}

/** Quota thresholds reported, in percent of the user's quota. */
export const QUOTA_THRESHOLDS = [80, 90, 100] as const;
/** Users whose quota use is examined per call (largest use first). */
const QUOTA_SCAN_LIMIT = 10_000;
/** Points a time series may have. */
const MAX_POINTS = 10_000;
/** Longest range one query may cover. */
const MAX_RANGE_MS = 400 * DAY_MS;

const ISO_OR_MS = { type: 'string', minLength: 1, maxLength: 40 } as const;
/** Query strings are text; numbers are read by numberParam, which names the field. */
const NUMBER = { type: 'string', maxLength: 20 } as const;

const rangeQuery = {
  from: ISO_OR_MS,
  to: ISO_OR_MS,
  user_id: userIdSchema(),
  key_id: { type: 'string', minLength: 1, maxLength: 128 },
} as const;

interface RangeQuery {
  from?: string;
  to?: string;
  user_id?: string;
  tier?: string;
  key_id?: string;
}

export function registerAnalyticsRoutes(app: FastifyInstance, deps: AnalyticsDeps): void {
  void app.register(async (scope) => {
    scope.addHook('onRequest', adminAuth(deps.config.admin.token));
    scope.setErrorHandler((error: FastifyError) => {
      if (error instanceof DatabaseUnavailableError) throw new ApiError('SERVICE_UNAVAILABLE', 'the usage database is unavailable; try again later');
      throw error;
    });
    analyticsRoute(scope, deps);
    patternsRoute(scope, deps);
    reportRoute(scope, deps);
  });
}

function requireEnabled(enabled: boolean, what: string, env: string): void {
  if (!enabled) throw new ApiError('FORBIDDEN', `${what} ${what.endsWith('s') ? 'are' : 'is'} disabled: set ${env}=true to enable`);
}

function analyticsRoute(app: FastifyInstance, deps: AnalyticsDeps): void {
  const { config } = deps;
  const store = new UsageStore(deps.db);
  app.get<{ Querystring: RangeQuery & { granularity?: Granularity; top?: string } }>(
    '/rate-limiting/analytics',
    {
      schema: {
        querystring: {
          type: 'object',
          additionalProperties: false,
          properties: {
            ...rangeQuery,
            tier: { type: 'string', enum: deps.tiers },
            granularity: { type: 'string', enum: ['minute', 'hour', 'day'] },
            top: NUMBER,
          },
        },
      },
    },
    async (request) => {
      requireEnabled(config.usage_analytics.enabled, 'usage analytics', 'USAGE_ANALYTICS_ENABLED');
      const now = deps.clock();
      const q = request.query;
      const topN = numberParam(q.top, 'top', { min: 1, max: 1000, integer: true }) ?? 10;
      const filter = rangeFilter(q, now, now - DAY_MS);
      const span = filter.to - filter.from;
      const granularity = q.granularity ?? (span <= 6 * HOUR_MS ? 'minute' : span <= 7 * DAY_MS ? 'hour' : 'day');
      const points = Math.ceil(span / LENGTH_MS[granularity]);
      if (points > MAX_POINTS) {
        throw new ApiError('INVALID_FIELD', `granularity ${granularity} gives ${points} points over this range; at most ${MAX_POINTS} (choose a coarser granularity)`, 'granularity');
      }
      checkMinuteRetention(granularity, filter, now, config);
      // Totals, top consumers, denials and overage are read from the finest table the
      // range needs, so they are exact whatever the series' granularity.
      const exact = exactGranularity(filter, now);
      checkMinuteRetention(exact, filter, now, config, 'from');
      const [series, totals, top, byTier, overage, quota] = await Promise.all([
        store.timeseries(filter, granularity, MAX_POINTS),
        store.totals(filter, exact),
        store.topConsumers(filter, exact, topN),
        store.byTier(filter, exact),
        store.overage(filter, exact, 1000),
        quotaSection(store, deps, q, now),
      ]);
      return {
        from: iso(filter.from),
        to: iso(filter.to),
        granularity,
        filter: { user_id: q.user_id ?? null, tier: q.tier ?? null, key_id: q.key_id ?? null },
        totals: withRates(totals),
        timeseries: series.map(({ bucket, ...t }) => ({ bucket: iso(bucket), ...withRates(t) })),
        top_consumers: top.map(({ user_id, tier, ...t }) => ({ user_id, tier, ...withRates(t) })),
        denials_by_tier: byTier.map(({ tier, ...t }) => denialBreakdown(tier, t)),
        quota,
        overage: overage.map((o) => ({ user_id: o.user_id, overage_units: o.overage, cost: o.cost })),
      };
    },
  );
}

/** Users at or past 80/90/100 % of their quota in the current quota window. */
async function quotaSection(store: UsageStore, deps: AnalyticsDeps, q: RangeQuery, now: number) {
  const { config, users } = deps;
  if (!config.quota_management.enabled) return null;
  const windowMs = config.quota_management.reset_interval * 1000;
  const start = windowStart(now, windowMs);
  const used = await store.quotaUsage(start, now + MINUTE_MS, QUOTA_SCAN_LIMIT, { userId: q.user_id, tier: q.tier });
  const flagged: Array<{ user_id: string; tier: string; used: number; quota: number; percent: number; threshold: number }> = [];
  for (const row of used) {
    const found = users.limitsFor(row.user_id, row.tier);
    const { limits } = found instanceof Promise ? await found : found;
    const percent = (row.used / limits.perDay) * 100;
    const threshold = [...QUOTA_THRESHOLDS].reverse().find((t) => percent >= t);
    if (threshold === undefined) continue;
    flagged.push({ user_id: row.user_id, tier: limits.tier, used: row.used, quota: limits.perDay, percent: round(percent, 2), threshold });
  }
  flagged.sort((a, b) => b.percent - a.percent || (a.user_id < b.user_id ? -1 : 1));
  const count = (t: number) => flagged.filter((u) => u.threshold === t).length;
  return {
    window_start: iso(start),
    window_end: iso(start + windowMs),
    thresholds: QUOTA_THRESHOLDS,
    counts: { at_80: count(80), at_90: count(90), over_100: count(100) },
    users: flagged,
    scanned_users: used.length,
    truncated: used.length === QUOTA_SCAN_LIMIT,
  };
}

function patternsRoute(app: FastifyInstance, deps: AnalyticsDeps): void {
  const { config } = deps;
  const store = new UsageStore(deps.db);
  app.get<{ Querystring: { user_id?: string; tier?: string; days?: string; recent_hours?: string; z_threshold?: string; min_requests?: string; limit?: string } }>(
    '/rate-limiting/analytics/patterns',
    {
      schema: {
        querystring: {
          type: 'object',
          additionalProperties: false,
          properties: {
            user_id: userIdSchema(),
            tier: { type: 'string', enum: deps.tiers },
            days: NUMBER,
            recent_hours: NUMBER,
            z_threshold: NUMBER,
            min_requests: NUMBER,
            limit: NUMBER,
          },
        },
      },
    },
    async (request) => {
      requireEnabled(config.usage_analytics.enabled, 'usage analytics', 'USAGE_ANALYTICS_ENABLED');
      requireEnabled(config.usage_analytics.pattern_analysis_enabled, 'pattern analysis', 'USAGE_PATTERN_ANALYSIS_ENABLED');
      const q = request.query;
      const now = deps.clock();
      const d = DEFAULT_PATTERN_OPTIONS;
      const options = {
        ...d,
        now,
        days: numberParam(q.days, 'days', { min: 1, max: 90, integer: true }) ?? d.days,
        recentHours: numberParam(q.recent_hours, 'recent_hours', { min: 1, max: 48, integer: true }) ?? d.recentHours,
        zThreshold: numberParam(q.z_threshold, 'z_threshold', { min: 0.1, max: 100, integer: false }) ?? d.zThreshold,
        minRequests: numberParam(q.min_requests, 'min_requests', { min: 1, max: 1_000_000_000, integer: true }) ?? d.minRequests,
      };
      const limit = numberParam(q.limit, 'limit', { min: 1, max: 1000, integer: true }) ?? 100;
      // The history the analysis reads: the profile's days before the recent hours, and
      // the denial baseline before them, whichever reaches further back.
      const end = windowStart(now, HOUR_MS);
      const from = end - Math.max((options.days + 1) * DAY_MS, (options.recentHours + options.baselineHours) * HOUR_MS);
      const userIds = q.user_id !== undefined ? [q.user_id] : await store.activeUsers(end - options.recentHours * HOUR_MS, end, limit, q.tier);
      const analyses: UserPatterns[] = [];
      for (const userId of userIds) {
        analyses.push(analyzeUser(userId, await store.hourly(userId, from, end), options));
      }
      return {
        analyzed_at: iso(now),
        options: {
          days: options.days,
          recent_hours: options.recentHours,
          z_threshold: options.zThreshold,
          min_requests: options.minRequests,
          baseline_hours: options.baselineHours,
          denial_min_increase: options.minIncrease,
          denial_min_ratio: options.denialMinRatio,
        },
        findings: analyses.flatMap((a) => a.findings),
        users: analyses,
      };
    },
  );
}

type GroupBy = 'user' | 'tier' | 'key';

function reportRoute(app: FastifyInstance, deps: AnalyticsDeps): void {
  const { config } = deps;
  const store = new UsageStore(deps.db);
  app.get<{ Querystring: RangeQuery & { group_by?: GroupBy; format?: 'json' | 'csv' } }>(
    '/rate-limiting/reports/usage',
    {
      schema: {
        querystring: {
          type: 'object',
          additionalProperties: false,
          properties: {
            ...rangeQuery,
            tier: { type: 'string', enum: deps.tiers },
            group_by: { type: 'string', enum: ['user', 'tier', 'key'], default: 'user' },
            format: { type: 'string', enum: ['json', 'csv'], default: 'json' },
          },
        },
      },
    },
    async (request, reply) => {
      requireEnabled(config.usage_analytics.enabled, 'usage analytics', 'USAGE_ANALYTICS_ENABLED');
      requireEnabled(config.usage_analytics.reporting_enabled, 'usage reporting', 'USAGE_REPORTING_ENABLED');
      const now = deps.clock();
      const q = request.query;
      // Default period: the current UTC month so far.
      const monthStart = Date.UTC(new Date(now).getUTCFullYear(), new Date(now).getUTCMonth(), 1);
      const filter = rangeFilter(q, now, monthStart);
      const granularity = exactGranularity(filter, now);
      checkMinuteRetention(granularity, filter, now, config, 'from');
      const groupBy = q.group_by ?? 'user';
      const rows = await reportRows(store, filter, granularity, groupBy);
      const total = rows.reduce<Totals>((sum, row) => {
        for (const c of COUNTERS) sum[c] += row[c];
        return sum;
      }, Object.fromEntries(COUNTERS.map((c) => [c, 0])) as Totals);
      const period = { from: iso(filter.from), to: iso(filter.to) };
      if ((q.format ?? 'json') === 'csv') {
        const name = `usage-${groupBy}-${period.from.slice(0, 10)}-${period.to.slice(0, 10)}.csv`;
        void reply.header('content-type', 'text/csv; charset=utf-8').header('content-disposition', `attachment; filename="${name}"`);
        return toCsv(period, groupBy, rows);
      }
      return {
        period,
        group_by: groupBy,
        granularity_read: granularity,
        generated_at: iso(now),
        rows: rows.map((row) => reportRow(groupBy, row)),
        totals: reportTotals(total),
      };
    },
  );
}

type ReportRow = { user_id?: string; tier?: string; key_id?: string } & Totals;

async function reportRows(store: UsageStore, filter: UsageFilter, granularity: Granularity, groupBy: GroupBy): Promise<ReportRow[]> {
  if (groupBy === 'key') return store.byKey(filter, granularity);
  if (groupBy === 'user') return store.byUser(filter, granularity);
  return store.byTier(filter, granularity);
}

/** The billing columns of a report, in CSV order after the group columns. */
const REPORT_FIELDS = [
  ['requests', 'requests'],
  ['allowed', 'allowed'],
  ['denied', 'denied'],
  ['cost', 'cost'],
  ['overage', 'overage_units'],
  ['grace', 'grace_units'],
  ['denied_rate_limited', 'denied_rate_limited'],
  ['denied_quota', 'denied_quota_exceeded'],
  ['denied_key', 'denied_key'],
  ['denied_disabled', 'denied_user_disabled'],
  ['denied_unavailable', 'denied_unavailable'],
] as const;

const GROUP_COLUMNS: Record<GroupBy, Array<'user_id' | 'tier' | 'key_id'>> = {
  user: ['user_id', 'tier'],
  tier: ['tier'],
  key: ['key_id', 'user_id', 'tier'],
};

function reportTotals(t: Totals): Record<string, number> {
  return Object.fromEntries(REPORT_FIELDS.map(([from, to]) => [to, t[from]]));
}

function reportRow(groupBy: GroupBy, row: ReportRow): Record<string, unknown> {
  const group = Object.fromEntries(GROUP_COLUMNS[groupBy].map((c) => [c, c === 'key_id' && row.key_id === '' ? null : row[c]]));
  return { ...group, ...reportTotals(row) };
}

function toCsv(period: { from: string; to: string }, groupBy: GroupBy, rows: ReportRow[]): string {
  const header = ['period_start', 'period_end', ...GROUP_COLUMNS[groupBy], ...REPORT_FIELDS.map(([, to]) => to)];
  const lines = [header.join(',')];
  for (const row of rows) {
    const cells = [period.from, period.to, ...GROUP_COLUMNS[groupBy].map((c) => row[c] ?? ''), ...REPORT_FIELDS.map(([from]) => row[from])];
    lines.push(cells.map(csvCell).join(','));
  }
  return lines.join('\r\n') + '\r\n';
}

/**
 * One CSV cell (RFC 4180): quoted when it holds a comma, quote or line break. A text cell a
 * spreadsheet would run as a formula (= + - @ at the start) gets a leading apostrophe.
 */
export function csvCell(value: string | number): string {
  if (typeof value === 'number') return String(value);
  const text = /^[=+\-@\t\r]/.test(value) ? `'${value}` : value;
  return /[",\r\n]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
}

/** The requested range and filters; 400 naming the field when a time cannot be read. */
function rangeFilter(q: RangeQuery, now: number, defaultFrom: number): UsageFilter {
  // The default end is just after now, so usage of the current moment is included.
  const to = q.to === undefined ? now + 1 : parseTime(q.to, 'to');
  const from = q.from === undefined ? Math.min(defaultFrom, to - 1) : parseTime(q.from, 'from');
  if (from >= to) throw new ApiError('INVALID_FIELD', 'from must be before to', 'from');
  if (to - from > MAX_RANGE_MS) throw new ApiError('INVALID_FIELD', `the range may cover at most ${MAX_RANGE_MS / DAY_MS} days`, 'from');
  return { from, to, userId: q.user_id, tier: q.tier, keyId: q.key_id };
}

/** A number from the query string within [min, max]; undefined when absent; 400 naming the field otherwise. */
function numberParam(text: string | undefined, field: string, range: { min: number; max: number; integer: boolean }): number | undefined {
  if (text === undefined) return undefined;
  const value = (range.integer ? /^\d+$/ : /^\d+(\.\d+)?$/).test(text) ? Number(text) : NaN;
  if (!(value >= range.min && value <= range.max)) {
    throw new ApiError('INVALID_FIELD', `${field} must be ${range.integer ? 'an integer' : 'a number'} from ${range.min} to ${range.max}`, field);
  }
  return value;
}

/** An ISO 8601 time or epoch milliseconds. */
function parseTime(text: string, field: string): number {
  const ms = /^\d+$/.test(text) ? Number(text) : Date.parse(text);
  if (!Number.isFinite(ms) || ms < 0 || ms > 8.64e15) {
    throw new ApiError('INVALID_FIELD', `${field} must be an ISO 8601 time (2026-01-31T00:00:00Z) or epoch milliseconds`, field);
  }
  return ms;
}

/**
 * The coarsest table whose sums over the range are exact: its buckets must start on
 * `from`, and end on `to` unless `to` is past now (no usage exists after now).
 */
function exactGranularity(filter: UsageFilter, now: number): Granularity {
  const aligned = (ms: number) => filter.from % ms === 0 && (filter.to % ms === 0 || filter.to > now);
  if (aligned(DAY_MS)) return 'day';
  if (aligned(HOUR_MS)) return 'hour';
  return 'minute';
}

/** Minute rows are kept for USAGE_MINUTE_RETENTION_HOURS: a range before that cannot be read from them. */
function checkMinuteRetention(granularity: Granularity, filter: UsageFilter, now: number, config: Config, field = 'granularity'): void {
  if (granularity !== 'minute') return;
  const hours = config.usage_analytics.minute_retention_hours;
  if (filter.from < now - hours * HOUR_MS) {
    throw new ApiError(
      'INVALID_FIELD',
      `per-minute usage is kept for ${hours} hours (USAGE_MINUTE_RETENTION_HOURS); start the range on a whole hour, or use hour or day granularity, for older usage`,
      field,
    );
  }
}

function withRates(t: Totals) {
  return { ...t, denial_rate: t.requests === 0 ? 0 : round(t.denied / t.requests, 4) };
}

function denialBreakdown(tier: string, t: Totals) {
  return {
    tier,
    requests: t.requests,
    denied: t.denied,
    denial_rate: t.requests === 0 ? 0 : round(t.denied / t.requests, 4),
    by_code: {
      RATE_LIMITED: t.denied_rate_limited,
      QUOTA_EXCEEDED: t.denied_quota,
      key: t.denied_key,
      USER_DISABLED: t.denied_disabled,
      UNAVAILABLE: t.denied_unavailable,
    },
    by_limit: { burst: t.limited_burst, minute: t.limited_minute, hour: t.limited_hour, day: t.limited_day },
  };
}

function round(value: number, decimals: number): number {
  const f = 10 ** decimals;
  return Math.round(value * f) / f;
}

function iso(ms: number): string {
  return new Date(ms).toISOString();
}
