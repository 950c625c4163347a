import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { FIXED_SECTIONS, TIER_FIELDS } from '../src/config/schema.js';
import { SERVICES, limiterEnvironment } from '../scripts/cluster.js';
import { ROOT } from './helpers/node-process.js';
import { freePortBlock } from '../bench/lib/processes.js';
import { freePort } from './helpers/ports.js';

interface Compose {
  services: Record<string, { environment?: Record<string, string>; image?: string; build?: string; ports?: string[]; expose?: string[] }>;
}

const compose = parse(readFileSync(join(ROOT, 'docker-compose.cluster.yml'), 'utf8')) as Compose;

/** Every environment variable the configuration loader reads. */
function knownVariables(): Set<string> {
  const names = new Set<string>(['RATE_LIMITING_CONFIG', 'USER_TIER_DEFAULT', 'NODE_ENV']);
  for (const fields of Object.values(FIXED_SECTIONS)) for (const f of Object.values(fields)) if (f.env) names.add(f.env);
  for (const tier of ['BASIC', 'PREMIUM', 'ENTERPRISE']) {
    names.add(`USER_TIER_${tier}_ENABLED`);
    for (const f of Object.values(TIER_FIELDS)) names.add(`RATE_LIMIT_${tier}_${f.envSuffix}`);
  }
  return names;
}

describe('docker-compose.cluster.yml and `npm run cluster`', () => {
  it('sets only environment variables the configuration loader knows', () => {
    const known = knownVariables();
    for (const [name, service] of Object.entries(compose.services)) {
      if (name !== 'limiter') continue;
      for (const variable of Object.keys(service.environment ?? {})) expect(known.has(variable), `${name}: ${variable}`).toBe(true);
    }
    expect(Object.keys(compose.services.limiter?.environment ?? {})).toContain('REDIS_ENDPOINT');
  });

  it('describes the same services as the local launcher, with the same node environment', () => {
    expect(Object.keys(compose.services).sort()).toEqual([...SERVICES].sort());
    const launcherVariables = Object.keys(limiterEnvironment('redis:6379', 9098, 'n', 'postgres:5432'));
    for (const variable of Object.keys(compose.services.limiter!.environment!)) expect(launcherVariables, variable).toContain(variable);
    expect(compose.services.limiter!.build).toBe('.');
    expect(compose.services.limiter!.ports, 'replicas must not publish fixed ports (scaling)').toBeUndefined();
    expect(compose.services.gateway!.ports).toEqual(['9098:9098']);
    const nginx = readFileSync(join(ROOT, 'deploy', 'nginx.conf'), 'utf8');
    expect(nginx).toMatch(/server limiter:9098/);
    expect(nginx).toMatch(/listen 9098;/);
    const dockerfile = readFileSync(join(ROOT, 'Dockerfile'), 'utf8');
    expect(dockerfile).toMatch(/CMD \["node", "dist\/src\/main.js"\]/);
    expect(dockerfile).toMatch(/COPY proto/);
  });

  describe('the launcher', () => {
    let child: ReturnType<typeof spawn> | undefined;
    afterEach(async () => {
      if (child && child.exitCode === null) {
        const exited = new Promise((r) => child!.once('exit', r));
        child.kill('SIGTERM');
        await exited;
      }
    });

    it('starts Redis, two nodes and a gateway that reaches both', async () => {
      // The launcher puts Redis at base - 1, the nodes at base and base + 10, their workers'
      // peer ports at API port + 1000 + worker.
      const base = await freePortBlock([-1, 0, 10, 1000, 1001, 1010, 1011]);
      const gatewayPort = await freePort();
      let output = '';
      child = spawn(process.execPath, ['dist/scripts/cluster.js', '--nodes', '2', '--base-port', String(base), '--gateway-port', String(gatewayPort)], {
        cwd: ROOT,
        env: { PATH: process.env.PATH ?? '', LOG_LEVEL: 'warn' },
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      child.stdout!.on('data', (c: Buffer) => (output += c.toString()));
      child.stderr!.on('data', (c: Buffer) => (output += c.toString()));
      const deadline = Date.now() + 30_000;
      let members = 0;
      while (members !== 4) {
        if (Date.now() > deadline) throw new Error(`cluster did not form:\n${output}`);
        await new Promise((r) => setTimeout(r, 250));
        try {
          const status = (await (await fetch(`http://127.0.0.1:${gatewayPort}/rate-limiting/status`)).json()) as { cluster?: { members: unknown[] } };
          members = status.cluster?.members.length ?? 0;
        } catch {
          members = 0;
        }
      }
      const checks = await Promise.all(
        Array.from({ length: 12 }, async () => {
          const res = await fetch(`http://127.0.0.1:${gatewayPort}/rate-limiting/check`, {
            method: 'POST',
            headers: { 'content-type': 'application/json' },
            body: JSON.stringify({ user_id: 'through-the-gateway' }),
          });
          return ((await res.json()) as { allowed: boolean }).allowed;
        }),
      );
      expect(checks.filter(Boolean)).toHaveLength(10);
      expect(output).toMatch(/limiter: 2 nodes/);
    }, 60_000);
  });
});
