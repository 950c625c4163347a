import type { Decision, LimitStatus } from '../node/engine.js';
import type { EffectiveLimits } from '../node/limits.js';

/**
 * Rate-limit response headers for one decision: IETF `RateLimit-Policy` / `RateLimit`
 * (draft-ietf-httpapi-ratelimit-headers-10), the customary `X-RateLimit-*` for the
 * tightest limit, and `Retry-After` / `retry-after-ms` on denials.
 */
export type HeaderMap = Record<string, string>;

const policyCache = new WeakMap<EffectiveLimits, Map<number, string>>();

/** `RateLimit-Policy` depends only on the limits (and the effective minute limit). */
function policyHeader(limits: EffectiveLimits, minuteLimit: number): string {
  let byMinute = policyCache.get(limits);
  if (byMinute === undefined) {
    byMinute = new Map();
    policyCache.set(limits, byMinute);
  }
  let header = byMinute.get(minuteLimit);
  if (header === undefined) {
    const burstWindow = Math.max(1, Math.ceil((limits.burst * limits.minuteMs) / limits.perMinute / 1000));
    header =
      `"burst";q=${limits.burst};w=${burstWindow}, ` +
      `"minute";q=${minuteLimit};w=${Math.round(limits.minuteMs / 1000)}, ` +
      `"hour";q=${limits.perHour};w=${Math.round(limits.hourMs / 1000)}, ` +
      `"day";q=${limits.perDay};w=${Math.round(limits.dayMs / 1000)}`;
    byMinute.set(minuteLimit, header);
  }
  return header;
}

function secondsUntil(at: number, now: number): number {
  return at <= now ? 0 : Math.ceil((at - now) / 1000);
}

export function rateLimitHeaders(decision: Decision, limits: EffectiveLimits): HeaderMap {
  const { now } = decision;
  const { burst, minute, hour, day } = decision.limits;
  let tightest: LimitStatus = burst;
  if (minute.remaining < tightest.remaining) tightest = minute;
  if (hour.remaining < tightest.remaining) tightest = hour;
  if (day.remaining < tightest.remaining) tightest = day;
  const headers: HeaderMap = {
    'ratelimit-policy': policyHeader(limits, minute.limit),
    ratelimit:
      `"burst";r=${burst.remaining};t=${secondsUntil(burst.reset_at, now)}, ` +
      `"minute";r=${minute.remaining};t=${secondsUntil(minute.reset_at, now)}, ` +
      `"hour";r=${hour.remaining};t=${secondsUntil(hour.reset_at, now)}, ` +
      `"day";r=${day.remaining};t=${secondsUntil(day.reset_at, now)}`,
    'x-ratelimit-limit': String(tightest.limit),
    'x-ratelimit-remaining': String(tightest.remaining),
    'x-ratelimit-reset': String(secondsUntil(tightest.reset_at, now)),
  };
  if (!decision.allowed && decision.retryAfterMs !== null) {
    headers['retry-after'] = String(Math.ceil(decision.retryAfterMs / 1000));
    headers['retry-after-ms'] = String(decision.retryAfterMs);
  }
  return headers;
}
