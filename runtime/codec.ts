import { Packr } from 'msgpackr';
import type { Envelope, Headers } from './envelope.ts';
import { DecodeError } from './errors.ts';

/** Turns values into bytes and back, for messages that leave the process. */
export interface Codec<T = unknown> {
  readonly name: string;
  encode(value: T): Uint8Array;
  /** Throws a {@link DecodeError} naming the subject when the bytes are not a value of this codec. */
  decode(bytes: Uint8Array, subject?: string): T;
}

const packr = new Packr({ useRecords: false, moreTypes: true, int64AsType: 'number' });

/** MessagePack through msgpackr: compact and fast; the default for envelopes that leave the process. */
export const msgpackCodec: Codec = Object.freeze({
  name: 'msgpack',
  encode: (value: unknown): Uint8Array => packr.pack(value),
  decode(bytes: Uint8Array, subject = '?'): unknown {
    try {
      return packr.unpack(bytes);
    } catch (error) {
      throw new DecodeError(subject, 'msgpack', error);
    }
  },
});

const encoder = new TextEncoder();
const decoder = new TextDecoder('utf-8', { fatal: true });

/** UTF-8 JSON: readable on the wire, for interop with systems that speak JSON. */
export const jsonCodec: Codec = Object.freeze({
  name: 'json',
  encode: (value: unknown): Uint8Array => encoder.encode(JSON.stringify(value)),
  decode(bytes: Uint8Array, subject = '?'): unknown {
    try {
      return JSON.parse(decoder.decode(bytes));
    } catch (error) {
      throw new DecodeError(subject, 'json', error);
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
  return codec.encode(wire);
}

/** The inverse of {@link encodeEnvelope}; a {@link DecodeError} when the bytes are not an envelope. */
export function decodeEnvelope(bytes: Uint8Array, codec: Codec = msgpackCodec, subject = '?'): Envelope {
  const wire = codec.decode(bytes, subject) as Partial<WireEnvelope> | null;
  if (
    wire === null ||
    typeof wire !== 'object' ||
    wire.v !== 1 ||
    typeof wire.id !== 'string' ||
    typeof wire.subject !== 'string'
  ) {
    throw new DecodeError(subject, `${codec.name} envelope`, new Error('missing version, id or subject'));
  }
  return {
    id: wire.id,
    subject: wire.subject,
    data: wire.data,
    key: wire.key,
    eventTime: wire.eventTime,
    headers: Object.freeze({ ...(wire.headers ?? {}) }),
    attempt: typeof wire.attempt === 'number' ? wire.attempt : 1,
    replyTo: wire.replyTo,
    lineage: undefined,
  };
}
