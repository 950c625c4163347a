import type { Queryable } from '../storage/db/database.js';
import { isoTime, toInt, toJsonObject, toMs } from '../storage/db/sql-values.js';

/** One admin write: who did what to which target, from where. */
export interface AuditEntry {
  /** Who acted (the admin API records the declared actor, see admin-auth.ts). */
  actor: string;
  sourceIp: string | null;
  /** A stable verb such as `user.create`, `key.rotate`. */
  action: string;
  /** What was acted on: `user:<id>`, `key:<id>`. */
  target: string;
  /** What changed. Never a key or a key hash. */
  details: Record<string, unknown>;
}

export interface AuditRecord extends AuditEntry {
  id: number;
  at: number;
}

/** The append-only audit log of admin writes. */
export class AuditRepository {
  constructor(
    private readonly db: Queryable,
    private readonly clock: () => number,
  ) {}

  /** Appends an entry stamped with the clock. Run it in the transaction of the write it records. */
  async record(entry: AuditEntry): Promise<AuditRecord> {
    const at = this.clock();
    const result = await this.db.query<{ id: unknown }>(
      `INSERT INTO audit_log (at, actor, source_ip, action, target, details)
       VALUES ($1::timestamptz, $2, $3, $4, $5, $6::jsonb) RETURNING id`,
      [isoTime(at), entry.actor, entry.sourceIp, entry.action, entry.target, JSON.stringify(entry.details)],
    );
    return { ...entry, id: toInt(result.rows[0]!.id), at };
  }

  /** The newest entries first, optionally about one target only. */
  async list(options: { target?: string; limit?: number } = {}): Promise<AuditRecord[]> {
    const result = await this.db.query(
      `SELECT id, at, actor, source_ip, action, target, details FROM audit_log
       WHERE $1::text IS NULL OR target = $1::text ORDER BY id DESC LIMIT $2`,
      [options.target ?? null, Math.min(Math.max(1, options.limit ?? 100), 1000)],
    );
    return result.rows.map((row) => ({
      id: toInt(row.id),
      at: toMs(row.at),
      actor: String(row.actor),
      sourceIp: row.source_ip === null ? null : String(row.source_ip),
      action: String(row.action),
      target: String(row.target),
      details: toJsonObject(row.details),
    }));
  }
}
