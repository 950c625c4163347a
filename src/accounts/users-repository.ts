import type { Queryable } from '../storage/db/database.js';
import { isoTime, toIntOrNull, toJsonObject, toMs } from '../storage/db/sql-values.js';
import { AccountError } from './errors.js';
import { OVERRIDE_FIGURES, type NewUser, type TierOverrides, type UserPatch } from './validation.js';

export interface UserRecord {
  userId: string;
  tier: string;
  overrides: TierOverrides;
  /** Replaces the tier's daily quota when set. */
  quotaOverride: number | null;
  disabled: boolean;
  createdAt: number;
  updatedAt: number;
}

export interface UserPage {
  users: UserRecord[];
  /** Pass back to get the next page; null on the last one. */
  nextCursor: string | null;
}

export const MAX_PAGE_SIZE = 1000;

const COLUMNS = 'user_id, tier, overrides, quota_override, disabled, created_at, updated_at';

/** Users and their per-user settings. Inputs are validated (validation.ts) before they get here. */
export class UsersRepository {
  constructor(
    private readonly db: Queryable,
    private readonly clock: () => number,
  ) {}

  /** Stores a new user; throws AccountError USER_EXISTS if the id is taken (the transaction stays usable). */
  async create(user: NewUser): Promise<UserRecord> {
    const now = isoTime(this.clock());
    const result = await this.db.query(
      `INSERT INTO users (user_id, tier, overrides, quota_override, disabled, created_at, updated_at)
       VALUES ($1, $2, $3::jsonb, $4::bigint, $5, $6::timestamptz, $6::timestamptz)
       ON CONFLICT (user_id) DO NOTHING
       RETURNING ${COLUMNS}`,
      [user.userId, user.tier, JSON.stringify(user.overrides), user.quotaOverride, user.disabled, now],
    );
    const row = result.rows[0];
    if (row === undefined) throw new AccountError('USER_EXISTS');
    return toUser(row);
  }

  async get(userId: string): Promise<UserRecord | null> {
    const result = await this.db.query(`SELECT ${COLUMNS} FROM users WHERE user_id = $1`, [userId]);
    return result.rows[0] ? toUser(result.rows[0]) : null;
  }

  /** The stored users among `userIds` (one query), by user id. */
  async getMany(userIds: readonly string[]): Promise<Map<string, UserRecord>> {
    const found = new Map<string, UserRecord>();
    if (userIds.length === 0) return found;
    const result = await this.db.query(`SELECT ${COLUMNS} FROM users WHERE user_id = ANY($1::text[])`, [userIds]);
    for (const row of result.rows) {
      const user = toUser(row);
      found.set(user.userId, user);
    }
    return found;
  }

  /** Applies `patch` (see UserPatch for merging and clearing); null if there is no such user. */
  async update(userId: string, patch: UserPatch): Promise<UserRecord | null> {
    const result = await this.db.query(
      `UPDATE users SET
         tier = COALESCE($2::text, tier),
         overrides = CASE WHEN $3::jsonb IS NULL THEN overrides ELSE jsonb_strip_nulls(overrides || $3::jsonb) END,
         quota_override = CASE WHEN $4::boolean THEN $5::bigint ELSE quota_override END,
         disabled = COALESCE($6::boolean, disabled),
         updated_at = $7::timestamptz
       WHERE user_id = $1
       RETURNING ${COLUMNS}`,
      [
        userId,
        patch.tier ?? null,
        patch.overrides === undefined ? null : JSON.stringify(patch.overrides),
        patch.quotaOverride !== undefined,
        patch.quotaOverride ?? null,
        patch.disabled ?? null,
        isoTime(this.clock()),
      ],
    );
    return result.rows[0] ? toUser(result.rows[0]) : null;
  }

  /** Deletes the user and, by cascade, its API keys; false if there was no such user. */
  async delete(userId: string): Promise<boolean> {
    const result = await this.db.query('DELETE FROM users WHERE user_id = $1 RETURNING user_id', [userId]);
    return result.rows.length > 0;
  }

  /**
   * One page of users in user_id order (the database's collation). The cursor is opaque;
   * throws AccountError INVALID_CURSOR for one this service did not issue.
   */
  async list(options: { cursor?: string | null; limit: number }): Promise<UserPage> {
    const limit = Math.min(Math.max(1, Math.trunc(options.limit)), MAX_PAGE_SIZE);
    const after = options.cursor ? decodeCursor(options.cursor) : null;
    const result = await this.db.query(
      `SELECT ${COLUMNS} FROM users WHERE $1::text IS NULL OR user_id > $1::text ORDER BY user_id LIMIT $2`,
      [after, limit + 1],
    );
    const users = result.rows.slice(0, limit).map(toUser);
    const nextCursor = result.rows.length > limit ? encodeCursor(users[users.length - 1]!.userId) : null;
    return { users, nextCursor };
  }
}

function toUser(row: Record<string, unknown>): UserRecord {
  const stored = toJsonObject(row.overrides);
  const overrides: TierOverrides = {};
  for (const figure of OVERRIDE_FIGURES) {
    if (typeof stored[figure] === 'number') overrides[figure] = stored[figure];
  }
  return {
    userId: String(row.user_id),
    tier: String(row.tier),
    overrides,
    quotaOverride: toIntOrNull(row.quota_override),
    disabled: row.disabled === true,
    createdAt: toMs(row.created_at),
    updatedAt: toMs(row.updated_at),
  };
}

function encodeCursor(afterUserId: string): string {
  return Buffer.from(JSON.stringify({ after: afterUserId }), 'utf8').toString('base64url');
}

function decodeCursor(cursor: string): string {
  try {
    const parsed: unknown = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8'));
    const after = (parsed as { after?: unknown }).after;
    if (typeof after === 'string') return after;
  } catch {
    // fall through
  }
  throw new AccountError('INVALID_CURSOR');
}
