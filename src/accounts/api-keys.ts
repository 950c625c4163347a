/**
 * The API key format: `rlk_` + 33 base62 characters of 24 random bytes (192 bits) + a
 * 6-character base62 CRC32 of everything before it (43 characters in all, like GitHub's
 * tokens). The prefix tells scanners and people what the string is; the checksum lets
 * anyone reject a mistyped or made-up key without a lookup.
 *
 * The service keeps only `hashApiKey(key)` (SHA-256, lowercase hex) and the display prefix
 * (the first 12 characters). The key itself is shown once, at creation or rotation, and is
 * never stored or logged.
 */
import * as crypto from 'node:crypto';

export const API_KEY_PREFIX = 'rlk_';
export const API_KEY_RANDOM_BYTES = 24;
const BODY_LENGTH = 33; // ceil(192 / log2(62))
const CHECKSUM_LENGTH = 6; // 62^6 > 2^32
export const API_KEY_LENGTH = API_KEY_PREFIX.length + BODY_LENGTH + CHECKSUM_LENGTH;
export const DISPLAY_PREFIX_LENGTH = 12;

const ALPHABET = '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz';
const KEY_PATTERN = new RegExp(`^${API_KEY_PREFIX}[0-9A-Za-z]{${BODY_LENGTH + CHECKSUM_LENGTH}}$`);

export interface GeneratedApiKey {
  /** The key itself: give it to the caller once, never store or log it. */
  key: string;
  /** What the database stores and looks keys up by. */
  hash: string;
  /** The first 12 characters, for listings ("rlk_3fA9xQ2b…"). */
  displayPrefix: string;
}

export type ApiKeyFormat = 'ok' | 'malformed' | 'bad_checksum';

/** A new key from the operating system's CSPRNG. */
export function generateApiKey(): GeneratedApiKey {
  const body = base62(crypto.randomBytes(API_KEY_RANDOM_BYTES), BODY_LENGTH);
  const key = `${API_KEY_PREFIX}${body}${checksumOf(`${API_KEY_PREFIX}${body}`)}`;
  return { key, hash: hashApiKey(key), displayPrefix: displayPrefixOf(key) };
}

/** Whether `key` has the shape and checksum of one of our keys; no lookup, no allocation beyond the CRC. */
export function checkApiKeyFormat(key: string): ApiKeyFormat {
  if (key.length !== API_KEY_LENGTH || !KEY_PATTERN.test(key)) return 'malformed';
  const split = API_KEY_LENGTH - CHECKSUM_LENGTH;
  return checksumOf(key.slice(0, split)) === key.slice(split) ? 'ok' : 'bad_checksum';
}

/** One-shot hashing (Node 20.12+) is about three times faster than createHash on the request path. */
const oneShotHash = (crypto as { hash?: (algorithm: string, data: string, encoding: 'hex') => string }).hash;

/** SHA-256 of the whole key, lowercase hex: the only form in which keys are stored. */
export function hashApiKey(key: string): string {
  if (oneShotHash !== undefined) return oneShotHash('sha256', key, 'hex');
  return crypto.createHash('sha256').update(key, 'utf8').digest('hex');
}

export function displayPrefixOf(key: string): string {
  return key.slice(0, DISPLAY_PREFIX_LENGTH);
}

/** A random identifier such as `key_4CkqT0…` (128 bits), for rows that need an opaque id. */
export function randomId(prefix: string): string {
  return `${prefix}${base62(crypto.randomBytes(16), 22)}`;
}

/** The checksum of an ASCII string (keys are ASCII; no buffer is made on the request path). */
function checksumOf(text: string): string {
  let crc = 0xffffffff;
  for (let i = 0; i < text.length; i++) crc = CRC_TABLE[(crc ^ text.charCodeAt(i)) & 0xff]! ^ (crc >>> 8);
  return base62Small((crc ^ 0xffffffff) >>> 0, CHECKSUM_LENGTH);
}

/** `bytes` (or a non-negative integer) in base62, left-padded with zeros to `width` characters. */
export function base62(value: Uint8Array | number, width: number): string {
  if (typeof value === 'number' && Number.isSafeInteger(value) && value >= 0) return base62Small(value, width);
  let n = typeof value === 'number' ? BigInt(value) : value.length === 0 ? 0n : BigInt(`0x${Buffer.from(value).toString('hex')}`);
  let out = '';
  while (n > 0n) {
    out = ALPHABET[Number(n % 62n)]! + out;
    n /= 62n;
  }
  if (out.length > width) throw new Error(`value needs ${out.length} base62 digits, more than ${width}`);
  return out.padStart(width, '0');
}

/** base62 of a safe integer with plain arithmetic (the checksum, on every request). */
function base62Small(value: number, width: number): string {
  let n = value;
  let out = '';
  while (n > 0) {
    out = ALPHABET[n % 62]! + out;
    n = Math.floor(n / 62);
  }
  if (out.length > width) throw new Error(`value needs ${out.length} base62 digits, more than ${width}`);
  return out.padStart(width, '0');
}

const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let i = 0; i < 256; i++) {
    let c = i;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[i] = c >>> 0;
  }
  return table;
})();

/**
 * CRC-32 (IEEE 802.3, as zlib and GitHub's tokens use). Written out because `zlib.crc32`
 * only exists from Node 20.15 and the engines field allows any Node 20.
 */
export function crc32(bytes: Uint8Array): number {
  let crc = 0xffffffff;
  for (const byte of bytes) crc = CRC_TABLE[(crc ^ byte) & 0xff]! ^ (crc >>> 8);
  return (crc ^ 0xffffffff) >>> 0;
}
