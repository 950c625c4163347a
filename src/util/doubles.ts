import { endianness } from 'node:os';

/**
 * Doubles as little-endian bytes and back: what Redis scripts (`struct` '<d') and the peer
 * protocol read and write. On a little-endian machine no bytes are copied.
 */
const LITTLE_ENDIAN = endianness() === 'LE';

/** Doubles `from` to `to` (exclusive) of `values` as little-endian bytes. */
export function littleEndianBytes(values: Float64Array, from = 0, to = values.length): Buffer {
  const view = Buffer.from(values.buffer, values.byteOffset + from * 8, (to - from) * 8);
  return LITTLE_ENDIAN ? view : Buffer.from(view).swap64();
}

/**
 * Little-endian bytes as doubles, whatever their alignment (a Float64Array view needs an
 * offset that is a multiple of 8, which protobuf does not promise).
 */
export function doublesOf(bytes: Buffer): Float64Array {
  const own = LITTLE_ENDIAN && bytes.byteOffset % 8 === 0 ? bytes : Buffer.from(bytes);
  if (!LITTLE_ENDIAN) own.swap64();
  return new Float64Array(own.buffer, own.byteOffset, own.byteLength / 8);
}
