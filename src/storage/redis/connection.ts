import { EventEmitter } from 'node:events';
import { Cluster, Redis, type RedisOptions } from 'ioredis';
import type { Logger } from '../../observability/logger.js';

export type RedisTopology = 'standalone' | 'sentinel' | 'cluster';

export interface RedisSettings {
  /** `host:port`, or a comma-separated list of them for sentinel and cluster. */
  endpoint: string;
  topology: RedisTopology;
  /** Master name when `topology` is sentinel. */
  sentinelMaster: string;
  database: number;
  password: string;
  /** Connections per process (standalone and sentinel; a cluster client pools per node itself). */
  poolSize: number;
  connectTimeoutMs: number;
  commandTimeoutMs: number;
}

export type RedisClient = Redis | Cluster;

export class RedisUnavailableError extends Error {
  constructor(message = 'Redis is not connected') {
    super(message);
    this.name = 'RedisUnavailableError';
  }
}

/** Parses `host:port[,host:port…]`; a bare host gets 6379. */
export function parseEndpoints(endpoint: string): Array<{ host: string; port: number }> {
  return endpoint
    .split(',')
    .map((part) => part.trim())
    .filter(Boolean)
    .map((part) => {
      const match = /^\[?([^\]]+?)\]?(?::(\d+))?$/.exec(part);
      if (!match) throw new Error(`not a host:port: ${part}`);
      return { host: match[1]!, port: match[2] ? Number(match[2]) : 6379 };
    });
}

/**
 * The one owner of this process's Redis clients. Built from configuration for a
 * standalone server, Sentinel or Redis Cluster; explicit connect and command timeouts;
 * no offline queue, so a command fails at once while Redis is away instead of piling up.
 *
 * Emits `up` and `down` as connectivity changes, and `reset` when Redis came back as a
 * different server (new run id: restarted without persistence, or failed over), which
 * tells the reconciler to re-seed every counter it holds.
 */
export class RedisConnection extends EventEmitter {
  readonly clients: RedisClient[];
  private next = 0;
  private wasUp = false;
  private subscriber: RedisClient | null = null;
  private readonly handlers = new Map<string, Array<(message: string) => void>>();
  private lastRunId: string | null = null;
  private closed = false;

  constructor(
    readonly settings: RedisSettings,
    private readonly logger: Logger,
  ) {
    super();
    const count = settings.topology === 'cluster' ? 1 : Math.max(1, settings.poolSize);
    this.clients = Array.from({ length: count }, () => this.createClient());
    for (const client of this.clients) this.watch(client);
  }

  /** `queueWhileOffline`: only the subscriber, whose SUBSCRIBE must wait for the connection. */
  private createClient(queueWhileOffline = false): RedisClient {
    const { settings } = this;
    const nodes = parseEndpoints(settings.endpoint);
    const common: RedisOptions = {
      password: settings.password || undefined,
      connectTimeout: settings.connectTimeoutMs,
      commandTimeout: queueWhileOffline ? undefined : settings.commandTimeoutMs,
      maxRetriesPerRequest: queueWhileOffline ? null : 0,
      enableOfflineQueue: queueWhileOffline,
      enableAutoPipelining: true,
      lazyConnect: true,
      retryStrategy: (times) => Math.min(50 * 2 ** Math.min(times, 5), 1000),
    };
    if (settings.topology === 'cluster') {
      return new Cluster(nodes, {
        redisOptions: common,
        enableOfflineQueue: queueWhileOffline,
        // NOTE: ioredis groups auto-pipelined cluster commands by their first argument, which
        // for scripts with a dynamic key count is the count, not a key; commands still go
        // out back to back without it.
        enableAutoPipelining: false,
        lazyConnect: true,
        clusterRetryStrategy: (times) => Math.min(100 * times, 2000),
      });
    }
    if (settings.topology === 'sentinel') {
      return new Redis({ ...common, db: settings.database, sentinels: nodes, name: settings.sentinelMaster });
    }
    const node = nodes[0]!;
    return new Redis({ ...common, host: node.host, port: node.port, db: settings.database });
  }

  private watch(client: RedisClient): void {
    client.on('error', (err: Error) => this.logger.debug({ err: err.message }, 'redis client error'));
    client.on('ready', () => {
      if (!this.wasUp) {
        this.wasUp = true;
        this.logger.info({ endpoint: this.settings.endpoint, topology: this.settings.topology }, 'redis connected');
        this.emit('up');
      }
      void this.checkIdentity(client);
    });
    client.on('close', () => this.markDown());
    client.on('end', () => this.markDown());
  }

  private markDown(): void {
    if (!this.wasUp || this.connected) return;
    this.wasUp = false;
    if (!this.closed) {
      this.logger.warn({ endpoint: this.settings.endpoint }, 'redis unreachable; deciding from memory, changes are kept for later');
      this.emit('down');
    }
  }

  /** Compares the server's run id with the last one seen; a change means its data may be gone. */
  private async checkIdentity(client: RedisClient): Promise<void> {
    if (this.settings.topology === 'cluster') {
      // Every (re)connection of a cluster client may follow a failover: re-seed (idempotent).
      if (this.lastRunId !== null) this.emit('reset');
      this.lastRunId = 'cluster';
      return;
    }
    try {
      const info = await (client as Redis).info('server');
      const runId = /run_id:(\w+)/.exec(info)?.[1] ?? null;
      if (runId === null) return;
      if (this.lastRunId !== null && runId !== this.lastRunId) {
        this.logger.warn({ previous: this.lastRunId, current: runId }, 'redis is a different server now; re-seeding counters');
        this.emit('reset');
      }
      this.lastRunId = runId;
    } catch (err) {
      this.logger.debug({ err: (err as Error).message }, 'could not read redis run id');
    }
  }

  get connected(): boolean {
    return this.clients.some((c) => c.status === 'ready');
  }

  /** A ready client, round-robin over the pool; throws RedisUnavailableError if none is. */
  client(): RedisClient {
    for (let i = 0; i < this.clients.length; i++) {
      const client = this.clients[this.next++ % this.clients.length]!;
      if (client.status === 'ready') return client;
    }
    throw new RedisUnavailableError();
  }

  /** Starts connecting; resolves when connected or after `waitMs` (the node runs degraded meanwhile). */
  async start(waitMs: number): Promise<boolean> {
    for (const client of this.clients) client.connect().catch(() => undefined);
    const deadline = Date.now() + waitMs;
    while (!this.connected && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    return this.connected;
  }

  /**
   * Calls `handler` for every message on `channel`, over one subscriber connection of
   * this process (created on first use, re-subscribed by ioredis after reconnects).
   */
  async subscribe(channel: string, handler: (message: string) => void): Promise<void> {
    if (this.subscriber === null) {
      const subscriber = (this.subscriber = this.createClient(true));
      subscriber.on('error', (err: Error) => this.logger.debug({ err: err.message }, 'redis subscriber error'));
      subscriber.on('message', (ch: string, message: string) => {
        for (const h of this.handlers.get(ch) ?? []) h(message);
      });
      subscriber.connect().catch(() => undefined);
    }
    const list = this.handlers.get(channel) ?? [];
    list.push(handler);
    this.handlers.set(channel, list);
    if (list.length === 1) {
      // Subscribing waits for the connection; while Redis is away it is retried on reconnect.
      this.subscriber.subscribe(channel).catch((err: Error) => this.logger.debug({ channel, err: err.message }, 'subscribe deferred'));
    }
  }

  /** Publishes if connected; messages are hints, so a lost one is only logged. */
  async publish(channel: string, message: string): Promise<void> {
    try {
      await this.client().publish(channel, message);
    } catch (err) {
      this.logger.debug({ channel, err: (err as Error).message }, 'publish failed');
    }
  }

  async close(): Promise<void> {
    this.closed = true;
    this.subscriber?.disconnect();
    await Promise.all(
      this.clients.map(async (client) => {
        try {
          if (client.status === 'ready') await client.quit();
          else client.disconnect();
        } catch {
          client.disconnect();
        }
      }),
    );
  }
}
