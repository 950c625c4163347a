import { readFileSync } from 'node:fs';
import type { Decision } from '../../src/node/engine.js';
import type { EffectiveLimits, LimitName } from '../../src/node/limits.js';

export interface VectorExpect {
  allowed?: boolean;
  code?: string;
  limited_by?: LimitName | null;
  retry_after_ms?: number | null;
  remaining?: Partial<Record<LimitName, number>>;
  limit?: Partial<Record<LimitName, number>>;
  /** Relative to the file's epoch. */
  reset_at?: Partial<Record<LimitName, number>>;
  quota_used?: number;
  grace_started?: boolean;
}

export interface VectorStep {
  at: number;
  cost: number;
  repeat?: number;
  expect: VectorExpect;
}

export interface Vector {
  name: string;
  profile: string;
  steps: VectorStep[];
}

export interface VectorFile {
  epoch: number;
  profiles: Record<string, EffectiveLimits>;
  vectors: Vector[];
}

export function loadVectors(): VectorFile {
  return JSON.parse(readFileSync(new URL('./decisions.json', import.meta.url), 'utf8')) as VectorFile;
}

/** Projects a decision onto the fields a step expects, so a mismatch shows only what differs. */
export function projectDecision(decision: Decision, expect: VectorExpect, epoch: number): VectorExpect {
  const out: VectorExpect = {};
  if (expect.allowed !== undefined) out.allowed = decision.allowed;
  if (expect.code !== undefined) out.code = decision.code;
  if (expect.limited_by !== undefined) out.limited_by = decision.limitedBy;
  if (expect.retry_after_ms !== undefined) out.retry_after_ms = decision.retryAfterMs;
  if (expect.quota_used !== undefined) out.quota_used = decision.quotaUsed;
  if (expect.grace_started !== undefined) out.grace_started = decision.graceStarted;
  for (const field of ['remaining', 'limit', 'reset_at'] as const) {
    const wanted = expect[field];
    if (!wanted) continue;
    const got: Partial<Record<LimitName, number>> = {};
    for (const name of Object.keys(wanted) as LimitName[]) {
      const status = decision.limits[name];
      got[name] = field === 'remaining' ? status.remaining : field === 'limit' ? status.limit : status.reset_at - epoch;
    }
    out[field] = got;
  }
  return out;
}
