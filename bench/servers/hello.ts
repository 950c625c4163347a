/**
 * The ceiling every throughput figure is compared with: a bare Fastify POST that parses
 * the same JSON body as a check and answers a schema-serialized object. Usage:
 *   node dist/bench/servers/hello.js <port> [workers] [--check-shaped]
 * With workers > 1 it forks them with node:cluster, as a rate-limiting node does.
 * With --check-shaped it answers what a check answers — the same response schema, a
 * body of the same fields and size, the same rate-limit headers — without deciding
 * anything: the cost of the bytes alone.
 */
import cluster from 'node:cluster';
import Fastify from 'fastify';
import { checkResultSchema } from '../../src/api/schemas.js';

const port = Number(process.argv[2] ?? 9099);
const workers = Number(process.argv[3] ?? 1);
const checkShaped = process.argv.includes('--check-shaped');

/** A check answer of a basic-tier user (the load's user ids have the same length). */
function checkAnswer(userId: string, now: number) {
  const status = (limit: number, reset: number) => ({ limit, remaining: limit - 1, reset_at: now - (now % reset) + reset });
  return {
    allowed: true, code: 'OK', user_id: userId, tier: 'basic', cost: 1, limited_by: null, retry_after_ms: 0,
    limits: { burst: status(10, 10_000), minute: status(60, 60_000), hour: status(1000, 3_600_000), day: status(10_000, 86_400_000) },
    quota: { current_usage: 1, limit: 10_000, reset_time: new Date(now - (now % 86_400_000) + 86_400_000).toISOString() },
    mode: 'local', state: 'memory', decided_at: now,
  };
}
const CHECK_HEADERS = {
  'ratelimit-policy': '"burst";q=10;w=10, "minute";q=60;w=60, "hour";q=1000;w=3600, "day";q=10000;w=86400',
  ratelimit: '"burst";r=9;t=1, "minute";r=59;t=42, "hour";r=999;t=2542, "day";r=9999;t=73342',
  'x-ratelimit-limit': '10',
  'x-ratelimit-remaining': '9',
  'x-ratelimit-reset': '1',
};

if (workers > 1 && cluster.isPrimary) {
  for (let i = 0; i < workers; i++) cluster.fork();
  process.on('SIGTERM', () => {
    for (const w of Object.values(cluster.workers ?? {})) w?.process.kill('SIGTERM');
    process.exit(0);
  });
} else {
  const app = Fastify({ logger: false });
  const body = { type: 'object', properties: { user_id: { type: 'string' } } } as const;
  if (checkShaped) {
    app.post<{ Body: { user_id?: string } }>('/hello', { schema: { body, response: { 200: checkResultSchema } } }, (request, reply) => {
      void reply.headers(CHECK_HEADERS).send(checkAnswer(request.body.user_id ?? '', Date.now()));
    });
  } else {
    app.post('/hello', { schema: { body, response: { 200: { type: 'object', properties: { hello: { type: 'string' } } } } } }, async () => ({ hello: 'world' }));
  }
  await app.listen({ port, host: '127.0.0.1' });
  process.on('SIGTERM', () => void app.close().then(() => process.exit(0)));
}
