/**
 * Cache invalidation between processes: an admin change publishes an event, and every
 * KeyResolver and UserDirectory that subscribed drops what the event names, so a revoked
 * key or a new tier takes effect on the next request instead of after a cache lifetime.
 *
 * Implementations: `InProcessInvalidationBus` (one process; tests) here, and a Redis
 * pub/sub one to come. Either delivers to subscribers in the publishing process too.
 * NOTE: delivery across processes is at most once (Redis pub/sub drops messages while a
 * subscriber is disconnected); caches also reload entries they have used for
 * `refreshAfterMs`, which bounds how long a missed event can matter.
 */
export type InvalidationEvent =
  /** A key was revoked, rotated or deleted. */
  | { type: 'key'; keyId: string }
  /** A user was created, changed or deleted (deletion also removes the user's keys). */
  | { type: 'user'; userId: string }
  /** An admin reset the user's quota window starting at `windowStart` (epoch ms). */
  | { type: 'quota_reset'; userId: string; windowStart: number; resetAt: number };

export type InvalidationHandler = (event: InvalidationEvent) => void;

export interface InvalidationBus {
  /** Delivers `event` to every subscriber, in this process and (bus permitting) in others. */
  publish(event: InvalidationEvent): Promise<void>;
  /** Calls `handler` for every event from now on; returns the unsubscribe function. */
  subscribe(handler: InvalidationHandler): () => void;
}

/** A bus within one process: `publish` calls every handler before it resolves. */
export class InProcessInvalidationBus implements InvalidationBus {
  private readonly handlers = new Set<InvalidationHandler>();

  constructor(private readonly onHandlerError: (err: unknown, event: InvalidationEvent) => void = () => {}) {}

  async publish(event: InvalidationEvent): Promise<void> {
    this.deliver(event);
  }

  /** Calls every handler with `event`; a failing handler does not stop the others. For bus implementations receiving from elsewhere. */
  deliver(event: InvalidationEvent): void {
    for (const handler of this.handlers) {
      try {
        handler(event);
      } catch (err) {
        this.onHandlerError(err, event);
      }
    }
  }

  subscribe(handler: InvalidationHandler): () => void {
    this.handlers.add(handler);
    return () => this.handlers.delete(handler);
  }
}

/** An event received from outside (e.g. a pub/sub message already JSON-parsed), checked; null if it is not one. */
export function parseInvalidationEvent(value: unknown): InvalidationEvent | null {
  if (typeof value !== 'object' || value === null) return null;
  const event = value as Record<string, unknown>;
  if (event.type === 'key' && typeof event.keyId === 'string') return { type: 'key', keyId: event.keyId };
  if (event.type === 'user' && typeof event.userId === 'string') return { type: 'user', userId: event.userId };
  if (
    event.type === 'quota_reset' &&
    typeof event.userId === 'string' &&
    typeof event.windowStart === 'number' &&
    typeof event.resetAt === 'number'
  ) {
    return { type: 'quota_reset', userId: event.userId, windowStart: event.windowStart, resetAt: event.resetAt };
  }
  return null;
}
