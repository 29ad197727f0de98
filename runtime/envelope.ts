import { randomBytes } from 'node:crypto';
import type { Lineage } from './lineage.ts';

/** Message headers. Trace context (`traceparent`, `tracestate`) and dead-letter reasons live here. */
export type Headers = Readonly<Record<string, string>>;

/**
 * One message. Every operator passes envelopes on (copying, never mutating), so id, key, event
 * time, headers and lineage survive every step: `{ ...env, data: next }` is the idiom.
 */
export interface Envelope<T = unknown> {
  /** Unique per message in this process and across processes (a random prefix and a counter). */
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
  eventTime?: number;
  headers?: Record<string, string>;
  replyTo?: string;
  /** Ties the message to the input(s) it derives from; actors set it for what their pipeline emits. */
  lineage?: Lineage;
  /** Keep an id chosen upstream (a broker's message id); otherwise a new one is made. */
  id?: string;
  attempt?: number;
}

const EMPTY_HEADERS: Headers = Object.freeze({});
const PREFIX = randomBytes(6).toString('base64url');
// An id is PREFIX and a decimal counter. Turning the counter into a string on every id shows in
// profiles of the hot path, so the digits above the last three change once per thousand ids and
// the last three come from a table: the same ids, one string concatenation each.
const LAST_DIGITS = Array.from({ length: 1000 }, (_, i) => String(i).padStart(3, '0'));
let counter = 0;
/** PREFIX and the counter's digits above the last three, once the counter has more than three. */
let thousands = PREFIX;

/** A new process-unique, globally improbable-to-collide message id. */
export function nextId(): string {
  counter++;
  if (counter < 1000) return PREFIX + counter;
  const last = counter % 1000;
  if (last === 0) thousands = PREFIX + counter / 1000;
  return thousands + (LAST_DIGITS[last] as string);
}

export function createEnvelope<T>(subject: string, data: T, options?: PublishOptions, now?: number): Envelope<T> {
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
  return {
    id: options.id ?? nextId(),
    subject,
    data,
    key: options.key,
    eventTime: options.eventTime ?? now,
    headers: options.headers === undefined ? EMPTY_HEADERS : Object.freeze({ ...options.headers }),
    attempt: options.attempt ?? 1,
    replyTo: options.replyTo,
    lineage: options.lineage,
  };
}

/** A copy with other data (and optionally other fields), keeping id, key, headers and lineage. */
export function withData<T, U>(env: Envelope<T>, data: U): Envelope<U> {
  return { ...env, data };
}

/** A copy with more headers. */
export function withHeaders<T>(env: Envelope<T>, headers: Record<string, string>): Envelope<T> {
  return { ...env, headers: Object.freeze({ ...env.headers, ...headers }) };
}
