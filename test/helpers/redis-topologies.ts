import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { freePort } from './ports.js';

const run = promisify(execFile);

async function waitFor(check: () => Promise<boolean>, what: string, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      if (await check()) return;
    } catch {
      // not yet
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function cli(port: number, ...args: string[]): Promise<string> {
  return (await run('redis-cli', ['-p', String(port), ...args])).stdout;
}

function startProcess(args: string[]): { child: ChildProcess; exited: Promise<void> } {
  const child = spawn('redis-server', args, { stdio: 'ignore' });
  return { child, exited: new Promise((resolve) => child.once('exit', () => resolve())) };
}

/** A real three-master Redis Cluster on loopback (no replicas). */
export class RedisClusterProcess {
  private constructor(
    readonly ports: number[],
    private readonly processes: Array<{ child: ChildProcess; exited: Promise<void> }>,
  ) {}

  get endpoint(): string {
    return this.ports.map((p) => `127.0.0.1:${p}`).join(',');
  }

  static async start(): Promise<RedisClusterProcess> {
    const dir = mkdtempSync(join(tmpdir(), 'rl-cluster-'));
    const ports = [await freePort(), await freePort(), await freePort()];
    const processes = ports.map((port) =>
      startProcess([
        '--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--cluster-enabled', 'yes',
        '--cluster-config-file', join(dir, `nodes-${port}.conf`), '--cluster-node-timeout', '2000', '--dir', dir,
      ]),
    );
    const cluster = new RedisClusterProcess(ports, processes);
    for (const port of ports) await waitFor(async () => (await cli(port, 'ping')).trim() === 'PONG', `redis ${port}`);
    await run('redis-cli', ['--cluster', 'create', ...ports.map((p) => `127.0.0.1:${p}`), '--cluster-replicas', '0', '--cluster-yes']);
    for (const port of ports) await waitFor(async () => (await cli(port, 'cluster', 'info')).includes('cluster_state:ok'), 'cluster state ok');
    return cluster;
  }

  async stop(): Promise<void> {
    for (const p of this.processes) p.child.kill('SIGKILL');
    await Promise.all(this.processes.map((p) => p.exited));
  }
}

/** A Redis master watched by one Sentinel, both on loopback. */
export class RedisSentinelProcess {
  private constructor(
    readonly masterPort: number,
    readonly sentinelPort: number,
    private readonly processes: Array<{ child: ChildProcess; exited: Promise<void> }>,
  ) {}

  get endpoint(): string {
    return `127.0.0.1:${this.sentinelPort}`;
  }

  static async start(masterName = 'limiter'): Promise<RedisSentinelProcess> {
    const dir = mkdtempSync(join(tmpdir(), 'rl-sentinel-'));
    const masterPort = await freePort();
    const sentinelPort = await freePort();
    const master = startProcess(['--port', String(masterPort), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no']);
    await waitFor(async () => (await cli(masterPort, 'ping')).trim() === 'PONG', 'redis master');
    const conf = join(dir, 'sentinel.conf');
    writeFileSync(conf, [`port ${sentinelPort}`, 'bind 127.0.0.1', `dir ${dir}`, `sentinel monitor ${masterName} 127.0.0.1 ${masterPort} 1`, ''].join('\n'));
    const sentinel = startProcess([conf, '--sentinel']);
    await waitFor(async () => (await cli(sentinelPort, 'sentinel', 'get-master-addr-by-name', masterName)).includes(String(masterPort)), 'sentinel');
    return new RedisSentinelProcess(masterPort, sentinelPort, [master, sentinel]);
  }

  async stop(): Promise<void> {
    for (const p of this.processes) p.child.kill('SIGKILL');
    await Promise.all(this.processes.map((p) => p.exited));
  }
}
