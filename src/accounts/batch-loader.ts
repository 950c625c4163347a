/**
 * Coalesces single-id loads into one batched read: ids asked for in the same turn of the
 * event loop (up to `maxBatch`) go to the store as one query. A node seeing thousands of
 * new users at once (start-up, a burst of new callers, the periodic re-check of users the
 * service does not store) then costs the database a query per few hundred users instead
 * of one per user.
 */
export interface BatchLoaderOptions<V> {
  /** Reads many ids at once: the map holds the ids that exist. Throws when the store cannot answer. */
  loadMany(ids: string[]): Promise<Map<string, V>>;
  /** Most ids per query; default 500. */
  maxBatch?: number;
  /**
   * How long background loads (re-checks nobody waits for) gather before they are sent;
   * default 250 ms. A loaded node re-checks its users a few per event-loop turn; sent each
   * turn, that was a query per three users of a 2-worker node. A foreground batch takes
   * whatever background ids are waiting along.
   */
  backgroundWaitMs?: number;
}

interface Waiter<V> {
  resolve(value: V | null): void;
  reject(err: unknown): void;
}

export class BatchLoader<V> {
  private queued = new Map<string, Array<Waiter<V>>>();
  private scheduled = false;
  private backgroundTimer: NodeJS.Timeout | null = null;
  private readonly maxBatch: number;

  constructor(private readonly options: BatchLoaderOptions<V>) {
    this.maxBatch = options.maxBatch ?? 500;
  }

  /**
   * The value of `id`, or null when the store does not hold it. A `background` load waits
   * up to `backgroundWaitMs` for company (or a full batch, or a foreground load).
   */
  load(id: string, background = false): Promise<V | null> {
    return new Promise((resolve, reject) => {
      const waiters = this.queued.get(id);
      if (waiters) waiters.push({ resolve, reject });
      else this.queued.set(id, [{ resolve, reject }]);
      if (this.scheduled) return;
      if (!background || this.queued.size >= this.maxBatch) {
        this.scheduled = true;
        setImmediate(() => this.dispatch());
      } else {
        this.backgroundTimer ??= setTimeout(() => this.dispatch(), this.options.backgroundWaitMs ?? 250);
      }
    });
  }

  private dispatch(): void {
    this.scheduled = false;
    if (this.backgroundTimer !== null) clearTimeout(this.backgroundTimer);
    this.backgroundTimer = null;
    const queued = this.queued;
    this.queued = new Map();
    const ids = [...queued.keys()];
    for (let start = 0; start < ids.length; start += this.maxBatch) {
      const batch = ids.slice(start, start + this.maxBatch);
      // Through a promise chain: a store that throws instead of rejecting fails its callers, not the process.
      Promise.resolve(batch).then((ids) => this.options.loadMany(ids)).then(
        (found) => {
          for (const id of batch) for (const w of queued.get(id)!) w.resolve(found.get(id) ?? null);
        },
        (err: unknown) => {
          for (const id of batch) for (const w of queued.get(id)!) w.reject(err);
        },
      );
    }
  }
}
