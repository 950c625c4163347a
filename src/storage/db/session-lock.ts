/**
 * A first-come, first-served mutex over PGlite's one database session. Whoever holds it
 * owns the session: the primary's own queries and transactions, or one served client from
 * the first message of an exchange until the session is idle again (see pglite-server.ts).
 */
export class SessionLock {
  private held = false;
  private readonly waiters: Array<() => void> = [];

  /** Resolves with a release function once the session is this caller's. */
  acquire(): Promise<() => void> {
    return new Promise((resolve) => {
      const grant = (): void => {
        this.held = true;
        let released = false;
        resolve(() => {
          if (released) return;
          released = true;
          this.handOver();
        });
      };
      if (this.held) this.waiters.push(grant);
      else grant();
    });
  }

  /** Runs `fn` holding the session; releases it however `fn` ends. */
  async run<T>(fn: () => Promise<T>): Promise<T> {
    const release = await this.acquire();
    try {
      return await fn();
    } finally {
      release();
    }
  }

  /** Callers waiting for the session (a gauge for health and tests). */
  get waiting(): number {
    return this.waiters.length;
  }

  get isHeld(): boolean {
    return this.held;
  }

  private handOver(): void {
    const next = this.waiters.shift();
    this.held = false;
    next?.();
  }
}
