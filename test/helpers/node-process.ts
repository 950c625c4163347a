import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { freePort } from './ports.js';

export const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const MAIN = fileURLToPath(new URL('../../dist/src/main.js', import.meta.url));

export interface NodeProcess {
  port: number;
  child: ChildProcess;
  url: string;
  /** Everything the process wrote so far. */
  output(): string;
  /** SIGTERM and wait for exit; returns the exit code. */
  stop(): Promise<number | null>;
  /** SIGKILL the whole node (primary and workers) and wait for the primary to exit. */
  kill(): Promise<void>;
  /** SIGSTOP / SIGCONT the whole node. */
  suspend(): void;
  resume(): void;
  /** Pids of the node's worker processes. */
  workerPids(): number[];
  exited: Promise<number | null>;
}

/**
 * Starts `node dist/src/main.js` (what `npm start` runs) with `env` on a free port and
 * waits until /health answers. Tests must `stop()` or `kill()` what they start.
 */
export async function startNodeProcess(env: Record<string, string> = {}, options: { waitReady?: boolean } = {}): Promise<NodeProcess> {
  const port = env.RATE_LIMITING_API_PORT ? Number(env.RATE_LIMITING_API_PORT) : await freePort();
  let output = '';
  const child = spawn(process.execPath, [MAIN], {
    cwd: ROOT,
    env: { PATH: process.env.PATH ?? '', LOG_LEVEL: 'info', RATE_LIMITING_API_HOST: '127.0.0.1', ...env, RATE_LIMITING_API_PORT: String(port) },
    stdio: ['ignore', 'pipe', 'pipe'],
    // Its own process group, so the whole node (primary and workers) can be signalled at once.
    detached: true,
  });
  const group = (signal: NodeJS.Signals): void => {
    try {
      process.kill(-child.pid!, signal);
    } catch {
      // already gone
    }
  };
  child.stdout!.on('data', (chunk: Buffer) => (output += chunk.toString()));
  child.stderr!.on('data', (chunk: Buffer) => (output += chunk.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const url = `http://127.0.0.1:${port}`;
  const handle: NodeProcess = {
    port,
    child,
    url,
    output: () => output,
    exited,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      return exited;
    },
    async kill() {
      group('SIGCONT');
      group('SIGKILL');
      await exited;
    },
    suspend: () => group('SIGSTOP'),
    resume: () => group('SIGCONT'),
    workerPids() {
      try {
        return execFileSync('pgrep', ['-P', String(child.pid)], { encoding: 'utf8' }).split('\n').filter(Boolean).map(Number);
      } catch {
        return [];
      }
    },
  };
  if (options.waitReady !== false) await waitForHealth(handle);
  return handle;
}

async function waitForHealth(node: NodeProcess, timeoutMs = 45_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let exitCode: number | null | undefined;
  void node.exited.then((code) => (exitCode = code));
  while (Date.now() < deadline) {
    if (exitCode !== undefined) throw new Error(`node exited (${exitCode}) before it was ready:\n${node.output()}`);
    try {
      const res = await fetch(`${node.url}/health`);
      if (res.ok) return;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  await node.kill();
  throw new Error(`node did not become ready within ${timeoutMs} ms:\n${node.output()}`);
}

export async function postJson(url: string, body: unknown): Promise<{ status: number; body: any; headers: Headers }> {
  const res = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  return { status: res.status, body: await res.json(), headers: res.headers };
}
