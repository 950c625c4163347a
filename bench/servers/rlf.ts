/**
 * Peer of the comparison: Fastify 5 + rate-limiter-flexible. POST /rate-limiting/check
 * {user_id} consumes 1 point of the user's key; 200 {allowed:true} or 429 {allowed:false}
 * with Retry-After. Usage:
 *   node dist/bench/servers/rlf.js <port> [workers] [--store memory|redis] [--redis host:port] [--db n] [--points 60] [--duration 60]
 * `memory` is RateLimiterMemory: each worker counts on its own (no shared limit between
 * workers, as the library documents it). `redis` is RateLimiterRedis on ioredis: one Lua
 * call per request, shared by every worker.
 */
import Fastify from 'fastify';
import { Redis } from 'ioredis';
import { RateLimiterMemory, RateLimiterRedis, RateLimiterRes, type RateLimiterAbstract } from 'rate-limiter-flexible';
import { checkBodySchema, checkReplySchema, forkWorkers, parsePeerArgs, splitEndpoint } from './args.js';

const args = parsePeerArgs();

if (forkWorkers(args.workers)) {
  let limiter: RateLimiterAbstract;
  let redis: Redis | null = null;
  if (args.store === 'redis') {
    redis = new Redis({ ...splitEndpoint(args.redis), db: args.db, enableOfflineQueue: false, maxRetriesPerRequest: 1 });
    await new Promise<void>((resolve, reject) => {
      redis!.once('ready', () => resolve());
      redis!.once('error', reject);
    });
    limiter = new RateLimiterRedis({ storeClient: redis, points: args.points, duration: args.duration, keyPrefix: 'rlf' });
  } else {
    limiter = new RateLimiterMemory({ points: args.points, duration: args.duration, keyPrefix: 'rlf' });
  }

  const app = Fastify({ logger: false });
  app.post<{ Body: { user_id: string } }>(
    '/rate-limiting/check',
    { schema: { body: checkBodySchema, response: { 200: checkReplySchema, 429: checkReplySchema } } },
    async (request, reply) => {
      try {
        const res = await limiter.consume(request.body.user_id, 1);
        return { allowed: true, remaining: res.remainingPoints };
      } catch (rejection) {
        if (rejection instanceof RateLimiterRes) {
          void reply.code(429).header('retry-after', String(Math.ceil(rejection.msBeforeNext / 1000)));
          return { allowed: false, remaining: 0 };
        }
        throw rejection;
      }
    },
  );
  app.get('/', async () => ({ ok: true }));
  await app.listen({ port: args.port, host: '127.0.0.1' });
  process.on('SIGTERM', () =>
    void app.close().then(() => {
      redis?.disconnect();
      process.exit(0);
    }),
  );
}
