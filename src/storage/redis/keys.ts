/**
 * Every Redis key the service uses is built here. A user's keys share the hash tag
 * `{<user>}`, so each script touches one slot and works on Redis Cluster. User ids that
 * contain a brace are hex-encoded inside the tag (prefix `~`), so no id can end a tag
 * early or collide with another id's keys.
 */
export const KEY_PREFIX = 'rl';

function tag(userId: string): string {
  return userId.includes('{') || userId.includes('}') || userId.startsWith('~')
    ? `{~${Buffer.from(userId, 'utf8').toString('hex')}}`
    : `{${userId}}`;
}

export interface UserKeys {
  /**
   * The burst bucket and the grace start, one string "debt at version graceDay graceAt"
   * (graceDay: start of the day window grace began in, -1 if none), so one read and one
   * write cover both.
   */
  bucket: string;
  /** Counter of the minute window starting at `minuteStart`. */
  minute: string;
  /** Counter of the hour window starting at `hourStart`. */
  hour: string;
  /** Counter of the day (quota) window starting at `dayStart`. */
  day: string;
}

/** A user's keys for the windows that contain the given starts. */
export function userKeys(userId: string, minuteStart: number, hourStart: number, dayStart: number): UserKeys {
  const base = `${KEY_PREFIX}:${tag(userId)}`;
  return { bucket: `${base}:b`, minute: `${base}:m:${minuteStart}`, hour: `${base}:h:${hourStart}`, day: `${base}:d:${dayStart}` };
}

export function bucketKey(userId: string): string {
  return `${KEY_PREFIX}:${tag(userId)}:b`;
}

/** NOTE: reconcile.lua derives these from the bucket key (`…:b` → `…:<kind>:<start>`); keep both in step. */
export function windowKey(userId: string, kind: 'm' | 'h' | 'd', start: number): string {
  return `${KEY_PREFIX}:${tag(userId)}:${kind}:${start}`;
}

export { windowStart } from '../../node/engine.js';

/** Cluster-wide keys share one hash tag so they live in one slot. */
export const MEMBERS_KEY = `${KEY_PREFIX}:{cluster}:members`;
export const MEMBERSHIP_CHANNEL = `${KEY_PREFIX}:{cluster}:membership`;
export const CLUSTER_SECRET_KEY = `${KEY_PREFIX}:{cluster}:secret`;
export const INVALIDATION_CHANNEL = `${KEY_PREFIX}:{cluster}:invalidate`;
