/**
 * Conversions between JavaScript values and what the two drivers hand back, which differ:
 * `pg` returns bigint as a string and bytea as a Buffer, PGlite a number and a Uint8Array;
 * both return timestamptz as a Date and jsonb parsed. Readers use these instead of casts.
 * Times are written as ISO strings (`$n::timestamptz`), never as Date objects, so no
 * driver applies the process's time zone.
 */

/** An integer column (int4, int8/bigint as string or number) as a number. */
export function toInt(value: unknown): number {
  const n = typeof value === 'string' ? Number(value) : typeof value === 'bigint' ? Number(value) : (value as number);
  if (typeof n !== 'number' || !Number.isFinite(n)) throw new TypeError(`not an integer from the database: ${String(value)}`);
  return n;
}

export function toIntOrNull(value: unknown): number | null {
  return value === null || value === undefined ? null : toInt(value);
}

/** A timestamptz column as epoch milliseconds. */
export function toMs(value: unknown): number {
  const ms = value instanceof Date ? value.getTime() : typeof value === 'string' ? Date.parse(value) : NaN;
  if (!Number.isFinite(ms)) throw new TypeError(`not a timestamp from the database: ${String(value)}`);
  return ms;
}

export function toMsOrNull(value: unknown): number | null {
  return value === null || value === undefined ? null : toMs(value);
}

/** Epoch ms as a parameter for `$n::timestamptz`. */
export function isoTime(ms: number): string {
  return new Date(ms).toISOString();
}

export function isoTimeOrNull(ms: number | null): string | null {
  return ms === null ? null : isoTime(ms);
}

/** A jsonb column holding an object. */
export function toJsonObject(value: unknown): Record<string, unknown> {
  const parsed: unknown = typeof value === 'string' ? JSON.parse(value) : value;
  return typeof parsed === 'object' && parsed !== null && !Array.isArray(parsed) ? (parsed as Record<string, unknown>) : {};
}
