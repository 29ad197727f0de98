/**
 * The NATS source: core subjects (at-most-once) or a JetStream durable pull consumer
 * (at-least-once), published on the bus no faster than the subscribers' mailboxes take them; a
 * JetStream message is acknowledged when its input settles. See docs/nats.md.
 */

import {
  AckPolicy,
  type Consumer,
  type ConsumerMessages,
  DeliverPolicy,
  type JetStreamManager,
  type JsMsg,
  jetstream,
  jetstreamManager,
} from '@nats-io/jetstream';
import type { Msg, NatsConnection, Subscription as NatsSubscription } from '@nats-io/transport-node';
import type { StandardSchemaV1 } from '@standard-schema/spec';
import type { Logger } from '../../runtime/actors/actor.ts';
import type { BusClient } from '../../runtime/bus/bus.ts';
import type { Permissions } from '../../runtime/bus/permissions.ts';
import { isLiteral, validateSubject } from '../../runtime/bus/subjects.ts';
import type { Headers, PublishOptions } from '../../runtime/envelope.ts';
import { ClosedError, ConnectorError, messageOf, OptionsError, StreamError } from '../../runtime/errors.ts';
import { SourceLineage } from '../../runtime/lineage.ts';
import { intOption, knownKeys, optionKeys } from '../../runtime/options.ts';
import {
  type DeliveryOptions,
  deadLetterHeaders,
  deliverHeld,
  freeCapacity,
  publishDeadLetter,
  retryDelay,
} from '../../runtime/sources/delivery.ts';
import { heldLag, SourceLifecycle } from '../../runtime/sources/lifecycle.ts';
import { backoffOption, checkOptions, deadLetterOption, sourceRef } from '../../runtime/sources/options.ts';
import type { SourceHealth } from '../../runtime/sources/registry.ts';
import type { Source, SourceHost, SourceLag, SourceRef } from '../../runtime/sources/source.ts';
import { STREAM_HEADERS } from '../../runtime/streams/stream.ts';
import { closeConnection, type HeldConnection, type NatsConnectionRef, openConnection } from './config.ts';
import { Codecs, type NatsCodec, readHeaders } from './payload.ts';

/** A durable JetStream pull consumer to read. */
export interface NatsJetStreamSourceOptions {
  /** The stream (it must exist: streams are the server's configuration, not the job's). */
  stream: string;
  /** The durable consumer's name; sources naming the same one share its messages. */
  consumer: string;
  /**
   * Create the consumer when it does not exist, with the options below; an existing consumer is
   * used as it is (its own ack wait, max ack pending and max deliver apply). @default true
   */
  create?: boolean;
  /** Only messages on this subject (one pattern: nats-server 2.9 has no multi-filter consumers). */
  filterSubject?: string;
  /** Where a new consumer starts. @default 'all' */
  deliver?: 'all' | 'new' | { readonly fromSeq: number } | { readonly fromTime: number };
  /**
   * The consumer's `ack_wait`: a message not acknowledged within it is delivered again. The source
   * sends in-progress (`working()`) for messages still held by actors, so long work is not
   * redelivered while the process lives; the ack wait only matters once the process is gone.
   * @default 30000
   */
  ackWaitMs?: number;
  /**
   * The consumer's `max_ack_pending`: messages delivered and not acknowledged, at most. The source
   * fetches no more than that many unsettled at once, and no more than the mailboxes take.
   * @default 1000
   */
  maxAckPending?: number;
  /**
   * Deliveries of one message; a failure on the last one dead-letters it (and terms it). The
   * consumer the source creates has no `max_deliver` on the server, so a message in flight
   * through crashes (deliveries that never failed) is never dropped. @default 5
   */
  maxDeliver?: number;
  /** Delays of `nak` after a failed input, per delivery (the last repeats). @default the runtime's backoff */
  backoffMs?: readonly number[];
  /** Messages asked for in one pull, at most. @default 256 */
  fetchBatch?: number;
  /** How long one pull waits on the server for messages (the client's minimum is 1000). @default 5000 */
  fetchExpiresMs?: number;
}

export interface NatsSourceOptions<T = unknown> {
  /** Names the source in errors, logs and gauges. @default `nats:<stream>/<consumer>` or `nats:<subjects>` */
  name?: string;
  /** Connection options, or a connection you own and close. @default a connection to nats://127.0.0.1:4222 */
  connection?: NatsConnectionRef;
  /** Core subjects to subscribe to (at-most-once); give these or `jetstream`. */
  subjects?: string | readonly string[];
  /** A NATS queue group for the core subscriptions: processes sharing it split the messages. */
  queue?: string;
  /** A JetStream durable consumer to read (at-least-once). */
  jetstream?: NatsJetStreamSourceOptions;
  /**
   * The bus subject each message is published to: one subject, or a function of the NATS subject.
   * @default the NATS subject itself
   */
  subject?: string | ((natsSubject: string) => string);
  /** The codec of payloads without a known `Content-Type` header. @default 'json' */
  codec?: NatsCodec;
  /** Codecs per NATS subject pattern (first match), for payloads without a known `Content-Type`. */
  codecs?: Readonly<Record<string, NatsCodec>>;
  /** The schema actors subscribed through `ref` check their inputs against. */
  schema?: StandardSchemaV1<unknown, T>;
  /**
   * Where the source sends what it gives up on: payloads it cannot decode, and JetStream messages
   * whose last delivery failed. @default `$DLQ.nats.<stream>.<consumer>`, or `$DLQ.nats.core`
   */
  deadLetter?: string;
  /**
   * Core messages received and not yet accepted by the mailboxes, at most: core NATS cannot be
   * paused, so past this the source drops (and counts) as a slow NATS consumer is cut off. @default 65536
   */
  maxPending?: number;
  /** The bus permissions of the source's client. @default none (all allowed) */
  permissions?: Permissions;
  /** How often JetStream lag is read from the server besides message metadata. @default 5000 */
  lagRefreshMs?: number;
}

/** What a source is given of the runtime (`runtime` itself fits): the one all connector sources take. */
export type { SourceHost } from '../../runtime/sources/source.ts';

/** Counts of what the source did. */
export interface NatsSourceStats {
  /** Messages received from NATS. */
  readonly received: number;
  /** Published on the bus. */
  readonly published: number;
  readonly acked: number;
  readonly nacked: number;
  /** Dead-lettered by the source (undecodable, or failed on the last delivery), and termed. */
  readonly terminated: number;
  /** Core messages dropped past `maxPending`. */
  readonly dropped: number;
  /** Pulls made (JetStream). */
  readonly fetches: number;
  /**
   * Messages JetStream delivered again while their first delivery was still held here (its ack
   * wait ran out on a busy process): not published twice, the held copy answers for them.
   */
  readonly redeliveredWhileHeld: number;
}

const sourceKeys = optionKeys<keyof NatsSourceOptions>({
  name: true,
  connection: true,
  subjects: true,
  queue: true,
  jetstream: true,
  subject: true,
  codec: true,
  codecs: true,
  schema: true,
  deadLetter: true,
  maxPending: true,
  permissions: true,
  lagRefreshMs: true,
});
const jetstreamKeys = optionKeys<keyof NatsJetStreamSourceOptions>({
  stream: true,
  consumer: true,
  create: true,
  filterSubject: true,
  deliver: true,
  ackWaitMs: true,
  maxAckPending: true,
  maxDeliver: true,
  backoffMs: true,
  fetchBatch: true,
  fetchExpiresMs: true,
});

const NAME = /^[^\s.*>]+$/;

interface ResolvedJetStream {
  readonly stream: string;
  readonly consumer: string;
  readonly create: boolean;
  readonly filterSubject: string | undefined;
  readonly deliver: NatsJetStreamSourceOptions['deliver'];
  readonly ackWaitMs: number;
  readonly maxAckPending: number;
  readonly maxDeliver: number;
  readonly backoffMs: readonly number[] | undefined;
  readonly fetchBatch: number;
  readonly fetchExpiresMs: number;
}

/**
 * Makes a NATS source; `start(runtime)` connects and begins. Spawn the actors that read it (with
 * `subscribe: source.ref`) before starting it: a JetStream source waits for subscribers, but core
 * messages that arrive before any subscriber are published to no one.
 *
 * @example
 * const orders = natsSource({ connection: { servers: 'nats://127.0.0.1:4222' }, jetstream: { stream: 'ORDERS', consumer: 'billing' }, subject: 'orders.in' });
 * runtime.spawn(actor({ name: 'billing', subscribe: orders.ref, handle: (env) => bill(env.data) }));
 * await orders.start(runtime);
 */
export function natsSource<T = unknown>(options: NatsSourceOptions<T>): NatsSource<T> {
  return new NatsSource<T>(options);
}

export class NatsSource<T = unknown> implements Source<T> {
  readonly name: string;
  readonly #options: NatsSourceOptions<T>;
  readonly #js: ResolvedJetStream | undefined;
  readonly #subjects: readonly string[];
  readonly #target: ((natsSubject: string) => string) | undefined;
  readonly #literalTarget: string | undefined;
  readonly #codecs: Codecs;
  readonly #deadLetter: string;
  readonly #maxPending: number;
  readonly #lagRefreshMs: number;
  /** The host, bus client and logger `start` took, the registration, the timers `close` cancels. */
  readonly #life: SourceLifecycle;
  #held: HeldConnection | undefined;
  readonly #stats = {
    received: 0,
    published: 0,
    acked: 0,
    nacked: 0,
    terminated: 0,
    dropped: 0,
    fetches: 0,
    redeliveredWhileHeld: 0,
  };
  // JetStream
  #consumer: Consumer | undefined;
  #jsm: JetStreamManager | undefined;
  #fetching: ConsumerMessages | undefined;
  /** A pull being set up: close() waits for it, so the connection closes after it was stopped. */
  #setup: Promise<ConsumerMessages | undefined> | undefined;
  readonly #pending = new Map<number, Held>();
  /** Settled this turn of the event loop, acked at its end. */
  #acks: JsMsg[] = [];
  /** Messages the server holds for the consumer beyond those delivered (from the last message or info). */
  #serverPending = 0;
  /** Age reference when nothing is held but the server still has messages: the last message's time. */
  #lastTimestampMs = 0;
  // core
  readonly #subs: NatsSubscription[] = [];
  readonly #queue: CoreItem[] = [];
  #draining = false;

  constructor(options: NatsSourceOptions<T>) {
    checkOptions('natsSource', options, sourceKeys);
    this.#options = options;
    const js = options.jetstream;
    if ((js === undefined) === (options.subjects === undefined)) {
      throw new OptionsError(
        'natsSource.subjects',
        "give exactly one of 'subjects' (core) and 'jetstream'",
        js === undefined ? 'neither' : 'both',
      );
    }
    if (js !== undefined) {
      knownKeys('natsSource.jetstream', js, jetstreamKeys);
      for (const k of ['stream', 'consumer'] as const) {
        if (typeof js[k] !== 'string' || !NAME.test(js[k])) {
          throw new OptionsError(
            `natsSource.jetstream.${k}`,
            'must be a name without white space, dots or wildcards',
            js[k],
          );
        }
      }
      if (js.filterSubject !== undefined) validateSubject(js.filterSubject, 'subscribe');
      const d = js.deliver as unknown;
      const policyOk =
        d === undefined ||
        d === 'all' ||
        d === 'new' ||
        (typeof d === 'object' &&
          d !== null &&
          (Number.isSafeInteger((d as { fromSeq?: unknown }).fromSeq) ||
            Number.isFinite((d as { fromTime?: unknown }).fromTime)));
      if (!policyOk) {
        throw new OptionsError('natsSource.jetstream.deliver', "must be 'all', 'new', { fromSeq } or { fromTime }", d);
      }
      const backoffMs = backoffOption('natsSource.jetstream.backoffMs', js.backoffMs);
      this.#js = Object.freeze({
        stream: js.stream,
        consumer: js.consumer,
        create: js.create ?? true,
        filterSubject: js.filterSubject,
        deliver: js.deliver ?? 'all',
        ackWaitMs: intOption('natsSource.jetstream.ackWaitMs', js.ackWaitMs, 30_000, 1_000),
        maxAckPending: intOption('natsSource.jetstream.maxAckPending', js.maxAckPending, 1_000, 1),
        maxDeliver: intOption('natsSource.jetstream.maxDeliver', js.maxDeliver, 5, 1),
        backoffMs,
        fetchBatch: intOption('natsSource.jetstream.fetchBatch', js.fetchBatch, 256, 1),
        fetchExpiresMs: intOption('natsSource.jetstream.fetchExpiresMs', js.fetchExpiresMs, 5_000, 1_000),
      });
      this.#subjects = [];
    } else {
      const subjects = typeof options.subjects === 'string' ? [options.subjects] : options.subjects;
      if (!Array.isArray(subjects) || subjects.length === 0) {
        throw new OptionsError(
          'natsSource.subjects',
          'must be a subject or a non-empty array of subjects',
          options.subjects,
        );
      }
      for (const s of subjects) validateSubject(s, 'subscribe');
      this.#subjects = Object.freeze([...subjects]);
      if (options.queue !== undefined && (typeof options.queue !== 'string' || !NAME.test(options.queue))) {
        throw new OptionsError(
          'natsSource.queue',
          'must be a name without white space, dots or wildcards',
          options.queue,
        );
      }
    }
    if (options.queue !== undefined && js !== undefined) {
      throw new OptionsError(
        'natsSource.queue',
        'is for core subjects; JetStream sources share a consumer by its name',
        options.queue,
      );
    }
    const subject = options.subject;
    if (typeof subject === 'string') {
      validateSubject(subject, 'publish');
      this.#literalTarget = subject;
    } else if (subject !== undefined && typeof subject !== 'function') {
      throw new OptionsError('natsSource.subject', 'must be a subject or a function of the NATS subject', subject);
    }
    this.#target = typeof subject === 'function' ? subject : undefined;
    if (subject === undefined) {
      const only = this.#js?.filterSubject ?? (this.#subjects.length === 1 ? this.#subjects[0] : undefined);
      if (only !== undefined && isLiteral(only)) this.#literalTarget = only;
    }
    this.#codecs = new Codecs(options.codec, options.codecs, 'natsSource');
    this.name =
      options.name ??
      (this.#js !== undefined ? `nats:${this.#js.stream}/${this.#js.consumer}` : `nats:${this.#subjects.join(',')}`);
    // Stream and consumer names have no dots or wildcards: `$DLQ.nats.<stream>.<consumer>` as they are.
    this.#deadLetter = deadLetterOption(
      options.deadLetter,
      'nats',
      ...(this.#js !== undefined ? [this.#js.stream, this.#js.consumer] : ['core']),
    );
    this.#maxPending = intOption('natsSource.maxPending', options.maxPending, 65_536, 1);
    this.#lagRefreshMs = intOption('natsSource.lagRefreshMs', options.lagRefreshMs, 5_000, 10);
    // What actors subscribe to: the one bus subject (or pattern) this source publishes on.
    const refName =
      typeof subject === 'string'
        ? subject
        : (this.#js?.filterSubject ?? (this.#subjects.length === 1 ? this.#subjects[0] : undefined));
    this.#ref =
      refName === undefined
        ? undefined
        : sourceRef(refName, options.schema, this.#js?.stream ?? 'nats', this.#js !== undefined);
    this.#life = new SourceLifecycle(this, () => this.#stats);
  }

  readonly #ref: SourceRef<T> | undefined;

  /**
   * What actors subscribe to: the bus subject the source publishes on, with its stream positions.
   * Throws an `OptionsError` when that is not one subject or pattern (several core subjects, or a
   * JetStream consumer without `filterSubject`, and no `subject`): give `subject` then.
   */
  get ref(): SourceRef<T> {
    if (this.#ref === undefined) {
      throw new OptionsError(
        'natsSource.subject',
        'is needed for source.ref when the source reads more than one subject (several subjects, or no filterSubject)',
        undefined,
      );
    }
    return this.#ref;
  }

  /** What the source did so far. */
  get stats(): NatsSourceStats {
    return { ...this.#stats };
  }

  /**
   * Connects and begins: subscribes to the core subjects, or finds (or creates) the JetStream
   * consumer and starts pulling. Rejects with a `ConnectorError` when the server cannot be reached,
   * refuses the credentials, or the stream does not exist.
   */
  async start(host: SourceHost, options: { logger?: Logger } = {}): Promise<void> {
    this.#life.begin(host, options, this.#options.permissions);
    const held = await openConnection(this.#options.connection, this.name);
    this.#held = held;
    // A close() while connecting found no connection to close: this one would stay open for good,
    // keeping the process alive, and the source would subscribe or pull after its close.
    if (this.#life.closed) {
      await closeConnection(held);
      return;
    }
    try {
      if (this.#js !== undefined) await this.#startJetStream(this.#js);
      else {
        this.#startCore();
        // Once the round trip is back the server has the subscriptions: start resolves with them live.
        await held.nc.flush();
      }
    } catch (error) {
      await closeConnection(held);
      // close() ended the connection under the start: not a failure to report.
      if (this.#life.closed) return;
      throw error;
    }
    // Closed meanwhile: registered now, the source's status would say connected.
    if (this.#life.closed) return;
    const health = this.#life.register(
      'nats',
      this.#js === undefined ? 'nats' : `nats:${this.#js.stream}`,
      this.#js?.consumer ?? this.#subjects.join(','),
    );
    void watchConnection(this.#held.nc, health);
  }

  lag(): SourceLag {
    if (this.#js === undefined) {
      const first = this.#queue[0];
      let waiting = 0;
      for (const s of this.#subs) waiting += s.getPending();
      return {
        messages: this.#queue.length + waiting,
        timeMs: first === undefined ? 0 : Math.max(0, this.#life.now() - first.at),
        ackPending: 0,
      };
    }
    return heldLag(this.#pending, (h) => h.timestampMs, this.#serverPending, this.#lastTimestampMs, 0);
  }

  /**
   * Stops taking messages and gives back what is not settled: JetStream messages still held are
   * nak'ed, so they are delivered again at once (to this consumer's other readers, or after a
   * restart). Closes the connection if the source opened it. Stop the runtime first, so that what
   * actors hold settles and is acknowledged before the source lets go. Never rejects.
   */
  async close(): Promise<void> {
    if (!this.#life.end()) return;
    this.#life.wake();
    // Stopped, not awaited: its end waits for the loop to read what it buffered, and the loop may be
    // waiting on a full mailbox. Messages it still buffers are never delivered: the server redelivers them.
    safely(() => this.#fetching?.stop());
    // What settled before the close is acked, not delivered again.
    this.#flushAcks();
    for (const s of this.#subs) s.unsubscribe();
    for (const h of this.#pending.values()) safely(() => h.msg.nak());
    this.#pending.clear();
    // A pull still being set up is stopped by the loop as it comes back (it sees the close): the
    // connection must not close before that, nor close() resolve with the pull still open. Awaited
    // only here, so that all above happens in the turn of the close (an input settling just after
    // it finds itself given back already, not acked).
    if (this.#setup !== undefined) await this.#setup.catch(() => undefined);
    // The loop is not awaited: it may wait on a publish into a full mailbox, which ends only when
    // the mailbox drains; it sees the close at its next step, and what it holds was nak'ed above.
    if (this.#held !== undefined && !this.#held.nc.isClosed()) await this.#held.nc.flush().catch(() => undefined);
    await closeConnection(this.#held);
  }

  #subjectOf(natsSubject: string): string {
    return this.#literalTarget ?? (this.#target === undefined ? natsSubject : this.#target(natsSubject));
  }

  // ---- core ----

  #startCore(): void {
    const nc = (this.#held as HeldConnection).nc;
    for (const subject of this.#subjects) {
      this.#subs.push(
        nc.subscribe(subject, {
          queue: this.#options.queue,
          callback: (error, msg) => {
            if (error !== null) {
              this.#life.log.error(`${this.name}: subscription to '${subject}' failed: ${messageOf(error)}`);
              return;
            }
            this.#onCore(msg);
          },
        }),
      );
    }
  }

  #onCore(msg: Msg): void {
    this.#stats.received++;
    const client = this.#life.client as BusClient;
    let subject: string;
    let data: unknown;
    let options: PublishOptions | undefined;
    try {
      // The NATS subject is decoded from bytes when first read: not read when nothing needs it.
      subject = this.#literalTarget ?? this.#subjectOf(msg.subject);
      if (msg.headers === undefined) {
        // No headers (a plain client's message): no options, the bus's cheapest publish.
        const fixed = this.#codecs.fixed;
        if (fixed === undefined) data = this.#codecs.of(msg.subject, undefined).decode(msg.data, msg.subject);
        else {
          const bytes = msg.data;
          try {
            data = fixed.decode(bytes);
          } catch {
            // Decoding again fails the same way, now with the subject named in the error.
            data = fixed.decode(bytes, msg.subject);
          }
        }
      } else {
        const h = readHeaders(msg.headers);
        data = this.#codecs.of(msg.subject, h.contentType).decode(msg.data, msg.subject);
        options = { headers: h.headers };
        if (h.key !== undefined) options.key = h.key;
        if (h.eventTime !== undefined) options.eventTime = h.eventTime;
      }
    } catch (error) {
      this.#undecodable(
        msg.subject,
        msg.data,
        msg.headers === undefined ? {} : readHeaders(msg.headers).headers,
        error,
      );
      return;
    }
    // Fast path: nothing queued before it and every mailbox takes it now.
    if (this.#queue.length === 0) {
      try {
        if (client.tryPublish(subject, data, options)) {
          this.#stats.published++;
          return;
        }
      } catch (error) {
        // A stream's subject cannot be published synchronously: it waits in the queue for its append.
        if (!(error instanceof StreamError)) {
          this.#publishFailed(subject, error);
          return;
        }
      }
    }
    if (this.#queue.length >= this.#maxPending) {
      if (this.#stats.dropped++ % 10_000 === 0) {
        this.#life.log.warn(
          `${this.name}: ${this.#maxPending} messages wait for the mailboxes; dropping (at-most-once), ${this.#stats.dropped} so far`,
        );
      }
      return;
    }
    this.#queue.push({ subject, data, options, at: this.#life.now() });
    if (!this.#draining) void this.#drainCore();
  }

  async #drainCore(): Promise<void> {
    this.#draining = true;
    const client = this.#life.client as BusClient;
    try {
      while (this.#queue.length > 0 && !this.#life.closed) {
        const item = this.#queue[0] as CoreItem;
        try {
          await client.publish(item.subject, item.data, item.options);
          this.#stats.published++;
        } catch (error) {
          this.#publishFailed(item.subject, error);
        }
        this.#queue.shift();
      }
    } finally {
      this.#draining = false;
    }
  }

  #publishFailed(subject: string, error: unknown): void {
    // At-most-once: a message the bus refuses (shutting down, too large, denied) is logged, not kept.
    this.#stats.dropped++;
    this.#life.log.warn(`${this.name}: message for '${subject}' dropped: ${messageOf(error)}`);
  }

  // ---- JetStream ----

  async #startJetStream(js: ResolvedJetStream): Promise<void> {
    const nc = (this.#held as HeldConnection).nc;
    try {
      this.#jsm = await jetstreamManager(nc);
      await this.#jsm.streams.info(js.stream);
    } catch (error) {
      throw new ConnectorError(this.name, `stream '${js.stream}' is not available: ${messageOf(error)}`, {
        cause: error,
      });
    }
    const jsm = this.#jsm;
    let info = await jsm.consumers.info(js.stream, js.consumer).catch(() => undefined);
    if (info === undefined) {
      if (!js.create) {
        throw new ConnectorError(
          this.name,
          `consumer '${js.consumer}' of stream '${js.stream}' does not exist (create is false)`,
        );
      }
      const deliver = js.deliver;
      try {
        info = await jsm.consumers.add(js.stream, {
          durable_name: js.consumer,
          ack_policy: AckPolicy.Explicit,
          ack_wait: js.ackWaitMs * 1_000_000,
          max_ack_pending: js.maxAckPending,
          // Unlimited on the server: JetStream counts a delivery to a process that died before it
          // saw the message, and drops one that reached max_deliver that way, with no dead letter.
          // The source dead-letters a message that *failed* on its maxDeliver-th delivery instead.
          max_deliver: -1,
          ...(js.filterSubject !== undefined ? { filter_subject: js.filterSubject } : {}),
          ...(deliver === 'new'
            ? { deliver_policy: DeliverPolicy.New }
            : typeof deliver === 'object' && 'fromSeq' in deliver
              ? { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: deliver.fromSeq }
              : typeof deliver === 'object' && 'fromTime' in deliver
                ? { deliver_policy: DeliverPolicy.StartTime, opt_start_time: new Date(deliver.fromTime).toISOString() }
                : { deliver_policy: DeliverPolicy.All }),
        });
      } catch (error) {
        // Another reader created it meanwhile: use that one.
        info = await jsm.consumers.info(js.stream, js.consumer).catch(() => {
          throw new ConnectorError(
            this.name,
            `could not create consumer '${js.consumer}' of stream '${js.stream}': ${messageOf(error)}`,
            { cause: error },
          );
        });
      }
    }
    // An existing consumer's own settings apply.
    const c = info.config;
    this.#ackWaitMs = c.ack_wait === undefined ? js.ackWaitMs : Math.max(1_000, Math.round(c.ack_wait / 1_000_000));
    this.#maxAckPending = (c.max_ack_pending ?? 0) > 0 ? (c.max_ack_pending as number) : js.maxAckPending;
    // A consumer made elsewhere with a finite max_deliver: the server stops there, so the source
    // must give up at the same delivery (with a dead letter) rather than nak into nothing.
    this.#maxDeliver = (c.max_deliver ?? 0) > 0 ? Math.min(c.max_deliver as number, js.maxDeliver) : js.maxDeliver;
    this.#serverPending = info.num_pending;
    this.#consumer = await jetstream(nc).consumers.get(js.stream, js.consumer);
    // close() cancelled the timers it knew of and waits for no loop: none may start after it.
    if (this.#life.closed) return;
    this.#scheduleTouch();
    this.#life.every(this.#lagRefreshMs, () => this.#refreshLag());
    void this.#pullLoop(js);
  }

  #ackWaitMs = 30_000;
  #maxAckPending = 1_000;
  #maxDeliver = 5;

  /**
   * Pulls while the subscribers have room: each pull asks for no more than the free capacity of
   * the target's mailboxes and the room under max ack pending (at least one, whose publish then
   * waits for space: the loop holds at most that one message outside the mailboxes when they are
   * full). A failed pull (a disconnect, a server restart) is retried with backoff.
   */
  async #pullLoop(js: ResolvedJetStream): Promise<void> {
    const bus = (this.#life.host as SourceHost).bus;
    let failures = 0;
    while (!this.#life.closed) {
      if (bus.refusal !== undefined) {
        await this.#life.changed(100);
        continue;
      }
      const room = this.#maxAckPending - this.#pending.size;
      if (room <= 0) {
        await this.#life.changed();
        continue;
      }
      const target = this.#literalTarget;
      if (target !== undefined && !bus.hasSubscribers(target)) {
        await this.#life.changed(50);
        continue;
      }
      const free = target === undefined ? js.fetchBatch : freeCapacity(bus, target);
      const max = Math.max(1, Math.min(js.fetchBatch, room, free));
      try {
        this.#stats.fetches++;
        const setup = (this.#consumer as Consumer)
          .fetch({ max_messages: max, expires: js.fetchExpiresMs })
          .then((batch) => {
            // A close (or the runtime's stop) may land while the client sets the pull up, when
            // close() has no batch to stop yet. The client sends the pull request only once the
            // batch is iterated, so a batch stopped here, unread, never asks: the server delivers
            // nothing, and no delivery counts against the messages. The check and the hand-over
            // to #fetching are in one step, so a close after it finds the batch to stop.
            if (this.#life.closed || bus.refusal !== undefined) {
              batch.stop();
              return undefined;
            }
            this.#fetching = batch;
            return batch;
          });
        this.#setup = setup;
        const batch = await setup.finally(() => {
          if (this.#setup === setup) this.#setup = undefined;
        });
        if (batch === undefined) continue;
        let stopped = false;
        for await (const m of batch) {
          if (this.#life.closed) {
            // Delivered before the close stopped the pull, so already counted by the server: given
            // back at once while the connection is still open, rather than after the ack wait.
            safely(() => m.nak());
            continue;
          }
          if (bus.refusal !== undefined && !stopped) {
            // The runtime is stopping: no more of this pull. Its inbox is unsubscribed, so the
            // server delivers nothing more to it; this message is refused by the bus and nak'ed.
            stopped = true;
            batch.stop();
          }
          try {
            // No promise per message: only a publish the mailboxes cannot take at once is awaited.
            const waiting = this.#deliver(m, js);
            if (waiting !== undefined) await waiting;
          } catch (error) {
            // A mapping function or a header the bus refuses: the message fails, never the loop.
            const held = this.#pending.get(m.seq);
            if (held !== undefined && held.msg === m) held.lineage.release(error);
            else safely(() => m.nak(1_000));
          }
        }
        failures = 0;
      } catch (error) {
        if (this.#life.closed) break;
        await this.#life.changed(this.#life.failed('pull', ++failures, error));
      } finally {
        this.#fetching = undefined;
      }
    }
  }

  /** Publishes one message; undefined when it is done with at once, else a promise of when it is. */
  #deliver(m: JsMsg, js: ResolvedJetStream): Promise<void> | undefined {
    this.#stats.received++;
    const pending = this.#pending.get(m.seq);
    if (pending !== undefined) {
      // Delivered again while still held here (its ack wait ran out, as on a process too busy to
      // send in-progress in time): a second copy would be counted twice by a window that holds the
      // first. The held copy goes on and answers for the newest delivery; this one is kept alive.
      this.#stats.redeliveredWhileHeld++;
      pending.msg = m;
      pending.touchedAt = this.#life.now();
      safely(() => m.working());
      return undefined;
    }
    this.#serverPending = m.info.pending;
    const timestampMs = Math.floor(m.info.timestampNanos / 1_000_000);
    this.#lastTimestampMs = timestampMs;
    const h = readHeaders(m.headers);
    let subject: string;
    let data: unknown;
    try {
      // The subject function is asked of each delivery: one that throws for this subject throws
      // again, so the message is given up on as an undecodable one is (a nak came back for good).
      subject = this.#subjectOf(m.subject);
      data = this.#codecs.of(m.subject, h.contentType).decode(m.data, m.subject);
    } catch (error) {
      // Decoding again gives the same answer: dead-lettered at once and termed, never redelivered.
      const held = this.#hold(m, timestampMs);
      void this.#giveUp(held, error, h.headers, m.data);
      return undefined;
    }
    const held = this.#hold(m, timestampMs);
    if (!(this.#life.host as SourceHost).bus.hasSubscribers(subject)) {
      this.#life.noSubscriber(subject, 'messages wait on the server');
      this.#pending.delete(held.seq);
      safely(() => m.nak(1_000));
      this.#stats.nacked++;
      return undefined;
    }
    const headers: Record<string, string> = h.headers;
    headers[STREAM_HEADERS.stream] = js.stream;
    headers[STREAM_HEADERS.sequence] = String(m.seq);
    const options: DeliveryOptions = {
      headers,
      eventTime: h.eventTime ?? timestampMs,
      lineage: held.lineage,
    };
    if (h.key !== undefined) options.key = h.key;
    // At JetStream's delivery count: an actor's retries count on from the server's deliveries.
    const host = this.#life.host as SourceHost;
    return deliverHeld(
      host.bus,
      this.#life.client as BusClient,
      subject,
      data,
      options,
      m.info.deliveryCount,
      this.#stats,
    );
  }

  #hold(m: JsMsg, timestampMs: number): Held {
    const held: Held = {
      seq: m.seq,
      msg: m,
      timestampMs,
      touchedAt: this.#life.now(),
      data: m.data,
      lineage: undefined as unknown as AckLineage,
    };
    held.lineage = new SourceLineage<Held>(this, held, `nats/${held.seq}`);
    this.#pending.set(m.seq, held);
    return held;
  }

  /**
   * Sends the acks of one turn of the event loop together: the client writes what it was given
   * before its next flush in one go, while acks sent between the messages of a fetch, each after a
   * turn of the iterator, would go out one write each.
   */
  readonly #flushAcks = (): void => {
    const acks = this.#acks;
    this.#acks = [];
    for (const m of acks) safely(() => m.ack());
  };

  /** @internal An input's last reference came back: ack, nak with backoff, or give up. */
  sourceSettled(held: Held, _lineage: AckLineage, error: unknown): void {
    if (this.#pending.get(held.seq) !== held) return;
    if (error === undefined) {
      this.#pending.delete(held.seq);
      this.#stats.acked++;
      this.#acks.push(held.msg);
      if (this.#acks.length === 1) setImmediate(this.#flushAcks);
      this.#life.wake();
      return;
    }
    const attempt = held.msg.info.deliveryCount;
    if (error instanceof ClosedError || attempt < this.#maxDeliver) {
      this.#pending.delete(held.seq);
      this.#stats.nacked++;
      const delay = error instanceof ClosedError ? 0 : retryDelay(attempt, this.#js?.backoffMs);
      safely(() => held.msg.nak(delay));
      this.#life.wake();
      return;
    }
    void this.#giveUp(held, error, readHeaders(held.msg.headers).headers, held.data);
  }

  /**
   * Dead-letters a message the source gives up on and terms it on the server, so JetStream never
   * delivers it again; the message is kept in the dead-letter subject, not lost. A dead letter the
   * bus refuses leaves the message nak'ed for a later try.
   */
  async #giveUp(held: Held, error: unknown, headers: Headers, data: Uint8Array): Promise<void> {
    const m = held.msg;
    const letter = deadLetterHeaders({
      headers: {
        ...headers,
        [STREAM_HEADERS.stream]: this.#js?.stream ?? 'nats',
        [STREAM_HEADERS.sequence]: String(m.seq),
      },
      error,
      source: this.name,
      attempts: m.info.deliveryCount,
      subject: m.subject,
      messageId: `${this.#js?.stream}/${m.seq}`,
      timeMs: this.#life.now(),
    });
    try {
      await publishDeadLetter(this.#life.client as BusClient, this.#deadLetter, data.slice(), letter, this.#life.log);
    } catch (e) {
      this.#life.log.error(
        `${this.name}: could not dead-letter sequence ${m.seq} to '${this.#deadLetter}': ${messageOf(e)}`,
      );
      // Given back already (the close nak'ed it): nothing more to answer for.
      if (this.#pending.get(held.seq) !== held) return;
      this.#pending.delete(held.seq);
      this.#stats.nacked++;
      const current = held.msg;
      safely(() => current.nak(this.#ackWaitMs));
      this.#life.wake();
      return;
    }
    // The dead letter may be stored long after the delivery that failed (it waits for room on the
    // bus), and JetStream may have delivered the message again meanwhile (its ack wait ran out on
    // a busy process). While the message is still held here, that newer delivery was not handed
    // over: #deliver made it held.msg, for which the held copy answers. So the term goes to
    // held.msg, as every ack, nak and in-progress does, not to the stale delivery that failed.
    // Once it is no longer held, the close gave it back (nak): its next delivery may be another
    // reader's, in progress, and a term of any older delivery would end it under that reader
    // (nats-server 2.9 terms by stream sequence, whatever the delivery), its outcome then void. So
    // no term: the message is delivered again and handled there; the dead letter stays, a
    // duplicate of the at-least-once kind, never a loss.
    if (this.#pending.get(held.seq) !== held) {
      this.#life.log.warn(
        `${this.name}: sequence ${m.seq} was dead-lettered after the close gave it back: it will be delivered again`,
      );
      return;
    }
    this.#pending.delete(held.seq);
    this.#stats.terminated++;
    const current = held.msg;
    // No reason on the wire: nats-server 2.9 takes `+TERM` alone (a reason came with 2.10).
    safely(() => current.term());
    this.#life.wake();
  }

  /** Core messages that do not decode go to the dead-letter subject: at-most-once, but never in silence. */
  #undecodable(subject: string, data: Uint8Array, headers: Headers, error: unknown): void {
    this.#stats.terminated++;
    const letter = deadLetterHeaders({
      headers,
      error,
      source: this.name,
      attempts: 1,
      subject,
      messageId: '',
      timeMs: this.#life.now(),
      code: 'SLUICE_ERR_DECODE',
    });
    (this.#life.client as BusClient)
      .publish(this.#deadLetter, data.slice(), { headers: letter })
      .catch((e: unknown) => {
        this.#life.log.error(`${this.name}: could not dead-letter a message from '${subject}': ${messageOf(e)}`);
      });
  }

  /**
   * Sends in-progress for messages still held after half the ack wait, so JetStream does not
   * deliver them again while this process works on them (a window, a slow sink, a full mailbox).
   */
  #scheduleTouch(): void {
    this.#life.later(Math.max(250, Math.floor(this.#ackWaitMs / 3)), () => {
      const now = this.#life.now();
      for (const h of this.#pending.values()) {
        if (now - h.touchedAt >= this.#ackWaitMs / 2) {
          h.touchedAt = now;
          safely(() => h.msg.working());
        }
      }
      this.#scheduleTouch();
    });
  }

  #refreshLag(): Promise<void> {
    const js = this.#js as ResolvedJetStream;
    return (this.#jsm as JetStreamManager).consumers.info(js.stream, js.consumer).then((info) => {
      this.#serverPending = info.num_pending;
    });
  }
}

interface CoreItem {
  readonly subject: string;
  readonly data: unknown;
  readonly options: PublishOptions | undefined;
  /** When it was received, for lag. */
  readonly at: number;
}

/** @internal One JetStream message delivered to the bus and not settled yet. */
interface Held {
  readonly seq: number;
  /** The newest delivery: acks, naks and in-progress go to it. */
  msg: JsMsg;
  readonly timestampMs: number;
  touchedAt: number;
  readonly data: Uint8Array;
  lineage: AckLineage;
}

/**
 * The source's reference to a message on the bus (docs/settlement.md): when the last reference
 * comes back the message is settled, acked, or nak'ed when one came back with an error.
 */
type AckLineage = SourceLineage<Held>;

/**
 * Follows a connection's status into a source's health until the connection closes. The client
 * reconnects by itself: `disconnect` and `reconnecting` show as reconnecting, `reconnect` as connected.
 */
async function watchConnection(nc: NatsConnection, health: SourceHealth): Promise<void> {
  try {
    for await (const s of nc.status()) {
      if (health.connection === 'closed') return;
      if (s.type === 'disconnect') health.reconnecting(new Error(`disconnected from ${s.server}`));
      else if (s.type === 'reconnecting') health.reconnecting();
      else if (s.type === 'reconnect') health.connected();
      else if (s.type === 'error') health.error(s.error);
    }
  } catch (error) {
    health.error(error);
  }
}

/** Acks and naks go out on a connection that may have closed meanwhile: the server redelivers then. */
function safely(run: () => void): void {
  try {
    run();
  } catch {
    // The connection is closed: what was not acknowledged is delivered again after the ack wait.
  }
}
