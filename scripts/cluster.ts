/**
 * `npm run cluster -- --nodes N`: the topology of docker-compose.cluster.yml as local
 * processes. Starts a redis-server of its own unless REDIS_ENDPOINT is set, N nodes
 * (`npm start`, each with a primary and its workers) on their own ports, and a
 * round-robin gateway in front of them. Ctrl-C stops everything.
 *
 *   npm run cluster -- --nodes 3 [--base-port 9100] [--gateway-port 9098] [--no-gateway]
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startGateway, type Gateway } from './gateway.js';

/**
 * The services this launcher starts, by the names docker-compose.cluster.yml gives them,
 * with the environment each limiter node gets (test/compose.test.ts holds both files to it).
 */
export const SERVICES = ['redis', 'postgres', 'limiter', 'gateway'] as const;

export function limiterEnvironment(redisEndpoint: string, apiPort: number, nodeId: string, sqlEndpoint: string): Record<string, string> {
  const served = sqlEndpoint.startsWith('/');
  return {
    RATE_LIMITING_API_PORT: String(apiPort),
    REDIS_ENDPOINT: redisEndpoint,
    SQL_DATABASE_ENDPOINT: sqlEndpoint,
    SQL_DATABASE_NAME: served ? 'postgres' : (process.env.SQL_DATABASE_NAME ?? 'rate_limiting'),
    SQL_DATABASE_USER: served ? 'postgres' : (process.env.SQL_DATABASE_USER ?? 'postgres'),
    SQL_DATABASE_PASSWORD: served ? '' : (process.env.SQL_DATABASE_PASSWORD ?? ''),
    LOG_LEVEL: process.env.LOG_LEVEL ?? 'info',
    NODE_ID: nodeId,
  };
}

function option(args: string[], name: string, fallback: number): number {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? Number(args[i + 1]) : fallback;
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const nodes = option(args, 'nodes', 3);
  const basePort = option(args, 'base-port', 9100);
  const gatewayPort = option(args, 'gateway-port', 9098);
  const root = fileURLToPath(new URL('../..', import.meta.url));
  const children: ChildProcess[] = [];
  let gateway: Gateway | undefined;

  let redisEndpoint = process.env.REDIS_ENDPOINT ?? '';
  if (redisEndpoint === '') {
    const port = basePort - 1;
    children.push(spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { stdio: 'inherit' }));
    redisEndpoint = `127.0.0.1:${port}`;
    console.log(`redis: started redis-server on ${redisEndpoint}`);
  }
  // postgres: SQL_DATABASE_ENDPOINT when set; else one PGlite served to every node.
  let sqlEndpoint = process.env.SQL_DATABASE_ENDPOINT ?? '';
  if (sqlEndpoint === '') {
    const socketDir = mkdtempSync(join(tmpdir(), 'rl-cluster-db-'));
    children.push(spawn(process.execPath, ['dist/scripts/pglite-server.js', socketDir, process.env.PGLITE_DATA_DIR ?? 'memory'], { cwd: root, stdio: 'inherit' }));
    const deadline = Date.now() + 60_000;
    while (!existsSync(join(socketDir, '.s.PGSQL.5432'))) {
      if (Date.now() > deadline) throw new Error('the PGlite server did not start');
      await new Promise((r) => setTimeout(r, 100));
    }
    sqlEndpoint = `${socketDir}:5432`;
    console.log(`postgres: a PGlite served on ${socketDir} (set SQL_DATABASE_ENDPOINT to use PostgreSQL)`);
  }

  const urls: string[] = [];
  for (let i = 0; i < nodes; i++) {
    // Ten ports apart: each node's peer ports (API port + 1000 + worker) stay its own.
    const apiPort = basePort + i * 10;
    const env = { ...process.env, ...limiterEnvironment(redisEndpoint, apiPort, `node-${i + 1}`, sqlEndpoint), RATE_LIMITING_API_HOST: '127.0.0.1' };
    children.push(spawn(process.execPath, ['dist/src/main.js'], { cwd: root, env, stdio: 'inherit' }));
    urls.push(`http://127.0.0.1:${apiPort}`);
  }
  console.log(`limiter: ${nodes} nodes at ${urls.join(', ')}`);
  if (!args.includes('--no-gateway')) {
    gateway = await startGateway(gatewayPort, urls);
    console.log(`gateway: http://127.0.0.1:${gateway.port} (round-robin over the nodes)`);
  }

  const stop = async (): Promise<void> => {
    await gateway?.close();
    for (const child of children) child.kill('SIGTERM');
    await Promise.all(children.map((c) => new Promise((r) => (c.exitCode === null ? c.once('exit', r) : r(null)))));
    process.exit(0);
  };
  process.on('SIGINT', () => void stop());
  process.on('SIGTERM', () => void stop());
}

if (process.argv[1]?.endsWith('cluster.js')) await main();
