import { readFileSync } from 'node:fs';
import type { Decision, DecisionCode } from '../../node/engine.js';
import type { EffectiveLimits, LimitName } from '../../node/limits.js';
import type { RedisClient, RedisConnection } from './connection.js';
import { bucketKey, userKeys, windowKey, windowStart } from './keys.js';

/**
 * Typed wrappers of the Lua scripts in ./lua (one script per file, KEYS/ARGV/return
 * documented at the top of each). Scripts are registered once per client with
 * `defineCommand`, so calls go out as EVALSHA and fall back to EVAL after a restart.
 */
type ScriptArg = string | number;
interface ScriptCommands {
  rlDecide(...args: ScriptArg[]): Promise<number[]>;
  rlLoad(...args: ScriptArg[]): Promise<number[]>;
  rlReconcile(numKeys: number, ...args: ScriptArg[]): Promise<number[]>;
}

const lua = (name: string): string => readFileSync(new URL(`./lua/${name}.lua`, import.meta.url), 'utf8');
const SOURCES = { decide: lua('decide'), load: lua('load'), reconcile: lua('reconcile') };

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
  /** Keys expire this long after their window ends. */
  lengthMs: number;
  /** Day windows: when grace started (-1 none). */
  graceAt: number;
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
  windows: WindowFlush[];
}

export interface FlushResult {
  debt: number;
  debtAt: number;
  version: number;
  windows: Array<{ total: number; graceAt: number }>;
}

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
      client.defineCommand('rlDecide', { numberOfKeys: 4, lua: SOURCES.decide });
      client.defineCommand('rlLoad', { numberOfKeys: 4, lua: SOURCES.load });
      client.defineCommand('rlReconcile', { lua: SOURCES.reconcile });
      this.registered.add(client);
    }
    return client as unknown as ScriptCommands;
  }

  private keysAt(userId: string, limits: EffectiveLimits, now: number): string[] {
    const keys = userKeys(userId, windowStart(now, limits.minuteMs), windowStart(now, limits.hourMs), windowStart(now, limits.dayMs));
    return [keys.bucket, keys.minute, keys.hour, keys.day];
  }

  /** One decision made atomically in Redis (the `redis` decision mode and the cluster's fallback). */
  async decide(userId: string, limits: EffectiveLimits, cost: number, now: number): Promise<Decision> {
    const r = await this.commands().rlDecide(
      ...this.keysAt(userId, limits, now),
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

  /** A user's full state for the windows of `now`. */
  async load(userId: string, limits: EffectiveLimits, now: number): Promise<StoredUserState> {
    const r = (await this.commands().rlLoad(...this.keysAt(userId, limits, now))).map(Number);
    return { debt: r[0]!, debtAt: r[1]!, version: r[2]!, minuteCount: r[3]!, hourCount: r[4]!, dayCount: r[5]!, graceAt: r[6]! };
  }

  /** Applies one user's pending changes; returns the totals the owner adopts. */
  async reconcile(flush: UserFlush): Promise<FlushResult> {
    const keys = [bucketKey(flush.userId), ...flush.windows.map((w) => windowKey(flush.userId, w.kind, w.start))];
    const args: ScriptArg[] = [
      flush.writeBucket ? 1 : 0, flush.ownerDebt, flush.ownerAt, flush.baseVersion, flush.baseDebt, flush.baseAt, flush.perMinute, this.slackMs,
    ];
    for (const w of flush.windows) args.push(w.kind === 'd' ? 'd' : 'c', w.delta, w.full, w.start + w.lengthMs + this.slackMs, w.graceAt);
    const r = (await this.commands().rlReconcile(keys.length, ...keys, ...args)).map(Number);
    const windows: FlushResult['windows'] = [];
    for (let i = 3; i < r.length; i += 2) windows.push({ total: r[i]!, graceAt: r[i + 1]! });
    return { debt: r[0]!, debtAt: r[1]!, version: r[2]!, windows };
  }
}
