/**
 * How a NATS message's bytes and headers become an envelope's data and headers, and back: the
 * codec is chosen by the message's `Content-Type` header, else by its subject, else the default
 * (JSON). A plain NATS client's JSON or raw bytes thus reach actors as data, and what Sluice
 * writes is the encoded value alone, readable by any client.
 */
import type { MsgHdrs } from '@nats-io/transport-node';
import { headers as natsHeaders } from '@nats-io/transport-node';
import { subjectMatches, validateSubject } from '../../runtime/bus/subjects.ts';
import { type Codec, jsonCodec, msgpackCodec, rawCodec, textCodec } from '../../runtime/codec.ts';
import { DEAD_LETTER_HEADERS } from '../../runtime/envelope.ts';
import { OptionsError } from '../../runtime/errors.ts';
import { STREAM_HEADERS } from '../../runtime/streams/stream.ts';

export { rawCodec, textCodec };

/** A codec by name, or your own. */
export type NatsCodec = 'json' | 'msgpack' | 'raw' | 'text' | Codec;

const byName: Readonly<Record<string, Codec>> = {
  json: jsonCodec,
  msgpack: msgpackCodec,
  raw: rawCodec,
  text: textCodec,
};
/** Codecs that read the subject only to name it in an error. */
const BUILT_IN: ReadonlySet<Codec> = new Set(Object.values(byName));

/** The content types each codec writes and reads (the first is written). */
const contentTypes: Readonly<Record<string, readonly string[]>> = {
  json: ['application/json'],
  msgpack: ['application/msgpack', 'application/x-msgpack', 'application/vnd.msgpack'],
  raw: ['application/octet-stream'],
  text: ['text/plain'],
};
const codecOfType = new Map<string, Codec>();
for (const [name, types] of Object.entries(contentTypes))
  for (const t of types) codecOfType.set(t, byName[name] as Codec);

/** The header naming the payload's codec, as HTTP names it. */
export const CONTENT_TYPE = 'Content-Type';
/** Headers Sluice writes and reads besides the envelope's own: its key and event time. */
export const NATS_HEADERS = Object.freeze({ key: 'sluice-key', eventTime: 'sluice-event-time' });
/** JetStream's de-duplication header. */
export const MSG_ID = 'Nats-Msg-Id';

/** @internal Codec choice, resolved once: per subject pattern (first match), then the default. */
export class Codecs {
  readonly #default: Codec;
  readonly #bySubject: readonly (readonly [string, Codec])[];
  readonly #cache = new Map<string, Codec>();

  constructor(codec: NatsCodec | undefined, codecs: Readonly<Record<string, NatsCodec>> | undefined, where: string) {
    this.#default = resolveCodec(codec ?? 'json', `${where}.codec`);
    if (codecs !== undefined && (typeof codecs !== 'object' || codecs === null || Array.isArray(codecs))) {
      throw new OptionsError(`${where}.codecs`, 'must be an object of subject pattern -> codec', codecs);
    }
    this.#bySubject = Object.entries(codecs ?? {}).map(([pattern, c]) => {
      validateSubject(pattern, 'subscribe');
      return [pattern, resolveCodec(c, `${where}.codecs['${pattern}']`)] as const;
    });
  }

  /**
   * The codec of every message without a known content type, when no subject has one of its own
   * and it is a built-in one, which reads the subject only to name it in an error.
   */
  get fixed(): Codec | undefined {
    return this.#bySubject.length === 0 && BUILT_IN.has(this.#default) ? this.#default : undefined;
  }

  /** The codec for a message: its content type when known, else its subject's, else the default. */
  of(subject: string, contentType: string | undefined): Codec {
    if (contentType !== undefined) {
      const byType = codecOfContentType(contentType);
      if (byType !== undefined) return byType;
    }
    if (this.#bySubject.length === 0) return this.#default;
    let c = this.#cache.get(subject);
    if (c === undefined) {
      c = this.#bySubject.find(([p]) => subjectMatches(p, subject))?.[1] ?? this.#default;
      if (this.#cache.size < 10_000) this.#cache.set(subject, c);
    }
    return c;
  }
}

/** The built-in codec a `Content-Type` value names (parameters and case aside), if any. */
function codecOfContentType(contentType: string): Codec | undefined {
  return codecOfType.get(contentType.split(';')[0]?.trim().toLowerCase() ?? '');
}

function resolveCodec(codec: NatsCodec, where: string): Codec {
  if (typeof codec === 'string') {
    const c = byName[codec];
    if (c === undefined) throw new OptionsError(where, "must be 'json', 'msgpack', 'raw', 'text' or a Codec", codec);
    return c;
  }
  if (
    typeof codec !== 'object' ||
    codec === null ||
    typeof codec.encode !== 'function' ||
    typeof codec.decode !== 'function'
  ) {
    throw new OptionsError(where, "must be 'json', 'msgpack', 'raw', 'text' or a Codec", codec);
  }
  return codec;
}

/** @internal The content type a codec writes, when it is one of Sluice's. */
export function contentTypeOf(codec: Codec): string | undefined {
  return contentTypes[codec.name]?.[0];
}

/** What a NATS message's headers give an envelope. */
export interface ReadHeaders {
  headers: Record<string, string>;
  contentType: string | undefined;
  key: string | undefined;
  eventTime: number | undefined;
}

/**
 * @internal A message's headers as an envelope's (the first value of each), with Sluice's key and
 * event time taken out. Stream position headers are dropped: only the source sets them, from the
 * broker's own position, so a publisher cannot forge the root of idempotency keys. A
 * `Content-Type` that names a codec is dropped too: it described the bytes that codec decoded,
 * not the value. Kept, it would follow the value into dead letters and their replays, and a
 * publish whose codec writes no content type (an application's own) would send it on with other
 * bytes, which the receiver would then decode with the wrong codec. One that no codec knows did
 * not choose the codec, and stays for the application to read.
 */
export function readHeaders(h: MsgHdrs | undefined): ReadHeaders {
  if (h === undefined) return { headers: {}, contentType: undefined, key: undefined, eventTime: undefined };
  const headers: Record<string, string> = {};
  let contentType: string | undefined;
  let key: string | undefined;
  let eventTime: number | undefined;
  for (const [name, values] of h) {
    const value = values[0] ?? '';
    const lower = name.toLowerCase();
    if (lower === 'content-type') {
      contentType = value;
      if (codecOfContentType(value) !== undefined) continue;
    } else if (lower === NATS_HEADERS.key) key = value;
    else if (lower === NATS_HEADERS.eventTime) {
      const t = Number(value);
      if (value !== '' && Number.isFinite(t)) eventTime = t;
      continue;
    } else if (lower === STREAM_HEADERS.stream || lower === STREAM_HEADERS.sequence) continue;
    headers[name] = value;
  }
  return { headers, contentType, key, eventTime };
}

/** @internal NATS headers for an outgoing message: the envelope's, its key and event time, and more. */
export function writeHeaders(
  from: Readonly<Record<string, string>> | undefined,
  key: string | undefined,
  eventTime: number | undefined,
  extra: Readonly<Record<string, string>>,
): MsgHdrs {
  const h = natsHeaders();
  if (from !== undefined) {
    for (const name in from) {
      if (name === STREAM_HEADERS.stream || name === STREAM_HEADERS.sequence) continue;
      h.set(name, from[name] as string);
    }
  }
  if (key !== undefined) h.set(NATS_HEADERS.key, key);
  if (eventTime !== undefined) h.set(NATS_HEADERS.eventTime, String(eventTime));
  for (const name in extra) h.set(name, extra[name] as string);
  return h;
}

/** A line break, or white space at either end (what NATS trims from a header value). */
const UNCARRIED = /[\r\n]|^\s|\s$/;

/** @internal The rule a value NATS cannot carry breaks, for the errors that refuse it. */
export const UNCARRIED_RULE = 'a NATS header value holds no line break and loses white space at either end';

/** Dead-letter headers that say why in words: folded onto one line rather than refused. */
const REASONS: ReadonlySet<string> = new Set([DEAD_LETTER_HEADERS.error, DEAD_LETTER_HEADERS.payloadDropped]);

/** @internal Whether NATS carries `value` as it is in a header: no line break, no white space at either end. */
export function carriedAsIs(value: string): boolean {
  return !UNCARRIED.test(value);
}

/** @internal A header value as an error shows it: quoted, with its line breaks visible, cut at 64 characters. */
export function shownValue(value: string): string {
  return JSON.stringify(value.length > 64 ? `${value.slice(0, 64)}...` : value);
}

/**
 * @internal An envelope's headers as NATS can carry them, for {@link writeHeaders}: a dead
 * letter's reason in words (an error's message, often of several lines) is folded onto one line,
 * since refusing it would lose the dead letter that carries it; `refuse(name, value)` is called
 * (and must throw) for any other value NATS would refuse or change. The same object when nothing
 * needed folding.
 */
export function carriedHeaders(
  headers: Readonly<Record<string, string>>,
  refuse: (name: string, value: string) => never,
): Readonly<Record<string, string>> {
  let out: Record<string, string> | undefined;
  for (const name in headers) {
    const value = headers[name] as string;
    if (!UNCARRIED.test(value)) continue;
    if (!REASONS.has(name)) refuse(name, value);
    out ??= { ...headers };
    out[name] = value
      .split(/[\r\n]+/)
      .map((line) => line.trim())
      .filter((line) => line !== '')
      .join(' ');
  }
  return out ?? headers;
}
