import type { RedisConnection } from '../storage/redis/connection.js';
import { INVALIDATION_CHANNEL } from '../storage/redis/keys.js';
import { InProcessInvalidationBus, parseInvalidationEvent, type InvalidationBus, type InvalidationEvent, type InvalidationHandler } from './invalidation.js';

/**
 * Invalidation across every process of every node, over Redis pub/sub. Publishing also
 * delivers in this process at once; the copy that comes back through Redis is delivered
 * again, which is harmless (dropping a cache entry twice).
 */
export class RedisInvalidationBus implements InvalidationBus {
  private readonly local = new InProcessInvalidationBus();

  constructor(private readonly connection: RedisConnection) {}

  async start(): Promise<void> {
    await this.connection.subscribe(INVALIDATION_CHANNEL, (message) => {
      let parsed: unknown;
      try {
        parsed = JSON.parse(message);
      } catch {
        return;
      }
      const event = parseInvalidationEvent(parsed);
      if (event) this.local.deliver(event);
    });
  }

  async publish(event: InvalidationEvent): Promise<void> {
    this.local.deliver(event);
    await this.connection.publish(INVALIDATION_CHANNEL, JSON.stringify(event));
  }

  subscribe(handler: InvalidationHandler): () => void {
    return this.local.subscribe(handler);
  }
}

export const IPC_INVALIDATE = 'rl:invalidate';

/**
 * Invalidation between the workers of one node without Redis: a worker sends the event to
 * its primary, which hands it to every worker (the sender included).
 */
export class IpcInvalidationBus implements InvalidationBus {
  private readonly local = new InProcessInvalidationBus();

  constructor() {
    process.on('message', (message: { type?: string; event?: unknown }) => {
      if (message?.type !== IPC_INVALIDATE) return;
      const event = parseInvalidationEvent(message.event);
      if (event) this.local.deliver(event);
    });
  }

  async publish(event: InvalidationEvent): Promise<void> {
    if (process.send) process.send({ type: IPC_INVALIDATE, event });
    else this.local.deliver(event);
  }

  subscribe(handler: InvalidationHandler): () => void {
    return this.local.subscribe(handler);
  }
}
