import { randomBytes } from 'node:crypto';
import { OptionsError } from './errors.ts';
import type { Lineage } from './lineage.ts';

/** Message headers. Trace context (`traceparent`, `tracestate`) and dead-letter reasons live here. */
export type Headers = Readonly<Record<string, string>>;

/**
 * One message. Every operator passes envelopes on (copying, never mutating), so id, key, event
 * time, headers and lineage survive every step: `{ ...env, data: next }` is the idiom.
 */
export interface Envelope<T = unknown> {
  /** Unique in this process and unguessable: random characters and a counter. */
  readonly id: string;
  /** The literal subject it was published to. */
  readonly subject: string;
  readonly data: T;
  /** Partitioning and ordering key: `partitionBy` lanes and keyed windows group by it. */
  readonly key: string | undefined;
  /** Event time, epoch ms: from the data through an extractor, else when first published. */
  readonly eventTime: number | undefined;
  readonly headers: Headers;
  /** Delivery attempt, from 1. */
  readonly attempt: number;
  /** Where a reply goes, for request/reply. */
  readonly replyTo: string | undefined;
  /**
   * The input(s) this message derives from. Whoever takes the message on retains the lineage and
   * releases it once done, so an input is settled (acknowledged to its source) only when every
   * output derived from it is settled. `undefined` for messages with no source to acknowledge.
   */
  readonly lineage: Lineage | undefined;
}

/** What a publisher may set; the rest is filled in. */
export interface PublishOptions {
  key?: string;
  /** Epoch ms, a finite number; when not given, the time of the publish on the bus clock. */
  eventTime?: number;
  /**
   * Names are printable ASCII without `:` (as NATS and HTTP header names), values are strings;
   * their bytes count against the bus's `maxPayloadBytes`.
   */
  headers?: Record<string, string>;
  replyTo?: string;
  /** Ties the message to the input(s) it derives from; actors set it for what their pipeline emits. */
  lineage?: Lineage;
  /**
   * Keep an id chosen upstream (a broker's message id), a non-empty string of at most
   * {@link MAX_ID_LENGTH} characters; otherwise a new one is made.
   */
  id?: string;
}

/**
 * @internal What the runtime itself may set on an envelope it makes. A message that enters the
 * bus through a client always starts at attempt 1: attempts are counted by the actor that retries.
 */
export interface EnvelopeOptions extends PublishOptions {
  attempt?: number;
}

/** The longest id a publisher may give. */
export const MAX_ID_LENGTH = 256;

/** @internal The headers of an envelope that has none. */
export const EMPTY_HEADERS: Headers = Object.freeze({});

// Random characters for ids and inbox tokens, drawn from the CSPRNG in batches: one call per 256
// draws keeps the hot path to a string slice. 9 bytes are 12 base64url characters (72 bits); a
// slice shorter than 13 characters is a copy in V8, so an id does not keep its batch alive.
const RANDOM_BYTES = 9;
const RANDOM_CHARS = 12;
const BATCH = 256;
let pool = '';
let poolAt = 0;

/** @internal 12 random base64url characters (72 bits) from the CSPRNG. */
export function randomToken(): string {
  if (poolAt === pool.length) {
    pool = randomBytes(RANDOM_BYTES * BATCH).toString('base64url');
    poolAt = 0;
  }
  const token = pool.slice(poolAt, poolAt + RANDOM_CHARS);
  poolAt += RANDOM_CHARS;
  return token;
}

// An id is 12 random characters (so that it cannot be guessed from another one) and a decimal
// counter (so that it is unique in the process, whatever the random part). Turning the counter into
// a string on every id shows in profiles of the hot path, so the digits above the last three change
// once per thousand ids and the last three come from a table.
const LAST_DIGITS = Array.from({ length: 1000 }, (_, i) => String(i).padStart(3, '0'));
let counter = 0;
/** The counter's digits above the last three, once the counter has more than three. */
let thousands = '';

/** A new message id: unique in the process, unguessable, and improbable to collide across processes. */
export function nextId(): string {
  counter++;
  if (counter < 1000) return randomToken() + counter;
  const last = counter % 1000;
  if (last === 0) thousands = String(counter / 1000);
  return randomToken() + thousands + (LAST_DIGITS[last] as string);
}

// Header objects already checked (frozen, so they cannot change after), with their size in bytes.
const checkedHeaders = new WeakMap<object, number>();
// Printable ASCII but ':' (0x21-0x39, 0x3b-0x7e), as NATS and HTTP header names.
const HEADER_NAME = /^[!-9;-~]+$/;

/**
 * @internal `headers` as an envelope carries them: frozen, checked, and measured (see
 * {@link headerBytes}). Returns `headers` itself when it was checked before, else a frozen copy
 * (so a caller changing its object later changes nothing). Throws an OptionsError naming `option`.
 */
export function checkHeaders(headers: unknown, option: string): Headers {
  if (headers === EMPTY_HEADERS) return EMPTY_HEADERS;
  if (typeof headers !== 'object' || headers === null || Array.isArray(headers)) {
    throw new OptionsError(option, 'headers are an object of header names to string values', headers);
  }
  if (checkedHeaders.has(headers)) return headers as Headers;
  // The copy is what is checked and delivered: a getter cannot show one value here and another later.
  const copy: Record<string, unknown> = { ...headers };
  if (Object.getOwnPropertySymbols(copy).length > 0) {
    throw new OptionsError(option, 'header names are strings, not symbols', headers);
  }
  let bytes = 0;
  for (const name of Object.keys(copy)) {
    const value = copy[name];
    if (!HEADER_NAME.test(name)) {
      throw new OptionsError(
        `${option}['${name}']`,
        'a header name is non-empty printable ASCII without white space or colon',
        name,
      );
    }
    if (typeof value !== 'string') throw new OptionsError(`${option}['${name}']`, 'a header value is a string', value);
    // As on a NATS wire: `name: value` and CRLF.
    bytes += name.length + 4 + Buffer.byteLength(value);
  }
  if (bytes === 0) return EMPTY_HEADERS;
  Object.freeze(copy);
  checkedHeaders.set(copy, bytes);
  return copy as Headers;
}

/** @internal The size in bytes of headers returned by {@link checkHeaders}; undefined for others. */
export function headerBytes(headers: Headers): number | undefined {
  return headers === EMPTY_HEADERS ? 0 : checkedHeaders.get(headers);
}

/**
 * @internal Checks what a publisher may set on a message (`option` names the call, e.g.
 * `publish`): an OptionsError naming the option and its rule. Headers are for {@link checkHeaders}.
 */
export function checkPublishOptions(options: PublishOptions, option: string): void {
  checkFields(options.id, options.eventTime, options.key, option, true);
  const attempt = (options as EnvelopeOptions).attempt;
  if (attempt !== undefined && attempt !== 1) {
    throw new OptionsError(
      `${option}.attempt`,
      'a published message starts at attempt 1; attempts are counted by the actor that retries it',
      attempt,
    );
  }
}

/**
 * @internal As {@link checkPublishOptions}, for the fields of an envelope given whole (`forward`).
 * An event time there may be NaN: a pipeline's extractor gives that for data with no valid time,
 * windows send such an input to their late output with reason `missing-event-time`, and the late
 * output forwards it. Publish options take finite event times only.
 */
export function checkFields(id: unknown, eventTime: unknown, key: unknown, option: string, finite = false): void {
  if (id !== undefined && (typeof id !== 'string' || id.length === 0 || id.length > MAX_ID_LENGTH)) {
    throw new OptionsError(`${option}.id`, `an id is a non-empty string of at most ${MAX_ID_LENGTH} characters`, id);
  }
  if (eventTime !== undefined && (typeof eventTime !== 'number' || (finite && !Number.isFinite(eventTime)))) {
    throw new OptionsError(
      `${option}.eventTime`,
      finite ? 'an event time is a finite number (epoch ms)' : 'an event time is a number (epoch ms)',
      eventTime,
    );
  }
  if (key !== undefined && typeof key !== 'string') throw new OptionsError(`${option}.key`, 'a key is a string', key);
}

export function createEnvelope<T>(subject: string, data: T, options?: EnvelopeOptions, now?: number): Envelope<T> {
  // One object literal with a fixed field order keeps every envelope on one hidden class.
  if (options === undefined) {
    return {
      id: nextId(),
      subject,
      data,
      key: undefined,
      eventTime: now,
      headers: EMPTY_HEADERS,
      attempt: 1,
      replyTo: undefined,
      lineage: undefined,
    };
  }
  const headers = options.headers;
  return {
    id: options.id ?? nextId(),
    subject,
    data,
    key: options.key,
    eventTime: options.eventTime ?? now,
    // Headers checked by a client are frozen already; any others are copied, as the caller may change them.
    headers:
      headers === undefined || isEmpty(headers)
        ? EMPTY_HEADERS
        : checkedHeaders.has(headers)
          ? (headers as Headers)
          : Object.freeze({ ...headers }),
    attempt: options.attempt ?? 1,
    replyTo: options.replyTo,
    lineage: options.lineage,
  };
}

function isEmpty(headers: object): boolean {
  for (const _ in headers) return false;
  return true;
}

/** A copy with other data (and optionally other fields), keeping id, key, headers and lineage. */
export function withData<T, U>(env: Envelope<T>, data: U): Envelope<U> {
  return { ...env, data };
}

/** A copy with more headers; an OptionsError for a header that is not a string name and value. */
export function withHeaders<T>(env: Envelope<T>, headers: Record<string, string>): Envelope<T> {
  return { ...env, headers: checkHeaders({ ...env.headers, ...headers }, 'withHeaders.headers') };
}
