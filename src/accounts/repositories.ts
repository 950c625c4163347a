/**
 * The accounts repositories over one connection or transaction. Repositories are cheap:
 * build a set per transaction, so a write and its audit entry commit together:
 *
 *   await db.transaction(async (tx) => {
 *     const repos = accountRepositories(tx, clock);
 *     await repos.users.update(id, patch);
 *     await repos.audit.record({ … });
 *   });
 */
import type { Queryable } from '../storage/db/database.js';
import { ApiKeysRepository } from './api-keys-repository.js';
import { AuditRepository } from './audit-repository.js';
import { QuotaRepository } from './quota-repository.js';
import { UsersRepository } from './users-repository.js';

export interface AccountRepositories {
  users: UsersRepository;
  apiKeys: ApiKeysRepository;
  audit: AuditRepository;
  quota: QuotaRepository;
}

export function accountRepositories(db: Queryable, clock: () => number): AccountRepositories {
  return {
    users: new UsersRepository(db, clock),
    apiKeys: new ApiKeysRepository(db, clock),
    audit: new AuditRepository(db, clock),
    quota: new QuotaRepository(db, clock),
  };
}

export { ApiKeysRepository, type ApiKeyRecord, type IssuedKey, type KeyLookup, type LastUsed } from './api-keys-repository.js';
export { AuditRepository, type AuditEntry, type AuditRecord } from './audit-repository.js';
export { QuotaRepository, type OverageUnits, type QuotaReset } from './quota-repository.js';
export { UsersRepository, type UserPage, type UserRecord } from './users-repository.js';
