/**
 * The few pieces of the PostgreSQL wire protocol (v3) the PGlite server needs: framing of
 * the messages a client sends, the handful of messages the server writes itself during
 * start-up, and finding the session state in what PGlite answers.
 * https://www.postgresql.org/docs/current/protocol-message-formats.html
 */

export const PROTOCOL_V3 = 196_608;
export const SSL_REQUEST = 80_877_103;
export const GSSENC_REQUEST = 80_877_104;
export const CANCEL_REQUEST = 80_877_102;

/** Largest client message accepted (a query with its parameters). */
export const MAX_MESSAGE_BYTES = 64 * 1024 * 1024;

export const TERMINATE = 0x58; // 'X'

export class ProtocolError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ProtocolError';
  }
}

/**
 * Cuts the byte stream of one client connection into whole messages. Start-up messages
 * have no type byte (`int32 length, int32 code, …`); every later one does
 * (`byte type, int32 length, …`). Lengths count themselves but not the type byte.
 */
export class MessageReader {
  private chunks: Buffer[] = [];
  private buffered = 0;

  push(chunk: Buffer): void {
    this.chunks.push(chunk);
    this.buffered += chunk.length;
  }

  /** The next start-up message, or null until it is complete. */
  nextStartup(): Buffer | null {
    if (this.buffered < 4) return null;
    const length = this.peekInt32(0);
    if (length < 8 || length > 10_000) throw new ProtocolError(`bad start-up message length ${length}`);
    return this.take(length);
  }

  /** The next typed message, or null until it is complete. */
  next(): Buffer | null {
    if (this.buffered < 5) return null;
    const length = this.peekInt32(1);
    if (length < 4 || length > MAX_MESSAGE_BYTES) throw new ProtocolError(`bad message length ${length}`);
    return this.take(1 + length);
  }

  private peekInt32(offset: number): number {
    if (this.chunks[0]!.length < offset + 4) this.chunks = [Buffer.concat(this.chunks)];
    return this.chunks[0]!.readInt32BE(offset);
  }

  private take(total: number): Buffer | null {
    if (this.buffered < total) return null;
    const all = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks);
    const message = all.subarray(0, total);
    const rest = all.subarray(total);
    this.chunks = rest.length > 0 ? [rest] : [];
    this.buffered = rest.length;
    return message;
  }
}

function message(type: string, body: Buffer): Buffer {
  const out = Buffer.alloc(5 + body.length);
  out.write(type, 0, 'latin1');
  out.writeInt32BE(4 + body.length, 1);
  body.copy(out, 5);
  return out;
}

function int32(value: number): Buffer {
  const out = Buffer.alloc(4);
  out.writeInt32BE(value);
  return out;
}

function cstring(value: string): Buffer {
  return Buffer.from(`${value}\0`, 'utf8');
}

export const authenticationOk = (): Buffer => message('R', int32(0));

export const parameterStatus = (name: string, value: string): Buffer => message('S', Buffer.concat([cstring(name), cstring(value)]));

export const backendKeyData = (processId: number, secret: number): Buffer => message('K', Buffer.concat([int32(processId), int32(secret)]));

export const readyForQuery = (status: 'I' | 'T' | 'E'): Buffer => message('Z', Buffer.from(status, 'latin1'));

export function errorResponse(sqlState: string, text: string, severity: 'ERROR' | 'FATAL' = 'FATAL'): Buffer {
  return message('E', Buffer.concat([cstring(`S${severity}`), cstring(`V${severity}`), cstring(`C${sqlState}`), cstring(`M${text}`), Buffer.from([0])]));
}

/** Sync: ends an extended-protocol exchange; the server answers with ReadyForQuery. */
export const syncMessage = (): Buffer => message('S', Buffer.alloc(0));

/** A simple-protocol query. */
export const simpleQuery = (sql: string): Buffer => message('Q', cstring(sql));

/**
 * The transaction status of the last ReadyForQuery in `data` (`I` idle, `T` in a
 * transaction, `E` in a failed one), or null when `data` holds none (the exchange goes on).
 */
export function lastReadyStatus(data: Uint8Array): 'I' | 'T' | 'E' | null {
  const view = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  let status: 'I' | 'T' | 'E' | null = null;
  let offset = 0;
  while (offset + 5 <= view.length) {
    const type = view[offset]!;
    const length = view.readInt32BE(offset + 1);
    if (length < 4) break;
    if (type === 0x5a /* 'Z' */ && offset + 5 < view.length) status = String.fromCharCode(view[offset + 5]!) as 'I' | 'T' | 'E';
    offset += 1 + length;
  }
  return status;
}
