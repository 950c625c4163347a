import { spawn, type ChildProcess } from 'node:child_process';
import { createServer } from 'node:net';
import { fileURLToPath } from 'node:url';

export const ROOT = fileURLToPath(new URL('../../..', import.meta.url));

export interface Target {
  name: string;
  url: string;
  path: string;
  stop(): Promise<void>;
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => resolve(typeof address === 'object' && address ? address.port : 0));
    });
  });
}

/** Spawns a node script from dist/ and waits until `readyPath` answers on its port. */
export async function spawnServer(options: {
  name: string;
  script: string;
  args?: string[];
  env?: Record<string, string>;
  port: number;
  readyPath: string;
  path: string;
}): Promise<Target> {
  let output = '';
  const child: ChildProcess = spawn(process.execPath, [fileURLToPath(new URL(`../../${options.script}`, import.meta.url)), ...(options.args ?? [])], {
    cwd: ROOT,
    env: { PATH: process.env.PATH ?? '', LOG_LEVEL: 'warn', ...options.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  child.stdout!.on('data', (c: Buffer) => (output += c.toString()));
  child.stderr!.on('data', (c: Buffer) => (output += c.toString()));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const url = `http://127.0.0.1:${options.port}`;
  const deadline = Date.now() + 30_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`${options.name} exited early:\n${output}`);
    try {
      const res = await fetch(url + options.readyPath);
      if (res.status < 500) break;
    } catch {
      // not up yet
    }
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`${options.name} did not start:\n${output}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    name: options.name,
    url,
    path: options.path,
    async stop() {
      if (child.exitCode === null) child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(timer);
    },
  };
}

/** The bare Fastify hello-world POST: the ceiling. */
export async function startHello(): Promise<Target> {
  const port = await freePort();
  return spawnServer({ name: 'fastify hello-world', script: 'bench/servers/hello.js', args: [String(port)], port, readyPath: '/', path: '/hello' });
}

/** One node of ours (`npm start`), on a free port, with extra environment. */
export async function startOurNode(name: string, env: Record<string, string> = {}): Promise<Target> {
  const port = await freePort();
  return spawnServer({
    name,
    script: 'src/main.js',
    env: { RATE_LIMITING_API_HOST: '127.0.0.1', RATE_LIMITING_API_PORT: String(port), ...env },
    port,
    readyPath: '/health',
    path: '/rate-limiting/check',
  });
}
