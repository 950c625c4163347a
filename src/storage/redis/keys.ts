/**
 * Every Redis key the service uses is built here. A user's keys share the hash tag
 * `{<user>}`, so each script touches one slot and works on Redis Cluster. User ids that
 * contain a brace are hex-encoded inside the tag (prefix `~`), so no id can end a tag
 * early or collide with another id's keys; so are ids with a newline (the API refuses
 * them anyway), so that no key holds one (reconcile.lua takes keys newline-separated).
 */
export const KEY_PREFIX = 'rl';

function tag(userId: string): string {
  return userId.includes('{') || userId.includes('}') || userId.startsWith('~') || userId.includes('\n')
    ? `{~${Buffer.from(userId, 'utf8').toString('hex')}}`
    : `{${userId}}`;
}

/**
 * A user's whole rate-limit state lives in one key, `rl:{<user>}:s`, so a flush or a
 * decision is one GET and one SET (by hand, in a script micro-benchmark: a quarter of the
 * Redis CPU of a key per window; see docs/durability.md). The value is {@link STATE_FIELDS} as little-endian
 * doubles (Lua's `struct.pack('<dddddddddd', …)`); counts and millisecond times are
 * integers well inside a double's exact range. A window's count belongs to the window
 * starting at its start; a newer window replaces it; `graceAt` belongs to the day window.
 * The key expires (PXAT) a slack after the last of its windows ends and its bucket is full.
 */
export const STATE_FIELDS = [
  'debt', 'debtAt', 'version', 'graceAt', 'minuteStart', 'minuteCount', 'hourStart', 'hourCount', 'dayStart', 'dayCount',
] as const;

export type StoredState = Record<(typeof STATE_FIELDS)[number], number>;

export function stateKey(userId: string): string {
  return `${KEY_PREFIX}:${tag(userId)}:s`;
}

/** Reads a stored state value (for tests and debugging); null when absent or not a state. */
export function decodeState(value: Buffer | null): StoredState | null {
  if (value === null || value.length !== STATE_FIELDS.length * 8) return null;
  const state = {} as StoredState;
  STATE_FIELDS.forEach((field, i) => (state[field] = value.readDoubleLE(i * 8)));
  return state;
}

export { windowStart } from '../../node/engine.js';

/** Cluster-wide keys share one hash tag so they live in one slot. */
export const MEMBERS_KEY = `${KEY_PREFIX}:{cluster}:members`;
export const MEMBERSHIP_CHANNEL = `${KEY_PREFIX}:{cluster}:membership`;
export const CLUSTER_SECRET_KEY = `${KEY_PREFIX}:{cluster}:secret`;
export const INVALIDATION_CHANNEL = `${KEY_PREFIX}:{cluster}:invalidate`;

/** A user's stored state read with any client (tests and debugging); null when absent. */
export async function readStoredState(client: { getBuffer(key: string): Promise<Buffer | null> }, userId: string): Promise<StoredState | null> {
  return decodeState(await client.getBuffer(stateKey(userId)));
}
