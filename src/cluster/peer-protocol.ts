import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import type { CheckOutcome } from '../node/decider.js';
import type { Decision, DecisionCode, LimitStatus } from '../node/engine.js';
import type { LimitName } from '../node/limits.js';
import type { DecisionPath } from '../observability/metrics.js';
import { projectRoot } from '../util/paths.js';

/** Wire shapes of proto/peer.proto (loaded with keepCase, longs as numbers). */
export interface PeerDecideRequest {
  user_id: string;
  tier: string;
  cost: number;
}

interface WireLimit {
  limit: number;
  remaining: number;
  reset_at: number;
}

export interface PeerDecideResult {
  allowed: boolean;
  code: string;
  limited_by: string;
  retry_after_ms: number;
  burst: WireLimit | null;
  minute: WireLimit | null;
  hour: WireLimit | null;
  day: WireLimit | null;
  quota_used: number;
  decided_at: number;
  tier: string;
  path: string;
  state: string;
  error: string;
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
  'grpc.keepalive_time_ms': 10_000,
  'grpc.keepalive_timeout_ms': 5_000,
  'grpc.keepalive_permit_without_calls': 1,
  'grpc.max_receive_message_length': 16 * 1024 * 1024,
};

const limitOf = (s: LimitStatus): WireLimit => ({ limit: s.limit, remaining: s.remaining, reset_at: s.reset_at });
const statusOf = (w: WireLimit | null): LimitStatus => ({ limit: w?.limit ?? 0, remaining: w?.remaining ?? 0, reset_at: w?.reset_at ?? 0 });

export function toWire(outcome: CheckOutcome): PeerDecideResult {
  const d = outcome.decision;
  return {
    allowed: d.allowed,
    code: d.code,
    limited_by: d.limitedBy ?? '',
    retry_after_ms: d.retryAfterMs ?? -1,
    burst: limitOf(d.limits.burst),
    minute: limitOf(d.limits.minute),
    hour: limitOf(d.limits.hour),
    day: limitOf(d.limits.day),
    quota_used: d.quotaUsed,
    decided_at: d.now,
    tier: outcome.tier,
    path: outcome.path,
    state: outcome.state ?? '',
    error: '',
  };
}

export function fromWire(userId: string, r: PeerDecideResult): CheckOutcome {
  const decision: Decision = {
    allowed: r.allowed,
    code: r.code as DecisionCode,
    limitedBy: r.limited_by === '' ? null : (r.limited_by as LimitName),
    retryAfterMs: r.retry_after_ms < 0 ? null : r.retry_after_ms,
    limits: { burst: statusOf(r.burst), minute: statusOf(r.minute), hour: statusOf(r.hour), day: statusOf(r.day) },
    quotaUsed: r.quota_used,
    charged: 0,
    graceStarted: false,
    now: r.decided_at,
  };
  const outcome: CheckOutcome = { userId, tier: r.tier, decision, path: r.path as DecisionPath };
  if (r.state !== '') outcome.state = r.state as CheckOutcome['state'] & string;
  return outcome;
}
