import { crc32 } from 'node:zlib';
import { msgpackCodec } from '../codec.ts';
import { CorruptRecordError, messageOf, OptionsError, type RecordLocation } from '../errors.ts';

/**
 * A stored record: one format byte, the CRC-32 of the payload (4 bytes, big-endian), then the value
 * as MessagePack with the runtime's codec settings (big integers exact, `__proto__` kept). The
 * checksum catches a flipped byte that would still decode to a wrong value; the length and format
 * checks catch a record cut short.
 */
const FORMAT = 1;
const HEADER = 5;

export function encodeRecord(value: unknown): Buffer {
  if (value === undefined)
    throw new OptionsError('store.value', 'must not be undefined (store null, or delete)', value);
  const payload = msgpackCodec.encode(value);
  const record = Buffer.allocUnsafe(HEADER + payload.byteLength);
  record[0] = FORMAT;
  record.writeUInt32BE(crc32(payload), 1);
  record.set(payload, HEADER);
  return record;
}

/** The value of a record; throws a {@link CorruptRecordError} naming `location` when it is damaged. */
export function decodeRecord(bytes: Uint8Array, location: RecordLocation): unknown {
  if (bytes.byteLength < HEADER + 1) {
    throw new CorruptRecordError(location, `truncated: ${bytes.byteLength} bytes, a record has at least ${HEADER + 1}`);
  }
  if (bytes[0] !== FORMAT) throw new CorruptRecordError(location, `unknown record format ${bytes[0]}`);
  const payload = bytes.subarray(HEADER);
  const stored = ((bytes[1]! << 24) | (bytes[2]! << 16) | (bytes[3]! << 8) | bytes[4]!) >>> 0;
  const computed = crc32(payload);
  if (stored !== computed) {
    throw new CorruptRecordError(
      location,
      `checksum mismatch (stored ${hex(stored)}, computed ${hex(computed)} over ${payload.byteLength} bytes)`,
    );
  }
  try {
    return msgpackCodec.decode(payload, 'store');
  } catch (error) {
    // The codec's DecodeError names a subject; the cause is what went wrong in the bytes.
    const reason = error instanceof Error && error.cause !== undefined ? error.cause : error;
    throw new CorruptRecordError(location, `not decodable as msgpack: ${messageOf(reason)}`, error);
  }
}

function hex(n: number): string {
  return `0x${n.toString(16).padStart(8, '0')}`;
}
