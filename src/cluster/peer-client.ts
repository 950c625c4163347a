import * as grpc from '@grpc/grpc-js';
import type { CheckOutcome } from '../node/decider.js';
import { doublesOf } from '../util/doubles.js';
import {
  CHANNEL_OPTIONS, RESULT_STRIDE, SECRET_HEADER, decodeResult, peerService,
  type PeerDecideRequest, type PeerHealthResponse, type WireBatch, type WireResults,
} from './peer-protocol.js';

interface Waiter {
  request: PeerDecideRequest;
  resolve(outcome: CheckOutcome): void;
  reject(err: Error): void;
}

interface InFlight {
  waiters: Waiter[];
  timer: NodeJS.Timeout;
}

type DecideStream = grpc.ClientDuplexStream<WireBatch, WireResults>;

export interface PeerClientOptions {
  /** The peer's member id and address. */
  memberId: string;
  address: string;
  /** This worker's member id (sent as `from`). */
  selfId: string;
  secret: string;
  /** How long a batch may wait for its answer; below the decision timeout so a fallback still fits. */
  deadlineMs: number;
  /** Most checks in one batch. */
  batchLimit: number;
  /** How long the first queued check waits for company: 0 = until the current I/O turn ends (setImmediate). */
  batchWaitUs: number;
  /**
   * Batches awaiting their answer at once (0: no limit). At the limit, checks stay queued
   * and go as one batch when an answer frees a slot (or the queue reaches the batch limit).
   */
  maxInFlight: number;
  /** Called with each batch's size as it is sent. */
  onBatch?: (size: number) => void;
}

/**
 * One channel to one peer. Checks are queued and sent as one batch when the batch is
 * full or when a short timer armed by the first item fires (Gubernator's
 * peer_client.go), unless `maxInFlight` batches already await their answers: then the
 * queue grows until an answer arrives, so under load batches grow with the peer's
 * round trip instead of a fixed wait (each batch costs both workers far more than each
 * check in it). Batches travel over one long-lived bidirectional stream, matched to
 * their answers by id; every waiter of a batch fails together on an error, a missed
 * deadline or a wrong-length answer, and a failed stream is replaced by the next batch.
 */
export class PeerClient {
  private readonly client: grpc.Client & {
    Decide(md: grpc.Metadata): DecideStream;
    Health(req: unknown, md: grpc.Metadata, opts: grpc.CallOptions, cb: (err: grpc.ServiceError | null, res?: PeerHealthResponse) => void): void;
    ResetQuota(req: unknown, md: grpc.Metadata, opts: grpc.CallOptions, cb: (err: grpc.ServiceError | null) => void): void;
  };
  private readonly metadata = new grpc.Metadata();
  private queue: Waiter[] = [];
  private armed = false;
  private closed = false;
  private stream: DecideStream | null = null;
  private readonly inFlight = new Map<number, InFlight>();
  private nextId = 1;

  constructor(private readonly options: PeerClientOptions) {
    const Service = peerService();
    this.client = new Service(options.address, grpc.credentials.createInsecure(), CHANNEL_OPTIONS) as unknown as PeerClient['client'];
    this.metadata.set(SECRET_HEADER, options.secret);
  }

  get address(): string {
    return this.options.address;
  }

  /** The owner's decision on one check, as a local outcome (the caller marks it forwarded). */
  decide(request: PeerDecideRequest): Promise<CheckOutcome> {
    if (this.closed) return Promise.reject(new Error(`peer ${this.options.memberId} client is closed`));
    return new Promise((resolve, reject) => {
      this.queue.push({ request, resolve, reject });
      if (this.queue.length >= this.options.batchLimit) this.flush();
      // At the in-flight limit an answer's arrival sends the queue (release): no turn to arm.
      else if (!this.armed && !this.atLimit()) {
        this.armed = true;
        if (this.options.batchWaitUs <= 0) setImmediate(() => this.flush());
        else setTimeout(() => this.flush(), Math.max(1, Math.round(this.options.batchWaitUs / 1000)));
      }
    });
  }

  private openStream(): DecideStream {
    const stream = this.client.Decide(this.metadata);
    stream.on('data', (answer: WireResults) => this.answered(answer));
    const fail = (err: Error): void => {
      if (this.stream === stream) this.stream = null;
      this.failAll(err);
    };
    stream.on('error', (err: Error) => fail(err));
    stream.on('end', () => fail(new Error(`peer ${this.options.memberId} closed the stream`)));
    return stream;
  }

  private flush(): void {
    this.armed = false;
    const waiters = this.queue;
    if (waiters.length === 0) return;
    // At the limit the queue waits for an answer (see release), unless it is full.
    if (this.atLimit() && waiters.length < this.options.batchLimit) return;
    this.queue = [];
    this.options.onBatch?.(waiters.length);
    const id = this.nextId++;
    const timer = setTimeout(() => {
      // NOTE: a stream that misses a deadline may be stuck (a stopped peer); answers to
      // other batches on it would be late too, so the whole stream is given up.
      this.fail(id, new Error(`peer ${this.options.memberId}: deadline of ${this.options.deadlineMs} ms exceeded`));
      this.resetStream();
    }, this.options.deadlineMs);
    this.inFlight.set(id, { waiters, timer });
    this.stream ??= this.openStream();
    const n = waiters.length;
    const batch: WireBatch = { id, from: this.options.selfId, user_ids: new Array<string>(n), tiers: new Array<string>(n), costs: new Array<number>(n) };
    for (let i = 0; i < n; i++) {
      const { request } = waiters[i]!;
      batch.user_ids[i] = request.user_id;
      batch.tiers[i] = request.tier;
      batch.costs[i] = request.cost;
    }
    this.stream.write(batch);
  }

  private answered(answer: WireResults): void {
    const batch = this.inFlight.get(answer.id);
    if (batch === undefined) return;
    this.inFlight.delete(answer.id);
    clearTimeout(batch.timer);
    this.release();
    const { waiters } = batch;
    const values = doublesOf(answer.values);
    const { tiers, errors } = answer;
    if (values.length !== waiters.length * RESULT_STRIDE || tiers.length !== waiters.length || (errors.length > 0 && errors.length !== waiters.length)) {
      const err = new Error(`peer ${this.options.memberId} answered ${tiers.length} results for ${waiters.length} checks`);
      for (const w of waiters) w.reject(err);
      return;
    }
    for (let i = 0; i < waiters.length; i++) {
      const w = waiters[i]!;
      const error = errors.length > 0 ? errors[i]! : '';
      if (error !== '') w.reject(new Error(`peer ${this.options.memberId}: ${error}`));
      else w.resolve(decodeResult(w.request.user_id, values, i, tiers[i]!));
    }
  }

  private fail(id: number, err: Error): void {
    const batch = this.inFlight.get(id);
    if (batch === undefined) return;
    this.inFlight.delete(id);
    clearTimeout(batch.timer);
    for (const w of batch.waiters) w.reject(err);
    this.release();
  }

  private atLimit(): boolean {
    return this.options.maxInFlight > 0 && this.inFlight.size >= this.options.maxInFlight;
  }

  /** A batch left the flight: checks held back by the in-flight limit go now. */
  private release(): void {
    if (this.queue.length > 0 && !this.armed && !this.closed) this.flush();
  }

  private failAll(err: Error): void {
    for (const id of [...this.inFlight.keys()]) this.fail(id, err);
  }

  private resetStream(): void {
    const stream = this.stream;
    this.stream = null;
    stream?.cancel();
    this.failAll(new Error(`peer ${this.options.memberId}: stream reset`));
  }

  health(youWereSuspected: boolean, deadlineMs: number): Promise<PeerHealthResponse> {
    return new Promise((resolve, reject) =>
      this.client.Health({ from: this.options.selfId, you_were_suspected: youWereSuspected }, this.metadata, { deadline: Date.now() + deadlineMs }, (err, res) =>
        err || !res ? reject(err ?? new Error('empty health answer')) : resolve(res),
      ),
    );
  }

  /** Asks the peer, the user's owner, to reset the user's quota window. */
  resetQuota(userId: string): Promise<void> {
    return new Promise((resolve, reject) =>
      this.client.ResetQuota({ user_id: userId }, this.metadata, { deadline: Date.now() + this.options.deadlineMs * 4 }, (err) => (err ? reject(err) : resolve())),
    );
  }

  /** Fails what is queued or in flight and closes the channel. */
  close(): void {
    this.closed = true;
    const pending = this.queue;
    this.queue = [];
    for (const w of pending) w.reject(new Error(`peer ${this.options.memberId} client closed`));
    this.resetStream();
    this.client.close();
  }
}
