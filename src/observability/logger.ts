import { pino, type Logger } from 'pino';

export type { Logger };

/**
 * Paths never written to logs: bearer tokens, API keys (plain or in bodies), passwords.
 * Components log with child loggers (`logger.child({ component })`) and never log
 * request bodies themselves.
 */
export const REDACT_PATHS = [
  'req.headers.authorization',
  'req.headers["x-api-key"]',
  'headers.authorization',
  'authorization',
  'api_key',
  'apiKey',
  'key',
  'password',
  '*.api_key',
  '*.apiKey',
  '*.key',
  '*.password',
  'body.api_key',
  'req.body.api_key',
];

export function createLogger(level: string, bindings: Record<string, unknown> = {}): Logger {
  return pino({
    level,
    base: { service: 'rate-limiting-api', ...bindings },
    redact: { paths: REDACT_PATHS, censor: '[redacted]' },
    timestamp: pino.stdTimeFunctions.isoTime,
  });
}
