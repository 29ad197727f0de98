import { crc32 } from 'node:zlib';
import { Packr } from 'msgpackr';
import { holdsC1, objectsFromMaps } from '../codec.ts';
import { CorruptRecordError, messageOf, OptionsError, type RecordLocation } from '../errors.ts';

// The settings of the runtime's msgpack codec (codec.ts), except that integers stay exact: a
// bigint is written as a 64-bit integer (or msgpackr's big-integer extension) and read back as a
// bigint, while a JavaScript number is written as a float or a 32-bit integer and read back as a
// number. A total kept in state must not come back rounded.
const packr = new Packr({ useRecords: false, moreTypes: true, int64AsType: 'bigint' });
// As in codec.ts: msgpackr renames an object key `__proto__` when it builds objects, so records
// that hold that key are read as Maps and turned into objects with the key kept as an own property.
const mapsPackr = new Packr({ useRecords: false, moreTypes: true, int64AsType: 'bigint', mapsAsObjects: false });
const PROTO_KEY = Buffer.from('__proto__');

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
  const payload = packr.pack(value);
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
  // A plain Uint8Array view: Buffer#subarray costs more than the checksum on small records.
  const payload = new Uint8Array(bytes.buffer, bytes.byteOffset + HEADER, bytes.byteLength - HEADER);
  const stored = ((bytes[1]! << 24) | (bytes[2]! << 16) | (bytes[3]! << 8) | bytes[4]!) >>> 0;
  const computed = crc32(payload);
  if (stored !== computed) {
    throw new CorruptRecordError(
      location,
      `checksum mismatch (stored ${hex(stored)}, computed ${hex(computed)} over ${payload.byteLength} bytes)`,
    );
  }
  let value: unknown;
  try {
    const buffer = Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const at = { start: HEADER };
    value = buffer.includes(PROTO_KEY, HEADER)
      ? objectsFromMaps(mapsPackr.unpack(buffer, at))
      : packr.unpack(buffer, at);
  } catch (error) {
    throw new CorruptRecordError(location, `not decodable as msgpack: ${messageOf(error)}`, error);
  }
  // msgpackr reads the reserved byte 0xc1 as a marker instead of failing; no encoder writes it.
  if (holdsC1(value)) throw new CorruptRecordError(location, 'not decodable as msgpack: reserved byte 0xc1');
  return value;
}

function hex(n: number): string {
  return `0x${n.toString(16).padStart(8, '0')}`;
}
