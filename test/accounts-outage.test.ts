import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { generateApiKey } from '../src/accounts/api-keys.js';
import { migrate } from '../src/storage/db/migrations.js';
import { openPostgres } from '../src/storage/db/postgres.js';
import { ManualClock, postJson, testNode } from './helpers/app.js';
import { LOCAL_POSTGRES, postgresSettings, throwawayPostgres } from './helpers/databases.js';
import { freePort } from './helpers/ports.js';
import { TcpProxy } from './helpers/tcp-proxy.js';

/** PostgreSQL goes away mid-run (behind a proxy the test stops) and comes back. */
describe('when PostgreSQL goes away', () => {
  let disposeDb: () => Promise<void>;
  let dbName: string;
  let proxy: TcpProxy;

  beforeAll(async () => {
    const created = await throwawayPostgres();
    dbName = created.name;
    await migrate(created.db);
    disposeDb = created.dispose;
    proxy = new TcpProxy(await freePort(), { host: LOCAL_POSTGRES.host, port: LOCAL_POSTGRES.port });
    await proxy.start();
  });
  afterAll(async () => {
    await proxy.stop();
    await disposeDb();
  });

  it('keeps validating cached keys, refuses unknown ones with a distinct code, answers admin calls with 503, and recovers', async () => {
    const db = openPostgres(postgresSettings(dbName, { host: '127.0.0.1', port: proxy.port, connectTimeoutMs: 1000, statementTimeoutMs: 2000 }));
    const node = await testNode({ ADMIN_TOKEN: 't' }, new ManualClock(Date.now()), db);
    const admin = { authorization: 'Bearer t' };
    try {
      const { app } = node;
      expect((await app.inject({ method: 'POST', url: '/admin/users', headers: admin, payload: { user_id: 'outage-user', tier: 'premium' } })).statusCode).toBe(201);
      const key = (await app.inject({ method: 'POST', url: '/admin/users/outage-user/keys', headers: admin, payload: {} })).json().key as string;
      expect((await postJson(app, '/rate-limiting/check', { api_key: key })).json()).toMatchObject({ allowed: true, tier: 'premium' });

      await proxy.stop();
      const cached = (await postJson(app, '/rate-limiting/check', { api_key: key })).json();
      expect(cached).toMatchObject({ allowed: true, code: 'OK', user_id: 'outage-user', tier: 'premium' });
      const unknown = generateApiKey().key;
      expect((await postJson(app, '/rate-limiting/check', { api_key: unknown })).json()).toMatchObject({ allowed: false, code: 'KEY_STORE_UNAVAILABLE' });
      const down = await app.inject({ method: 'GET', url: '/admin/users', headers: admin });
      expect(down.statusCode).toBe(503);
      expect(down.json()).toMatchObject({ error: 'SERVICE_UNAVAILABLE' });
      // A user the node has never seen is decided by its tier hint meanwhile.
      expect((await postJson(app, '/rate-limiting/check', { user_id: 'never-seen', tier: 'enterprise' })).json()).toMatchObject({ allowed: true, tier: 'enterprise' });

      await proxy.start();
      const deadline = Date.now() + 10_000;
      while ((await app.inject({ method: 'GET', url: '/admin/users', headers: admin })).statusCode !== 200) {
        if (Date.now() > deadline) throw new Error('admin API did not recover');
        await new Promise((r) => setTimeout(r, 200));
      }
      const recovered = (await postJson(app, '/rate-limiting/check', { api_key: generateApiKey().key })).json();
      expect(recovered).toMatchObject({ allowed: false, code: 'INVALID_KEY' });
    } finally {
      await node.close();
    }
  }, 60_000);
});
