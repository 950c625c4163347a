/**
 * Outcomes of account operations that are the caller's business, not failures of the
 * service: each has a stable code the admin API maps to an HTTP status.
 */
export const ACCOUNT_ERRORS = {
  USER_EXISTS: 'a user with this user_id already exists',
  USER_NOT_FOUND: 'no such user',
  KEY_NOT_FOUND: 'no such API key',
  KEY_NOT_ROTATABLE: 'the API key is revoked or expired and cannot be rotated',
  INVALID_CURSOR: 'the cursor is not one this service issued',
} as const;

export type AccountErrorCode = keyof typeof ACCOUNT_ERRORS;

export class AccountError extends Error {
  constructor(
    readonly code: AccountErrorCode,
    message: string = ACCOUNT_ERRORS[code],
  ) {
    super(message);
    this.name = 'AccountError';
  }
}
