import type { FastifyInstance } from 'fastify';
import { loadConfig } from '../../src/config/load.js';
import { createLogger } from '../../src/observability/logger.js';
import { buildNode, type BuiltNode } from '../../src/worker.js';
import type { Database } from '../../src/storage/db/database.js';

/** A clock tests move by hand. */
export class ManualClock {
  constructor(public ms: number) {}
  now = (): number => this.ms;
  advance(ms: number): void {
    this.ms += ms;
  }
}

/** Builds a node's app (not listening) from environment-style config and a manual clock. */
export async function testNode(
  env: Record<string, string> = {},
  clock = new ManualClock(1_767_225_600_000),
  database: Database | null = null,
): Promise<BuiltNode & { clock: ManualClock }> {
  const { config } = loadConfig(env, '/nonexistent-dir');
  const node = await buildNode(config, createLogger('silent'), clock.now, { workerIndex: 0, cluster: false, database });
  return { ...node, clock };
}

/** A view of `db` whose close() does nothing, so several nodes of a test can share one database. */
export function sharedDatabase(db: Database): Database {
  return { kind: db.kind, query: (sql, params) => db.query(sql, params), transaction: (fn) => db.transaction(fn), close: async () => {} };
}

export async function postJson(app: FastifyInstance, url: string, body: unknown) {
  return app.inject({ method: 'POST', url, payload: body as Record<string, unknown> });
}
