/**
 * Pushes the node's metrics to a Prometheus Pushgateway (CUSTOM_METRICS_ENDPOINT) every
 * few seconds, for deployments Prometheus cannot scrape. Each node pushes its whole
 * text under job `rate_limiting` and instance = node id, with PUT, so a push replaces the
 * node's previous one and series of other nodes are untouched. A failed push is logged
 * (once per outage) and retried at the next interval; it never affects decisions.
 */
import type { Logger } from './logger.js';

export interface PushGatewayOptions {
  /** Base URL of the Pushgateway, e.g. http://127.0.0.1:9091. */
  endpoint: string;
  job: string;
  instance: string;
  intervalMs: number;
  /** The text to push (the node-wide metrics). */
  text(): Promise<{ body: string; contentType: string }>;
  logger: Logger;
  /** A push slower than this is abandoned. */
  timeoutMs?: number;
}

export class PushGateway {
  private timer: NodeJS.Timeout | null = null;
  private failing = false;
  private pushing: Promise<boolean> | null = null;
  /** Pushes that succeeded and failed so far. */
  readonly counts = { ok: 0, failed: 0 };

  constructor(private readonly options: PushGatewayOptions) {}

  /** The URL pushed to: <endpoint>/metrics/job/<job>/instance/<instance>. */
  get url(): string {
    const base = this.options.endpoint.replace(/\/+$/, '');
    return `${base}/metrics/job/${encodeURIComponent(this.options.job)}/instance/${encodeURIComponent(this.options.instance)}`;
  }

  start(): void {
    this.timer ??= setInterval(() => void this.push(), this.options.intervalMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  /** One push; true when the Pushgateway took it. Overlapping calls share one push. */
  push(): Promise<boolean> {
    this.pushing ??= this.send().finally(() => (this.pushing = null));
    return this.pushing;
  }

  private async send(): Promise<boolean> {
    const { logger } = this.options;
    try {
      const { body, contentType } = await this.options.text();
      const response = await fetch(this.url, {
        method: 'PUT',
        headers: { 'content-type': contentType },
        body,
        signal: AbortSignal.timeout(this.options.timeoutMs ?? 5000),
      });
      if (!response.ok) throw new Error(`pushgateway answered ${response.status} ${(await response.text()).slice(0, 200)}`);
      await response.body?.cancel();
      this.counts.ok++;
      if (this.failing) logger.info({ url: this.url }, 'metrics push works again');
      this.failing = false;
      return true;
    } catch (err) {
      this.counts.failed++;
      if (!this.failing) logger.warn({ url: this.url, err: (err as Error).message }, 'metrics push failed; retrying every interval');
      this.failing = true;
      return false;
    }
  }
}
