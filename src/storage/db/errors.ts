/**
 * Errors of the SQL tier. Every failure that means "the database cannot answer now"
 * (refused or dropped connections, timeouts, a pool that cannot connect, a server shutting
 * down) becomes one typed error, so callers can answer 503 or serve from cache without
 * knowing which backend or driver produced it. Everything else (a constraint violated, a
 * syntax error) is a bug or a conflict and is passed through unchanged.
 */
export class DatabaseUnavailableError extends Error {
  readonly code = 'DATABASE_UNAVAILABLE';

  constructor(message = 'the database is not reachable', options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'DatabaseUnavailableError';
  }
}

/** Node socket errors that mean the server is not there (or went away). */
const SOCKET_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ECONNABORTED',
  'EPIPE',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENOTFOUND',
  'EAI_AGAIN',
  // A unix socket path that does not exist (the PGlite owner is not serving yet).
  'ENOENT',
]);

/**
 * SQLSTATEs that mean "not now" rather than "never": connection exceptions (class 08),
 * the server shutting down or starting (57P01–57P03), too many connections (53300),
 * a statement timeout (57014: the database is too slow to be useful to the caller).
 */
function isUnavailableSqlState(code: string): boolean {
  return code.startsWith('08') || code === '57P01' || code === '57P02' || code === '57P03' || code === '53300' || code === '57014';
}

/** Messages pg and pg-pool use for connection-level failures (they carry no code). */
const DRIVER_MESSAGES = [
  'timeout exceeded when trying to connect',
  'Connection terminated',
  'Query read timeout',
  'is not queryable',
  'Cannot use a pool after calling end on the pool',
  'PGlite is closed',
];

/** True when `err` means the database cannot answer now (see the file header). */
export function isUnavailable(err: unknown): boolean {
  if (err instanceof DatabaseUnavailableError) return true;
  if (!(err instanceof Error)) return false;
  const code = (err as { code?: unknown }).code;
  if (typeof code === 'string' && (SOCKET_CODES.has(code) || isUnavailableSqlState(code))) return true;
  if (DRIVER_MESSAGES.some((text) => err.message.includes(text))) return true;
  // AggregateError: a host name that resolved to several addresses, every one refused.
  if (err instanceof AggregateError) return err.errors.some(isUnavailable);
  return false;
}

/** `err` as a DatabaseUnavailableError when it means "not now", else unchanged. */
export function classifyDatabaseError(err: unknown): unknown {
  if (err instanceof DatabaseUnavailableError || !isUnavailable(err)) return err;
  const message = err instanceof Error ? err.message : String(err);
  return new DatabaseUnavailableError(`the database is not reachable: ${message}`, { cause: err });
}
