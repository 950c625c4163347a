/**
 * Peer of the comparison: Fastify 5 + @fastify/rate-limit with its Redis store (ioredis),
 * keyed by the body's user_id. The plugin's check runs in the `preHandler` hook: the
 * default `onRequest` runs before the body is parsed, so no user_id would be there yet.
 * POST /rate-limiting/check {user_id} → 200 {allowed:true}, or the plugin's 429 with
 * Retry-After. Usage:
 *   node dist/bench/servers/fastify-rate-limit.js <port> [workers] [--store redis|memory] [--redis host:port] [--db n] [--points 60] [--duration 60]
 * (`memory` is the plugin's LocalStore, per worker.)
 */
import Fastify, { type FastifyRequest } from 'fastify';
import rateLimit from '@fastify/rate-limit';
import { Redis } from 'ioredis';
import { checkBodySchema, checkReplySchema, forkWorkers, parsePeerArgs, splitEndpoint } from './args.js';

const args = parsePeerArgs();

if (forkWorkers(args.workers)) {
  let redis: Redis | null = null;
  if (args.store === 'redis') {
    redis = new Redis({ ...splitEndpoint(args.redis), db: args.db, connectTimeout: 500, maxRetriesPerRequest: 1 });
    await new Promise<void>((resolve, reject) => {
      redis!.once('ready', () => resolve());
      redis!.once('error', reject);
    });
  }
  const app = Fastify({ logger: false });
  await app.register(rateLimit, {
    global: true,
    max: args.points,
    timeWindow: args.duration * 1000,
    hook: 'preHandler',
    ...(redis ? { redis, nameSpace: 'frl-' } : {}),
    keyGenerator: (request: FastifyRequest) => (request.body as { user_id?: string } | undefined)?.user_id ?? request.ip,
  });
  app.post<{ Body: { user_id: string } }>(
    '/rate-limiting/check',
    { schema: { body: checkBodySchema, response: { 200: checkReplySchema } } },
    async () => ({ allowed: true }),
  );
  app.get('/', { config: { rateLimit: false } }, async () => ({ ok: true }));
  await app.listen({ port: args.port, host: '127.0.0.1' });
  process.on('SIGTERM', () =>
    void app.close().then(() => {
      redis?.disconnect();
      process.exit(0);
    }),
  );
}
