import * as grpc from '@grpc/grpc-js';
import { CHANNEL_OPTIONS, SECRET_HEADER, peerService, type PeerDecideRequest, type PeerDecideResult, type PeerHealthResponse } from './peer-protocol.js';

interface Waiter {
  request: PeerDecideRequest;
  resolve(result: PeerDecideResult): void;
  reject(err: Error): void;
}

export interface PeerClientOptions {
  /** The peer's member id and address. */
  memberId: string;
  address: string;
  /** This worker's member id (sent as `from`). */
  selfId: string;
  secret: string;
  /** Deadline of one batch RPC; below the decision timeout so a fallback still fits. */
  deadlineMs: number;
  /** Most checks in one batch. */
  batchLimit: number;
  /** How long the first queued check waits for company: 0 = until the current I/O turn ends (setImmediate). */
  batchWaitUs: number;
  /** Called with each batch's size as it is sent. */
  onBatch?: (size: number) => void;
}

/**
 * One channel to one peer. Checks are queued and sent as one `Decide` batch when the
 * batch is full or when a short timer armed by the first item fires (Gubernator's
 * peer_client.go); every waiter fails with the batch on an error or a wrong-length answer.
 */
export class PeerClient {
  private readonly client: grpc.Client & {
    Decide(req: unknown, md: grpc.Metadata, opts: grpc.CallOptions, cb: (err: grpc.ServiceError | null, res?: { results: PeerDecideResult[] }) => void): void;
    Health(req: unknown, md: grpc.Metadata, opts: grpc.CallOptions, cb: (err: grpc.ServiceError | null, res?: PeerHealthResponse) => void): void;
  };
  private readonly metadata = new grpc.Metadata();
  private queue: Waiter[] = [];
  private armed = false;
  private closed = false;

  constructor(private readonly options: PeerClientOptions) {
    const Service = peerService();
    this.client = new Service(options.address, grpc.credentials.createInsecure(), CHANNEL_OPTIONS) as unknown as PeerClient['client'];
    this.metadata.set(SECRET_HEADER, options.secret);
  }

  get address(): string {
    return this.options.address;
  }

  decide(request: PeerDecideRequest): Promise<PeerDecideResult> {
    if (this.closed) return Promise.reject(new Error(`peer ${this.options.memberId} client is closed`));
    return new Promise((resolve, reject) => {
      this.queue.push({ request, resolve, reject });
      if (this.queue.length >= this.options.batchLimit) this.flush();
      else if (!this.armed) {
        this.armed = true;
        if (this.options.batchWaitUs <= 0) setImmediate(() => this.flush());
        else setTimeout(() => this.flush(), Math.max(1, Math.round(this.options.batchWaitUs / 1000)));
      }
    });
  }

  private flush(): void {
    this.armed = false;
    const batch = this.queue;
    if (batch.length === 0) return;
    this.queue = [];
    this.options.onBatch?.(batch.length);
    const deadline = Date.now() + this.options.deadlineMs;
    this.client.Decide(
      { from: this.options.selfId, requests: batch.map((w) => w.request) },
      this.metadata,
      { deadline },
      (err, response) => {
        const results = response?.results;
        if (err || !results || results.length !== batch.length) {
          const error = err ?? new Error(`peer ${this.options.memberId} answered ${results?.length ?? 0} results for ${batch.length} checks`);
          for (const w of batch) w.reject(error);
          return;
        }
        batch.forEach((w, i) => {
          const result = results[i]!;
          if (result.error) w.reject(new Error(`peer ${this.options.memberId}: ${result.error}`));
          else w.resolve(result);
        });
      },
    );
  }

  health(youWereSuspected: boolean, deadlineMs: number): Promise<PeerHealthResponse> {
    return new Promise((resolve, reject) =>
      this.client.Health({ from: this.options.selfId, you_were_suspected: youWereSuspected }, this.metadata, { deadline: Date.now() + deadlineMs }, (err, res) =>
        err || !res ? reject(err ?? new Error('empty health answer')) : resolve(res),
      ),
    );
  }

  /** Fails what is queued and closes the channel. */
  close(): void {
    this.closed = true;
    const pending = this.queue;
    this.queue = [];
    for (const w of pending) w.reject(new Error(`peer ${this.options.memberId} client closed`));
    this.client.close();
  }
}
