import type { SubjectRef } from '../bus/bus.ts';
import type { Envelope } from '../envelope.ts';

/** Limits on what a stream keeps; the oldest messages go first. Unset limits do not apply. */
export interface RetentionOptions {
  /** Messages older than this (append time, on the runtime clock) are removed. */
  maxAgeMs?: number;
  /** Stored bytes (encoded records) the stream may hold. */
  maxBytes?: number;
  /** Messages the stream may hold. */
  maxMessages?: number;
  /** How often age retention runs, besides on append. @default min(maxAgeMs, 1000) */
  checkIntervalMs?: number;
}

/** A durable subject: the messages published on `subjects`, kept in the runtime's store. */
export interface StreamConfig {
  /** A single token: no dots, white space or wildcards. Names the stream in the store. */
  name: string;
  /** Subject patterns it captures (NATS wildcards); no two streams may overlap. */
  subjects: readonly string[];
  retention?: RetentionOptions;
}

/** Where a new consumer starts; a consumer with a stored position resumes from it instead. */
export type DeliverPolicy = 'all' | 'new' | { readonly fromSeq: number } | { readonly fromTime: number };

export interface ConsumerOptions<T = unknown> {
  /** Only messages whose subject matches; a typed subject also checks actors' inputs with its schema. */
  filter?: SubjectRef<T>;
  /** @default 'all' */
  deliver?: DeliverPolicy;
  /** Time a pulled message may stay unacknowledged before it is redelivered. @default 30000 */
  ackWaitMs?: number;
  /**
   * Ack waits per delivery (the n-th delivery waits `backoff[n-1]`, the last repeats), replacing
   * `ackWaitMs`, and the delay before redelivering a message an actor failed. @default none
   */
  backoff?: readonly number[];
  /** Deliveries of one message before it goes to the dead-letter subject. @default 5 */
  maxDeliver?: number;
  /** Messages delivered and not yet settled before the consumer delivers no more. @default 1000 */
  maxAckPending?: number;
  /**
   * Where messages go after `maxDeliver` deliveries, and corrupt records. @default `$DLQ.<stream>.<consumer>`.
   * A message that is a dead letter already goes to `$DEAD.<stream>.<consumer>` instead, and one
   * from a `$DEAD.` subject nowhere (it stays in the stream, logged, counted as terminated).
   */
  deadLetter?: string;
  /**
   * What to do when the consumer's stored position cannot be read (a damaged record, or one that
   * is no position): `'fail'` refuses to open the consumer, with an error naming the record, so
   * that nothing is delivered twice or skipped unseen; `'deliver'` logs the error and starts from
   * `deliver` as a new consumer would (as Kafka's `auto.offset.reset` does without a valid
   * committed offset): what it had settled is forgotten. @default 'fail'
   */
  onUnreadablePosition?: 'fail' | 'deliver';
}

/** A message delivered by a consumer's `fetch`/`next`, to be settled by one of its methods. */
export interface StreamMessage<T = unknown> {
  /** The stream sequence. */
  readonly seq: number;
  /** Delivery count of this message, from 1 (also `envelope.attempt`). */
  readonly attempt: number;
  readonly envelope: Envelope<T>;
  /** Done: never delivered again. */
  ack(): void;
  /** Failed: delivered again after `delayMs` (at once by default), or dead-lettered after `maxDeliver`. */
  nack(delayMs?: number): void;
  /** Never deliver again, without success: settled as acked, but counted as terminated. */
  term(reason?: string): void;
  /** Still working: the ack wait starts again. */
  inProgress(): void;
}

/** How far a consumer is behind its stream. */
export interface ConsumerLag {
  /** Stored messages from the committed position on that are not settled yet (with a filter, unread ones count). */
  readonly messages: number;
  /** Age (runtime clock) of the oldest unsettled message; 0 when none. */
  readonly timeMs: number;
  /** Delivered and not settled. */
  readonly ackPending: number;
}

export interface ConsumerInfo extends ConsumerLag {
  readonly stream: string;
  readonly name: string;
  /** The committed position: the lowest unsettled sequence. A restart resumes here. */
  readonly position: number;
  /** Messages settled, by how. */
  readonly acked: number;
  readonly terminated: number;
  readonly deadLettered: number;
  readonly redelivered: number;
}

export interface Consumer<T = unknown> {
  readonly stream: string;
  readonly name: string;
  /** The subject its messages are pushed to for actors that subscribe to it durably. */
  readonly deliverSubject: string;
  /** Up to `max` messages available now (redeliveries first), within `maxAckPending`. */
  fetch(max?: number): StreamMessage<T>[];
  /** The next message, once one is available. */
  next(): Promise<StreamMessage<T>>;
  /** The committed position: the lowest unsettled sequence. */
  readonly position: number;
  lag(): ConsumerLag;
  info(): ConsumerInfo;
}

export interface StreamInfo {
  readonly name: string;
  readonly subjects: readonly string[];
  /** First stored sequence (`last + 1` when empty). */
  readonly first: number;
  /** Last sequence given (0 if none). */
  readonly last: number;
  readonly messages: number;
  /** Encoded bytes stored; counted only when `maxBytes` is set, else undefined. */
  readonly bytes: number | undefined;
}

export interface Stream {
  readonly name: string;
  readonly subjects: readonly string[];
  info(): StreamInfo;
  /** The message at `seq`, or undefined when retention removed it; a corrupt record throws a `CorruptRecordError`. */
  get(seq: number): Envelope | undefined;
  /** The durable consumer of that name, made with `options` if it does not exist yet (else they are ignored). */
  consumer<T = unknown>(name: string, options?: ConsumerOptions<T>): Consumer<T>;
}

/**
 * An actor's durable subscription to a stream (see {@link durable}): the actor takes the
 * consumer's messages, and the settlement of each input is its acknowledgement.
 */
export interface DurableRef<T = unknown> {
  readonly durable: true;
  readonly stream: string;
  readonly consumer: string;
  /** The filter subject (what schemas and loop checks match), or the delivery subject. */
  readonly name: string;
  readonly schema: import('@standard-schema/spec').StandardSchemaV1<unknown, T> | undefined;
  readonly deliverSubject: string;
  readonly options: ConsumerOptions<T>;
}
