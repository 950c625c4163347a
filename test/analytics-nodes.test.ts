/**
 * Usage recorded by real node processes: several workers (two nodes of two workers on
 * PostgreSQL; one node of two workers on its embedded PGlite) flush concurrently into the
 * same rows, and the report adds up exactly to the decisions the clients received.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { throwawayPostgresEnv } from './helpers/databases.js';
import { startNodeProcess, type NodeProcess } from './helpers/node-process.js';

const TOKEN = 'usage-nodes';
const ADMIN = { authorization: `Bearer ${TOKEN}` };
// Every flush writes the current minute too, so the report catches up within 100 ms.
const ENV = { ADMIN_TOKEN: TOKEN, LOG_LEVEL: 'warn', USAGE_FLUSH_INTERVAL_MS: '100', USAGE_HOLD_OPEN_MINUTE: 'false' };
/** Reports start at the whole hour before the test began (read from the hour rows). */
const FROM = new Date(Math.floor(Date.now() / 3_600_000) * 3_600_000 - 3_600_000).toISOString();

interface Counted {
  requests: number;
  allowed: number;
  denied: number;
  cost: number;
  byUser: Map<string, { requests: number; allowed: number; cost: number }>;
}

/** `total` checks over `users` from `concurrency` clients, round-robin over the nodes; counts what they answered. */
async function drive(nodes: NodeProcess[], users: string[], total: number, concurrency: number): Promise<Counted> {
  const counted: Counted = { requests: 0, allowed: 0, denied: 0, cost: 0, byUser: new Map() };
  let next = 0;
  const client = async () => {
    while (next < total) {
      const i = next++;
      const user = users[i % users.length]!;
      const cost = 1 + (i % 3);
      const res = await fetch(`${nodes[i % nodes.length]!.url}/rate-limiting/check`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ user_id: user, cost }),
      });
      expect(res.status).toBe(200);
      const body = (await res.json()) as { allowed: boolean };
      const mine = counted.byUser.get(user) ?? { requests: 0, allowed: 0, cost: 0 };
      counted.requests++;
      mine.requests++;
      if (body.allowed) {
        counted.allowed++;
        counted.cost += cost;
        mine.allowed++;
        mine.cost += cost;
      } else {
        counted.denied++;
      }
      counted.byUser.set(user, mine);
    }
  };
  await Promise.all(Array.from({ length: concurrency }, client));
  return counted;
}

interface Report {
  rows: Array<{ user_id: string; requests: number; allowed: number; cost: number }>;
  totals: { requests: number; allowed: number; denied: number; cost: number };
}

/** The usage report once it holds `requests` requests (flushes run every 100 ms). */
async function reportWhen(node: NodeProcess, requests: number): Promise<Report> {
  const deadline = Date.now() + 15_000;
  for (;;) {
    const res = await fetch(`${node.url}/rate-limiting/reports/usage?from=${FROM}`, { headers: ADMIN });
    expect(res.status).toBe(200);
    const report = (await res.json()) as Report;
    if (report.totals.requests >= requests || Date.now() > deadline) return report;
    await new Promise((r) => setTimeout(r, 100));
  }
}

function expectReportMatches(report: Report, counted: Counted): void {
  expect(report.totals).toMatchObject({ requests: counted.requests, allowed: counted.allowed, denied: counted.denied, cost: counted.cost });
  expect(report.rows).toHaveLength(counted.byUser.size);
  for (const row of report.rows) expect({ user: row.user_id, ...counted.byUser.get(row.user_id) }).toEqual({ user: row.user_id, requests: row.requests, allowed: row.allowed, cost: row.cost });
}

describe('usage from several processes', () => {
  const started: NodeProcess[] = [];
  const cleanups: Array<() => Promise<void> | void> = [];
  afterAll(async () => {
    await Promise.all(started.map((node) => node.kill()));
    for (const cleanup of cleanups) await cleanup();
  });

  it('two nodes of two workers on PostgreSQL: concurrent flushes into the same rows sum exactly', async () => {
    const database = await throwawayPostgresEnv();
    cleanups.push(() => database.dispose());
    const nodes = await Promise.all(['usage-a', 'usage-b'].map((id) => startNodeProcess({ ...ENV, ...database.env, NODE_ID: id })));
    started.push(...nodes);
    const users = Array.from({ length: 40 }, (_, i) => `u${i}`);
    const counted = await drive(nodes, users, 3000, 16);
    // Both nodes decided, allowed and denied both happened (burst 10 against 75 checks per user).
    expect(counted.allowed).toBeGreaterThan(0);
    expect(counted.denied).toBeGreaterThan(0);
    const report = await reportWhen(nodes[1]!, counted.requests);
    expectReportMatches(report, counted);
    // Every worker wrote: the rows of one minute hold decisions from all four processes.
    const metrics = await Promise.all(nodes.map(async (node) => (await fetch(`${node.url}/metrics`)).text()));
    for (const text of metrics) expect(text).toMatch(/rate_limiting_usage_flushes_total\{result="ok"\} [1-9]/);
    // A graceful stop writes what is buffered: nothing is lost on SIGTERM.
    const more = await drive([nodes[0]!], users.slice(0, 5), 200, 4);
    expect(await nodes[0]!.stop()).toBe(0);
    const after = await reportWhen(nodes[1]!, counted.requests + more.requests);
    expect(after.totals.requests).toBe(counted.requests + more.requests);
    expect(after.totals.cost).toBe(counted.cost + more.cost);
  }, 120_000);

  it('one node of two workers on its embedded PGlite: both workers write through the primary', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'rl-usage-'));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const node = await startNodeProcess({ ...ENV, NODE_ID: 'usage-pglite', PGLITE_DATA_DIR: dir }, {});
    started.push(node);
    const counted = await drive([node], Array.from({ length: 25 }, (_, i) => `p${i}`), 1500, 12);
    expect(counted.denied).toBeGreaterThan(0);
    const report = await reportWhen(node, counted.requests);
    expectReportMatches(report, counted);
    const csv = await (await fetch(`${node.url}/rate-limiting/reports/usage?from=${FROM}&format=csv`, { headers: ADMIN })).text();
    const lines = csv.trimEnd().split('\r\n');
    expect(lines).toHaveLength(1 + counted.byUser.size);
    const requestsColumn = lines[0]!.split(',').indexOf('requests');
    expect(lines.slice(1).reduce((s, line) => s + Number(line.split(',')[requestsColumn]), 0)).toBe(counted.requests);
  }, 120_000);
});

describe('CUSTOM_METRICS_ENDPOINT', () => {
  it('pushes the node-wide metrics to a Pushgateway with PUT, under job and instance', async () => {
    const pushes: Array<{ method: string; url: string; contentType: string; body: string }> = [];
    const gateway = createServer((req, res) => {
      let body = '';
      req.on('data', (chunk: Buffer) => (body += chunk.toString()));
      req.on('end', () => {
        pushes.push({ method: req.method!, url: req.url!, contentType: String(req.headers['content-type']), body });
        res.writeHead(200).end();
      });
    });
    await new Promise<void>((resolve) => gateway.listen(0, '127.0.0.1', resolve));
    const port = (gateway.address() as { port: number }).port;
    const node = await startNodeProcess({
      ...ENV,
      NODE_ID: 'pushing-node',
      PGLITE_DATA_DIR: 'memory',
      CUSTOM_METRICS_ENDPOINT: `http://127.0.0.1:${port}/`,
      CUSTOM_METRICS_PUSH_INTERVAL: '1',
    });
    try {
      await drive([node], ['pushed-user'], 20, 2);
      const deadline = Date.now() + 15_000;
      // The node-wide sum of decisions (both workers, every label) reaches the 20 made.
      const decisions = (body: string) =>
        body.split('\n').filter((line) => line.startsWith('rate_limiting_decisions_total{')).reduce((sum, line) => sum + Number(line.split(' ').at(-1)), 0);
      const withDecisions = () => pushes.find((p) => decisions(p.body) === 20);
      while (withDecisions() === undefined && Date.now() < deadline) await new Promise((r) => setTimeout(r, 200));
      const push = withDecisions();
      expect(push, `last push: ${decisions(pushes.at(-1)?.body ?? '')} decisions`).toBeDefined();
      expect(push!.method).toBe('PUT');
      expect(push!.url).toBe('/metrics/job/rate_limiting/instance/pushing-node');
      expect(push!.contentType).toContain('text/plain');
      expect(push!.body).toContain('rate_limiting_usage_buffered_rows');
      expect(push!.body).toContain('rate_limiting_usage_recording_lag_seconds');
    } finally {
      await node.kill();
      await new Promise<void>((resolve) => gateway.close(() => resolve()));
    }
  }, 60_000);
});
