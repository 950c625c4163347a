/**
 * The analytics, pattern and report routes of a node on PGlite, driven through real
 * checks (and, for patterns, a planted history) with an injected clock: the figures they
 * answer with are the decisions the test made.
 */
import type { FastifyInstance } from 'fastify';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { DAY_MS, HOUR_MS, MINUTE_MS } from '../src/analytics/usage-row.js';
import { csvCell } from '../src/api/routes/analytics.js';
import type { CheckOutcome } from '../src/node/decider.js';
import { migrate } from '../src/storage/db/migrations.js';
import { openPglite, type PgliteDatabase } from '../src/storage/db/pglite.js';
import type { BuiltNode } from '../src/worker.js';
import { ManualClock, postJson, sharedDatabase, testNode } from './helpers/app.js';

/** 2026-01-01T10:00Z: the quota window (a UTC day) started 10 hours ago. */
const T0 = Date.UTC(2026, 0, 1, 10, 0, 0);
const TOKEN = 'analytics-admin-token';
const ADMIN = { authorization: `Bearer ${TOKEN}` };

let db: PgliteDatabase;
let node: BuiltNode & { clock: ManualClock };
let app: FastifyInstance;

beforeAll(async () => {
  db = await openPglite('memory');
  await migrate(db);
});
afterAll(async () => {
  await db.close();
});
afterEach(async () => {
  await node?.close();
  const tables = ['usage_minute', 'usage_hour', 'usage_day', 'overage_daily', 'audit_log', 'quota_resets', 'api_keys', 'users'];
  for (const table of tables) await db.query(`DELETE FROM ${table}`);
});

async function start(env: Record<string, string> = {}, at = T0) {
  node = await testNode(
    { ADMIN_TOKEN: TOKEN, QUOTA_OVERAGE_HANDLING: 'allow', QUOTA_GRACE_PERIOD: '0', RATE_LIMIT_BASIC_REQUESTS_PER_DAY: '20', ...env },
    new ManualClock(at),
    sharedDatabase(db),
  );
  app = node.app;
}

async function get(url: string, headers: Record<string, string> = ADMIN) {
  const res = await app.inject({ method: 'GET', url, headers });
  const json = String(res.headers['content-type']).startsWith('application/json');
  return { status: res.statusCode, body: json ? res.json() : res.body, headers: res.headers };
}

interface Checked {
  allowed: boolean;
  code: string;
  quota: { current_usage: number };
}

async function check(body: Record<string, unknown>) {
  const res = await postJson(app, '/rate-limiting/check', body);
  expect(res.statusCode).toBe(200);
  return res.json() as Checked;
}

/** Makes the test's decisions and returns what it counted. */
async function makeDecisions() {
  const counted = { requests: 0, allowed: 0, denied: 0, cost: 0, overage: 0, burst: 0, invalidKey: 0 };
  const tally = (r: Checked, cost: number) => {
    counted.requests++;
    if (r.allowed) {
      counted.allowed++;
      counted.cost += cost;
      // Units beyond the quota of 20: dave's last check (7 at 18 used) is 5 units over.
      if (r.code === 'OVERAGE') counted.overage += Math.min(cost, r.quota.current_usage - 20);
    } else {
      counted.denied++;
      if (r.code === 'RATE_LIMITED') counted.burst++;
      if (r.code === 'INVALID_KEY') counted.invalidKey++;
    }
  };
  const clock = node.clock;
  // alice: a stored premium user calling with an API key.
  expect((await app.inject({ method: 'POST', url: '/admin/users', headers: ADMIN, payload: { user_id: 'alice', tier: 'premium' } })).statusCode).toBe(201);
  const key = (await app.inject({ method: 'POST', url: '/admin/users/alice/keys', headers: ADMIN, payload: { name: 'prod' } })).json();
  for (let i = 0; i < 3; i++) tally(await check({ api_key: key.key, cost: 2 }), 2);
  tally(await check({ api_key: 'rlk_not-a-key' }), 1);
  // bob: 15 at once against a burst of 10.
  for (let i = 0; i < 15; i++) tally(await check({ user_id: 'bob' }), 1);
  // carol 18/20 (90 %), dave 25/20 (over, 5 in overage), erin 16/20 (80 %), a minute apart.
  for (const [user, costs] of [['carol', [9, 9]], ['dave', [9, 9, 7]], ['erin', [8, 8]]] as const) {
    for (const cost of costs) {
      clock.advance(MINUTE_MS);
      tally(await check({ user_id: user, cost }), cost);
    }
  }
  expect(await node.usage!.recorder.flush({ all: true })).toBe(true);
  return { counted, keyId: key.id as string };
}

describe('GET /rate-limiting/analytics', () => {
  it('needs the admin token, and says how to turn disabled features on', async () => {
    await start();
    expect((await get('/rate-limiting/analytics', {})).status).toBe(401);
    await node.close();
    await start({ USAGE_ANALYTICS_ENABLED: 'false' });
    const off = await get('/rate-limiting/analytics');
    expect(off.status).toBe(403);
    expect(off.body.message).toContain('USAGE_ANALYTICS_ENABLED');
    expect(node.usage).toBeNull();
    await node.close();
    await start({ USAGE_REPORTING_ENABLED: 'false', USAGE_PATTERN_ANALYSIS_ENABLED: 'false' });
    expect((await get('/rate-limiting/analytics')).status).toBe(200);
    const report = await get('/rate-limiting/reports/usage');
    expect(report.status).toBe(403);
    expect(report.body.message).toContain('USAGE_REPORTING_ENABLED');
    expect((await get('/rate-limiting/analytics/patterns')).body.message).toContain('USAGE_PATTERN_ANALYSIS_ENABLED');
  });

  it('answers with the decisions made: totals, series, top consumers, denials by tier and limit, quota levels, overage', async () => {
    await start();
    const { counted, keyId } = await makeDecisions();
    const res = await get('/rate-limiting/analytics?top=3&granularity=minute');
    expect(res.status, JSON.stringify(res.body)).toBe(200);
    const a = res.body;
    expect(a.granularity).toBe('minute');
    expect(a.totals).toMatchObject({ requests: counted.requests, allowed: counted.allowed, denied: counted.denied, cost: counted.cost, overage: counted.overage });
    expect(counted).toMatchObject({ requests: 26, burst: 5, invalidKey: 1, overage: 5 });
    // The series adds up to the totals.
    expect(a.timeseries.reduce((s: number, p: { requests: number }) => s + p.requests, 0)).toBe(counted.requests);
    expect(a.timeseries.length).toBe(8);
    expect(a.top_consumers.map((u: { user_id: string; cost: number }) => [u.user_id, u.cost])).toEqual([
      ['dave', 25],
      ['carol', 18],
      ['erin', 16],
    ]);
    const basic = a.denials_by_tier.find((t: { tier: string }) => t.tier === 'basic');
    expect(basic).toMatchObject({ requests: 23, denied: 6, by_code: { RATE_LIMITED: 5, key: 1 }, by_limit: { burst: 5 } });
    expect(basic.denial_rate).toBeCloseTo(6 / 23, 4);
    expect(a.quota.window_start).toBe('2026-01-01T00:00:00.000Z');
    expect(a.quota.users.map((u: { user_id: string; percent: number; threshold: number }) => [u.user_id, u.percent, u.threshold])).toEqual([
      ['dave', 125, 100],
      ['carol', 90, 90],
      ['erin', 80, 80],
    ]);
    expect(a.quota.counts).toEqual({ at_80: 1, at_90: 1, over_100: 1 });
    expect(a.overage).toEqual([{ user_id: 'dave', overage_units: 5, cost: 25 }]);

    // Filters: one user, one key, one tier.
    const alice = (await get(`/rate-limiting/analytics?user_id=alice&key_id=${keyId}`)).body;
    expect(alice.totals).toMatchObject({ requests: 3, cost: 6, denied: 0 });
    const premium = (await get('/rate-limiting/analytics?tier=premium&granularity=hour')).body;
    expect(premium.granularity).toBe('hour');
    expect(premium.totals.requests).toBe(3);
    expect(premium.timeseries).toEqual([expect.objectContaining({ bucket: '2026-01-01T10:00:00.000Z', requests: 3 })]);
    expect(premium.quota.users).toEqual([]);
  });

  it('rejects a bad range or granularity with 400 naming the field', async () => {
    await start();
    for (const [query, field] of [
      ['from=yesterday', 'from'],
      ['to=2026-13-45', 'to'],
      ['from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z', 'from'],
      ['from=2025-01-01T00:00:00Z&to=2026-01-01T00:00:00Z&granularity=minute', 'granularity'],
      ['from=2025-12-01T00:30:00Z&granularity=hour', 'from'],
      ['top=0', 'top'],
      ['tier=gold', 'tier'],
    ]) {
      const res = await get(`/rate-limiting/analytics?${query}`);
      expect(res.status, query).toBe(400);
      expect(res.body.field, query).toBe(field);
    }
  });
});

describe('GET /rate-limiting/reports/usage', () => {
  it('reports per user as JSON and as CSV whose rows parse and add up to the decisions made', async () => {
    await start();
    const { counted, keyId } = await makeDecisions();
    const json = (await get('/rate-limiting/reports/usage')).body;
    expect(json.period).toEqual({ from: '2026-01-01T00:00:00.000Z', to: new Date(node.clock.ms + 1).toISOString() });
    expect(json.granularity_read).toBe('day');
    expect(json.totals).toMatchObject({ requests: counted.requests, cost: counted.cost, overage_units: counted.overage, denied: counted.denied });
    expect(json.rows.find((r: { user_id: string }) => r.user_id === 'dave')).toMatchObject({ tier: 'basic', requests: 3, cost: 25, overage_units: 5 });

    const res = await app.inject({ method: 'GET', url: '/rate-limiting/reports/usage?format=csv&from=2026-01-01&to=2026-01-02', headers: ADMIN });
    expect(res.statusCode).toBe(200);
    expect(res.headers['content-type']).toBe('text/csv; charset=utf-8');
    expect(res.headers['content-disposition']).toBe('attachment; filename="usage-user-2026-01-01-2026-01-02.csv"');
    const [header, ...lines] = res.body.trimEnd().split('\r\n').map((line) => line.split(','));
    expect(header!.slice(0, 6)).toEqual(['period_start', 'period_end', 'user_id', 'tier', 'requests', 'allowed']);
    const column = (name: string) => header!.indexOf(name);
    const sum = (name: string) => lines.reduce((s, cells) => s + Number(cells[column(name)]), 0);
    expect(lines.map((cells) => cells[column('user_id')])).toEqual(['', 'alice', 'bob', 'carol', 'dave', 'erin']);
    expect(sum('requests')).toBe(counted.requests);
    expect(sum('cost')).toBe(counted.cost);
    expect(sum('overage_units')).toBe(counted.overage);
    expect(sum('denied_rate_limited')).toBe(counted.burst);
    for (const cells of lines) expect(cells[0]).toBe('2026-01-01T00:00:00.000Z');

    // Per key: alice's key by its id; checks without a key have no key id.
    const byKey = (await get('/rate-limiting/reports/usage?group_by=key')).body;
    expect(byKey.rows.find((r: { key_id: string | null }) => r.key_id === keyId)).toMatchObject({ user_id: 'alice', requests: 3, cost: 6 });
    expect(byKey.rows.filter((r: { key_id: string | null }) => r.key_id === null).reduce((s: number, r: { requests: number }) => s + r.requests, 0)).toBe(23);
    // Per tier.
    const byTier = (await get('/rate-limiting/reports/usage?group_by=tier&format=json')).body;
    expect(byTier.rows.map((r: { tier: string; requests: number }) => [r.tier, r.requests])).toEqual([
      ['basic', 23],
      ['premium', 3],
    ]);
  });

  it('quotes CSV cells that need it and defuses cells a spreadsheet would run', () => {
    expect(csvCell('plain')).toBe('plain');
    expect(csvCell('a,b')).toBe('"a,b"');
    expect(csvCell('say "hi"')).toBe('"say ""hi"""');
    expect(csvCell('=SUM(A1:A9)')).toBe("'=SUM(A1:A9)");
    expect(csvCell('-1+1,')).toBe('"\'-1+1,"');
    expect(csvCell(12.5)).toBe('12.5');
  });
});

describe('GET /rate-limiting/analytics/patterns', () => {
  /** A decision as the decider reports it, for planting history. */
  function planted(userId: string, now: number, allowed = true): CheckOutcome {
    return {
      userId,
      tier: 'basic',
      path: 'local',
      decision: { allowed, code: allowed ? 'OK' : 'RATE_LIMITED', limitedBy: allowed ? null : 'minute', retryAfterMs: 0, limits: null as never, quotaUsed: 0, charged: 0, graceStarted: false, now },
    };
  }

  it('finds a planted peak hour and spike with the figures behind them, and nothing on a flat history', async () => {
    const now = Date.UTC(2026, 1, 20, 15, 10);
    await start({}, now);
    const recorder = node.usage!.recorder;
    const lastHour = Date.UTC(2026, 1, 20, 14);
    // 15 days of history: 10 requests every hour; 'peaky' 60 at 09:00 UTC, and 60 in the last complete hour (14:00).
    for (let hour = lastHour - 15 * DAY_MS; hour <= lastHour; hour += HOUR_MS) {
      const hourOfDay = new Date(hour).getUTCHours();
      const peaky = hour === lastHour ? 60 : hourOfDay === 9 ? 60 : 10;
      for (let i = 0; i < peaky; i++) recorder.record(planted('peaky', hour + i * 1000), 1, null);
      for (let i = 0; i < 10; i++) recorder.record(planted('flat', hour + i * 1000), 1, null);
    }
    expect(await recorder.flush({ all: true })).toBe(true);

    const res = await get('/rate-limiting/analytics/patterns');
    expect(res.status).toBe(200);
    const body = res.body;
    expect(body.users.map((u: { user_id: string }) => u.user_id)).toEqual(['peaky', 'flat']);
    const peaky = body.users[0];
    expect(peaky.peak_hours.map((p: { hour: number }) => p.hour)).toEqual([9]);
    expect(body.findings).toHaveLength(1);
    expect(body.findings[0]).toMatchObject({ kind: 'spike', user_id: 'peaky', hour_start: new Date(lastHour).toISOString(), observed: 60, baseline_mean: 10 });
    expect(body.findings[0].z).toBeGreaterThan(3);
    const flat = body.users[1];
    expect(flat.findings).toEqual([]);
    expect(flat.peak_hours).toEqual([]);

    // One user, with a stricter threshold than the spike reaches.
    const strict = (await get(`/rate-limiting/analytics/patterns?user_id=peaky&z_threshold=${Math.ceil(body.findings[0].z) + 1}`)).body;
    expect(strict.findings).toEqual([]);
    expect((await get('/rate-limiting/analytics/patterns?days=0')).status).toBe(400);
  });
});
