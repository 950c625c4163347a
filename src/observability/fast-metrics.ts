import type { Registry } from 'prom-client';

/**
 * Counters and a histogram for the request path. prom-client's own label children
 * hash their labels on every `inc()` (≈ 1–2 µs on a slow core); these keep plain
 * numbers per pre-bound series and produce prom-client's metric format only when
 * scraped. They register into a prom-client `Registry` like any other metric, so
 * `registry.metrics()` and cluster aggregation (`getMetricsAsJSON`) see them.
 */
interface MetricValue {
  value: number;
  labels: Record<string, string | number>;
  metricName?: string;
}

interface MetricJson {
  name: string;
  help: string;
  type: 'counter' | 'histogram';
  values: MetricValue[];
  aggregator: 'sum';
}

abstract class FastMetric {
  readonly aggregator = 'sum';
  constructor(
    readonly name: string,
    readonly help: string,
    readonly type: 'counter' | 'histogram',
    registry: Registry,
  ) {
    // prom-client calls get()/reset() on whatever is registered under a name.
    registry.registerMetric(this as never);
  }
  abstract values(): MetricValue[];
  abstract reset(): void;
  get(): MetricJson {
    return { name: this.name, help: this.help, type: this.type, values: this.values(), aggregator: 'sum' };
  }
}

export interface CounterSeries {
  count: number;
}

export class FastCounter<L extends string> extends FastMetric {
  private readonly series = new Map<string, { labels: Record<L, string>; counter: CounterSeries }>();

  constructor(name: string, help: string, private readonly labelNames: readonly L[], registry: Registry) {
    super(name, help, 'counter', registry);
  }

  /** The series for these label values; keep it and bump `count` on the hot path. */
  seriesFor(labels: Record<L, string>): CounterSeries {
    const key = this.labelNames.map((l) => labels[l]).join('\u0000');
    let entry = this.series.get(key);
    if (entry === undefined) {
      entry = { labels: { ...labels }, counter: { count: 0 } };
      this.series.set(key, entry);
    }
    return entry.counter;
  }

  inc(labels: Record<L, string>, by = 1): void {
    this.seriesFor(labels).count += by;
  }

  values(): MetricValue[] {
    return [...this.series.values()].map((s) => ({ value: s.counter.count, labels: s.labels }));
  }

  reset(): void {
    for (const s of this.series.values()) s.counter.count = 0;
  }
}

export class FastHistogram extends FastMetric {
  private readonly counts: Float64Array;
  private sum = 0;
  private count = 0;

  constructor(name: string, help: string, private readonly buckets: readonly number[], registry: Registry) {
    super(name, help, 'histogram', registry);
    this.counts = new Float64Array(buckets.length);
  }

  observe(value: number): void {
    this.sum += value;
    this.count++;
    const buckets = this.buckets;
    for (let i = 0; i < buckets.length; i++) {
      if (value <= buckets[i]!) {
        this.counts[i]!++;
        return;
      }
    }
  }

  values(): MetricValue[] {
    const out: MetricValue[] = [];
    let cumulative = 0;
    this.buckets.forEach((le, i) => {
      cumulative += this.counts[i]!;
      out.push({ metricName: `${this.name}_bucket`, labels: { le }, value: cumulative });
    });
    out.push({ metricName: `${this.name}_bucket`, labels: { le: '+Inf' }, value: this.count });
    out.push({ metricName: `${this.name}_sum`, labels: {}, value: this.sum });
    out.push({ metricName: `${this.name}_count`, labels: {}, value: this.count });
    return out;
  }

  reset(): void {
    this.counts.fill(0);
    this.sum = 0;
    this.count = 0;
  }
}
