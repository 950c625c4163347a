/**
 * The load of an accuracy scenario: an open-loop client of bounded concurrency that sends a
 * workload's requests at their times and keeps every answer.
 */
import http from 'node:http';
import { sleep } from './nodes.js';
import { requestBody, type Workload, type WorkloadRequest } from './workloads.js';

/** One answered check, as the client saw it. */
export interface Answer {
  /** Index of the request in the workload. */
  index: number;
  allowed: boolean;
  /** `decided_at`: the deciding node's time. */
  decidedAt: number;
  /** `quota.current_usage` after the decision: orders one user's decisions made in one ms. */
  dayUsage: number;
  code: string;
  mode: string;
  receivedAt: number;
}

export interface LoadRun {
  answers: Answer[];
  /** Requests without a decision (connection errors, timeouts, non-200), by reason. */
  unanswered: Map<string, number>;
  unansweredCount: number;
  sent: number;
  /** ms the client fell behind the schedule at worst. */
  maxLagMs: number;
  startedAt: number;
  /** Replaces the node URLs requests go to, round-robin (e.g. without a dead node). */
  setTargets(urls: string[]): void;
  /** Resolves once every request has been sent and answered (or failed). */
  done: Promise<void>;
}

export interface LoadOptions {
  concurrency: number;
  timeoutMs: number;
  onProgress?: (completed: number) => void;
}

function post(agent: http.Agent, target: URL, body: string, timeoutMs: number): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request(
      {
        agent,
        host: target.hostname,
        port: target.port,
        path: '/rate-limiting/check',
        method: 'POST',
        headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString() }));
        res.on('error', reject);
      },
    );
    req.setTimeout(timeoutMs, () => req.destroy(new Error('timeout')));
    req.on('error', reject);
    req.end(body);
  });
}

function reasonOf(err: unknown): string {
  const e = err as NodeJS.ErrnoException;
  return e.code ?? e.message ?? 'error';
}

/**
 * Sends every request of `workload` at its scheduled time (or as soon as a slot frees when
 * behind), round-robin over the targets, at most `concurrency` in flight; never retries
 * (a retried check could be charged twice).
 */
export function startLoad(workload: Workload, urls: string[], options: LoadOptions): LoadRun {
  const agent = new http.Agent({ keepAlive: true, maxSockets: options.concurrency, maxFreeSockets: options.concurrency });
  let targets = urls.map((u) => new URL(u));
  let next = 0;
  const run: LoadRun = {
    answers: [],
    unanswered: new Map(),
    unansweredCount: 0,
    sent: 0,
    maxLagMs: 0,
    startedAt: Date.now(),
    setTargets(replacement: string[]) {
      targets = replacement.map((u) => new URL(u));
    },
    done: Promise.resolve(),
  };
  const fail = (reason: string): void => {
    run.unanswered.set(reason, (run.unanswered.get(reason) ?? 0) + 1);
    run.unansweredCount += 1;
  };
  let inFlight = 0;
  let completed = 0;
  let wake: (() => void) | null = null;

  const one = async (index: number, request: WorkloadRequest): Promise<void> => {
    const target = targets[next++ % targets.length]!;
    try {
      const res = await post(agent, target, requestBody(request), options.timeoutMs);
      if (res.status !== 200) {
        fail(`HTTP ${res.status}`);
        return;
      }
      const body = JSON.parse(res.text) as { allowed: boolean; decided_at: number; code: string; mode: string; quota?: { current_usage?: number } };
      if (typeof body.decided_at !== 'number' || typeof body.allowed !== 'boolean') {
        fail('answer without decided_at/allowed');
        return;
      }
      run.answers.push({
        index,
        allowed: body.allowed,
        decidedAt: body.decided_at,
        dayUsage: body.quota?.current_usage ?? 0,
        code: body.code,
        mode: body.mode,
        receivedAt: Date.now(),
      });
    } catch (err) {
      fail(reasonOf(err));
    }
  };

  run.done = (async () => {
    const requests = workload.requests;
    for (let i = 0; i < requests.length; i++) {
      const request = requests[i]!;
      const due = run.startedAt + request.at;
      const now = Date.now();
      if (due > now + 1) await sleep(due - now);
      else run.maxLagMs = Math.max(run.maxLagMs, now - due);
      while (inFlight >= options.concurrency) await new Promise<void>((r) => (wake = r));
      inFlight += 1;
      run.sent += 1;
      void one(i, request).finally(() => {
        inFlight -= 1;
        completed += 1;
        options.onProgress?.(completed);
        const w = wake;
        wake = null;
        w?.();
      });
    }
    while (inFlight > 0) await new Promise<void>((r) => (wake = r));
    agent.destroy();
  })();
  return run;
}

