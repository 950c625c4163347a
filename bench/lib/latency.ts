/**
 * Open-loop (constant arrival rate) HTTP/1.1 load with coordinated omission corrected.
 *
 * Request i is due at `start + i / rate`, whatever happened to the ones before it. A due
 * request takes an idle keep-alive connection, or waits in a FIFO queue for one; its
 * latency is measured from the time it was DUE (its intended send time), so a slow
 * server or a full pool shows up as latency instead of as fewer requests (the closed-
 * loop blind spot wrk and plain autocannon have).
 *
 * The generator runs in a child process of its own (`runOpenLoop` forks this module), so
 * it shares its event loop with nothing; it reports its own CPU use. The HTTP client is
 * a minimal one on raw sockets (pre-built request text, Content-Length framing), cheaper
 * per request than node:http, so that the generator is not the bottleneck it measures.
 *
 * Outcome counting: 429 is a denial; a 2xx carrying `Retry-After` is a denial too (our
 * service answers 200 with `allowed:false` and that header). Every `sampleEvery`-th 2xx
 * body is also read, and `"allowed":false` in it counted, as a cross-check.
 */
import { fork, spawn, type ChildProcess } from 'node:child_process';
import { connect, type Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';

export interface OpenLoopOptions {
  /** `http://host:port` */
  url: string;
  path: string;
  /** Intended arrival rate, requests per second. */
  ratePerSecond: number;
  /** Measured period (s); requests due in it are recorded. */
  durationSeconds: number;
  /** Period before it at the same rate, not recorded (s). Default 0. */
  warmupSeconds?: number;
  /** Keep-alive connections (one request in flight on each). Default 64. */
  connections?: number;
  /** Distinct user ids the bodies cycle through: {"user_id":"bench-user-<i % users>"}. */
  users: number;
  /** Explicit bodies to cycle through instead of the generated ones. */
  bodies?: string[];
  /** Read every n-th 2xx body for `"allowed":false` (0 = never). Default 50. */
  sampleEvery?: number;
  /** A request without an answer after this long is a timeout (ms). Default 10000. */
  timeoutMs?: number;
  /** After the last due time, how long to wait for answers still queued or in flight (s). Default 5. */
  drainSeconds?: number;
  /** Pin the generator process to this CPU (taskset -c). */
  cpu?: number;
  /**
   * `closed`: no schedule; each connection sends its next request as soon as the answer
   * to the last one arrives (saturation, like wrk); latency is then from the send time and
   * `achievedRate` is the capacity as this generator sees it. Default `open`.
   */
  mode?: 'open' | 'closed';
}

export interface OpenLoopResult {
  intendedRate: number;
  /** Answers to requests due in the measured period, per second of it. */
  achievedRate: number;
  /** Requests due in the measured period. */
  due: number;
  completed: number;
  status2xx: number;
  status429: number;
  otherStatus: number;
  /** 429, or 2xx with Retry-After. */
  denied: number;
  allowed: number;
  /** Socket errors and connections closed under a request. */
  errors: number;
  /** No answer within timeoutMs, or still in flight when the drain ended. */
  timeouts: number;
  /** Due but never sent before the drain ended (the queue never emptied). */
  unsent: number;
  sampled: number;
  sampledDenied: number;
  p50Ms: number;
  p90Ms: number;
  p99Ms: number;
  p999Ms: number;
  maxMs: number;
  meanMs: number;
  /**
   * Latency from the moment the request was written (not corrected): the difference to
   * the figures above is time spent waiting for a connection or for the generator.
   */
  fromSendP50Ms: number;
  fromSendP99Ms: number;
  /**
   * How late the generator itself put requests in the queue (ms): its timer granularity
   * (~1 ms: requests are issued in 1 ms ticks) and its own lag. Part of every figure above.
   */
  generatorLagP50Ms: number;
  generatorLagP99Ms: number;
  /** Most requests ever waiting for a free connection. */
  maxQueue: number;
  /** CPU of the generator process (user+system) over the measured period, % of one core. */
  cpuPercent: number;
}

const CHILD_ENV = 'RL_BENCH_OPEN_LOOP_CHILD';

/** Runs one open-loop load in a child process and returns what it measured. */
export function runOpenLoop(options: OpenLoopOptions): Promise<OpenLoopResult> {
  const script = fileURLToPath(import.meta.url);
  const env = { ...process.env, [CHILD_ENV]: '1' };
  const child: ChildProcess =
    options.cpu === undefined
      ? fork(script, [], { env, stdio: ['ignore', 'inherit', 'inherit', 'ipc'] })
      : spawn('taskset', ['-c', String(options.cpu), process.execPath, script], { env, stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  const limitMs = ((options.warmupSeconds ?? 0) + options.durationSeconds + (options.drainSeconds ?? 5)) * 1000 + 30_000;
  return new Promise((resolve, reject) => {
    let settled = false;
    const done = (err: Error | null, result?: OpenLoopResult): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (child.exitCode === null) child.kill('SIGKILL');
      if (err) reject(err);
      else resolve(result!);
    };
    const timer = setTimeout(() => done(new Error('open-loop generator did not finish in time')), limitMs);
    child.on('message', (message: { result?: OpenLoopResult; error?: string }) => {
      if (message.error !== undefined) done(new Error(`open-loop generator: ${message.error}`));
      else if (message.result) done(null, message.result);
    });
    child.on('error', (err) => done(err));
    child.on('exit', (code) => done(new Error(`open-loop generator exited (${code}) without a result`)));
    child.send(options);
  });
}

/** Value at quantile q of an ascending array (nearest rank). */
function quantile(sorted: Float64Array, q: number): number {
  if (sorted.length === 0) return NaN;
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return sorted[rank]!;
}

/** A growable array of latencies (µs), sorted once at the end: exact percentiles. */
class Samples {
  private data = new Float64Array(1 << 16);
  length = 0;
  push(value: number): void {
    if (this.length === this.data.length) {
      const bigger = new Float64Array(this.data.length * 2);
      bigger.set(this.data);
      this.data = bigger;
    }
    this.data[this.length++] = value;
  }
  sorted(): Float64Array {
    return this.data.subarray(0, this.length).sort();
  }
}

interface Pending {
  index: number;
  /** Recorded (due in the measured period), not warm-up. */
  measured: boolean;
  /** performance.now() ms when it was due. */
  due: number;
  sentAt: number;
}

/** The child's part: the generator itself. */
async function generate(options: OpenLoopOptions): Promise<OpenLoopResult> {
  const target = new URL(options.url);
  const host = target.hostname;
  const port = Number(target.port || 80);
  const rate = options.ratePerSecond;
  const warmupMs = (options.warmupSeconds ?? 0) * 1000;
  const measureMs = options.durationSeconds * 1000;
  const connections = Math.max(1, options.connections ?? 64);
  const sampleEvery = options.sampleEvery ?? 50;
  const timeoutMs = options.timeoutMs ?? 10_000;
  const drainMs = (options.drainSeconds ?? 5) * 1000;
  const intervalMs = 1000 / rate;
  const totalRequests = Math.floor(((warmupMs + measureMs) / 1000) * rate);
  const firstMeasured = Math.ceil((warmupMs / 1000) * rate);

  const head = `POST ${options.path} HTTP/1.1\r\nHost: ${target.host}\r\nContent-Type: application/json\r\nContent-Length: `;
  const requestText = (i: number): string => {
    const body = options.bodies ? options.bodies[i % options.bodies.length]! : `{"user_id":"bench-user-${i % options.users}"}`;
    return `${head}${Buffer.byteLength(body)}\r\n\r\n${body}`;
  };

  const latencies = new Samples();
  const lags = new Samples();
  const fromSend = new Samples();
  let completed = 0;
  let status2xx = 0;
  let status429 = 0;
  let otherStatus = 0;
  let denied = 0;
  let errors = 0;
  let timeouts = 0;
  let sampled = 0;
  let sampledDenied = 0;
  let okCount = 0;
  let maxQueue = 0;

  // FIFO of due requests waiting for a connection.
  let queue: number[] = [];
  let queueHead = 0;
  const queued = (): number => queue.length - queueHead;

  class Connection {
    socket!: Socket;
    pending: Pending | null = null;
    buffer: Buffer | null = null;
    alive = false;

    open(): Promise<void> {
      return new Promise((resolve, reject) => {
        const socket = connect({ host, port, noDelay: true });
        this.socket = socket;
        this.buffer = null;
        socket.once('connect', () => {
          this.alive = true;
          resolve();
        });
        socket.on('data', (chunk: Buffer) => this.onData(chunk));
        socket.on('error', (err) => {
          if (!this.alive) reject(err);
        });
        socket.on('close', () => this.onClose());
      });
    }

    send(index: number, due: number, measured: boolean): void {
      this.pending = { index, due, measured, sentAt: performance.now() };
      this.socket.write(requestText(index));
    }

    private onClose(): void {
      const wasAlive = this.alive;
      this.alive = false;
      if (this.pending) {
        if (this.pending.measured) errors++;
        this.pending = null;
      }
      if (wasAlive && !stopping) {
        // Reconnect and carry on with the queue.
        const back = (): void => {
          if (!idle.includes(this)) idle.push(this);
          dispatch();
        };
        this.open().then(back, () => {
          errors++;
          setTimeout(() => void this.open().then(back, () => undefined), 100);
        });
      }
    }

    private onData(chunk: Buffer): void {
      let buffer = this.buffer === null ? chunk : Buffer.concat([this.buffer, chunk]);
      for (;;) {
        const headerEnd = buffer.indexOf('\r\n\r\n');
        if (headerEnd < 0) break;
        const headText = buffer.toString('latin1', 0, headerEnd).toLowerCase();
        const status = Number(headText.slice(9, 12));
        let end: number;
        const lengthAt = headText.indexOf('\r\ncontent-length:');
        if (lengthAt >= 0) {
          const lineEnd = headText.indexOf('\r\n', lengthAt + 2);
          const length = Number(headText.slice(lengthAt + 17, lineEnd < 0 ? undefined : lineEnd).trim());
          end = headerEnd + 4 + length;
        } else if (headText.includes('\r\ntransfer-encoding: chunked')) {
          const last = buffer.indexOf('\r\n0\r\n\r\n', headerEnd + 2);
          if (last < 0) break;
          end = last + 7;
        } else {
          end = headerEnd + 4; // no body (e.g. 204)
        }
        if (buffer.length < end) break;
        const retryAfter = headText.includes('\r\nretry-after:');
        let sampleBody: string | null = null;
        if (status >= 200 && status < 300 && sampleEvery > 0 && okCount++ % sampleEvery === 0) sampleBody = buffer.toString('utf8', headerEnd + 4, end);
        this.complete(status, retryAfter, sampleBody);
        if (buffer.length === end) {
          this.buffer = null;
          return;
        }
        buffer = buffer.subarray(end);
      }
      this.buffer = buffer;
    }

    private complete(status: number, retryAfter: boolean, sampleBody: string | null): void {
      const now = performance.now();
      const pending = this.pending;
      this.pending = null;
      if (pending !== null && pending.measured) {
        completed++;
        latencies.push((now - pending.due) * 1000);
        fromSend.push((now - pending.sentAt) * 1000);
        if (status >= 200 && status < 300) {
          status2xx++;
          if (retryAfter) denied++;
          if (sampleBody !== null) {
            sampled++;
            if (sampleBody.includes('"allowed":false')) sampledDenied++;
          }
        } else if (status === 429) {
          status429++;
          denied++;
        } else otherStatus++;
      }
      if (pending !== null) idle.push(this);
      issueDue(now);
      dispatch();
    }
  }

  const pool: Connection[] = [];
  const idle: Connection[] = [];
  let stopping = false;
  let started = Infinity;
  let measureStart = Infinity;
  let measureEnd = Infinity;
  const closedLoop = options.mode === 'closed';

  let next = 0;
  /** Queues every request due by `now` (also called on each answer, between timer ticks). */
  const issueDue = (now: number): void => {
    while (next < totalRequests && started + next * intervalMs <= now) {
      if (next >= firstMeasured) lags.push((now - (started + next * intervalMs)) * 1000);
      queue.push(next++);
    }
    if (queued() > maxQueue) maxQueue = queued();
  };

  const dispatch = (): void => {
    if (closedLoop) {
      const now = performance.now();
      while (idle.length > 0 && now < measureEnd) {
        const connection = idle.shift()!;
        if (connection.alive) connection.send(next++, now, now >= measureStart);
      }
      return;
    }
    while (queued() > 0 && idle.length > 0) {
      // FIFO: the connection idle longest goes next, so every connection (and the server
      // worker it landed on) takes its share even at low rates.
      const connection = idle.shift()!;
      if (!connection.alive) continue;
      const index = queue[queueHead++]!;
      connection.send(index, started + index * intervalMs, index >= firstMeasured);
    }
    if (queueHead > 4096 && queueHead * 2 > queue.length) {
      queue = queue.slice(queueHead);
      queueHead = 0;
    }
  };

  for (let i = 0; i < connections; i++) {
    const connection = new Connection();
    pool.push(connection);
    await connection.open();
    idle.push(connection);
  }

  // Timeouts: a request without an answer for timeoutMs; its connection is replaced.
  const sweep = setInterval(() => {
    const now = performance.now();
    for (const connection of pool) {
      if (connection.pending !== null && now - connection.pending.sentAt > timeoutMs) {
        if (connection.pending.measured) timeouts++;
        connection.pending = null;
        connection.socket.destroy();
      }
    }
  }, 100);

  started = performance.now() + 20;
  measureStart = started + warmupMs;
  measureEnd = measureStart + measureMs;
  let cpuStart: NodeJS.CpuUsage | null = null;
  let cpuStartAt = 0;

  if (closedLoop) {
    await new Promise((r) => setTimeout(r, Math.max(0, started - performance.now())));
    dispatch();
    await new Promise((r) => setTimeout(r, Math.max(0, measureStart - performance.now())));
    cpuStart = process.cpuUsage();
    cpuStartAt = performance.now();
    await new Promise((r) => setTimeout(r, Math.max(0, measureEnd - performance.now())));
  } else await new Promise<void>((resolve) => {
    const tick = (): void => {
      const now = performance.now();
      if (cpuStart === null && now >= measureStart) {
        cpuStart = process.cpuUsage();
        cpuStartAt = now;
      }
      issueDue(now);
      dispatch();
      if (next >= totalRequests) {
        resolve();
        return;
      }
      const wait = started + next * intervalMs - performance.now();
      setTimeout(tick, Math.max(0, Math.min(wait, 1)));
    };
    setTimeout(tick, Math.max(0, started - performance.now()));
  });

  // CPU over the measured period: from its start to the last due time.
  const cpuUsed = cpuStart === null ? null : process.cpuUsage(cpuStart as NodeJS.CpuUsage);
  const cpuWall = performance.now() - cpuStartAt;

  // Drain: wait for the queue and the connections, up to drainMs past the last due time.
  const drainEnd = Math.max(measureEnd, performance.now()) + drainMs;
  while (performance.now() < drainEnd && (queued() > 0 || pool.some((c) => c.pending !== null))) {
    await new Promise((r) => setTimeout(r, 5));
  }
  clearInterval(sweep);
  stopping = true;
  let unsent = 0;
  for (let i = queueHead; i < queue.length; i++) if (queue[i]! >= firstMeasured) unsent++;
  for (const connection of pool) {
    if (connection.pending?.measured) timeouts++;
    connection.pending = null;
    connection.socket.destroy();
  }

  const sorted = latencies.sorted();
  const lagSorted = lags.sorted();
  const sendSorted = fromSend.sorted();
  let sum = 0;
  for (const v of sorted) sum += v;
  const due = closedLoop ? completed + timeouts + errors : totalRequests - firstMeasured;
  return {
    intendedRate: closedLoop ? NaN : rate,
    achievedRate: completed / options.durationSeconds,
    due,
    completed,
    status2xx,
    status429,
    otherStatus,
    denied,
    allowed: status2xx - (denied - status429),
    errors,
    timeouts,
    unsent,
    sampled,
    sampledDenied,
    p50Ms: quantile(sorted, 0.5) / 1000,
    p90Ms: quantile(sorted, 0.9) / 1000,
    p99Ms: quantile(sorted, 0.99) / 1000,
    p999Ms: quantile(sorted, 0.999) / 1000,
    maxMs: sorted.length > 0 ? sorted[sorted.length - 1]! / 1000 : NaN,
    meanMs: sorted.length > 0 ? sum / sorted.length / 1000 : NaN,
    fromSendP50Ms: quantile(sendSorted, 0.5) / 1000,
    fromSendP99Ms: quantile(sendSorted, 0.99) / 1000,
    generatorLagP50Ms: quantile(lagSorted, 0.5) / 1000,
    generatorLagP99Ms: quantile(lagSorted, 0.99) / 1000,
    maxQueue,
    cpuPercent: cpuUsed === null || cpuWall <= 0 ? NaN : (100 * (cpuUsed.user + cpuUsed.system)) / 1000 / cpuWall,
  };
}

if (process.env[CHILD_ENV] === '1' && process.send !== undefined) {
  process.once('message', (options: OpenLoopOptions) => {
    generate(options).then(
      (result) => process.send!({ result }, () => process.exit(0)),
      (err: Error) => process.send!({ error: err.stack ?? err.message }, () => process.exit(1)),
    );
  });
}
