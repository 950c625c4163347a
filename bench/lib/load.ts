import { execFile, execFileSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import autocannon from 'autocannon';

export interface LoadOptions {
  url: string;
  path: string;
  connections: number;
  durationSeconds: number;
  /** Distinct user ids the requests cycle through. */
  users: number;
  /** Extra JSON fields of every body (e.g. a tier). */
  extra?: Record<string, unknown>;
  /** Explicit request bodies to cycle through instead (e.g. one per API key). */
  bodies?: string[];
}

export interface LoadResult {
  requestsPerSecond: number;
  p50Ms: number;
  p99Ms: number;
  total: number;
  /** Responses that were not 2xx, and socket errors. */
  failures: number;
}

export type LoadGenerator = 'wrk' | 'autocannon';

/** wrk (C, one thread) when installed, as DESIGN §7 measured; autocannon otherwise. */
export function pickGenerator(): LoadGenerator {
  try {
    execFileSync('wrk', ['--version'], { stdio: 'ignore' });
    return 'wrk';
  } catch (err) {
    // wrk prints its version and exits 1; only a missing binary throws ENOENT.
    return (err as NodeJS.ErrnoException).code === 'ENOENT' ? 'autocannon' : 'wrk';
  }
}

function bodyPrefixSuffix(options: LoadOptions): [string, string] {
  const extra = options.extra ? JSON.stringify(options.extra).slice(1, -1) : '';
  return ['{"user_id":"bench-user-', extra ? `",${extra}}` : '"}'];
}

/**
 * Closed-loop load: `connections` keep-alive connections POSTing JSON bodies that cycle
 * through `users` user ids. Every target of a comparison gets the same generator,
 * bodies and settings.
 */
export async function runLoad(generator: LoadGenerator, options: LoadOptions): Promise<LoadResult> {
  return generator === 'wrk' ? runWrk(options) : runAutocannon(options);
}

let scriptDir: string | undefined;
let scriptCount = 0;

async function runWrk(options: LoadOptions): Promise<LoadResult> {
  scriptDir ??= mkdtempSync(join(tmpdir(), 'rl-bench-'));
  const [prefix, suffix] = bodyPrefixSuffix(options);
  const script = join(scriptDir, `load-${process.pid}-${scriptCount++}.lua`);
  const body = options.bodies
    ? [`local bodies = { ${options.bodies.map((b) => JSON.stringify(b)).join(', ')} }`, `  return wrk.format(nil, nil, nil, bodies[(n % ${options.bodies.length}) + 1])`]
    : ['', `  return wrk.format(nil, nil, nil, '${prefix}' .. (n % ${options.users}) .. '${suffix}')`];
  writeFileSync(
    script,
    [
      body[0],
      'local n = 0',
      'wrk.method = "POST"',
      'wrk.headers["Content-Type"] = "application/json"',
      'request = function()',
      '  n = n + 1',
      body[1],
      'end',
    ].join('\n'),
  );
  const args = ['-t1', `-c${options.connections}`, `-d${options.durationSeconds}s`, '--latency', '-s', script, options.url + options.path];
  const out = await new Promise<string>((resolve, reject) =>
    execFile('wrk', args, { timeout: (options.durationSeconds + 30) * 1000 }, (err, stdout) => (err ? reject(err) : resolve(stdout))),
  );
  const number = (pattern: RegExp): number => Number(pattern.exec(out)?.[1] ?? NaN);
  const latency = (pct: string): number => {
    const match = new RegExp(`\\s${pct}%\\s+([\\d.]+)(us|ms|s)`).exec(out);
    if (!match) return NaN;
    const value = Number(match[1]);
    return match[2] === 'us' ? value / 1000 : match[2] === 's' ? value * 1000 : value;
  };
  const socketErrors = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(out);
  const non2xx = number(/Non-2xx or 3xx responses: (\d+)/);
  return {
    requestsPerSecond: number(/Requests\/sec:\s+([\d.]+)/),
    p50Ms: latency('50'),
    p99Ms: latency('99'),
    total: number(/(\d+) requests in/),
    failures: (Number.isNaN(non2xx) ? 0 : non2xx) + (socketErrors ? socketErrors.slice(1).reduce((a, b) => a + Number(b), 0) : 0),
  };
}

async function runAutocannon(options: LoadOptions): Promise<LoadResult> {
  let next = 0;
  const [prefix, suffix] = bodyPrefixSuffix(options);
  const result = await autocannon({
    url: options.url,
    connections: options.connections,
    duration: options.durationSeconds,
    requests: [
      {
        method: 'POST',
        path: options.path,
        headers: { 'content-type': 'application/json' },
        setupRequest: (request) => {
          const i = next++;
          request.body = options.bodies ? options.bodies[i % options.bodies.length]! : `${prefix}${i % options.users}${suffix}`;
          return request;
        },
      },
    ],
  });
  return {
    requestsPerSecond: result.requests.average,
    p50Ms: result.latency.p50,
    p99Ms: result.latency.p99,
    total: result.requests.total,
    failures: result.non2xx + result.errors,
  };
}
