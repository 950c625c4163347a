import { readFileSync } from 'node:fs';
import type { Decision, DecisionCode } from '../../node/engine.js';
import type { EffectiveLimits, LimitName } from '../../node/limits.js';
import type { RedisClient, RedisConnection } from './connection.js';
import { stateKey, windowStart } from './keys.js';

/**
 * Typed wrappers of the Lua scripts in ./lua (one script per file, KEYS/ARGV/return
 * documented at the top of each). Scripts are registered once per client with
 * `defineCommand`, so calls go out as EVALSHA and fall back to EVAL after a restart.
 */
type ScriptArg = string | number;
interface ScriptCommands {
  rlDecide(...args: ScriptArg[]): Promise<number[]>;
  rlLoad(...args: ScriptArg[]): Promise<number[]>;
  rlReconcile(numKeys: number, ...args: Array<ScriptArg | Buffer>): Promise<number[]>;
  rlReset(...args: ScriptArg[]): Promise<number>;
}

const lua = (name: string): string => readFileSync(new URL(`./lua/${name}.lua`, import.meta.url), 'utf8');
const SOURCES = { decide: lua('decide'), load: lua('load'), reconcile: lua('reconcile'), reset: lua('reset') };

const CODES: DecisionCode[] = ['OK', 'OK', 'GRACE', 'OVERAGE', 'RATE_LIMITED', 'QUOTA_EXCEEDED'];
const LIMITS: Array<LimitName | null> = [null, 'burst', 'minute', 'hour', 'day'];
const OVERAGE = { block: 0, allow: 1, throttle: 2 } as const;

/** A user's stored state for the windows containing the time it was loaded at. */
export interface StoredUserState {
  debt: number;
  debtAt: number;
  version: number;
  minuteCount: number;
  hourCount: number;
  dayCount: number;
  graceAt: number;
}

export interface WindowFlush {
  kind: 'm' | 'h' | 'd';
  start: number;
  /** Added since the last successful flush. */
  delta: number;
  /** What the owner believes the total is (-1 unknown); re-seeds a lost key. */
  full: number;
  lengthMs: number;
}

export interface UserFlush {
  userId: string;
  writeBucket: boolean;
  ownerDebt: number;
  ownerAt: number;
  /** Bucket version the owner last saw in Redis, -1 if it never did. */
  baseVersion: number;
  baseDebt: number;
  baseAt: number;
  perMinute: number;
  minuteMs: number;
  hourMs: number;
  dayMs: number;
  /** The owner's current day window, and when grace began in it as far as it knows (-1 none). */
  dayStart: number;
  graceAt: number;
  windows: WindowFlush[];
}

/** What Redis holds for a user where it differs from what the owner believes. */
export interface Surprise {
  debt: number;
  debtAt: number;
  version: number;
  graceDay: number;
  graceAt: number;
  /** Totals of the owner's current minute, hour and day windows (-1 where it sent none). */
  minute: number;
  hour: number;
  day: number;
}

const KIND_CODE = { m: 1, h: 2, d: 3 } as const;
/** Doubles per user and per window in a packed reconcile call (reconcile.lua). */
const USER_DOUBLES = 13;
const WINDOW_DOUBLES = 4;

export class RedisScripts {
  private readonly registered = new WeakSet<RedisClient>();

  constructor(
    private readonly connection: RedisConnection,
    /** How long keys outlive the end of their window. */
    private readonly slackMs: number,
  ) {}

  private commands(): ScriptCommands {
    const client = this.connection.client();
    if (!this.registered.has(client)) {
      client.defineCommand('rlDecide', { numberOfKeys: 1, lua: SOURCES.decide });
      client.defineCommand('rlLoad', { numberOfKeys: 1, lua: SOURCES.load });
      client.defineCommand('rlReconcile', { lua: SOURCES.reconcile });
      client.defineCommand('rlReset', { numberOfKeys: 1, lua: SOURCES.reset });
      this.registered.add(client);
    }
    return client as unknown as ScriptCommands;
  }

  /** One decision made atomically in Redis (the `redis` decision mode and the cluster's fallback). */
  async decide(userId: string, limits: EffectiveLimits, cost: number, now: number): Promise<Decision> {
    const r = await this.commands().rlDecide(
      stateKey(userId),
      now, cost, limits.burst, limits.perMinute, limits.perHour, limits.perDay, limits.throttlePerMinute,
      limits.quotaEnabled ? 1 : 0, OVERAGE[limits.overage], limits.graceMs, limits.minuteMs, limits.hourMs, limits.dayMs, this.slackMs,
    );
    const n = (i: number): number => Number(r[i]);
    return {
      allowed: n(0) === 1,
      code: CODES[n(1)]!,
      limitedBy: LIMITS[n(2)]!,
      retryAfterMs: n(3) < 0 ? null : n(3),
      limits: {
        burst: { limit: limits.burst, remaining: n(4), reset_at: n(8) },
        minute: { limit: n(15), remaining: n(5), reset_at: n(9) },
        hour: { limit: limits.perHour, remaining: n(6), reset_at: n(10) },
        day: { limit: limits.perDay, remaining: n(7), reset_at: n(11) },
      },
      quotaUsed: n(12),
      charged: n(13),
      graceStarted: n(14) === 1,
      now,
    };
  }

  /** Resets the user's day window containing `now` to zero (an admin quota reset). */
  async resetQuota(userId: string, limits: EffectiveLimits, now: number): Promise<void> {
    const dayStart = windowStart(now, limits.dayMs);
    await this.commands().rlReset(stateKey(userId), dayStart);
  }

  /** A user's full state for the windows of `now`. */
  async load(userId: string, limits: EffectiveLimits, now: number): Promise<StoredUserState> {
    const starts = [windowStart(now, limits.minuteMs), windowStart(now, limits.hourMs), windowStart(now, limits.dayMs)];
    const r = (await this.commands().rlLoad(stateKey(userId), ...starts)).map(Number);
    return { debt: r[0]!, debtAt: r[1]!, version: r[2]!, minuteCount: r[3]!, hourCount: r[4]!, dayCount: r[5]!, graceAt: r[6]! };
  }

  /**
   * Applies a batch of users' pending changes in one script call. Returns, by position
   * in `flushes`, only the users whose state in Redis differs from what their owner
   * believes (other writers, lost keys); everyone else was written exactly as sent, with
   * bucket version base + 1. On Redis Cluster every user is its own call (one slot per
   * script), auto-pipelined.
   */
  async reconcile(flushes: UserFlush[]): Promise<Map<number, Surprise>> {
    const surprises = new Map<number, Surprise>();
    if (flushes.length === 0) return surprises;
    if (this.connection.settings.topology === 'cluster' && flushes.length > 1) {
      const parts = await Promise.all(flushes.map((f) => this.reconcile([f])));
      parts.forEach((part, i) => part.forEach((s) => surprises.set(i, s)));
      return surprises;
    }
    const keys: string[] = [];
    let doubles = 0;
    for (const f of flushes) doubles += USER_DOUBLES + WINDOW_DOUBLES * f.windows.length;
    // Packed as doubles: the script reads them with struct.unpack, far cheaper for Redis
    // than parsing numbers out of text.
    const packed = Buffer.allocUnsafe(doubles * 8);
    let at = 0;
    const put = (x: number): void => {
      at = packed.writeDoubleLE(x, at);
    };
    for (const f of flushes) {
      keys.push(stateKey(f.userId));
      put(f.writeBucket ? 1 : 0);
      put(f.ownerDebt);
      put(f.ownerAt);
      put(f.baseVersion);
      put(f.baseDebt);
      put(f.baseAt);
      put(f.perMinute);
      put(f.dayStart);
      put(f.graceAt);
      put(f.minuteMs);
      put(f.hourMs);
      put(f.dayMs);
      put(f.windows.length);
      for (const w of f.windows) {
        put(KIND_CODE[w.kind]);
        put(w.start);
        put(w.delta);
        put(w.full);
      }
    }
    const r = await this.commands().rlReconcile(keys.length, ...keys, packed, this.slackMs);
    for (let i = 0; i < r.length; i += 9) {
      const n = (k: number): number => Number(r[i + k]);
      surprises.set(n(0) - 1, { debt: n(1), debtAt: n(2), version: n(3), graceDay: n(4), graceAt: n(5), minute: n(6), hour: n(7), day: n(8) });
    }
    return surprises;
  }
}
