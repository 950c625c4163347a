/**
 * Versioned schema migrations, applied in order at start by the process that owns the
 * database (the primary with PGlite; any one process per node with PostgreSQL: concurrent
 * runs wait for each other on an advisory lock and apply each migration once).
 *
 * Adding one: append `{ version: <last + 1>, name, sql }` to MIGRATIONS. Never edit or
 * reorder a migration that has shipped; write a new one. The SQL must run on PostgreSQL 15
 * and on PGlite (PostgreSQL 18): nothing newer than 15, no extensions.
 */
import type { Database, Queryable } from './database.js';

export interface Migration {
  version: number;
  name: string;
  sql: string;
}

/** The usage tables of one granularity (migration 2): additive counters per bucket, user, key and tier. */
function usageTable(name: string): string {
  return `
      CREATE TABLE ${name} (
        bucket              timestamptz NOT NULL,
        user_id             text NOT NULL,
        key_id              text NOT NULL DEFAULT '',
        tier                text NOT NULL,
        requests            bigint NOT NULL DEFAULT 0,
        allowed             bigint NOT NULL DEFAULT 0,
        denied              bigint NOT NULL DEFAULT 0,
        cost                bigint NOT NULL DEFAULT 0,
        overage             bigint NOT NULL DEFAULT 0,
        grace               bigint NOT NULL DEFAULT 0,
        denied_rate_limited bigint NOT NULL DEFAULT 0,
        denied_quota        bigint NOT NULL DEFAULT 0,
        denied_key          bigint NOT NULL DEFAULT 0,
        denied_disabled     bigint NOT NULL DEFAULT 0,
        denied_unavailable  bigint NOT NULL DEFAULT 0,
        limited_burst       bigint NOT NULL DEFAULT 0,
        limited_minute      bigint NOT NULL DEFAULT 0,
        limited_hour        bigint NOT NULL DEFAULT 0,
        limited_day         bigint NOT NULL DEFAULT 0,
        PRIMARY KEY (bucket, user_id, key_id, tier)
      );
      CREATE INDEX ${name}_user ON ${name} (user_id, bucket);
      CREATE INDEX ${name}_tier ON ${name} (tier, bucket);`;
}

export const MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    name: 'accounts',
    sql: `
      CREATE TABLE users (
        user_id        text PRIMARY KEY,
        tier           text NOT NULL,
        -- per-user figures replacing the tier's: requests_per_minute, requests_per_hour,
        -- requests_per_day, burst_limit (absent = the tier's)
        overrides      jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(overrides) = 'object'),
        quota_override bigint NULL CHECK (quota_override >= 0),
        disabled       boolean NOT NULL DEFAULT false,
        created_at     timestamptz NOT NULL DEFAULT now(),
        updated_at     timestamptz NOT NULL DEFAULT now()
      );

      CREATE TABLE api_keys (
        id           text PRIMARY KEY,
        user_id      text NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
        -- lowercase hex SHA-256 of the whole key; the key itself is never stored
        key_hash     text NOT NULL UNIQUE CHECK (key_hash ~ '^[0-9a-f]{64}$'),
        prefix       text NOT NULL,
        name         text NULL,
        created_at   timestamptz NOT NULL DEFAULT now(),
        expires_at   timestamptz NULL,
        revoked_at   timestamptz NULL,
        last_used_at timestamptz NULL,
        rotated_from text NULL
      );
      CREATE INDEX api_keys_user_id ON api_keys (user_id);

      CREATE TABLE audit_log (
        id        bigserial PRIMARY KEY,
        at        timestamptz NOT NULL DEFAULT now(),
        actor     text NOT NULL,
        source_ip text NULL,
        action    text NOT NULL,
        target    text NOT NULL,
        details   jsonb NOT NULL DEFAULT '{}'
      );
      CREATE INDEX audit_log_at ON audit_log (at);
      CREATE INDEX audit_log_target ON audit_log (target, at);

      -- An admin reset of a user's quota window: usage in the window starting at day_start
      -- (epoch ms, aligned to quota_management.reset_interval) counts from reset_at on.
      -- Not tied to users: users the service does not store have quotas too.
      CREATE TABLE quota_resets (
        id        bigserial PRIMARY KEY,
        user_id   text NOT NULL,
        day_start bigint NOT NULL,
        reset_at  timestamptz NOT NULL,
        by        text NOT NULL
      );
      CREATE INDEX quota_resets_user ON quota_resets (user_id, reset_at);

      -- Units admitted beyond the quota (overage_handling = allow), per user and UTC day.
      CREATE TABLE overage_daily (
        user_id text NOT NULL,
        day     date NOT NULL,
        units   bigint NOT NULL CHECK (units >= 0),
        PRIMARY KEY (user_id, day)
      );
    `,
  },
  {
    version: 2,
    name: 'usage',
    // Usage history: each worker adds its per-minute aggregates to all three tables in one
    // transaction (src/analytics), so hour and day rows always equal the sum of their minutes.
    sql: usageTable('usage_minute') + usageTable('usage_hour') + usageTable('usage_day'),
  },
  {
    version: 3,
    name: 'usage_rollup_fillfactor',
    // Hour and day rows are updated at every flush (once a minute per active user). With
    // room left on each page the update stays on its page and touches no index (a HOT
    // update); full pages make every update a new row version in all three indexes.
    // `npm run bench -- usage-flush`: a minute of 10 000 users, 0.74 s → 0.44 s in PGlite.
    sql: `
      ALTER TABLE usage_hour SET (fillfactor = 50);
      ALTER TABLE usage_day SET (fillfactor = 50);
    `,
  },
];

/** The database holds a schema this code does not know: refuse to start rather than misuse it. */
export class SchemaMismatchError extends Error {
  readonly code = 'SCHEMA_MISMATCH';

  constructor(message: string) {
    super(message);
    this.name = 'SchemaMismatchError';
  }
}

export interface MigrationReport {
  /** Versions applied by this call, in order. */
  applied: number[];
  /** The schema version now. */
  version: number;
}

/** Any fixed number, the same in every process: the key of the advisory lock migrations hold. */
const MIGRATION_LOCK = 7_262_001;

const CREATE_MIGRATIONS_TABLE = `
  CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
  )`;

/**
 * Brings the schema up to the newest of `migrations`, each missing one in a transaction of
 * its own. Throws SchemaMismatchError, changing nothing, when the database is newer than
 * the code, or holds a version under another name, or lacks a version below one it has.
 */
export async function migrate(db: Database, migrations: readonly Migration[] = MIGRATIONS): Promise<MigrationReport> {
  checkOrder(migrations);
  await db.transaction(async (tx) => {
    await lock(tx);
    await tx.query(CREATE_MIGRATIONS_TABLE);
  });
  const applied = await appliedMigrations(db);
  const pending = pendingMigrations(applied, migrations);
  const done: number[] = [];
  for (const migration of pending) {
    const ran = await db.transaction(async (tx) => {
      await lock(tx);
      // Another process may have applied it while this one waited for the lock.
      const already = await tx.query('SELECT 1 FROM schema_migrations WHERE version = $1', [migration.version]);
      if (already.rows.length > 0) return false;
      await tx.query(migration.sql);
      await tx.query('INSERT INTO schema_migrations (version, name) VALUES ($1, $2)', [migration.version, migration.name]);
      return true;
    });
    if (ran) done.push(migration.version);
  }
  const version = Math.max(0, ...applied.keys(), ...pending.map((m) => m.version));
  return { applied: done, version };
}

/** The schema version of `db`: 0 when nothing was applied. */
export async function schemaVersion(db: Queryable): Promise<number> {
  const table = await db.query<{ present: boolean }>("SELECT to_regclass('schema_migrations') IS NOT NULL AS present");
  if (table.rows[0]?.present !== true) return 0;
  const max = await db.query<{ version: number | null }>('SELECT max(version) AS version FROM schema_migrations');
  return Number(max.rows[0]?.version ?? 0);
}

async function lock(tx: Queryable): Promise<void> {
  await tx.query(`SELECT pg_advisory_xact_lock(${MIGRATION_LOCK})`);
}

async function appliedMigrations(db: Queryable): Promise<Map<number, string>> {
  const result = await db.query<{ version: number; name: string }>('SELECT version, name FROM schema_migrations ORDER BY version');
  return new Map(result.rows.map((row) => [Number(row.version), row.name]));
}

function pendingMigrations(applied: Map<number, string>, migrations: readonly Migration[]): Migration[] {
  const known = migrations.at(-1)?.version ?? 0;
  const newest = Math.max(0, ...applied.keys());
  if (newest > known) {
    throw new SchemaMismatchError(
      `the database schema is at version ${newest} (${applied.get(newest)}), but this build knows migrations up to version ${known}; ` +
        'run a build that includes it, or restore a database made by this one',
    );
  }
  for (const migration of migrations) {
    const name = applied.get(migration.version);
    if (name !== undefined && name !== migration.name) {
      throw new SchemaMismatchError(
        `migration ${migration.version} was applied as "${name}", but this build names it "${migration.name}": the database was made by another branch`,
      );
    }
    if (name === undefined && migration.version < newest) {
      throw new SchemaMismatchError(`migration ${migration.version} (${migration.name}) is missing although version ${newest} is applied`);
    }
  }
  return migrations.filter((m) => m.version > newest);
}

function checkOrder(migrations: readonly Migration[]): void {
  migrations.forEach((migration, i) => {
    const previous = i === 0 ? 0 : migrations[i - 1]!.version;
    if (!Number.isInteger(migration.version) || migration.version <= previous) {
      throw new Error(`migrations must have increasing integer versions: ${migration.version} follows ${previous}`);
    }
  });
}
