/**
 * The RabbitMQ source: a queue consumed with manual acknowledgement, a prefetch no larger than the
 * subscribers' mailboxes hold, each message acked when its input settles, nack'ed (requeued, or
 * not) by the outcome; the redelivered flag, a quorum queue's `x-delivery-count` and `x-death` give
 * its `attempt`. A dropped connection is opened again with backoff. See docs/rabbitmq.md.
 */
import type { StandardSchemaV1 } from '@standard-schema/spec';
import type { Channel, ChannelModel, ConsumeMessage } from 'amqplib';
import type { Logger } from '../../runtime/actors/actor.ts';
import { trimOldest } from '../../runtime/bounded.ts';
import type { BusClient } from '../../runtime/bus/bus.ts';
import {
  type Codec,
  type CodecChoice,
  codecOf,
  jsonCodec,
  msgpackCodec,
  rawCodec,
  textCodec,
} from '../../runtime/codec.ts';
import { ClosedError, ConnectorError, messageOf, OptionsError } from '../../runtime/errors.ts';
import { SourceLineage, type SourceSettlement } from '../../runtime/lineage.ts';
import { intOption, optionKeys } from '../../runtime/options.ts';
import {
  busHeaders,
  type DeliveryOptions,
  deadLetterHeaders,
  deliverHeld,
  freeCapacity,
  publishDeadLetter,
  retryDelay,
} from '../../runtime/sources/delivery.ts';
import { heldLag, SourceLifecycle } from '../../runtime/sources/lifecycle.ts';
import { ackOptions, checkOptions, deadLetterOption, sourceRef, subjectOption } from '../../runtime/sources/options.ts';
import type { Source, SourceHost, SourceLag, SourceRef } from '../../runtime/sources/source.ts';
import { STREAM_HEADERS } from '../../runtime/streams/stream.ts';
import { openRabbit, type RabbitConnectionOptions, type RabbitTarget, rabbitTarget, reconnectDelay } from './config.ts';
import { checkDeclaration, declareQueue, type RabbitQueueDeclaration } from './declare.ts';

export interface RabbitSourceOptions<T = unknown> {
  /** Names the source in errors, logs and gauges, and its connection on the server. @default `rabbitmq:<queue>` */
  name?: string;
  /** Where to connect. @default amqp://guest:guest@127.0.0.1:5672/ */
  connection?: RabbitConnectionOptions;
  /** The queue to consume. */
  queue: string;
  /**
   * Declare the queue (and its bindings) with these settings when it does not exist; an existing
   * queue must have the same settings (RabbitMQ refuses a declaration that differs). Without it
   * the queue must exist: it is checked, not declared.
   */
  declare?: RabbitQueueDeclaration;
  /** The bus subject each message is published to. */
  subject: string;
  /** The codec of payloads without a known `content-type`. @default 'json' */
  codec?: CodecChoice;
  /** The schema actors subscribed through `ref` check their inputs against. */
  schema?: StandardSchemaV1<unknown, T>;
  /**
   * Where a message goes that the source gives up on (failed on its last delivery, or not
   * decodable): `'bus'` publishes it to the `deadLetter` subject and acks it; `'rabbitmq'` rejects
   * it without requeue, so the queue's dead-letter exchange (`x-dead-letter-exchange`) takes it
   * (RabbitMQ drops it when the queue has none). @default 'bus'
   */
  deadLetters?: 'bus' | 'rabbitmq';
  /** The bus subject of `deadLetters: 'bus'`. @default `$DLQ.rabbitmq.<queue>` */
  deadLetter?: string;
  /** Messages delivered and not settled, at most: the most the prefetch is. @default 1000 */
  maxAckPending?: number;
  /** Deliveries of one message; a failure on the last one gives it up. @default 5 */
  maxDeliver?: number;
  /**
   * A quorum queue's `x-delivery-limit`, for a queue declared elsewhere (with `declare` it is
   * known): RabbitMQ drops or dead-letters a message returned more often than that, so the source
   * gives a message up on its `deliveryLimit + 1`-th delivery at the latest, by its own rule.
   */
  deliveryLimit?: number;
  /** Delays before a failed message is requeued, per delivery (the last repeats). @default the runtime's backoff */
  backoffMs?: readonly number[];
  /** How often the queue's depth is read for lag. @default 5000 */
  lagRefreshMs?: number;
}

/** What a source is given of the runtime (`runtime` itself fits): the one all connector sources take. */
export type { SourceHost } from '../../runtime/sources/source.ts';

/** Counts of what the source did. */
export interface RabbitSourceStats {
  readonly received: number;
  readonly published: number;
  readonly acked: number;
  /** Nack'ed with requeue after a failure (or given back at a close). */
  readonly requeued: number;
  /** Given up: dead-lettered to the bus and acked, or rejected to the queue's dead-letter exchange. */
  readonly terminated: number;
  /** Connections opened again after a drop. */
  readonly reconnects: number;
}

const sourceKeys = optionKeys<keyof RabbitSourceOptions>({
  name: true,
  connection: true,
  queue: true,
  declare: true,
  subject: true,
  codec: true,
  schema: true,
  deadLetters: true,
  deadLetter: true,
  maxAckPending: true,
  maxDeliver: true,
  deliveryLimit: true,
  backoffMs: true,
  lagRefreshMs: true,
});

/**
 * Makes a RabbitMQ source; `start(runtime)` connects, declares or checks the queue and begins
 * consuming once something subscribes to `subject`.
 *
 * @example
 * const orders = rabbitSource({ queue: 'orders', declare: { type: 'quorum' }, subject: 'orders.in' });
 * runtime.spawn(actor({ name: 'billing', subscribe: orders.ref, handle: (env) => bill(env.data) }));
 * await orders.start(runtime);
 */
export function rabbitSource<T = unknown>(options: RabbitSourceOptions<T>): RabbitSource<T> {
  return new RabbitSource<T>(options);
}

export class RabbitSource<T = unknown> implements Source<T> {
  readonly name: string;
  readonly ref: SourceRef<T>;
  readonly #options: RabbitSourceOptions<T>;
  readonly #queue: string;
  readonly #subject: string;
  readonly #codec: Codec;
  readonly #deadLetters: 'bus' | 'rabbitmq';
  readonly #deadLetter: string;
  readonly #maxAckPending: number;
  readonly #maxDeliver: number;
  readonly #backoffMs: readonly number[] | undefined;
  readonly #lagRefreshMs: number;
  #target: RabbitTarget | undefined;
  /** The host, bus client and logger `start` took, the registration, the timers `close` cancels. */
  readonly #life: SourceLifecycle;
  #model: ChannelModel | undefined;
  #channel: Channel | undefined;
  /** Counts channels: a message held from an earlier one cannot be acked on this one (RabbitMQ requeued it). */
  #generation = 0;
  #reconnecting = false;
  /** Where the lineage of a delivered message reports its settlement. */
  readonly #settlement: SourceSettlement<Held> = {
    sourceSettled: (held, _lineage, error) => this.#settled(held, error),
  };
  readonly #pending = new Map<number, Held>();
  /** Settled this turn of the event loop, acked at its end. */
  #acks: Held[] = [];
  /** Delivered by RabbitMQ, waiting for the mailboxes (at most the prefetch). */
  readonly #inbox: Held[] = [];
  #draining = false;
  #ready = 0;
  #prefetch = 0;
  /**
   * The last attempt of messages this source requeued, by message id: a classic queue marks a
   * redelivery with a flag and no count, so the source counts the ones it made itself (bounded; a
   * restart or another consumer starts again from the flag's 2; a quorum queue counts exactly).
   */
  readonly #requeued = new Map<string, number>();
  readonly #stats = { received: 0, published: 0, acked: 0, requeued: 0, terminated: 0, reconnects: 0 };

  constructor(options: RabbitSourceOptions<T>) {
    checkOptions('rabbitSource', options, sourceKeys);
    this.#options = options;
    if (typeof options.queue !== 'string' || options.queue === '') {
      throw new OptionsError('rabbitSource.queue', 'must be a non-empty queue name', options.queue);
    }
    this.#queue = options.queue;
    this.#subject = subjectOption('rabbitSource.subject', options.subject, 'messages');
    this.#codec = codecOf(options.codec, 'rabbitSource.codec');
    checkDeclaration(options.declare, 'rabbitSource.declare');
    this.name = options.name ?? `rabbitmq:${this.#queue}`;
    const dl = options.deadLetters ?? 'bus';
    if (dl !== 'bus' && dl !== 'rabbitmq') {
      throw new OptionsError('rabbitSource.deadLetters', "must be 'bus' or 'rabbitmq'", dl);
    }
    this.#deadLetters = dl;
    this.#deadLetter = deadLetterOption(options.deadLetter, 'rabbitmq', this.#queue);
    const limit = options.deliveryLimit ?? options.declare?.deliveryLimit;
    const acks = ackOptions('rabbitSource', options, () => {
      if (limit !== undefined) intOption('rabbitSource.deliveryLimit', limit, 0, 0);
    });
    this.#maxAckPending = acks.maxAckPending;
    this.#maxDeliver = limit === undefined ? acks.maxDeliver : Math.min(acks.maxDeliver, limit + 1);
    this.#backoffMs = acks.backoffMs;
    this.#lagRefreshMs = intOption('rabbitSource.lagRefreshMs', options.lagRefreshMs, 5_000, 10);
    this.ref = sourceRef(this.#subject, options.schema, this.#queue, true);
    this.#life = new SourceLifecycle(this, () => this.#stats);
  }

  get stats(): RabbitSourceStats {
    return { ...this.#stats };
  }

  /** The prefetch of the current consumer (0 before it consumes). */
  get prefetch(): number {
    return this.#prefetch;
  }

  /**
   * Connects and declares (or checks) the queue; consuming begins once something subscribes to
   * `subject`. Rejects with a `ConnectorError` when the server cannot be reached, refuses the
   * credentials or the vhost, or the queue is missing (without `declare`) or declared otherwise.
   */
  async start(host: SourceHost, options: { logger?: Logger } = {}): Promise<void> {
    this.#life.begin(host, options);
    this.#target = rabbitTarget(this.#options.connection, `${this.name}.connection`);
    await this.#open();
    // Closed while it started (the connection is closed already): nothing to register or poll.
    if (this.#life.closed) return;
    this.#life.register('rabbitmq', `rabbitmq:${this.#queue}`, this.name);
    this.#life.every(this.#lagRefreshMs, () =>
      this.#channel?.checkQueue(this.#queue).then((ok) => {
        this.#ready = ok.messageCount;
      }),
    );
  }

  /** Opens the connection and channel, declares or checks the queue, and consumes when subscribed. */
  async #open(): Promise<void> {
    const target = this.#target as RabbitTarget;
    const model = await openRabbit(target, this.name);
    let channel: Channel;
    try {
      channel = await model.createChannel();
      channel.on('error', () => undefined);
      const ok = await declareQueue(channel, this.#queue, this.#options.declare).catch((error: unknown) => {
        throw new ConnectorError(
          this.name,
          this.#options.declare === undefined
            ? `queue '${this.#queue}' is not available (without 'declare' it must exist): ${messageOf(error)}`
            : `could not declare queue '${this.#queue}' (an existing queue must have the same settings): ${messageOf(error)}`,
          { cause: error },
        );
      });
      this.#ready = ok.messageCount;
    } catch (error) {
      await model.close().catch(() => undefined);
      throw error;
    }
    if (this.#life.closed) {
      await model.close().catch(() => undefined);
      return;
    }
    const generation = ++this.#generation;
    this.#model = model;
    this.#channel = channel;
    // Anything but our own close is a drop: what was not acked is requeued by RabbitMQ.
    model.on('close', () => this.#dropped(generation));
    channel.on('close', () => this.#dropped(generation));
    void this.#consumeWhenSubscribed(generation);
  }

  async #consumeWhenSubscribed(generation: number): Promise<void> {
    const bus = (this.#life.host as SourceHost).bus;
    while (!bus.hasSubscribers(this.#subject)) {
      await this.#life.sleep(50);
      if (this.#life.closed || generation !== this.#generation) return;
    }
    // The most RabbitMQ sends before an ack: what the mailboxes hold, and the one that waits for room.
    const capacity = freeCapacity(bus, this.#subject, true);
    this.#prefetch = Math.max(
      1,
      Math.min(this.#maxAckPending, capacity === Number.POSITIVE_INFINITY ? this.#maxAckPending : capacity + 1),
    );
    const channel = this.#channel as Channel;
    try {
      await channel.prefetch(this.#prefetch);
      await channel.consume(this.#queue, (msg) => this.#onMessage(msg, generation), { noAck: false });
    } catch (error) {
      if (!this.#life.closed)
        this.#life.log.warn(`${this.name}: could not consume '${this.#queue}': ${messageOf(error)}`);
    }
  }

  #dropped(generation: number): void {
    if (this.#life.closed || generation !== this.#generation || this.#reconnecting) return;
    this.#generation++;
    // RabbitMQ requeues what this channel had not acked: held messages settle to nothing now.
    this.#pending.clear();
    this.#acks = [];
    this.#inbox.length = 0;
    this.#channel = undefined;
    this.#model = undefined;
    this.#life.health?.reconnecting(new Error('the connection or channel closed'));
    void this.#reconnect();
  }

  async #reconnect(): Promise<void> {
    this.#reconnecting = true;
    let attempt = 0;
    try {
      while (!this.#life.closed) {
        const delay = reconnectDelay(this.#target as RabbitTarget, ++attempt);
        if (attempt === 1 || attempt % 20 === 0) {
          this.#life.log.warn(`${this.name}: connection lost; opening again in ${delay} ms (attempt ${attempt})`);
        }
        await this.#life.sleep(delay);
        if (this.#life.closed) return;
        try {
          await this.#open();
          this.#stats.reconnects++;
          this.#life.health?.connected();
          return;
        } catch (error) {
          // Tried again after a longer delay.
          this.#life.health?.error(error);
        }
      }
    } finally {
      this.#reconnecting = false;
    }
  }

  #onMessage(msg: ConsumeMessage | null, generation: number): void {
    if (msg === null) {
      // The server cancelled the consumer (the queue was deleted): open again, and the check says why.
      if (generation === this.#generation && !this.#life.closed) {
        this.#life.log.warn(`${this.name}: the server cancelled the consumer of '${this.#queue}'`);
        void (this.#model as ChannelModel | undefined)?.close().catch(() => undefined);
      }
      return;
    }
    if (generation !== this.#generation || this.#life.closed) return;
    this.#stats.received++;
    this.#ready = Math.max(0, this.#ready - 1);
    let attempt = attemptOf(msg, this.#queue);
    const id = msg.properties.messageId;
    if (typeof id === 'string' && this.#requeued.has(id)) {
      if (msg.fields.redelivered) attempt = Math.max(attempt, (this.#requeued.get(id) as number) + 1);
      this.#requeued.delete(id);
    }
    const held: Held = {
      msg,
      generation,
      attempt,
      receivedAt: Date.now(),
      lineage: undefined as unknown as SourceLineage<Held>,
    };
    held.lineage = new SourceLineage(this.#settlement, held, `rabbitmq/${generation}/${msg.fields.deliveryTag}`);
    this.#pending.set(msg.fields.deliveryTag, held);
    this.#inbox.push(held);
    if (!this.#draining) this.#drain();
  }

  /**
   * Publishes what RabbitMQ delivered, in order, each waiting for room in the mailboxes: at once
   * while they take it (no promise per message), and on from where it stopped once they did.
   */
  #drain(): void {
    while (this.#inbox.length > 0 && !this.#life.closed) {
      const held = this.#inbox.shift() as Held;
      if (held.generation !== this.#generation) continue;
      const waiting = this.#deliver(held);
      if (waiting !== undefined) {
        this.#draining = true;
        void waiting.then(this.#drainAgain, this.#drainAgain);
        return;
      }
    }
  }

  readonly #drainAgain = (): void => {
    this.#draining = false;
    this.#drain();
  };

  /** Publishes one message; undefined when the mailboxes took it at once, else when they will. */
  #deliver(held: Held): Promise<void> | undefined {
    const msg = held.msg;
    const p = msg.properties;
    let data: unknown;
    try {
      const byType =
        typeof p.contentType === 'string' && Object.hasOwn(CONTENT_TYPES, p.contentType)
          ? CONTENT_TYPES[p.contentType]
          : undefined;
      data = (byType ?? this.#codec).decode(
        new Uint8Array(msg.content.buffer, msg.content.byteOffset, msg.content.byteLength),
        this.#subject,
      );
    } catch (error) {
      // Decoding again gives the same answer: given up at once, never requeued.
      return this.#giveUp(held, error);
    }
    const headers = headersOf(msg);
    headers[STREAM_HEADERS.stream] = this.#queue;
    // The message id (a Sluice sink sets it from the idempotency key) is the position; a message
    // without one has none that survives a redelivery, and its outputs get no derived keys.
    if (typeof p.messageId === 'string' && p.messageId !== '') headers[STREAM_HEADERS.sequence] = p.messageId;
    else delete headers[STREAM_HEADERS.sequence];
    const checked = busHeaders(
      headers,
      this.name,
      `a message of '${this.#queue}' (message_id '${String(p.messageId ?? '')}')`,
    );
    // Refused again on every delivery: given up at once.
    if (checked instanceof ConnectorError) return this.#giveUp(held, checked);
    const options: DeliveryOptions = { headers: checked, lineage: held.lineage };
    if (typeof p.timestamp === 'number') options.eventTime = p.timestamp * 1_000;
    const key = p.headers?.['sluice-key'];
    if (typeof key === 'string') options.key = key;
    return deliverHeld(
      (this.#life.host as SourceHost).bus,
      this.#life.client as BusClient,
      this.#subject,
      data,
      options,
      held.attempt,
      this.#stats,
    );
  }

  /**
   * Acks of one turn of the event loop go out together: one `basic.ack` with `multiple` for every
   * delivery tag below the oldest message still held (all of them settled), one each for the rest.
   */
  #ack(held: Held): void {
    this.#acks.push(held);
    if (this.#acks.length === 1) setImmediate(this.#flushAcks);
  }

  readonly #flushAcks = (): void => {
    const acks = this.#acks;
    if (acks.length === 0) return;
    this.#acks = [];
    const channel = this.#channel;
    const generation = this.#generation;
    // Messages of an earlier channel were requeued by RabbitMQ with it; they cannot be acked here.
    if (channel === undefined) return;
    // Tags rise with each delivery on a channel and #pending keeps delivery order, so its first
    // key is the oldest tag still held: every tag below it is settled (acked, requeued or given up).
    let held = Number.POSITIVE_INFINITY;
    for (const tag of this.#pending.keys()) {
      held = tag;
      break;
    }
    let upTo: ConsumeMessage | undefined;
    for (const h of acks) {
      if (h.generation !== generation) continue;
      const tag = h.msg.fields.deliveryTag;
      if (tag < held) {
        if (upTo === undefined || tag > upTo.fields.deliveryTag) upTo = h.msg;
      } else safely(() => channel.ack(h.msg));
    }
    if (upTo !== undefined) {
      const last = upTo;
      safely(() => channel.ack(last, true));
    }
  };

  /** An input's last reference came back: ack, requeue after a backoff, or give up. */
  #settled(held: Held, error: unknown): void {
    if (held.generation !== this.#generation || this.#pending.get(held.msg.fields.deliveryTag) !== held) return;
    const channel = this.#channel as Channel;
    if (error === undefined) {
      this.#pending.delete(held.msg.fields.deliveryTag);
      this.#stats.acked++;
      this.#ack(held);
      return;
    }
    if (error instanceof ClosedError || held.attempt < this.#maxDeliver) {
      const delay = error instanceof ClosedError ? 0 : retryDelay(held.attempt, this.#backoffMs);
      // Held (within the prefetch) for the backoff, then requeued: RabbitMQ has no delayed nack.
      this.#life.later(delay, () => {
        if (held.generation !== this.#generation || this.#pending.get(held.msg.fields.deliveryTag) !== held) return;
        // The runtime is stopping: requeued, it would come straight back to be refused again, each
        // round counted by a quorum queue until its delivery limit drops it. Held, it goes back to
        // the queue once, when the source closes its channel.
        if ((this.#life.host as SourceHost).bus.refusal !== undefined) return;
        this.#pending.delete(held.msg.fields.deliveryTag);
        this.#stats.requeued++;
        const id = held.msg.properties.messageId;
        if (typeof id === 'string' && !(error instanceof ClosedError)) {
          this.#requeued.set(id, held.attempt);
          trimOldest(this.#requeued, 4 * this.#maxAckPending);
        }
        safely(() => channel.nack(held.msg, false, true));
      });
      return;
    }
    void this.#giveUp(held, error);
  }

  /**
   * Gives a message up: to the queue's dead-letter exchange (reject without requeue), or to the
   * bus's dead-letter subject and then acked. A dead letter the bus refuses requeues the message.
   */
  async #giveUp(held: Held, error: unknown): Promise<void> {
    const tag = held.msg.fields.deliveryTag;
    const channel = this.#channel as Channel;
    if (this.#deadLetters === 'rabbitmq') {
      if (held.generation !== this.#generation || this.#pending.get(tag) !== held) return;
      this.#pending.delete(tag);
      this.#stats.terminated++;
      safely(() => channel.nack(held.msg, false, false));
      return;
    }
    const headers = headersOf(held.msg);
    // Without the headers the bus refuses, or it would refuse the dead letter too.
    busHeaders(headers, this.name, 'a dead letter');
    const letter = deadLetterHeaders({
      headers: { ...headers, [STREAM_HEADERS.stream]: this.#queue },
      error,
      source: this.name,
      attempts: held.attempt,
      subject: this.#queue,
      messageId: String(held.msg.properties.messageId ?? ''),
      timeMs: this.#life.now(),
    });
    let published = true;
    try {
      await publishDeadLetter(
        this.#life.client as BusClient,
        this.#deadLetter,
        new Uint8Array(held.msg.content),
        letter,
        this.#life.log,
      );
    } catch (e) {
      published = false;
      this.#life.log.error(`${this.name}: could not dead-letter a message to '${this.#deadLetter}': ${messageOf(e)}`);
    }
    if (held.generation !== this.#generation || this.#pending.get(tag) !== held) return;
    // Refused by the stopping runtime: held until the source closes, as a failed message is.
    if (!published && (this.#life.host as SourceHost).bus.refusal !== undefined) return;
    this.#pending.delete(tag);
    if (published) {
      this.#stats.terminated++;
      safely(() => channel.ack(held.msg));
    } else {
      this.#stats.requeued++;
      safely(() => channel.nack(held.msg, false, true));
    }
  }

  lag(): SourceLag {
    // What is ready in the queue has no time RabbitMQ tells: the age is that of what is held.
    return heldLag(this.#pending, (h) => h.receivedAt, this.#ready, 0, 1);
  }

  /**
   * Stops consuming and gives back what is not settled: the channel closes, and RabbitMQ requeues
   * every message it had not acked (redelivered at once to the queue's other consumers, or after a
   * restart). Stop the runtime first, so what actors hold settles and is acked. Never rejects.
   */
  async close(): Promise<void> {
    if (!this.#life.end()) return;
    // What settled before the close is acked, not requeued.
    this.#flushAcks();
    this.#pending.clear();
    this.#inbox.length = 0;
    this.#generation++;
    await this.#model?.close().catch(() => undefined);
  }
}

/** Codecs by a message's `content-type` property; others (or none) take the `codec` option's. */
const CONTENT_TYPES: Readonly<Record<string, Codec>> = {
  'application/json': jsonCodec,
  'application/msgpack': msgpackCodec,
  'application/x-msgpack': msgpackCodec,
  'application/octet-stream': rawCodec,
  'text/plain': textCodec,
};

interface Held {
  readonly msg: ConsumeMessage;
  readonly generation: number;
  readonly attempt: number;
  readonly receivedAt: number;
  lineage: SourceLineage<Held>;
}

/**
 * The delivery attempt of a message: 1, plus the returns a quorum queue counted
 * (`x-delivery-count`), plus the times it died in this queue (`x-death`: rejected or expired, and
 * routed back through a dead-letter exchange); at least 2 when RabbitMQ flags it redelivered.
 */
export function attemptOf(msg: ConsumeMessage, queue: string): number {
  const h = msg.properties.headers;
  let attempt = 1;
  const count = h?.['x-delivery-count'];
  if (typeof count === 'number' && Number.isSafeInteger(count) && count > 0) attempt += count;
  const deaths = h?.['x-death'];
  if (Array.isArray(deaths)) {
    for (const d of deaths) {
      if (d !== null && typeof d === 'object' && d.queue === queue && Number.isSafeInteger(Number(d.count))) {
        attempt += Number(d.count);
      }
    }
  }
  if (msg.fields.redelivered && attempt < 2) attempt = 2;
  return attempt;
}

/** The message's string (and number, boolean) headers; RabbitMQ's own `x-` tables stay behind. */
function headersOf(msg: ConsumeMessage): Record<string, string> {
  const out: Record<string, string> = {};
  const h = msg.properties.headers;
  if (h !== undefined) {
    for (const [k, v] of Object.entries(h)) {
      if (k.startsWith('x-') || k === 'sluice-key') continue;
      if (typeof v === 'string') out[k] = v;
      else if (typeof v === 'number' || typeof v === 'boolean') out[k] = String(v);
    }
  }
  return out;
}

/** Acks go out on a channel that may have closed meanwhile: RabbitMQ requeues what was not acked. */
function safely(run: () => void): void {
  try {
    run();
  } catch {
    // The channel is closed: the message is requeued by the server.
  }
}
