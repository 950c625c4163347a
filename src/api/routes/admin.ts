/**
 * The admin API: users, their tier and overrides, API keys and quota resets, behind a
 * bearer token (admin-auth.ts). Every write runs in one transaction with its audit entry,
 * then publishes an invalidation event so caches on every process drop the old state.
 * Bodies are checked by validation.ts, which names every problem; responses go through
 * schemas that list what may leave, so key hashes never do, and a key itself only in the
 * answer that created it.
 */
import type { FastifyError, FastifyInstance, FastifyRequest } from 'fastify';
import type { ApiKeyRecord, IssuedKey } from '../../accounts/api-keys-repository.js';
import { AccountError } from '../../accounts/errors.js';
import type { InvalidationBus, InvalidationEvent } from '../../accounts/invalidation.js';
import { accountRepositories, type AccountRepositories } from '../../accounts/repositories.js';
import { MAX_PAGE_SIZE, type UserRecord } from '../../accounts/users-repository.js';
import { validateNewKey, validateNewUser, validateRotation, validateUserPatch, type Validated } from '../../accounts/validation.js';
import type { Logger } from '../../observability/logger.js';
import type { Database } from '../../storage/db/database.js';
import { DatabaseUnavailableError } from '../../storage/db/errors.js';
import { adminActor, adminAuth } from '../admin-auth.js';
import { ApiError, errorBodySchema } from '../errors.js';
import { tierFiguresSchema, userIdSchema } from '../schemas.js';

export interface AdminConfig {
  /** Empty: the admin API is off (403 everywhere). */
  adminToken: string;
  /** api_key_management.generation_enabled */
  generationEnabled: boolean;
  /** api_key_management.rotation_enabled */
  rotationEnabled: boolean;
  /** Configured tier names; a user's tier must be one of them. */
  tiers: string[];
  /** quota_management.reset_interval: the window a quota reset applies to. */
  quotaWindowSeconds: number;
  /** How long an old key stays valid after a rotation that does not say; default 86 400 (24 h). */
  rotationOverlapSeconds?: number;
}

export interface AdminDeps {
  db: Database;
  invalidation: InvalidationBus;
  /** Resets the user's quota in the limiter (through the user's owner); rejects if it cannot. */
  resetQuota?: (userId: string) => Promise<void>;
  config: AdminConfig;
  clock: () => number;
  logger: Logger;
}

const DEFAULT_PAGE_SIZE = 100;
const DEFAULT_ROTATION_OVERLAP_SECONDS = 86_400;

const time = { type: 'string', format: 'date-time' } as const;
const nullableTime = { type: ['string', 'null'], format: 'date-time' } as const;

const userSchema = {
  type: 'object',
  required: ['user_id', 'tier', 'overrides', 'quota_override', 'disabled', 'created_at', 'updated_at'],
  properties: {
    user_id: { type: 'string' },
    tier: { type: 'string' },
    overrides: tierFiguresSchema,
    quota_override: { type: ['integer', 'null'] },
    disabled: { type: 'boolean' },
    created_at: time,
    updated_at: time,
  },
} as const;

const keySchema = {
  type: 'object',
  required: ['id', 'user_id', 'prefix', 'name', 'status', 'created_at', 'expires_at', 'revoked_at', 'last_used_at', 'rotated_from'],
  properties: {
    id: { type: 'string' },
    user_id: { type: 'string' },
    prefix: { type: 'string', description: 'the first 12 characters of the key' },
    name: { type: ['string', 'null'] },
    status: { type: 'string', enum: ['active', 'expired', 'revoked'] },
    created_at: time,
    expires_at: nullableTime,
    revoked_at: nullableTime,
    last_used_at: nullableTime,
    rotated_from: { type: ['string', 'null'] },
  },
} as const;

const issuedKeySchema = {
  type: 'object',
  required: ['id', 'key', 'prefix', 'name', 'created_at', 'expires_at'],
  properties: {
    id: { type: 'string' },
    key: { type: 'string', description: 'the API key itself: shown this once, stored nowhere' },
    prefix: { type: 'string' },
    name: { type: ['string', 'null'] },
    created_at: time,
    expires_at: nullableTime,
    rotated_from: { type: ['string', 'null'] },
    previous: {
      type: 'object',
      properties: { id: { type: 'string' }, expires_at: nullableTime },
    },
  },
} as const;

const userParams = { type: 'object', required: ['user_id'], properties: { user_id: userIdSchema() } } as const;
const keyParams = { type: 'object', required: ['id'], properties: { id: { type: 'string', minLength: 1, maxLength: 64 } } } as const;
/** Bodies are checked by validation.ts (every problem at once), not by the schema. */
const anyBody = { type: 'object' } as const;
const errors = { 400: errorBodySchema, 401: errorBodySchema, 403: errorBodySchema, 404: errorBodySchema, 409: errorBodySchema, 503: errorBodySchema };

/** Registers the `/admin` routes (an encapsulated plugin: the auth hook covers only them). */
export function registerAdminRoutes(app: FastifyInstance, deps: AdminDeps): void {
  void app.register(async (admin) => {
    admin.addHook('onRequest', adminAuth(deps.config.adminToken));
    // Thrown errors go on to the app's error handler, which shapes the body.
    admin.setErrorHandler((error: FastifyError) => {
      throw toApiError(error);
    });
    routes(admin, deps);
  });
}

function routes(admin: FastifyInstance, deps: AdminDeps): void {
  const { config, clock } = deps;
  const inTransaction = <T>(fn: (repos: AccountRepositories) => Promise<T>): Promise<T> =>
    deps.db.transaction((tx) => fn(accountRepositories(tx, clock)));
  const reading = accountRepositories(deps.db, clock);
  const audit = (request: FastifyRequest, action: string, target: string, details: Record<string, unknown>) => ({
    actor: adminActor(request),
    sourceIp: request.ip ?? null,
    action,
    target,
    details,
  });
  const publish = async (event: InvalidationEvent): Promise<void> => {
    try {
      await deps.invalidation.publish(event);
    } catch (err) {
      // The change is committed; caches elsewhere catch up by their refresh interval.
      deps.logger.warn({ err: (err as Error).message, event: event.type }, 'could not publish a cache invalidation');
    }
  };

  admin.post('/admin/users', { schema: { body: anyBody, response: { 201: userSchema, ...errors } } }, async (request, reply) => {
    const input = valid(validateNewUser(request.body, config.tiers));
    const user = await inTransaction(async (repos) => {
      const created = await repos.users.create(input);
      await repos.audit.record(audit(request, 'user.create', `user:${input.userId}`, userDetails(created)));
      return created;
    });
    await publish({ type: 'user', userId: user.userId });
    return reply.status(201).send(userBody(user));
  });

  admin.get<{ Querystring: { cursor?: string; limit?: string } }>(
    '/admin/users',
    {
      schema: {
        querystring: {
          type: 'object',
          properties: { cursor: { type: 'string', maxLength: 1024 }, limit: { type: 'string', pattern: '^[0-9]{1,4}$' } },
        },
        response: { 200: { type: 'object', properties: { users: { type: 'array', items: userSchema }, next_cursor: { type: ['string', 'null'] } } }, ...errors },
      },
    },
    async (request) => {
      const limit = request.query.limit === undefined ? DEFAULT_PAGE_SIZE : Number(request.query.limit);
      if (limit < 1 || limit > MAX_PAGE_SIZE) throw new ApiError('INVALID_FIELD', `limit must be from 1 to ${MAX_PAGE_SIZE}`, 'limit');
      const page = await reading.users.list({ cursor: request.query.cursor ?? null, limit });
      return { users: page.users.map(userBody), next_cursor: page.nextCursor };
    },
  );

  admin.get<{ Params: { user_id: string } }>('/admin/users/:user_id', { schema: { params: userParams, response: { 200: userSchema, ...errors } } }, async (request) => {
    const user = await reading.users.get(request.params.user_id);
    if (user === null) throw new AccountError('USER_NOT_FOUND');
    return userBody(user);
  });

  admin.patch<{ Params: { user_id: string } }>(
    '/admin/users/:user_id',
    { schema: { params: userParams, body: anyBody, response: { 200: userSchema, ...errors } } },
    async (request) => {
      const { user_id } = request.params;
      const patch = valid(validateUserPatch(request.body, config.tiers));
      const user = await inTransaction(async (repos) => {
        const updated = await repos.users.update(user_id, patch);
        if (updated === null) throw new AccountError('USER_NOT_FOUND');
        await repos.audit.record(audit(request, 'user.update', `user:${user_id}`, { patch: request.body as Record<string, unknown> }));
        return updated;
      });
      await publish({ type: 'user', userId: user_id });
      return userBody(user);
    },
  );

  admin.delete<{ Params: { user_id: string } }>('/admin/users/:user_id', { schema: { params: userParams, response: errors } }, async (request, reply) => {
    const { user_id } = request.params;
    await inTransaction(async (repos) => {
      const keys = await repos.apiKeys.listForUser(user_id);
      if (!(await repos.users.delete(user_id))) throw new AccountError('USER_NOT_FOUND');
      await repos.audit.record(audit(request, 'user.delete', `user:${user_id}`, { deleted_keys: keys.map((k) => k.id) }));
    });
    await publish({ type: 'user', userId: user_id });
    return reply.status(204).send();
  });

  admin.post<{ Params: { user_id: string } }>(
    '/admin/users/:user_id/keys',
    { schema: { params: userParams, response: { 201: issuedKeySchema, ...errors } } },
    async (request, reply) => {
      if (!config.generationEnabled) throw new ApiError('FORBIDDEN', 'API key generation is disabled (api_key_management.generation_enabled)');
      const { user_id } = request.params;
      const input = valid(validateNewKey(request.body, clock()));
      const issued = await inTransaction(async (repos) => {
        const made = await repos.apiKeys.create(user_id, input);
        await repos.audit.record(audit(request, 'key.create', `key:${made.record.id}`, { user_id, ...keyDetails(made.record) }));
        return made;
      });
      return reply.status(201).send(issuedBody(issued));
    },
  );

  admin.get<{ Params: { user_id: string } }>(
    '/admin/users/:user_id/keys',
    { schema: { params: userParams, response: { 200: { type: 'object', properties: { keys: { type: 'array', items: keySchema } } }, ...errors } } },
    async (request) => {
      const { user_id } = request.params;
      if ((await reading.users.get(user_id)) === null) throw new AccountError('USER_NOT_FOUND');
      const now = clock();
      return { keys: (await reading.apiKeys.listForUser(user_id)).map((key) => keyBody(key, now)) };
    },
  );

  admin.post<{ Params: { id: string } }>(
    '/admin/keys/:id/rotate',
    { schema: { params: keyParams, response: { 201: issuedKeySchema, ...errors } } },
    async (request, reply) => {
      if (!config.rotationEnabled) throw new ApiError('FORBIDDEN', 'API key rotation is disabled (api_key_management.rotation_enabled)');
      const { id } = request.params;
      const { overlapSeconds } = valid(validateRotation(request.body, config.rotationOverlapSeconds ?? DEFAULT_ROTATION_OVERLAP_SECONDS));
      const rotated = await inTransaction(async (repos) => {
        const result = await repos.apiKeys.rotate(id, overlapSeconds);
        await repos.audit.record(
          audit(request, 'key.rotate', `key:${id}`, {
            new_key_id: result.issued.record.id,
            overlap_seconds: overlapSeconds,
            old_key_expires_at: isoOrNull(result.previous.expiresAt),
          }),
        );
        return result;
      });
      await publish({ type: 'key', keyId: id });
      return reply.status(201).send({ ...issuedBody(rotated.issued), previous: { id, expires_at: isoOrNull(rotated.previous.expiresAt) } });
    },
  );

  admin.delete<{ Params: { id: string } }>('/admin/keys/:id', { schema: { params: keyParams, response: { 200: keySchema, ...errors } } }, async (request) => {
    const { id } = request.params;
    const key = await inTransaction(async (repos) => {
      const revoked = await repos.apiKeys.revoke(id);
      if (revoked === null) throw new AccountError('KEY_NOT_FOUND');
      await repos.audit.record(audit(request, 'key.revoke', `key:${id}`, { user_id: revoked.userId, revoked_at: isoOrNull(revoked.revokedAt) }));
      return revoked;
    });
    await publish({ type: 'key', keyId: id });
    return keyBody(key, clock());
  });

  admin.post<{ Params: { user_id: string } }>(
    '/admin/users/:user_id/quota/reset',
    {
      schema: {
        params: userParams,
        response: {
          200: {
            type: 'object',
            properties: { user_id: { type: 'string' }, window_start: time, reset_at: time },
          },
          ...errors,
        },
      },
    },
    async (request) => {
      const { user_id } = request.params;
      if (deps.resetQuota) {
        try {
          await deps.resetQuota(user_id);
        } catch (err) {
          throw new ApiError('SERVICE_UNAVAILABLE', `the quota could not be reset now: ${(err as Error).message}`);
        }
      }
      const reset = await inTransaction(async (repos) => {
        const done = await repos.quota.resetCurrentWindow(user_id, adminActor(request), config.quotaWindowSeconds);
        await repos.audit.record(audit(request, 'quota.reset', `user:${user_id}`, { window_start: new Date(done.windowStart).toISOString() }));
        return done;
      });
      await publish({ type: 'quota_reset', userId: user_id, windowStart: reset.windowStart, resetAt: reset.resetAt });
      return { user_id, window_start: new Date(reset.windowStart).toISOString(), reset_at: new Date(reset.resetAt).toISOString() };
    },
  );
}

/** The value, or a 400 naming the first problem's field and listing them all. */
function valid<T>(result: Validated<T>): T {
  if (result.ok) return result.value;
  const message = result.problems.map((p) => p.message).join('; ');
  const field = result.problems[0]?.field;
  throw new ApiError('INVALID_FIELD', message, field === '' ? undefined : field);
}

/** Maps the accounts and database outcomes to API errors; everything else passes unchanged. */
function toApiError(error: FastifyError | Error): Error {
  if (error instanceof DatabaseUnavailableError) return new ApiError('SERVICE_UNAVAILABLE', 'the account database is unavailable; try again later');
  if (!(error instanceof AccountError)) return error;
  switch (error.code) {
    case 'USER_EXISTS':
      return new ApiError('CONFLICT', error.message, 'user_id');
    case 'USER_NOT_FOUND':
    case 'KEY_NOT_FOUND':
      return new ApiError('NOT_FOUND', error.message);
    case 'KEY_NOT_ROTATABLE':
      return new ApiError('CONFLICT', error.message);
    case 'INVALID_CURSOR':
      return new ApiError('INVALID_FIELD', error.message, 'cursor');
  }
}

function isoOrNull(ms: number | null): string | null {
  return ms === null ? null : new Date(ms).toISOString();
}

function userBody(user: UserRecord) {
  return {
    user_id: user.userId,
    tier: user.tier,
    overrides: user.overrides,
    quota_override: user.quotaOverride,
    disabled: user.disabled,
    created_at: new Date(user.createdAt).toISOString(),
    updated_at: new Date(user.updatedAt).toISOString(),
  };
}

function userDetails(user: UserRecord): Record<string, unknown> {
  return { tier: user.tier, overrides: user.overrides, quota_override: user.quotaOverride, disabled: user.disabled };
}

function keyStatus(key: ApiKeyRecord, now: number): 'active' | 'expired' | 'revoked' {
  if (key.revokedAt !== null) return 'revoked';
  return key.expiresAt !== null && key.expiresAt <= now ? 'expired' : 'active';
}

function keyBody(key: ApiKeyRecord, now: number) {
  return {
    id: key.id,
    user_id: key.userId,
    prefix: key.prefix,
    name: key.name,
    status: keyStatus(key, now),
    created_at: new Date(key.createdAt).toISOString(),
    expires_at: isoOrNull(key.expiresAt),
    revoked_at: isoOrNull(key.revokedAt),
    last_used_at: isoOrNull(key.lastUsedAt),
    rotated_from: key.rotatedFrom,
  };
}

function keyDetails(key: ApiKeyRecord): Record<string, unknown> {
  return { prefix: key.prefix, name: key.name, expires_at: isoOrNull(key.expiresAt) };
}

function issuedBody(issued: IssuedKey) {
  const { record } = issued;
  return {
    id: record.id,
    key: issued.key,
    prefix: record.prefix,
    name: record.name,
    created_at: new Date(record.createdAt).toISOString(),
    expires_at: isoOrNull(record.expiresAt),
    rotated_from: record.rotatedFrom,
  };
}
