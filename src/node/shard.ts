import { LRUCache } from 'lru-cache';
import { decide, newUserState, type Decision, type UserState } from './engine.js';
import type { EffectiveLimits } from './limits.js';

/**
 * One worker's in-memory counters: the single writer for the users it owns.
 * Bounded by an LRU; a user evicted from it starts from rest the next time (once the
 * Redis tier exists, from its durable counters instead).
 *
 * NOTE: callers must not `await` between reading a user's state and deciding on it;
 * `decide` reads and writes the state in one synchronous step.
 */
export class Shard {
  private readonly states: LRUCache<string, UserState>;

  constructor(readonly maxUsers: number) {
    this.states = new LRUCache<string, UserState>({ max: maxUsers });
  }

  get size(): number {
    return this.states.size;
  }

  /** Decides `cost` for `userId` at `now`, creating the user's state from rest if absent. */
  decide(userId: string, limits: EffectiveLimits, cost: number, now: number): Decision {
    let state = this.states.get(userId);
    if (state === undefined) {
      // A peek of an unknown user must not take a slot from a real one.
      if (cost === 0) return decide(newUserState(), limits, 0, now);
      state = newUserState();
      this.states.set(userId, state);
    }
    return decide(state, limits, cost, now);
  }

  /** The user's state, if held (read-only use: tests, status, handoff). */
  peekState(userId: string): Readonly<UserState> | undefined {
    return this.states.peek(userId);
  }

  clear(): void {
    this.states.clear();
  }
}
