import { decide, newUserState } from '../../src/node/engine.js';
import type { EffectiveLimits } from '../../src/node/limits.js';

export interface Observed {
  user: string;
  allowed: boolean;
  /** The deciding node's time. */
  at: number;
  mode: string;
  /** Wall time the answer arrived at the client, and how long it took. */
  receivedAt: number;
  latencyMs: number;
}

export interface TrafficRun {
  observed: Observed[];
  errors: Array<{ url: string; error: string; at: number }>;
  /** Stops the loops and waits for requests in flight. */
  stop(): Promise<void>;
  /** Replaces the set of node URLs requests go to (e.g. after a node died). */
  setTargets(urls: string[]): void;
}

/**
 * Closed-loop checks, round-robin over `urls` (as a gateway does), cycling through
 * `users`. Records every decision with the deciding node's time.
 */
export function traffic(urls: string[], users: string[], options: { concurrency?: number; paceMs?: number } = {}): TrafficRun {
  const observed: Observed[] = [];
  const errors: TrafficRun['errors'] = [];
  let targets = [...urls];
  let running = true;
  let n = 0;
  const loop = async () => {
    while (running) {
      const i = n++;
      const url = targets[i % targets.length]!;
      const user = users[i % users.length]!;
      const started = Date.now();
      try {
        const res = await fetch(`${url}/rate-limiting/check`, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ user_id: user }),
          signal: AbortSignal.timeout(10_000),
        });
        const body = (await res.json()) as { allowed: boolean; decided_at: number; mode: string };
        if (res.status !== 200) errors.push({ url, error: `status ${res.status}`, at: started });
        else observed.push({ user, allowed: body.allowed, at: body.decided_at, mode: body.mode, receivedAt: Date.now(), latencyMs: Date.now() - started });
      } catch (err) {
        if (running) errors.push({ url, error: (err as Error).message, at: started });
      }
      if (options.paceMs) await new Promise((r) => setTimeout(r, options.paceMs));
    }
  };
  const loops = Array.from({ length: options.concurrency ?? 12 }, loop);
  return {
    observed,
    errors,
    async stop() {
      running = false;
      await Promise.all(loops);
    },
    setTargets(next: string[]) {
      targets = [...next];
    },
  };
}

/** Admissions per user that one exact owner would have made for the same timeline. */
export function exactAdmissions(observed: Observed[], limits: EffectiveLimits): Map<string, number> {
  const byUser = new Map<string, Observed[]>();
  for (const o of observed) byUser.set(o.user, [...(byUser.get(o.user) ?? []), o]);
  const expected = new Map<string, number>();
  for (const [user, list] of byUser) {
    const state = newUserState();
    let admitted = 0;
    for (const o of [...list].sort((a, b) => a.at - b.at)) if (decide(state, limits, 1, o.at).allowed) admitted++;
    expected.set(user, admitted);
  }
  return expected;
}

export function admissionsByUser(observed: Observed[]): Map<string, number> {
  const actual = new Map<string, number>();
  for (const o of observed) if (o.allowed) actual.set(o.user, (actual.get(o.user) ?? 0) + 1);
  return actual;
}
