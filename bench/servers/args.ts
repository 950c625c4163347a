/**
 * Shared parts of the peer servers of the comparison (rlf.ts, fastify-rate-limit.ts):
 * their command line, the cluster fork and the route's schema.
 */
import cluster from 'node:cluster';

export interface PeerArgs {
  port: number;
  workers: number;
  /** `memory` or `redis`. */
  store: string;
  /** host:port of Redis (redis store). */
  redis: string;
  /** Redis database number. */
  db: number;
  /** Requests per window per user (our default tier's per-minute figure: 60). */
  points: number;
  /** Window length, seconds. */
  duration: number;
}

/** `<port> <workers> [--store memory|redis] [--redis host:port] [--db n] [--points n] [--duration s]` */
export function parsePeerArgs(argv: string[] = process.argv.slice(2)): PeerArgs {
  const flag = (name: string, fallback: string): string => {
    const i = argv.indexOf(`--${name}`);
    return i >= 0 && argv[i + 1] !== undefined ? argv[i + 1]! : fallback;
  };
  return {
    port: Number(argv[0] ?? 9097),
    workers: Number(argv[1] ?? 1),
    store: flag('store', 'memory'),
    redis: flag('redis', '127.0.0.1:6379'),
    db: Number(flag('db', '0')),
    points: Number(flag('points', '60')),
    duration: Number(flag('duration', '60')),
  };
}

export function splitEndpoint(endpoint: string): { host: string; port: number } {
  const colon = endpoint.lastIndexOf(':');
  return colon > 0 ? { host: endpoint.slice(0, colon), port: Number(endpoint.slice(colon + 1)) } : { host: endpoint, port: 6379 };
}

/**
 * With workers > 1, forks them (node:cluster, round-robin) and returns false in the
 * primary; returns true where the server should run.
 */
export function forkWorkers(workers: number): boolean {
  if (workers > 1 && cluster.isPrimary) {
    for (let i = 0; i < workers; i++) cluster.fork();
    process.on('SIGTERM', () => {
      for (const w of Object.values(cluster.workers ?? {})) w?.process.kill('SIGTERM');
      process.exit(0);
    });
    return false;
  }
  return true;
}

/** The check body every target parses: the same JSON as our /rate-limiting/check. */
export const checkBodySchema = {
  type: 'object',
  required: ['user_id'],
  properties: { user_id: { type: 'string' }, tier: { type: 'string' }, cost: { type: 'integer' } },
} as const;

export const checkReplySchema = {
  type: 'object',
  properties: { allowed: { type: 'boolean' }, remaining: { type: 'integer' } },
} as const;
