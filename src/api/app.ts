import Fastify, { type FastifyError, type FastifyInstance } from 'fastify';
import type { Config } from '../config/types.js';
import type { Decider } from '../node/decider.js';
import type { TierPolicy } from '../node/tiers.js';
import type { Logger } from '../observability/logger.js';
import type { Metrics } from '../observability/metrics.js';
import { ApiError, type ErrorBody } from './errors.js';
import { registerCheckRoutes } from './routes/check.js';
import { registerHealthRoutes, type NodeStatus } from './routes/health.js';
import { registerTestRoutes } from './routes/test-scenarios.js';
import { registerAdminRoutes } from './routes/admin.js';
import { registerKeyRoutes } from './routes/keys.js';
import { registerAnalyticsRoutes } from './routes/analytics.js';
import type { KeyResolver } from '../accounts/key-cache.js';
import type { UserDirectory } from '../accounts/user-directory.js';
import type { InvalidationBus } from '../accounts/invalidation.js';
import type { Database } from '../storage/db/database.js';
import type { UserLimits } from '../accounts/user-limits.js';

export interface AppDeps {
  config: Config;
  decider: Decider;
  tiers: TierPolicy;
  metrics: Metrics;
  logger: Logger;
  /** Live facts about this node for /health and /rate-limiting/status. */
  status: NodeStatus;
  /** The text /metrics serves (the whole node's, under a primary). */
  metricsText(): Promise<{ body: string; contentType: string }>;
  clock: () => number;
  /** Which limits a user is held to (also for quota reads). */
  users: UserLimits;
  /** Users, API keys and the admin API; null runs without a database (tests only). */
  accounts: {
    db: Database;
    keys: KeyResolver;
    directory: UserDirectory;
    invalidation: InvalidationBus;
  } | null;
}

/** Body limit of every route but the batch check (which takes up to 1000 checks). */
export const BODY_LIMIT = 16 * 1024;
export const BATCH_BODY_LIMIT = 512 * 1024;

/** Builds the HTTP API without listening; `main.ts` listens, tests use `inject()`. */
export async function buildApp(deps: AppDeps): Promise<FastifyInstance> {
  // Fastify gets no logger: requests are not logged one by one (a log line per decision
  // would cost more than the decision), so the request path skips logger setup entirely.
  // Errors are logged here, with the route, through the node's own logger.
  const log = deps.logger.child({ component: 'http' });
  const app: FastifyInstance = Fastify({
    logger: false,
    bodyLimit: BODY_LIMIT,
    // User ids are up to 256 characters, also in paths (/quota/:user_id, /admin/users/:user_id).
    routerOptions: { maxParamLength: 1024 },
    return503OnClosing: true,
    ajv: { customOptions: { allErrors: false, coerceTypes: false, removeAdditional: true, useDefaults: true } },
  });

  app.setErrorHandler((error: FastifyError, request, reply) => {
    const body = toErrorBody(error);
    if (body.statusCode === 503 && error instanceof ApiError) {
      // An intended answer (a backing service is away), not a failure: its message stands.
      log.warn({ route: request.routeOptions.url, message: body.message }, 'service unavailable');
    } else if (body.statusCode >= 500) {
      log.error({ err: error, route: request.routeOptions.url }, 'request failed');
      body.message = 'internal error';
    } else {
      deps.metrics.badRequests.inc({ route: request.routeOptions.url ?? 'unknown', code: body.error });
    }
    void reply.status(body.statusCode).send(body);
  });
  app.setNotFoundHandler((request, reply) => {
    const body: ErrorBody = { statusCode: 404, error: 'NOT_FOUND', message: `no route ${request.method} ${request.url}` };
    void reply.status(404).send(body);
  });

  registerHealthRoutes(app, deps);
  registerCheckRoutes(app, deps);
  registerKeyRoutes(app, deps);
  registerTestRoutes(app, deps);
  const { accounts, config } = deps;
  if (accounts !== null) {
    registerAdminRoutes(app, {
      db: accounts.db,
      invalidation: accounts.invalidation,
      resetQuota: (userId) => deps.decider.resetQuota(userId),
      clock: deps.clock,
      logger: log,
      config: {
        adminToken: config.admin.token,
        generationEnabled: config.api_key_management.enabled && config.api_key_management.generation_enabled,
        rotationEnabled: config.api_key_management.enabled && config.api_key_management.rotation_enabled,
        tiers: deps.tiers.names,
        quotaWindowSeconds: config.quota_management.reset_interval,
        rotationOverlapSeconds: config.api_key_management.rotation_overlap_seconds,
      },
    });
    registerAnalyticsRoutes(app, { db: accounts.db, users: deps.users, config, tiers: deps.tiers.names, clock: deps.clock });
  } else {
    const noDatabase = async () => {
      throw new ApiError('SERVICE_UNAVAILABLE', 'this process runs without an account database');
    };
    app.all('/admin/*', noDatabase);
    app.get('/rate-limiting/analytics', noDatabase);
    app.get('/rate-limiting/analytics/*', noDatabase);
    app.get('/rate-limiting/reports/*', noDatabase);
  }
  await app.ready();
  return app;
}

/** Maps validation, parsing and our own errors to one body shape that names the field. */
export function toErrorBody(error: FastifyError): ErrorBody {
  if (error instanceof ApiError) {
    return { statusCode: error.status, error: error.code, message: error.message, ...(error.field ? { field: error.field } : {}) };
  }
  if (error.validation && error.validation.length > 0) {
    const first = error.validation[0]!;
    const missing = (first.params as { missingProperty?: string }).missingProperty;
    const path = first.instancePath.replace(/^\//, '').replace(/\/(\d+)(?=\/|$)/g, '[$1]').replace(/\//g, '.');
    const field = missing ? (path ? `${path}.${missing}` : missing) : path;
    const where = error.validationContext === 'body' ? '' : `${error.validationContext} `;
    const message = missing ? `${where}${field} is required` : `${where}${field || error.validationContext} ${first.message}`;
    return { statusCode: 400, error: 'INVALID_FIELD', message, ...(field ? { field } : {}) };
  }
  switch (error.code) {
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return { statusCode: 413, error: 'BODY_TOO_LARGE', message: error.message };
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return { statusCode: 415, error: 'UNSUPPORTED_MEDIA_TYPE', message: 'send the body as application/json' };
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
      return { statusCode: 400, error: 'INVALID_JSON', message: 'the body is empty; send a JSON object' };
    case 'FST_ERR_CTP_INVALID_JSON_BODY':
      return { statusCode: 400, error: 'INVALID_JSON', message: 'the body is not valid JSON' };
    case 'FST_ERR_CTP_INVALID_CONTENT_LENGTH':
      return { statusCode: 400, error: 'INVALID_JSON', message: error.message };
  }
  if (error.statusCode !== undefined && error.statusCode >= 400 && error.statusCode < 500) {
    return { statusCode: error.statusCode, error: 'BAD_REQUEST', message: error.message };
  }
  return { statusCode: 500, error: 'INTERNAL', message: 'internal error' };
}
