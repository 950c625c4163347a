import { createHash, timingSafeEqual } from 'node:crypto';
import { rmSync } from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import type { Logger } from '../observability/logger.js';
import { CHANNEL_OPTIONS, SECRET_HEADER, encodeResults, peerService, type PeerAnswer, type PeerHealthResponse, type WireBatch } from './peer-protocol.js';

/** A batch of forwarded checks: entry i of each list is check i. */
export type PeerChecks = Pick<WireBatch, 'user_ids' | 'tiers' | 'costs'>;

/** What a worker does with the calls its peers make. */
export interface PeerHandler {
  /** An answer per check, in order (synchronously when every user was in memory). */
  decideBatch(from: string, checks: PeerChecks): PeerAnswer[] | Promise<PeerAnswer[]>;
  health(from: string, youWereSuspected: boolean): PeerHealthResponse;
  resetQuota(userId: string): Promise<void>;
}

export interface PeerServer {
  port: number;
  close(): Promise<void>;
}

const digest = (s: string): Buffer => createHash('sha256').update(s).digest();

/** True when the call carries the cluster secret (compared in constant time). */
function authorized(metadata: grpc.Metadata, expected: Buffer): boolean {
  const given = metadata.get(SECRET_HEADER)[0];
  return typeof given === 'string' && timingSafeEqual(digest(given), expected);
}

/**
 * Why a batch cannot be decided, or null: its lists must be of one length (entry i of each
 * is check i) and name a user each. A peer running other code could send anything.
 */
export function malformed(batch: WireBatch): string | null {
  const n = batch.user_ids.length;
  if (batch.tiers.length !== n || batch.costs.length !== n) {
    return `malformed batch: ${n} user_ids, ${batch.tiers.length} tiers and ${batch.costs.length} costs (one of each per check)`;
  }
  if (batch.user_ids.some((id) => id === '')) return 'malformed batch: a check without a user_id';
  return null;
}

/**
 * A worker's peer gRPC server. Binds `host:port`; with `fallbackToFreePort` a taken port
 * is replaced by one the OS picks (the registry advertises the real one). With `unixPath`
 * it also serves on that socket, which the node's other workers use instead of TCP.
 */
export async function startPeerServer(options: {
  host: string;
  port: number;
  fallbackToFreePort: boolean;
  secret: string;
  handler: PeerHandler;
  logger: Logger;
  /** Also serve on this unix socket (for this node's other workers). */
  unixPath?: string;
}): Promise<PeerServer> {
  const expected = digest(options.secret);
  const server = new grpc.Server({ ...CHANNEL_OPTIONS, 'grpc.max_concurrent_streams': 1000 });
  const unauthenticated = { code: grpc.status.UNAUTHENTICATED, details: 'missing or wrong cluster secret' };
  server.addService(peerService().service, {
    Decide: (call: grpc.ServerDuplexStream<WireBatch, unknown>) => {
      if (!authorized(call.metadata, expected)) {
        call.emit('error', unauthenticated);
        return;
      }
      const failed = (batch: WireBatch, err: Error): void => {
        options.logger.error({ err }, 'peer decide batch failed');
        call.write(encodeResults(batch.id, batch.user_ids.map(() => err)));
      };
      call.on('data', (batch: WireBatch) => {
        const problem = malformed(batch);
        if (problem !== null) {
          options.logger.warn({ from: batch.from, checks: batch.user_ids.length }, problem);
          call.write(encodeResults(batch.id, batch.user_ids.map(() => new Error(problem))));
          return;
        }
        let answers: PeerAnswer[] | Promise<PeerAnswer[]>;
        try {
          answers = options.handler.decideBatch(batch.from, batch);
        } catch (err) {
          failed(batch, err as Error);
          return;
        }
        if (Array.isArray(answers)) call.write(encodeResults(batch.id, answers));
        else answers.then((a) => call.write(encodeResults(batch.id, a)), (err: Error) => failed(batch, err));
      });
      call.on('end', () => call.end());
      call.on('error', () => undefined);
    },
    Health: (call: grpc.ServerUnaryCall<{ from: string; you_were_suspected: boolean }, unknown>, callback: grpc.sendUnaryData<unknown>) => {
      if (!authorized(call.metadata, expected)) return callback(unauthenticated);
      callback(null, options.handler.health(call.request.from, call.request.you_were_suspected));
    },
    ResetQuota: (call: grpc.ServerUnaryCall<{ user_id: string }, unknown>, callback: grpc.sendUnaryData<unknown>) => {
      if (!authorized(call.metadata, expected)) return callback(unauthenticated);
      options.handler.resetQuota(call.request.user_id).then(
        () => callback(null, {}),
        (err: Error) => callback({ code: grpc.status.UNAVAILABLE, details: err.message }),
      );
    },
  });
  const bind = (port: number) =>
    new Promise<number>((resolve, reject) =>
      server.bindAsync(`${options.host}:${port}`, grpc.ServerCredentials.createInsecure(), (err, bound) => (err ? reject(err) : resolve(bound))),
    );
  let port: number;
  try {
    port = await bind(options.port);
  } catch (err) {
    if (!options.fallbackToFreePort) throw err;
    options.logger.warn({ port: options.port, err: (err as Error).message }, 'peer port taken; using one the OS picks');
    port = await bind(0);
  }
  if (options.unixPath !== undefined) {
    const path = options.unixPath;
    rmSync(path, { force: true });
    await new Promise<void>((resolve, reject) =>
      server.bindAsync(`unix:${path}`, grpc.ServerCredentials.createInsecure(), (err) => (err ? reject(err) : resolve())),
    );
  }
  return {
    port,
    close: () =>
      new Promise<void>((resolve) => {
        // Streams peers keep open are cut after 2 s (their batches fail over to Redis).
        const timer = setTimeout(() => {
          server.forceShutdown();
          resolve();
        }, 2000);
        server.tryShutdown(() => {
          clearTimeout(timer);
          resolve();
        });
      }),
  };
}
