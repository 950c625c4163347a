import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import type { CheckOutcome, StateSource } from '../node/decider.js';
import { DECISION_CODES, type Decision, type LimitStatus } from '../node/engine.js';
import { LIMIT_NAMES, type LimitName } from '../node/limits.js';
import type { DecisionPath } from '../observability/metrics.js';
import { littleEndianBytes } from '../util/doubles.js';
import { projectRoot } from '../util/paths.js';

/** One forwarded check, as the sender queues it. */
export interface PeerDecideRequest {
  user_id: string;
  tier: string;
  cost: number;
}

/** What an owner answers for one forwarded check: the outcome, or why it could not decide. */
export type PeerAnswer = CheckOutcome | Error;

/** Wire shapes of proto/peer.proto (loaded with keepCase, longs as numbers). */
export interface WireBatch {
  id: number;
  from: string;
  user_ids: string[];
  tiers: string[];
  costs: number[];
}

export interface WireResults {
  id: number;
  values: Buffer;
  tiers: string[];
  errors: string[];
}

export interface PeerHealthResponse {
  member: string;
  status: string;
  epoch: number;
}

export const SECRET_HEADER = 'x-cluster-secret';

let definition: grpc.GrpcObject | undefined;

/** The `ratelimiting.peer.v1.Peer` service definition, loaded once. */
export function peerService(): grpc.ServiceClientConstructor {
  definition ??= grpc.loadPackageDefinition(
    protoLoader.loadSync(join(projectRoot(), 'proto', 'peer.proto'), { keepCase: true, longs: Number, enums: String, defaults: true }),
  );
  const pkg = definition.ratelimiting as grpc.GrpcObject;
  return ((pkg.peer as grpc.GrpcObject).v1 as grpc.GrpcObject).Peer as grpc.ServiceClientConstructor;
}

/** Channel options shared by clients and servers (grpc.io performance advice). */
export const CHANNEL_OPTIONS: grpc.ChannelOptions = {
  'grpc.enable_channelz': 0,
  // No transparent retries: a batch that fails is decided in Redis instead (and a retrying
  // call keeps every message of the stream in a replay buffer until it commits).
  'grpc.enable_retries': 0,
  'grpc.keepalive_time_ms': 10_000,
  'grpc.keepalive_timeout_ms': 5_000,
  'grpc.keepalive_permit_without_calls': 1,
  'grpc.max_receive_message_length': 16 * 1024 * 1024,
};

/** Where each figure of a check's answer lies among its {@link RESULT_STRIDE} doubles (proto/peer.proto). */
export const RESULT = {
  allowed: 0, code: 1, limitedBy: 2, retryAfterMs: 3, burst: 4, minute: 7, hour: 10, day: 13, quotaUsed: 16, decidedAt: 17, path: 18, state: 19,
} as const;
export const RESULT_STRIDE = 20;
const LIMITED_BY: Array<LimitName | null> = [null, ...LIMIT_NAMES];
const PATHS: DecisionPath[] = ['local', 'forwarded', 'redis', 'fallback'];
const STATES: Array<StateSource | undefined> = [undefined, 'memory', 'loaded', 'refreshed', 'fresh'];

/** Packs the owner's answers to a batch. */
export function encodeResults(id: number, answers: PeerAnswer[]): WireResults {
  const values = new Float64Array(answers.length * RESULT_STRIDE);
  const tiers: string[] = new Array<string>(answers.length);
  let errors: string[] = [];
  answers.forEach((answer, i) => {
    if (answer instanceof Error) {
      if (errors.length === 0) errors = new Array<string>(answers.length).fill('');
      errors[i] = answer.message || 'the owner could not decide';
      tiers[i] = '';
      return;
    }
    const d = answer.decision;
    const at = i * RESULT_STRIDE;
    values[at + RESULT.allowed] = d.allowed ? 1 : 0;
    values[at + RESULT.code] = DECISION_CODES.indexOf(d.code);
    values[at + RESULT.limitedBy] = LIMITED_BY.indexOf(d.limitedBy);
    values[at + RESULT.retryAfterMs] = d.retryAfterMs ?? -1;
    putLimit(values, at + RESULT.burst, d.limits.burst);
    putLimit(values, at + RESULT.minute, d.limits.minute);
    putLimit(values, at + RESULT.hour, d.limits.hour);
    putLimit(values, at + RESULT.day, d.limits.day);
    values[at + RESULT.quotaUsed] = d.quotaUsed;
    values[at + RESULT.decidedAt] = d.now;
    values[at + RESULT.path] = PATHS.indexOf(answer.path);
    values[at + RESULT.state] = STATES.indexOf(answer.state);
    tiers[i] = answer.tier;
  });
  return { id, values: littleEndianBytes(values), tiers, errors };
}

/** Check `i` of an answer as a local outcome (the receiving worker marks it forwarded). */
export function decodeResult(userId: string, values: Float64Array, i: number, tier: string): CheckOutcome {
  const at = i * RESULT_STRIDE;
  const retry = values[at + RESULT.retryAfterMs]!;
  const decision: Decision = {
    allowed: values[at + RESULT.allowed] === 1,
    code: DECISION_CODES[values[at + RESULT.code]!] ?? 'UNAVAILABLE',
    limitedBy: LIMITED_BY[values[at + RESULT.limitedBy]!] ?? null,
    retryAfterMs: retry < 0 ? null : retry,
    limits: {
      burst: limitAt(values, at + RESULT.burst),
      minute: limitAt(values, at + RESULT.minute),
      hour: limitAt(values, at + RESULT.hour),
      day: limitAt(values, at + RESULT.day),
    },
    quotaUsed: values[at + RESULT.quotaUsed]!,
    charged: 0,
    graceStarted: false,
    now: values[at + RESULT.decidedAt]!,
  };
  const outcome: CheckOutcome = { userId, tier, decision, path: PATHS[values[at + RESULT.path]!] ?? 'local' };
  const state = STATES[values[at + RESULT.state]!];
  if (state !== undefined) outcome.state = state;
  return outcome;
}

function putLimit(values: Float64Array, at: number, s: LimitStatus): void {
  values[at] = s.limit;
  values[at + 1] = s.remaining;
  values[at + 2] = s.reset_at;
}

function limitAt(values: Float64Array, at: number): LimitStatus {
  return { limit: values[at]!, remaining: values[at + 1]!, reset_at: values[at + 2]! };
}
