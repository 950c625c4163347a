import type { Queryable } from '../storage/db/database.js';
import { isoTime, isoTimeOrNull, toMs, toMsOrNull } from '../storage/db/sql-values.js';
import { generateApiKey, randomId } from './api-keys.js';
import { AccountError } from './errors.js';

/** A key as admins see it: never the key itself, never its hash. */
export interface ApiKeyRecord {
  id: string;
  userId: string;
  /** The first 12 characters of the key, for recognising it. */
  prefix: string;
  name: string | null;
  createdAt: number;
  expiresAt: number | null;
  revokedAt: number | null;
  lastUsedAt: number | null;
  /** The key this one replaced by rotation. */
  rotatedFrom: string | null;
}

/** A newly made key: `key` is shown to the caller once and exists nowhere else. */
export interface IssuedKey {
  key: string;
  record: ApiKeyRecord;
}

/** What validating a request needs to know about a key, found by its hash. */
export interface KeyLookup {
  keyId: string;
  userId: string;
  expiresAt: number | null;
  revokedAt: number | null;
}

export interface LastUsed {
  keyId: string;
  at: number;
}

const COLUMNS = 'id, user_id, prefix, name, created_at, expires_at, revoked_at, last_used_at, rotated_from';

/** API keys, stored as SHA-256 hashes (api-keys.ts). */
export class ApiKeysRepository {
  constructor(
    private readonly db: Queryable,
    private readonly clock: () => number,
  ) {}

  /** Makes a key for `userId`; throws AccountError USER_NOT_FOUND if there is no such user. */
  async create(userId: string, options: { name?: string | null; expiresAt?: number | null } = {}): Promise<IssuedKey> {
    const generated = generateApiKey();
    const result = await this.db.query(
      `INSERT INTO api_keys (id, user_id, key_hash, prefix, name, created_at, expires_at)
       SELECT $1, user_id, $3, $4, $5, $6::timestamptz, $7::timestamptz FROM users WHERE user_id = $2
       RETURNING ${COLUMNS}`,
      [randomId('key_'), userId, generated.hash, generated.displayPrefix, options.name ?? null, isoTime(this.clock()), isoTimeOrNull(options.expiresAt ?? null)],
    );
    const row = result.rows[0];
    if (row === undefined) throw new AccountError('USER_NOT_FOUND');
    return { key: generated.key, record: toKey(row) };
  }

  async findByHash(keyHash: string): Promise<KeyLookup | null> {
    const result = await this.db.query('SELECT id, user_id, expires_at, revoked_at FROM api_keys WHERE key_hash = $1', [keyHash]);
    const row = result.rows[0];
    return row === undefined ? null : toLookup(row);
  }

  async findManyByHash(keyHashes: string[]): Promise<Map<string, KeyLookup>> {
    const result = await this.db.query('SELECT key_hash, id, user_id, expires_at, revoked_at FROM api_keys WHERE key_hash = ANY($1::text[])', [keyHashes]);
    return new Map(result.rows.map((row) => [String(row.key_hash), toLookup(row)]));
  }

  async get(keyId: string): Promise<ApiKeyRecord | null> {
    const result = await this.db.query(`SELECT ${COLUMNS} FROM api_keys WHERE id = $1`, [keyId]);
    return result.rows[0] ? toKey(result.rows[0]) : null;
  }

  /** Every key of the user, oldest first, revoked and expired ones included. */
  async listForUser(userId: string): Promise<ApiKeyRecord[]> {
    const result = await this.db.query(`SELECT ${COLUMNS} FROM api_keys WHERE user_id = $1 ORDER BY created_at, id`, [userId]);
    return result.rows.map(toKey);
  }

  /** Revokes the key now (a second revoke keeps the first time); null if there is no such key. */
  async revoke(keyId: string): Promise<ApiKeyRecord | null> {
    const result = await this.db.query(
      `UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $2::timestamptz) WHERE id = $1 RETURNING ${COLUMNS}`,
      [keyId, isoTime(this.clock())],
    );
    return result.rows[0] ? toKey(result.rows[0]) : null;
  }

  /**
   * Replaces a live key with a new one for the same user, with the same name and expiry.
   * The old key stays valid for `overlapSeconds` more (never longer than it would have),
   * so clients can switch over. One statement: both changes happen or neither.
   * Throws AccountError KEY_NOT_FOUND, or KEY_NOT_ROTATABLE for a revoked or expired key.
   */
  async rotate(keyId: string, overlapSeconds: number): Promise<{ issued: IssuedKey; previous: ApiKeyRecord }> {
    const now = this.clock();
    const generated = generateApiKey();
    const result = await this.db.query(
      `WITH old AS (
         SELECT id, user_id, name, expires_at FROM api_keys
         WHERE id = $1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $2::timestamptz)
         FOR UPDATE
       ), previous AS (
         UPDATE api_keys k SET expires_at = LEAST(COALESCE(k.expires_at, $3::timestamptz), $3::timestamptz)
         FROM old WHERE k.id = old.id
         RETURNING k.id, k.user_id, k.prefix, k.name, k.created_at, k.expires_at, k.revoked_at, k.last_used_at, k.rotated_from
       ), issued AS (
         INSERT INTO api_keys (id, user_id, key_hash, prefix, name, created_at, expires_at, rotated_from)
         SELECT $4, old.user_id, $5, $6, old.name, $2::timestamptz, old.expires_at, old.id FROM old
         RETURNING ${COLUMNS}
       )
       SELECT 'issued' AS role, ${COLUMNS} FROM issued
       UNION ALL
       SELECT 'previous' AS role, ${COLUMNS} FROM previous`,
      [keyId, isoTime(now), isoTime(now + overlapSeconds * 1000), randomId('key_'), generated.hash, generated.displayPrefix],
    );
    const issued = result.rows.find((row) => row.role === 'issued');
    const previous = result.rows.find((row) => row.role === 'previous');
    if (issued === undefined || previous === undefined) {
      throw new AccountError((await this.get(keyId)) === null ? 'KEY_NOT_FOUND' : 'KEY_NOT_ROTATABLE');
    }
    return { issued: { key: generated.key, record: toKey(issued) }, previous: toKey(previous) };
  }

  /**
   * Records when keys were last used, many in one statement. A time older than the stored
   * one is ignored, so batches from several processes may arrive in any order.
   * Returns the number of keys updated.
   */
  async touchLastUsed(batch: readonly LastUsed[]): Promise<number> {
    if (batch.length === 0) return 0;
    const latest = new Map<string, number>();
    for (const { keyId, at } of batch) latest.set(keyId, Math.max(at, latest.get(keyId) ?? at));
    const rows = [...latest].map(([id, at]) => ({ id, at: isoTime(at) }));
    const result = await this.db.query(
      `UPDATE api_keys k SET last_used_at = GREATEST(COALESCE(k.last_used_at, v.at), v.at)
       FROM jsonb_to_recordset($1::jsonb) AS v(id text, at timestamptz)
       WHERE k.id = v.id`,
      [JSON.stringify(rows)],
    );
    return result.rowCount;
  }
}

function toKey(row: Record<string, unknown>): ApiKeyRecord {
  return {
    id: String(row.id),
    userId: String(row.user_id),
    prefix: String(row.prefix),
    name: row.name === null || row.name === undefined ? null : String(row.name),
    createdAt: toMs(row.created_at),
    expiresAt: toMsOrNull(row.expires_at),
    revokedAt: toMsOrNull(row.revoked_at),
    lastUsedAt: toMsOrNull(row.last_used_at),
    rotatedFrom: row.rotated_from === null || row.rotated_from === undefined ? null : String(row.rotated_from),
  };
}

function toLookup(row: Record<string, unknown>): KeyLookup {
  return { keyId: String(row.id), userId: String(row.user_id), expiresAt: toMsOrNull(row.expires_at), revokedAt: toMsOrNull(row.revoked_at) };
}
