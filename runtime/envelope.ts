import { randomBytes, randomFillSync } from 'node:crypto';
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
 * What `createEnvelope` may set besides the publish options: the attempt, for an envelope built
 * outside the bus (a connector's redelivery). A message that enters the bus through a client
 * always starts at attempt 1: attempts are counted by the actor that retries.
 */
export interface EnvelopeOptions extends PublishOptions {
  attempt?: number;
}

/** The longest id a publisher may give. */
export const MAX_ID_LENGTH = 256;

/** @internal The headers of an envelope that has none. */
export const EMPTY_HEADERS: Headers = Object.freeze({});

// Inbox tokens: random characters from the CSPRNG, drawn in batches (one call per 256 draws). 9
// bytes are 12 base64url characters (72 bits); a slice shorter than 13 characters is a copy in V8,
// so a token does not keep its batch alive.
let pool = '';
let poolAt = 0;

/** @internal 12 random base64url characters (72 bits) from the CSPRNG. */
export function randomToken(): string {
  if (poolAt === pool.length) {
    pool = randomBytes(9 * 256).toString('base64url');
    poolAt = 0;
  }
  const token = pool.slice(poolAt, poolAt + 12);
  poolAt += 12;
  return token;
}

// A message id is a group prefix and a 12-character token: `PROCESS` (random per process), the
// group's number, then the token. A group has 64 ids. Each token is 12 base64url characters of
// CSPRNG bytes, 66 bits random, and its first character is the id's place in its group, so ids
// are unique in the process by construction and unguessable from one another: seeing one id tells
// nothing of the next. The random bytes come in batches of 8,192 tokens (a call to the CSPRNG
// costs about 6 µs besides its bytes: batches of 1,024 made that 7.5 ns of an id's 23), and the
// prefix changes once per group, so an id costs one slice and one concatenation.
const PROCESS = randomBytes(6).toString('base64url');
const ID_BATCH = 8192;
const idBytes = Buffer.allocUnsafe(9 * ID_BATCH);
let idPool = '';
let idAt = 0;
let idsInPool = 0;
let group = 0;
let groupPrefix = '';

function refillIds(): void {
  randomFillSync(idBytes);
  // The top 6 bits of a token's first byte are its first character: its place in its group.
  for (let i = 0; i < ID_BATCH; i++) {
    const at = i * 9;
    idBytes[at] = ((i & 63) << 2) | ((idBytes[at] as number) & 3);
  }
  idPool = idBytes.toString('base64url');
  idAt = 0;
  idsInPool = 0;
}

/**
 * Headers a dead letter carries, so it can be understood and replayed to its original subject.
 * The runtime sets them; a bus client with restricted permissions may not (see the bus's publish
 * check): a replay publishes to `sluice-original-subject` with the runtime's rights, so a forged
 * letter would let such a client publish where its permissions say it may not.
 */
export const DEAD_LETTER_HEADERS = Object.freeze({
  error: 'sluice-error',
  code: 'sluice-error-code',
  actor: 'sluice-actor',
  attempts: 'sluice-attempts',
  subject: 'sluice-original-subject',
  messageId: 'sluice-original-id',
  time: 'sluice-dead-lettered-at',
  /** Set on a broker message's dead letter sent without its payload, which was over the bus's limit: why. */
  payloadDropped: 'sluice-payload-dropped',
});

/** @internal The names of {@link DEAD_LETTER_HEADERS}: what a replay strips, what the bus reserves. */
export const DEAD_LETTER_HEADER_NAMES: ReadonlySet<string> = new Set(Object.values(DEAD_LETTER_HEADERS));

/** A new message id: unique in the process, unguessable, and improbable to collide across processes. */
export function nextId(): string {
  if (idAt === idPool.length) refillIds();
  if ((idsInPool & 63) === 0) groupPrefix = PROCESS + (group++).toString(36);
  idsInPool++;
  const token = idPool.slice(idAt, idAt + 12);
  idAt += 12;
  return groupPrefix + token;
}

// Printable ASCII but ':' (0x21-0x39, 0x3b-0x7e), as NATS and HTTP header names.
const HEADER_NAME = /^[!-9;-~]+$/;
/**
 * Names that passed {@link HEADER_NAME}: a message's headers mostly have the names the last one
 * had, and a set lookup costs a fraction of the test. Bounded, so that names made per message
 * cannot grow it without limit.
 */
const validNames = new Set<string>();
const VALID_NAMES_MAX = 1024;

/** @internal Whether the bus takes `name` as a header name (printable ASCII, no white space or `:`). */
export function validName(name: string): boolean {
  if (validNames.has(name)) return true;
  if (!HEADER_NAME.test(name)) return false;
  if (validNames.size >= VALID_NAMES_MAX) validNames.clear();
  validNames.add(name);
  return true;
}

/**
 * @internal For headers made by {@link checkHeaders}: their UTF-16 length plus 4 per header (a
 * lower bound of their bytes, and a third of an upper bound); undefined for any other object.
 */
export let headerUnits: (headers: object) => number | undefined;
/** @internal The UTF-8 bytes of headers made by {@link checkHeaders} as on a NATS wire (`name: value` CRLF); 0 for others. */
export let headerBytes: (headers: object) => number;

/**
 * Headers that were checked: a frozen copy of the caller's, with its size. Only the constructor
 * makes one, and it checks, so an object of this class (whoever constructs it) holds valid
 * headers, and the brand check in {@link headerUnits} is all a later hop needs.
 */
class MessageHeaders {
  readonly #units: number;
  /** Counted when first needed: only a message near the size limit needs more than the bounds. */
  #bytes = -1;
  constructor(source: object, keys: readonly string[], option: string) {
    let units = 0;
    const self = this as unknown as Record<string, unknown>;
    for (const name of keys) {
      // Read once: a getter cannot show one value to the check and another to subscribers.
      const value: unknown = (source as Record<string, unknown>)[name];
      if (!validName(name)) {
        throw new OptionsError(
          `${option}['${name}']`,
          'a header name is non-empty printable ASCII without white space or colon',
          name,
        );
      }
      if (typeof value !== 'string') {
        throw new OptionsError(`${option}['${name}']`, 'a header value is a string', value);
      }
      self[name] = value;
      units += name.length + 4 + value.length;
    }
    this.#units = units;
    Object.freeze(this);
  }
  static {
    headerUnits = (headers) => (headers === EMPTY_HEADERS ? 0 : #units in headers ? headers.#units : undefined);
    headerBytes = (headers) => {
      if (!(#bytes in headers)) return 0;
      if (headers.#bytes < 0) {
        let bytes = 0;
        for (const [name, value] of Object.entries(headers)) bytes += name.length + 4 + Buffer.byteLength(value);
        headers.#bytes = bytes;
      }
      return headers.#bytes;
    };
  }
}

/**
 * @internal `headers` as an envelope carries them: frozen, checked, and measured (see
 * {@link headerUnits}). Returns `headers` itself when it was checked before, else a frozen copy
 * (so a caller changing its object later changes nothing). Throws an OptionsError naming `option`.
 */
export function checkHeaders(headers: unknown, option: string): Headers {
  if (typeof headers !== 'object' || headers === null) {
    throw new OptionsError(option, 'headers are an object of header names to string values', headers);
  }
  // The brand, not instanceof: an object made from the class's prototype without its constructor is no proof.
  if (headerUnits(headers) !== undefined) return headers as Headers;
  const proto: unknown = Object.getPrototypeOf(headers);
  if (proto !== Object.prototype && proto !== null) {
    throw new OptionsError(option, 'headers are a plain object of header names to string values', headers);
  }
  // Own enumerable string keys, as JSON and the object spread read them: a symbol-keyed property is
  // no header and is not copied. (Reflect.ownKeys would see it, at ten times the cost per publish.)
  const keys = Object.keys(headers);
  if (keys.length === 0) return EMPTY_HEADERS;
  return new MessageHeaders(headers, keys, option) as unknown as Headers;
}

/**
 * @internal Checks what a publisher may set on a message (`option` names the call, e.g.
 * `publish`): an OptionsError naming the option and its rule. Headers are for {@link checkHeaders}.
 */
export function checkPublishOptions(options: PublishOptions, option: string): void {
  checkFields(options.id, options.eventTime, options.key, option, true);
  if (options.lineage !== undefined) checkLineage(options.lineage, `${option}.lineage`);
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
    // Headers checked by a client (EMPTY_HEADERS included) are frozen already and taken first, with
    // no walk of their keys; any others are copied, as the caller may change them.
    headers:
      headers === undefined
        ? EMPTY_HEADERS
        : headerUnits(headers) !== undefined
          ? (headers as Headers)
          : isEmpty(headers)
            ? EMPTY_HEADERS
            : Object.freeze({ ...headers }),
    attempt: options.attempt ?? 1,
    replyTo: options.replyTo,
    lineage: options.lineage,
  };
}

// The first envelope made has no event time: V8 then keeps the field of every envelope of this
// shape tagged (it holds undefined and numbers), so an event time is stored as the number object
// the clock returned. Were the first one a number, the field would hold raw doubles, and every
// envelope made or copied (`{ ...env }`) would box its own: 16 bytes per envelope.
createEnvelope('_', undefined, { id: '_', eventTime: undefined as unknown as number });

/** @internal An OptionsError naming `option` unless `lineage` has the {@link Lineage} methods. */
export function checkLineage(lineage: unknown, option: string): void {
  if (!isLineage(lineage)) {
    throw new OptionsError(
      option,
      'a lineage is an object with retain, absorb, release and releaseAbsorbed methods',
      lineage,
    );
  }
}

function isLineage(value: unknown): boolean {
  if (typeof value !== 'object' || value === null) return false;
  const l = value as Record<string, unknown>;
  return (
    typeof l.retain === 'function' &&
    typeof l.absorb === 'function' &&
    typeof l.release === 'function' &&
    typeof l.releaseAbsorbed === 'function'
  );
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
