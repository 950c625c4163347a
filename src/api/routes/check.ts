import type { FastifyInstance } from 'fastify';
import type { CheckOutcome } from '../../node/decider.js';
import type { Decision } from '../../node/engine.js';
import type { KeyCheck } from '../../accounts/key-cache.js';
import { BATCH_BODY_LIMIT, type AppDeps } from '../app.js';
import { ApiError } from '../errors.js';
import { rateLimitHeaders } from '../headers.js';
import { BATCH_MAX, checkItemSchema, checkResultSchema, quotaSchema, tierFiguresSchema, userIdSchema } from '../schemas.js';

interface CheckBody {
  user_id?: string;
  tier?: string;
  api_key?: string;
  cost: number;
}

/**
 * Decides one check body. An API key (when key management and validation are on) names
 * the user and overrides any user_id and tier in the body; a bad key is refused with its
 * code before any counter is touched.
 */
function decideBody(deps: AppDeps, body: CheckBody, field: string): CheckOutcome | Promise<CheckOutcome> {
  const { decider, accounts, config } = deps;
  const cost = body.cost;
  const keysOn = config.api_key_management.enabled && config.api_key_management.validation_enabled;
  if (body.api_key !== undefined && keysOn) {
    if (accounts === null) return decider.refuse({ userId: body.user_id ?? '', tier: body.tier, cost }, 'KEY_STORE_UNAVAILABLE');
    const found = accounts.keys.resolve(body.api_key);
    return found instanceof Promise ? found.then((key) => decideWithKey(deps, body, key)) : decideWithKey(deps, body, found);
  }
  if (body.user_id === undefined) {
    throw new ApiError('INVALID_FIELD', `${field}user_id is required (or api_key)`, `${field}user_id`);
  }
  return decider.check({ userId: body.user_id, tier: body.tier, cost });
}

/** A check whose API key was resolved: a valid key decides for its user, any other answer refuses. */
function decideWithKey({ decider }: AppDeps, body: CheckBody, key: KeyCheck): CheckOutcome | Promise<CheckOutcome> {
  const keyId = key.keyId ?? undefined;
  if (key.code === 'valid') return decider.check({ userId: key.userId!, tier: undefined, cost: body.cost, keyId });
  return decider.refuse({ userId: key.userId ?? body.user_id ?? '', tier: body.tier, cost: body.cost, keyId }, key.code);
}

let lastResetMs = -1;
let lastResetIso = '';
/** ISO time of a window end; consecutive decisions share it, so the last one is kept. */
function isoTime(ms: number): string {
  if (ms !== lastResetMs) {
    lastResetMs = ms;
    lastResetIso = new Date(ms).toISOString();
  }
  return lastResetIso;
}

function quotaBody(decision: Decision) {
  const day = decision.limits.day;
  return { current_usage: decision.quotaUsed, limit: day.limit, reset_time: isoTime(day.reset_at) };
}

/** The response body of one check (also one item of a batch). */
export function checkResultBody(outcome: CheckOutcome, cost: number) {
  const { decision } = outcome;
  return {
    allowed: decision.allowed,
    code: decision.code,
    user_id: outcome.userId,
    tier: outcome.tier,
    cost,
    limited_by: decision.limitedBy,
    retry_after_ms: decision.retryAfterMs,
    limits: decision.limits,
    quota: quotaBody(decision),
    mode: outcome.path,
    state: outcome.state,
    decided_at: decision.now,
  };
}

export function registerCheckRoutes(app: FastifyInstance, deps: AppDeps): void {
  const { decider, tiers, config } = deps;
  const itemSchema = checkItemSchema(tiers.names, config.limiter.max_cost);
  const users = deps.users;

  app.post<{ Body: CheckBody }>(
    '/rate-limiting/check',
    { schema: { body: itemSchema, response: { 200: checkResultSchema } } },
    (request, reply) => {
      const body = request.body;
      const send = (outcome: CheckOutcome): void => {
        void reply.headers(rateLimitHeaders(outcome.decision, outcome.limits ?? tiers.limitsOf(outcome.tier))).send(checkResultBody(outcome, body.cost));
      };
      // Local decisions are synchronous; only forwarded and Redis decisions wait.
      const outcome = decideBody(deps, body, '');
      if (outcome instanceof Promise) outcome.then(send, (err: unknown) => reply.send(err));
      else send(outcome);
    },
  );

  app.post<{ Body: { checks: CheckBody[] } }>(
    '/rate-limiting/check/batch',
    {
      bodyLimit: BATCH_BODY_LIMIT,
      schema: {
        body: {
          type: 'object',
          required: ['checks'],
          properties: { checks: { type: 'array', minItems: 1, maxItems: BATCH_MAX, items: itemSchema } },
        },
        response: {
          200: { type: 'object', properties: { results: { type: 'array', items: checkResultSchema } } },
        },
      },
    },
    async (request) => {
      // The users of the batch are looked up together first (new users then cost the
      // database one query per batch, not one each); a failed lookup only means the
      // check below looks the user up again.
      const lookups: Array<Promise<unknown>> = [];
      for (const item of request.body.checks) {
        if (item.user_id === undefined || item.api_key !== undefined) continue;
        const found = users.limitsFor(item.user_id, item.tier);
        if (found instanceof Promise) lookups.push(found.catch(() => undefined));
      }
      if (lookups.length > 0) await Promise.all(lookups);
      // Checks of one batch are decided in order, so two checks of one user see each other.
      const results = [];
      for (const [i, item] of request.body.checks.entries()) {
        const outcome = await decideBody(deps, item, `checks[${i}].`);
        results.push(checkResultBody(outcome, item.cost));
      }
      return { results };
    },
  );

  app.get('/rate-limiting/tiers', {
    schema: {
      response: {
        200: {
          type: 'object',
          properties: {
            default_tier: { type: 'string' },
            tiers: {
              type: 'array',
              items: {
                type: 'object',
                properties: {
                  name: { type: 'string' },
                  enabled: { type: 'boolean' },
                  ...tierFiguresSchema.properties,
                  throttle_requests_per_minute: { type: 'integer' },
                },
              },
            },
            quota: {
              type: 'object',
              properties: {
                enabled: { type: 'boolean' },
                overage_handling: { type: 'string' },
                reset_interval: { type: 'integer' },
                grace_period: { type: 'integer' },
              },
            },
          },
        },
      },
    },
  }, async () => ({
    default_tier: tiers.defaultTier,
    tiers: Object.entries(config.rate_limits).map(([name, limits]) => ({ name, enabled: tiers.isEnabled(name), ...limits })),
    quota: config.quota_management,
  }));

  app.get<{ Params: { user_id: string }; Querystring: { tier?: string } }>(
    '/rate-limiting/quota/:user_id',
    {
      schema: {
        params: { type: 'object', properties: { user_id: userIdSchema() } },
        querystring: { type: 'object', properties: { tier: { type: 'string', enum: tiers.names } } },
        response: {
          200: {
            type: 'object',
            properties: {
              user_id: { type: 'string' },
              tier: { type: 'string' },
              rate_limits: tierFiguresSchema,
              quota: quotaSchema,
              limits: checkResultSchema.properties.limits,
              decided_at: { type: 'integer' },
            },
          },
        },
      },
    },
    async (request) => {
      const { user_id } = request.params;
      const outcome = await decider.read(user_id, request.query.tier);
      const found = users.limitsFor(user_id, request.query.tier);
      const { limits } = found instanceof Promise ? await found : found;
      return {
        user_id,
        tier: outcome.tier,
        rate_limits: {
          requests_per_minute: limits.perMinute,
          requests_per_hour: limits.perHour,
          requests_per_day: limits.perDay,
          burst_limit: limits.burst,
        },
        quota: quotaBody(outcome.decision),
        limits: outcome.decision.limits,
        decided_at: outcome.decision.now,
      };
    },
  );
}
