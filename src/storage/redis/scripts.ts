import { readFileSync } from 'node:fs';
import type { Decision, DecisionCode } from '../../node/engine.js';
import type { EffectiveLimits, LimitName } from '../../node/limits.js';
import type { RedisClient, RedisConnection } from './connection.js';
import { littleEndianBytes } from '../../util/doubles.js';
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

/**
 * Where each figure of a user's flush lies in a {@link FlushBatch} record: the owner's
 * bucket (written if `writeBucket` is 1) and what it last saw of Redis's (`baseVersion`
 * -1: never), its current day window and when grace began in it (-1 none), the window
 * lengths, then the minute, hour and day windows at `windows + 4 × k` (k = 0, 1, 2):
 * sent (1/0), start, delta since the last flush, full (what the owner believes the total
 * is, -1 unknown; it re-seeds a lost key).
 */
export const FLUSH = {
  writeBucket: 0, ownerDebt: 1, ownerAt: 2, baseVersion: 3, baseDebt: 4, baseAt: 5, perMinute: 6,
  dayStart: 7, graceAt: 8, minuteMs: 9, hourMs: 10, dayMs: 11, windows: 12,
} as const;
/** Offsets within a window's four figures (at `FLUSH.windows + 4 × k`). */
export const FLUSH_WINDOW = { sent: 0, start: 1, delta: 2, full: 3 } as const;
/** Doubles per user record (reconcile.lua reads the same layout). */
export const FLUSH_STRIDE = 24;

/**
 * Users' changes packed exactly as the reconcile script reads them (doubles, which
 * `struct.unpack` reads far more cheaply than numbers in text). The reconciler keeps the
 * batch as its record of what it sent, to adopt Redis's answer or put changes back.
 */
export class FlushBatch {
  readonly userIds: string[] = [];
  readonly values: Float64Array;

  constructor(capacity: number) {
    this.values = new Float64Array(capacity * FLUSH_STRIDE);
  }

  get size(): number {
    return this.userIds.length;
  }

  /** Users the batch holds without growing. */
  get capacity(): number {
    return this.values.length / FLUSH_STRIDE;
  }

  /** Empties the batch for reuse. */
  clear(): void {
    this.userIds.length = 0;
  }

  /** Appends a user; returns the offset of its record, which the caller fills in. */
  add(userId: string): number {
    const offset = this.userIds.length * FLUSH_STRIDE;
    this.userIds.push(userId);
    return offset;
  }

  /** Users `from` to `to` (exclusive) as the bytes the script reads, little-endian. */
  bytes(from: number, to: number): Buffer {
    return littleEndianBytes(this.values, from * FLUSH_STRIDE, to * FLUSH_STRIDE);
  }
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
   * Applies the pending changes of users `from` to `to` of a batch in one script call.
   * Returns, by position in the batch, only the users whose state in Redis differs from
   * what their owner believes (other writers, lost keys); everyone else was written
   * exactly as sent, with bucket version base + 1. On Redis Cluster every user is its
   * own call (one slot per script), auto-pipelined.
   */
  async reconcile(batch: FlushBatch, from = 0, to = batch.size): Promise<Map<number, Surprise>> {
    const surprises = new Map<number, Surprise>();
    if (to <= from) return surprises;
    if (this.connection.settings.topology === 'cluster' && to - from > 1) {
      const parts = await Promise.all(batch.userIds.slice(from, to).map((_, i) => this.reconcile(batch, from + i, from + i + 1)));
      for (const part of parts) for (const [i, s] of part) surprises.set(i, s);
      return surprises;
    }
    const packed = batch.bytes(from, to);
    let r: number[];
    if (this.connection.settings.topology === 'cluster') {
      r = await this.commands().rlReconcile(1, stateKey(batch.userIds[from]!), packed, this.slackMs);
    } else {
      // The keys as one argument (see reconcile.lua): an argument per user costs more to
      // encode than the rest of the user's record.
      let names = '';
      for (let i = from; i < to; i++) names += `${stateKey(batch.userIds[i]!)}\n`;
      r = await this.commands().rlReconcile(0, packed, this.slackMs, names);
    }
    for (let i = 0; i < r.length; i += 9) {
      const n = (k: number): number => Number(r[i + k]);
      surprises.set(from + n(0) - 1, { debt: n(1), debtAt: n(2), version: n(3), graceDay: n(4), graceAt: n(5), minute: n(6), hour: n(7), day: n(8) });
    }
    return surprises;
  }
}
