/**
 * JSON schemas of the HTTP API. Request schemas reject bad input with the field named;
 * response schemas make serialization fast and keep anything not listed (secrets,
 * internal state) out of responses.
 */
import { DECISION_CODES } from '../node/engine.js';
import { LIMIT_NAMES } from '../node/limits.js';

export const USER_ID_MAX = 256;
export const BATCH_MAX = 1000;
export const TEST_SCENARIOS_MAX = 20;
export const TEST_REQUESTS_MAX = 100_000;

export function userIdSchema() {
  return { type: 'string', minLength: 1, maxLength: USER_ID_MAX, pattern: '^[^\\u0000-\\u001f\\u007f]+$' } as const;
}

export function checkItemSchema(tiers: string[], maxCost: number) {
  return {
    type: 'object',
    properties: {
      user_id: userIdSchema(),
      tier: { type: 'string', enum: tiers },
      api_key: { type: 'string', maxLength: 512 },
      cost: { type: 'integer', minimum: 0, maximum: maxCost, default: 1 },
    },
  } as const;
}

const limitStatusSchema = {
  type: 'object',
  required: ['limit', 'remaining', 'reset_at'],
  properties: {
    limit: { type: 'integer' },
    remaining: { type: 'integer' },
    reset_at: { type: 'integer', description: 'epoch ms when this limit is full again' },
  },
} as const;

export const quotaSchema = {
  type: 'object',
  required: ['current_usage', 'limit', 'reset_time'],
  properties: {
    current_usage: { type: 'integer' },
    limit: { type: 'integer' },
    reset_time: { type: 'string', format: 'date-time' },
  },
} as const;

export const checkResultSchema = {
  type: 'object',
  required: ['allowed', 'code', 'user_id', 'tier', 'cost', 'limited_by', 'retry_after_ms', 'limits', 'quota', 'mode', 'decided_at'],
  properties: {
    allowed: { type: 'boolean' },
    code: { type: 'string', enum: DECISION_CODES },
    user_id: { type: 'string' },
    tier: { type: 'string' },
    cost: { type: 'integer' },
    limited_by: { type: ['string', 'null'], enum: [...LIMIT_NAMES, null] },
    retry_after_ms: { type: ['integer', 'null'], description: '0 when allowed; null when the request can never pass' },
    limits: {
      type: 'object',
      required: [...LIMIT_NAMES],
      properties: Object.fromEntries(LIMIT_NAMES.map((name) => [name, limitStatusSchema])),
    },
    quota: quotaSchema,
    mode: { type: 'string', description: 'which path decided: local, forwarded, redis or fallback' },
    state: { type: 'string', description: 'local decisions: memory, loaded (from Redis for this check) or fresh (Redis unreachable)' },
    decided_at: { type: 'integer', description: 'epoch ms the decision was made at, by the deciding node' },
  },
} as const;

export const tierFiguresSchema = {
  type: 'object',
  properties: {
    requests_per_minute: { type: 'integer' },
    requests_per_hour: { type: 'integer' },
    requests_per_day: { type: 'integer' },
    burst_limit: { type: 'integer' },
  },
} as const;
