import * as zlib from 'node:zlib';
import { describe, expect, it } from 'vitest';
import {
  API_KEY_LENGTH,
  API_KEY_RANDOM_BYTES,
  base62,
  checkApiKeyFormat,
  crc32,
  displayPrefixOf,
  generateApiKey,
  hashApiKey,
} from '../src/accounts/api-keys.js';
import { KeyResolver, type KeyStore } from '../src/accounts/key-cache.js';

const ALPHABET = '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz';

/** A store that records every call; a format rejection must leave it untouched. */
function countingStore(): KeyStore & { calls: number } {
  const store = {
    calls: 0,
    async findByHash() {
      store.calls++;
      return null;
    },
    async touchLastUsed() {
      store.calls++;
      return 0;
    },
  };
  return store;
}

describe('API key format', () => {
  it('is rlk_ + 33 base62 characters + a 6-character checksum, and passes its own check', () => {
    const { key, hash, displayPrefix } = generateApiKey();
    expect(key).toMatch(/^rlk_[0-9A-Za-z]{39}$/);
    expect(key).toHaveLength(API_KEY_LENGTH);
    expect(checkApiKeyFormat(key)).toBe('ok');
    expect(hash).toBe(hashApiKey(key));
    expect(hash).toMatch(/^[0-9a-f]{64}$/);
    expect(displayPrefix).toBe(key.slice(0, 12));
    expect(displayPrefixOf(key)).toBe(displayPrefix);
  });

  it('rejects strings of the wrong shape as malformed', () => {
    const { key } = generateApiKey();
    for (const bad of ['', 'rlk_', key.slice(0, -1), `${key}x`, key.replace('rlk_', 'rlx_'), key.replace('rlk_', 'RLK_'), `${key.slice(0, 10)}-${key.slice(11)}`, ` ${key.slice(1)}`]) {
      expect(checkApiKeyFormat(bad), bad).toBe('malformed');
    }
  });

  it('detects every single-character substitution in the random part and the checksum', () => {
    const { key } = generateApiKey();
    let checked = 0;
    for (let i = 4; i < key.length; i++) {
      for (const c of ALPHABET) {
        if (c === key[i]) continue;
        const typo = key.slice(0, i) + c + key.slice(i + 1);
        expect(checkApiKeyFormat(typo)).toBe('bad_checksum');
        checked++;
      }
    }
    expect(checked).toBe(39 * 61);
  });

  it('detects swapped neighbouring characters', () => {
    const { key } = generateApiKey();
    for (let i = 4; i < key.length - 1; i++) {
      if (key[i] === key[i + 1]) continue;
      const swapped = key.slice(0, i) + key[i + 1] + key[i] + key.slice(i + 2);
      expect(checkApiKeyFormat(swapped)).toBe('bad_checksum');
    }
  });

  it('rejects a one-character typo without any repository call', async () => {
    const store = countingStore();
    const resolver = new KeyResolver({ store, clock: () => 0 });
    const { key } = generateApiKey();
    const typo = key.slice(0, 20) + (key[20] === 'a' ? 'b' : 'a') + key.slice(21);
    expect(resolver.resolve(typo)).toMatchObject({ code: 'INVALID_KEY', keyId: null, userId: null });
    expect(resolver.resolve('not-a-key')).toMatchObject({ code: 'INVALID_KEY', keyId: null, userId: null });
    expect(store.calls).toBe(0);
    // A well-formed key does reach the store: the counter above can move.
    await resolver.resolve(key);
    expect(store.calls).toBe(1);
  });

  it('carries at least 128 random bits: 24 bytes from the CSPRNG, all of them in the key', () => {
    expect(API_KEY_RANDOM_BYTES * 8).toBeGreaterThanOrEqual(128);
    // Every bit position of the random part takes both values across keys: nothing is constant.
    const keys = Array.from({ length: 400 }, () => generateApiKey().key);
    const bodies = keys.map((k) => BigInt(`0x${Buffer.from(decodeBase62(k.slice(4, 37))).toString('hex') || '0'}`));
    let varying = 0;
    for (let bit = 0n; bit < 192n; bit++) {
      const ones = bodies.filter((b) => (b >> bit) & 1n).length;
      if (ones > 0 && ones < bodies.length) varying++;
    }
    expect(varying).toBe(192);
    // The body's alphabet use is close to uniform (a chi-square far below what a bias would give).
    const counts = new Map<string, number>();
    for (const k of keys) for (const c of k.slice(5, 37)) counts.set(c, (counts.get(c) ?? 0) + 1);
    const total = keys.length * 32;
    const expected = total / 62;
    const chi = ALPHABET.split('').reduce((sum, c) => sum + ((counts.get(c) ?? 0) - expected) ** 2 / expected, 0);
    expect(chi).toBeLessThan(130); // 61 degrees of freedom: p < 1e-6 above ~120
  });

  it('never repeats over many keys (and neither do the hashes)', () => {
    const keys = new Set<string>();
    const hashes = new Set<string>();
    for (let i = 0; i < 20_000; i++) {
      const { key, hash } = generateApiKey();
      keys.add(key);
      hashes.add(hash);
    }
    expect(keys.size).toBe(20_000);
    expect(hashes.size).toBe(20_000);
  });

  it('computes the standard CRC-32 (the value zlib gives)', () => {
    expect(crc32(Buffer.from('123456789'))).toBe(0xcbf43926);
    expect(crc32(Buffer.alloc(0))).toBe(0);
    const zlibCrc = (zlib as unknown as { crc32?: (data: Uint8Array) => number }).crc32;
    for (let i = 0; i < 50; i++) {
      const { key } = generateApiKey();
      const data = Buffer.from(key);
      if (zlibCrc) expect(crc32(data)).toBe(zlibCrc(data));
      // The key's last 6 characters are this CRC of everything before them.
      expect(key.slice(-6)).toBe(base62(crc32(Buffer.from(key.slice(0, -6))), 6));
    }
  });

  it('encodes base62 with fixed width', () => {
    expect(base62(0, 6)).toBe('000000');
    expect(base62(61, 2)).toBe('0z');
    expect(base62(62, 2)).toBe('10');
    expect(base62(0xffffffff, 6)).toBe('4gfFC3');
    expect(base62(new Uint8Array(24).fill(0xff), 33)).toHaveLength(33);
    expect(() => base62(62 ** 2, 2)).toThrow(/more than 2/);
  });
});

function decodeBase62(text: string): Uint8Array {
  let n = 0n;
  for (const c of text) n = n * 62n + BigInt(ALPHABET.indexOf(c));
  const hex = n.toString(16);
  return Buffer.from(hex.length % 2 ? `0${hex}` : hex, 'hex');
}
