import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { DECISION_CODES } from '../src/node/engine.js';
import { Metrics } from '../src/observability/metrics.js';

/**
 * deploy/grafana-dashboard.json must only query metrics the service exports, under their
 * exact names: a renamed metric (in the dashboard or in src/observability/metrics.ts)
 * fails here instead of leaving an empty panel.
 */

interface Target {
  expr: string;
  datasource: { uid: string };
}
interface Panel {
  id: number;
  type: string;
  title: string;
  gridPos: { x: number; y: number; w: number; h: number };
  datasource?: { type: string; uid: string };
  targets?: Target[];
}

const dashboard = JSON.parse(readFileSync(new URL('../deploy/grafana-dashboard.json', import.meta.url), 'utf8')) as {
  schemaVersion: number;
  uid: string;
  panels: Panel[];
  templating: { list: { name: string; type: string; query: unknown; definition?: string }[] };
};

/** The metrics the dashboard is built on; histograms are queried through their series. */
const DASHBOARD_METRICS: Record<string, 'counter' | 'gauge' | 'histogram'> = {
  rate_limiting_decisions_total: 'counter',
  rate_limiting_decision_duration_seconds: 'histogram',
  rate_limiting_sync_lag_seconds: 'gauge',
  rate_limiting_sync_pending_users: 'gauge',
  rate_limiting_redis_up: 'gauge',
  rate_limiting_redis_partitioned: 'gauge',
  rate_limiting_forward_batch_size: 'histogram',
  rate_limiting_forward_errors_total: 'counter',
  rate_limiting_suspected_peers: 'gauge',
  rate_limiting_ring_members: 'gauge',
  rate_limiting_usage_buffered_rows: 'gauge',
  rate_limiting_usage_recording_lag_seconds: 'gauge',
  rate_limiting_usage_dropped_total: 'counter',
  rate_limiting_shard_users: 'gauge',
  process_resident_memory_bytes: 'gauge',
  nodejs_eventloop_lag_p99_seconds: 'gauge',
};

const KEYWORDS = new Set(['by', 'without', 'on', 'ignoring', 'group_left', 'group_right', 'and', 'or', 'unless', 'bool', 'offset']);

/** Metric names an expression selects: identifiers that are not functions, keywords, labels or strings. */
function metricNames(expr: string): string[] {
  const bare = expr
    .replace(/"(?:[^"\\]|\\.)*"/g, '""')
    .replace(/\[[^\]]*\]/g, '')
    .replace(/\{[^}]*\}/g, '')
    .replace(/\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, '');
  const names: string[] = [];
  for (const match of bare.matchAll(/(?<![\w.])([A-Za-z_:][\w:]*)(\s*\()?/g)) {
    const [, name, call] = match;
    if (call === undefined && !KEYWORDS.has(name!)) names.push(name!);
  }
  return names;
}

/** The metric a series name belongs to: `x_bucket`, `x_sum` and `x_count` belong to histogram `x`. */
function baseMetric(series: string): string {
  const histogram = /^(.*)_(?:bucket|sum|count)$/.exec(series)?.[1];
  return histogram !== undefined && DASHBOARD_METRICS[histogram] === 'histogram' ? histogram : series;
}

const contentPanels = dashboard.panels.filter((p) => p.type !== 'row');
const exprs = contentPanels.flatMap((p) => (p.targets ?? []).map((t) => t.expr));

describe('grafana dashboard', () => {
  it('reads its metric names off an expression', () => {
    expect(
      metricNames(
        'sum by (le) (rate(x_bucket{instance=~"$node", code=~"A|B"}[$__rate_interval])) / ignoring (code) group_left () sum(y) or vector(0)',
      ),
    ).toEqual(['x_bucket', 'y']);
  });

  it('is a schema-39 dashboard with a data source variable and a node variable', () => {
    expect(dashboard.schemaVersion).toBe(39);
    expect(dashboard.uid).toBe('rate-limiting');
    const variables = dashboard.templating.list;
    expect(variables.map((v) => [v.name, v.type])).toEqual([
      ['DS_PROMETHEUS', 'datasource'],
      ['node', 'query'],
    ]);
    expect(variables[1]!.definition).toBe('label_values(rate_limiting_config_info, instance)');
    expect(JSON.stringify(variables[1]!.query)).toContain('label_values(rate_limiting_config_info, instance)');
    expect(new Set(contentPanels.map((p) => p.id)).size).toBe(contentPanels.length);
    expect(dashboard.panels.map((p) => p.id)).toEqual(dashboard.panels.map((_, i) => i + 1));
  });

  it('queries the data source variable and filters every selector by node', () => {
    expect(contentPanels.length).toBeGreaterThanOrEqual(20);
    for (const panel of contentPanels) {
      expect(panel.datasource, panel.title).toEqual({ type: 'prometheus', uid: '${DS_PROMETHEUS}' });
      expect(panel.targets?.length, panel.title).toBeGreaterThan(0);
      for (const target of panel.targets!) {
        expect(target.datasource.uid).toBe('${DS_PROMETHEUS}');
        const selectors = [...target.expr.matchAll(/\{[^}]*\}/g)].map((m) => m[0]);
        expect(selectors.length, target.expr).toBe(metricNames(target.expr).length);
        for (const selector of selectors) expect(selector, target.expr).toContain('instance=~"$node"');
      }
    }
  });

  it('uses exactly the listed metrics, each at least once', () => {
    const used = new Set(exprs.flatMap(metricNames).map(baseMetric));
    expect([...used].sort()).toEqual(Object.keys(DASHBOARD_METRICS).sort());
  });

  it('uses only metrics the service registers, with their types', async () => {
    const registered = new Map((await new Metrics().registry.getMetricsAsJSON()).map((m) => [m.name, String(m.type)]));
    for (const [name, type] of Object.entries(DASHBOARD_METRICS)) expect(registered.get(name), name).toBe(type);
    expect(registered.get('rate_limiting_config_info')).toBe('gauge');
  });

  it('matches only decision codes that exist', () => {
    const codes = exprs.flatMap((e) => [...e.matchAll(/code=~?"([^"]*)"/g)].flatMap((m) => m[1]!.split('|')));
    expect(new Set(codes)).toEqual(new Set(['QUOTA_EXCEEDED', 'GRACE', 'OVERAGE']));
    for (const code of codes) expect(DECISION_CODES).toContain(code);
  });

  it('lays panels out on the 24-column grid without overlap', () => {
    const cells = new Set<string>();
    for (const { gridPos: g, title } of dashboard.panels) {
      expect(g.x + g.w, title).toBeLessThanOrEqual(24);
      for (let x = g.x; x < g.x + g.w; x++) {
        for (let y = g.y; y < g.y + g.h; y++) {
          expect(cells.has(`${x},${y}`), title).toBe(false);
          cells.add(`${x},${y}`);
        }
      }
    }
  });
});
