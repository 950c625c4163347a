import type { FastifyInstance } from 'fastify';
import type { AppDeps } from '../app.js';
import { ApiError } from '../errors.js';

/**
 * `POST /rate-limiting/validate-key`: whether an API key is good, without consuming
 * anything. Answered from the key cache like a check (format and checksum first, so a
 * mistyped key never reaches the database).
 */
export function registerKeyRoutes(app: FastifyInstance, deps: AppDeps): void {
  const { config } = deps;
  app.post<{ Body: { api_key: string } }>(
    '/rate-limiting/validate-key',
    {
      schema: {
        body: { type: 'object', required: ['api_key'], properties: { api_key: { type: 'string', minLength: 1, maxLength: 512 } } },
        response: {
          200: {
            type: 'object',
            required: ['valid', 'code', 'user_id', 'tier', 'expires_at'],
            properties: {
              valid: { type: 'boolean' },
              code: { type: 'string', enum: ['OK', 'INVALID_KEY', 'KEY_EXPIRED', 'KEY_REVOKED', 'KEY_STORE_UNAVAILABLE', 'USER_DISABLED'] },
              user_id: { type: ['string', 'null'] },
              tier: { type: ['string', 'null'] },
              expires_at: { type: ['string', 'null'], format: 'date-time' },
            },
          },
        },
      },
    },
    async (request) => {
      if (!config.api_key_management.enabled || !config.api_key_management.validation_enabled) {
        throw new ApiError('FORBIDDEN', 'API key validation is disabled (API_KEY_MANAGEMENT_ENABLED / API_KEY_VALIDATION_ENABLED)');
      }
      const { accounts } = deps;
      if (accounts === null) return { valid: false, code: 'KEY_STORE_UNAVAILABLE', user_id: null, tier: null, expires_at: null };
      const key = await accounts.keys.resolve(request.body.api_key);
      const expiresAt = key.expiresAt === null ? null : new Date(key.expiresAt).toISOString();
      if (key.code !== 'valid' || key.userId === null) {
        return { valid: false, code: key.code === 'valid' ? 'INVALID_KEY' : key.code, user_id: key.userId, tier: null, expires_at: expiresAt };
      }
      const user = await deps.users.limitsFor(key.userId, undefined);
      if (user.disabled) return { valid: false, code: 'USER_DISABLED', user_id: key.userId, tier: user.limits.tier, expires_at: expiresAt };
      return { valid: true, code: 'OK', user_id: key.userId, tier: user.limits.tier, expires_at: expiresAt };
    },
  );
}
