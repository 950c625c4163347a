import type { FastifyInstance } from 'fastify';
import { decide, expectedAdmittedFromRest, newUserState, type DecisionCode } from '../../node/engine.js';
import type { AppDeps } from '../app.js';
import { TEST_REQUESTS_MAX, TEST_SCENARIOS_MAX, userIdSchema } from '../schemas.js';

interface Scenario {
  user_id: string;
  tier?: string;
  requests: number;
  cost: number;
}

/**
 * `POST /rate-limiting/test`: the seed's self-test. Each scenario's requests run
 * back-to-back, at one instant, through the real engine on a fresh state of their own,
 * so no real user's counters are touched. `expected_allowed` comes from the closed
 * form of the semantics for an instant burst from rest, not from the engine.
 */
export function registerTestRoutes(app: FastifyInstance, deps: AppDeps): void {
  const { tiers, clock, config } = deps;
  app.post<{ Body: { test_scenarios: Scenario[] } }>(
    '/rate-limiting/test',
    {
      schema: {
        body: {
          type: 'object',
          required: ['test_scenarios'],
          properties: {
            test_scenarios: {
              type: 'array',
              minItems: 1,
              maxItems: TEST_SCENARIOS_MAX,
              items: {
                type: 'object',
                required: ['user_id', 'requests'],
                properties: {
                  user_id: userIdSchema(),
                  tier: { type: 'string', enum: tiers.names },
                  requests: { type: 'integer', minimum: 1, maximum: TEST_REQUESTS_MAX },
                  cost: { type: 'integer', minimum: 1, maximum: config.limiter.max_cost, default: 1 },
                },
              },
            },
          },
        },
        response: {
          200: {
            type: 'object',
            properties: {
              all_match: { type: 'boolean' },
              results: {
                type: 'array',
                items: {
                  type: 'object',
                  properties: {
                    user_id: { type: 'string' },
                    tier: { type: 'string' },
                    requests: { type: 'integer' },
                    cost: { type: 'integer' },
                    allowed: { type: 'integer' },
                    denied: { type: 'integer' },
                    expected_allowed: { type: 'integer' },
                    matches: { type: 'boolean' },
                    codes: { type: 'object', additionalProperties: { type: 'integer' } },
                    first_denied_at_request: { type: ['integer', 'null'] },
                  },
                },
              },
            },
          },
        },
      },
    },
    async (request) => {
      const now = clock();
      const results = request.body.test_scenarios.map((scenario) => {
        const tier = tiers.tierForHint(scenario.tier);
        const limits = tiers.limitsOf(tier);
        const state = newUserState();
        const codes: Partial<Record<DecisionCode, number>> = {};
        let allowed = 0;
        let firstDenied: number | null = null;
        for (let i = 0; i < scenario.requests; i++) {
          const decision = decide(state, limits, scenario.cost, now);
          codes[decision.code] = (codes[decision.code] ?? 0) + 1;
          if (decision.allowed) allowed++;
          else firstDenied ??= i + 1;
        }
        const expected = expectedAdmittedFromRest(limits, scenario.requests, scenario.cost);
        return {
          user_id: scenario.user_id,
          tier: limits.tier,
          requests: scenario.requests,
          cost: scenario.cost,
          allowed,
          denied: scenario.requests - allowed,
          expected_allowed: expected,
          matches: allowed === expected,
          codes,
          first_denied_at_request: firstDenied,
        };
      });
      return { all_match: results.every((r) => r.matches), results };
    },
  );
}
