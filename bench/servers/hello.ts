/**
 * The ceiling every throughput figure is compared with: a bare Fastify POST that parses
 * the same JSON body as a check and answers a schema-serialized object. Usage:
 *   node dist/bench/servers/hello.js <port> [workers]
 * With workers > 1 it forks them with node:cluster, as a rate-limiting node does.
 */
import cluster from 'node:cluster';
import Fastify from 'fastify';

const port = Number(process.argv[2] ?? 9099);
const workers = Number(process.argv[3] ?? 1);

if (workers > 1 && cluster.isPrimary) {
  for (let i = 0; i < workers; i++) cluster.fork();
  process.on('SIGTERM', () => {
    for (const w of Object.values(cluster.workers ?? {})) w?.process.kill('SIGTERM');
    process.exit(0);
  });
} else {
  const app = Fastify({ logger: false });
  app.post(
    '/hello',
    {
      schema: {
        body: { type: 'object', properties: { user_id: { type: 'string' } } },
        response: { 200: { type: 'object', properties: { hello: { type: 'string' } } } },
      },
    },
    async () => ({ hello: 'world' }),
  );
  await app.listen({ port, host: '127.0.0.1' });
  process.on('SIGTERM', () => void app.close().then(() => process.exit(0)));
}
