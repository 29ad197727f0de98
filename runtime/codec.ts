import { C1, type Options, Packr } from 'msgpackr';
import type { Envelope, Headers } from './envelope.ts';
import { DecodeError, EncodeError, OptionsError, SluiceError } from './errors.ts';

/** Turns values into bytes and back, for messages that leave the process. */
export interface Codec<T = unknown> {
  readonly name: string;
  /** Throws an {@link EncodeError} naming the subject when the value cannot be encoded. */
  encode(value: T, subject?: string): Uint8Array;
  /** Throws a {@link DecodeError} naming the subject when the bytes are not a value of this codec. */
  decode(bytes: Uint8Array, subject?: string): T;
}

// `int64AsType: 'auto'`: a 64-bit integer within ±2^53 decodes to a number (epoch milliseconds from
// other encoders stay numbers), a larger one to an exact bigint. `variableMapSize`: objects with more
// than 65,535 keys are data too (the fixed 16-bit size cannot hold them).
// ('auto' is in msgpackr's unpack.js and README but missing from its type declarations.)
const options = {
  useRecords: false,
  moreTypes: true,
  int64AsType: 'auto' as Options['int64AsType'],
  variableMapSize: true,
} satisfies Options;
const packr = new Packr(options);
// msgpackr renames a map key `__proto__` to `__proto_` when it builds objects (to keep clear of the
// prototype setter), which silently changes the data. Bytes that hold that key are decoded to Maps
// instead and turned into objects here, with the key kept as an own property.
const mapsPackr = new Packr({ ...options, mapsAsObjects: false });
const PROTO_KEY = Buffer.from('__proto__');

/**
 * MessagePack through msgpackr: compact and fast; the default for envelopes that leave the process.
 * Keeps byte arrays, dates and the exact value of big integers: a bigint within ±2^53 comes back
 * as a number (MessagePack has one integer type), a larger one as a bigint (beyond 64 bits through
 * msgpackr's own extension type, which other MessagePack decoders do not know). A `Map` comes back as a
 * plain object (a MessagePack map). Cycles, symbols and nesting deeper than the stack allows are
 * an {@link EncodeError}; bytes that are not MessagePack (or nest too deep) a {@link DecodeError}.
 */
export const msgpackCodec: Codec = Object.freeze({
  name: 'msgpack',
  encode(value: unknown, subject = '?'): Uint8Array {
    try {
      return packr.pack(value);
    } catch (error) {
      throw new EncodeError(subject, 'msgpack', error);
    }
  },
  decode(bytes: Uint8Array, subject = '?'): unknown {
    let value: unknown;
    try {
      const view = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
      value = view.includes(PROTO_KEY) ? objectsFromMaps(mapsPackr.unpack(view)) : packr.unpack(view);
      // msgpackr decodes the byte 0xC1, which MessagePack reserves as "never used", to a marker
      // object instead of failing: such bytes were not written by a MessagePack encoder.
      if (holdsC1(value)) throw new Error('reserved byte 0xc1');
    } catch (error) {
      // Deep nesting overflows the stack inside msgpackr: a RangeError, caught here with the rest.
      throw new DecodeError(subject, 'msgpack', error);
    }
    return value;
  },
});

/**
 * @internal Maps (as msgpack decodes them with `mapsAsObjects: false`) back to plain objects,
 * keeping every key; the store decodes its records the same way.
 */
export function objectsFromMaps(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(objectsFromMaps);
  if (!(value instanceof Map)) return value;
  const object: Record<string, unknown> = {};
  for (const [key, v] of value) {
    Object.defineProperty(object, String(key), {
      value: objectsFromMaps(v),
      enumerable: true,
      writable: true,
      configurable: true,
    });
  }
  return object;
}

/** @internal Whether a decoded value holds the 0xC1 marker; with a stack of its own, for any nesting depth. */
export function holdsC1(root: unknown): boolean {
  const pending: unknown[] = [root];
  while (pending.length > 0) {
    const value = pending.pop();
    if (value === C1) return true;
    if (typeof value !== 'object' || value === null || ArrayBuffer.isView(value)) continue;
    if (Array.isArray(value)) for (const v of value) pending.push(v);
    else if (value instanceof Map) for (const [k, v] of value) pending.push(k, v);
    else if (value instanceof Set) for (const v of value) pending.push(v);
    else if (Object.getPrototypeOf(value) === Object.prototype) {
      for (const key in value) pending.push((value as Record<string, unknown>)[key]);
    }
  }
  return false;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder('utf-8', { fatal: true });

/**
 * UTF-8 JSON: readable on the wire, for interop with systems that speak JSON. A BigInt is an
 * {@link EncodeError}, not a string or a rounded number: JSON has no integer type beyond 2^53, and
 * either conversion would hand the other side a different value. Cycles are an EncodeError too.
 */
export const jsonCodec: Codec = Object.freeze({
  name: 'json',
  encode(value: unknown, subject = '?'): Uint8Array {
    let text: string | undefined;
    try {
      text = JSON.stringify(value);
    } catch (error) {
      throw new EncodeError(subject, 'json', error);
    }
    // JSON has no `undefined`: JSON.stringify returns undefined for it (and for functions and
    // symbols), which would be encoded as the text "undefined" and fail to decode: they become `null`.
    return encoder.encode(text ?? 'null');
  },
  decode(bytes: Uint8Array, subject = '?'): unknown {
    try {
      return JSON.parse(decoder.decode(bytes));
    } catch (error) {
      throw new DecodeError(subject, 'json', error);
    }
  },
});

/** Raw bytes: the payload as a `Uint8Array` (a copy), and bytes written as they are. */
export const rawCodec: Codec<Uint8Array> = Object.freeze({
  name: 'raw',
  encode(value: Uint8Array, subject = '?'): Uint8Array {
    if (value instanceof Uint8Array) return value;
    if (typeof value === 'string') return encoder.encode(value);
    throw new EncodeError(subject, 'raw', new Error('a raw payload must be a Uint8Array or a string'));
  },
  decode(bytes: Uint8Array): Uint8Array {
    // A copy as a plain Uint8Array: the client's buffer is reused, and a Buffer compares unlike one.
    return new Uint8Array(bytes);
  },
});

/** UTF-8 text: the payload as a string. */
export const textCodec: Codec<string> = Object.freeze({
  name: 'text',
  encode(value: string): Uint8Array {
    return encoder.encode(String(value));
  },
  decode(bytes: Uint8Array, subject = '?'): string {
    try {
      return decoder.decode(bytes);
    } catch (error) {
      throw new DecodeError(subject, 'text', error);
    }
  },
});

/** An envelope as it travels between processes: lineage stays behind (it is process-local). */
interface WireEnvelope {
  v: 1;
  id: string;
  subject: string;
  data: unknown;
  key?: string;
  eventTime?: number;
  headers?: Headers;
  attempt: number;
  replyTo?: string;
}

/** Encodes a whole envelope (id, key, event time, headers, attempt) with `codec`. */
export function encodeEnvelope(env: Envelope, codec: Codec = msgpackCodec): Uint8Array {
  const wire: WireEnvelope = { v: 1, id: env.id, subject: env.subject, data: env.data, attempt: env.attempt };
  if (env.key !== undefined) wire.key = env.key;
  if (env.eventTime !== undefined) wire.eventTime = env.eventTime;
  if (Object.keys(env.headers).length > 0) wire.headers = env.headers;
  if (env.replyTo !== undefined) wire.replyTo = env.replyTo;
  return encodeWith(codec, wire, env.subject);
}

/**
 * @internal `codec.encode` with any failure as an {@link EncodeError} naming the subject: a codec
 * written by a user may throw anything, and the caller must get a Sluice error.
 */
export function encodeWith(codec: Codec, value: unknown, subject: string): Uint8Array {
  try {
    return codec.encode(value, subject);
  } catch (error) {
    if (error instanceof SluiceError) throw error;
    throw new EncodeError(subject, codec.name, error);
  }
}

/** The inverse of {@link encodeEnvelope}; a {@link DecodeError} when the bytes are not an envelope. */
export function decodeEnvelope(bytes: Uint8Array, codec: Codec = msgpackCodec, subject = '?'): Envelope {
  const wire = codec.decode(bytes, subject);
  const broken = (rule: string) => new DecodeError(subject, `${codec.name} envelope`, new Error(rule));
  if (wire === null || typeof wire !== 'object' || Array.isArray(wire)) throw broken('not a map');
  const w = wire as Record<string, unknown>;
  if (w.v !== 1) throw broken(`version ${JSON.stringify(w.v)} is not 1`);
  if (typeof w.id !== 'string' || w.id === '') throw broken("'id' is not a non-empty string");
  if (typeof w.subject !== 'string' || w.subject === '') throw broken("'subject' is not a non-empty string");
  if (w.key !== undefined && typeof w.key !== 'string') throw broken("'key' is not a string");
  if (w.eventTime !== undefined && !Number.isFinite(w.eventTime)) throw broken("'eventTime' is not a number");
  if (w.replyTo !== undefined && typeof w.replyTo !== 'string') throw broken("'replyTo' is not a string");
  if (w.attempt !== undefined && !(Number.isInteger(w.attempt) && (w.attempt as number) >= 1)) {
    throw broken("'attempt' is not an integer >= 1");
  }
  if (w.headers !== undefined && !isStringMap(w.headers)) throw broken("'headers' is not a map of strings");
  return {
    id: w.id,
    subject: w.subject,
    data: w.data,
    key: w.key,
    eventTime: w.eventTime as number | undefined,
    headers: Object.freeze({ ...((w.headers as Headers | undefined) ?? {}) }),
    attempt: (w.attempt as number | undefined) ?? 1,
    replyTo: w.replyTo,
    lineage: undefined,
  };
}

function isStringMap(value: unknown): value is Headers {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return false;
  return Object.values(value).every((v) => typeof v === 'string');
}

/** A codec by name, or your own (a connector's `codec` option). */
export type CodecChoice = 'json' | 'msgpack' | 'raw' | 'text' | Codec;

const byName: Readonly<Record<string, Codec>> = {
  json: jsonCodec,
  msgpack: msgpackCodec,
  raw: rawCodec,
  text: textCodec,
};

/** @internal The codec `codec` names (JSON when undefined); an `OptionsError` naming `where` for anything else. */
export function codecOf(codec: CodecChoice | undefined, where: string): Codec {
  if (codec === undefined) return jsonCodec;
  if (typeof codec === 'string' && Object.hasOwn(byName, codec)) return byName[codec] as Codec;
  if (typeof codec === 'object' && codec !== null && typeof codec.encode === 'function') return codec;
  throw new OptionsError(where, "must be 'json', 'msgpack', 'raw', 'text' or a codec", codec);
}
