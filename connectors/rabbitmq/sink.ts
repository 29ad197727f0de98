/**
 * The RabbitMQ sink: records published to an exchange with a routing key on a confirm channel,
 * `mandatory` so that an unroutable message comes back as an error, a bounded number awaiting
 * their confirm, `message_id` from the idempotency key, and the keys committed kept in the
 * embedded store so that a replay is skipped (RabbitMQ de-duplicates nothing). See docs/rabbitmq.md.
 */
import type { ChannelModel, ConfirmChannel, Message, Options } from 'amqplib';
import { systemClock } from '../../runtime/clock.ts';
import { type CodecChoice, codecOf, encodeWith } from '../../runtime/codec.ts';
import { ClosedError, ConnectorError, messageOf, OptionsError } from '../../runtime/errors.ts';
import { intOption, knownKeys, optionKeys, optionsObject } from '../../runtime/options.ts';
import { AckWindow } from '../../runtime/sinks/ackWindow.ts';
import { committedBefore, rememberCommitted, sinkStore } from '../../runtime/sinks/committedKeys.ts';
import { IDEMPOTENCY_KEY_HEADER, messageIdOf, type Sink, type SinkRecord } from '../../runtime/sinks/sink.ts';
import { REVISION_HEADER } from '../../runtime/sinks/streamSink.ts';
import type { Store } from '../../runtime/store/types.ts';
import { openRabbit, type RabbitConnectionOptions, type RabbitTarget, rabbitTarget } from './config.ts';

export interface RabbitSinkOptions<T = unknown> {
  /** Names the sink in errors, telemetry and its connection, and its key set in the store. @default `rabbitmq:<exchange>` */
  name?: string;
  /** Where to connect. @default amqp://guest:guest@127.0.0.1:5672/ */
  connection?: RabbitConnectionOptions;
  /** The exchange to publish to (`''`: the default exchange, where the routing key is a queue name). */
  exchange: string;
  /** The routing key: one, or a function of the record. @default the record's envelope subject */
  routingKey?: string | ((record: SinkRecord<T>) => string);
  /** How values are encoded; its content type goes in `content-type`. @default 'json' */
  codec?: CodecChoice;
  /**
   * Publish `mandatory`: a message no queue takes comes back, and its batch is rejected with a
   * `ConnectorError` (not retryable: no queue is bound for its routing key). @default true
   */
  mandatory?: boolean;
  /** Persistent messages (delivery mode 2), kept by durable queues across a broker restart. @default true */
  persistent?: boolean;
  /** Publishes awaiting their confirm at once, at most. @default 256 */
  maxInFlight?: number;
  /**
   * How long a batch's confirms may take before it fails (retryable), and how long `close` waits
   * for the confirms still outstanding. @default 10000
   */
  timeoutMs?: number;
  /** Write the envelope's headers (and key as `sluice-key`) as message headers. @default false */
  headers?: boolean;
  /**
   * The runtime's store, where the sink keeps each key it committed (and its revision): a replay of
   * a key already confirmed is skipped however late it comes, across restarts. Without it a replay
   * is published again, with the same `message_id`, for consumers that de-duplicate.
   */
  store?: Store;
}

/** The store namespace of a RabbitMQ sink's committed keys. */
export function rabbitSinkNamespace(name: string): string {
  return `sluice.rabbitmq-sink/${name}`;
}

/** Counts of what the sink did. */
export interface RabbitSinkStats {
  /** Messages confirmed by the broker. */
  readonly published: number;
  /** Records skipped because the store held their key. */
  readonly skipped: number;
  /** Mandatory messages returned unroutable. */
  readonly returned: number;
  /** Publishes nack'ed by the broker, timed out or lost with the connection. */
  readonly failed: number;
}

const sinkKeys = optionKeys<keyof RabbitSinkOptions>({
  name: true,
  connection: true,
  exchange: true,
  routingKey: true,
  codec: true,
  mandatory: true,
  persistent: true,
  maxInFlight: true,
  timeoutMs: true,
  headers: true,
  store: true,
});

const CONTENT_TYPE: Readonly<Record<string, string>> = {
  json: 'application/json',
  msgpack: 'application/msgpack',
  raw: 'application/octet-stream',
  text: 'text/plain',
};

/**
 * Connects and returns a RabbitMQ sink for `sinkActor` or `writeTo`. Rejects with a
 * `ConnectorError` when the server cannot be reached, refuses the credentials, or the exchange is missing.
 *
 * @example
 * const out = await rabbitSink({ exchange: 'totals', routingKey: 'eu', store });
 * runtime.spawn(sinkActor({ name: 'to-rabbit', subscribe: 'totals.in', sink: out }));
 */
export async function rabbitSink<T = unknown>(options: RabbitSinkOptions<T>): Promise<RabbitSink<T>> {
  const sink = new RabbitSink<T>(options);
  await sink.open();
  return sink;
}

export class RabbitSink<T = unknown> implements Sink<T> {
  readonly name: string;
  readonly #target: RabbitTarget;
  readonly #exchange: string;
  readonly #routingKey: (record: SinkRecord<T>) => string;
  readonly #codec;
  readonly #contentType: string | undefined;
  readonly #mandatory: boolean;
  readonly #persistent: boolean;
  readonly #maxInFlight: number;
  readonly #timeoutMs: number;
  readonly #headers: boolean;
  readonly #store: Store | undefined;
  readonly #namespace: string;
  #model: ChannelModel | undefined;
  #channel: ConfirmChannel | undefined;
  #opening: Promise<ConfirmChannel> | undefined;
  #closed = false;
  /**
   * Message ids returned unroutable, until their publish is answered (RabbitMQ sends the return
   * before the confirm): the answer takes the id out, whether the confirm came, a nack, or the
   * channel closed first.
   */
  readonly #returned = new Set<string>();
  /** Publishes sent and not answered yet (by confirm, nack or the channel's close), by message id. */
  readonly #unconfirmed = new Map<string, number>();
  readonly #stats = { published: 0, skipped: 0, returned: 0, failed: 0 };

  constructor(options: RabbitSinkOptions<T>) {
    optionsObject('rabbitSink', options);
    if (options === undefined) throw new OptionsError('rabbitSink', 'must be an options object', options);
    knownKeys('rabbitSink', options, sinkKeys);
    if (typeof options.exchange !== 'string') {
      throw new OptionsError(
        'rabbitSink.exchange',
        "must be an exchange name ('' for the default exchange)",
        options.exchange,
      );
    }
    this.#exchange = options.exchange;
    this.name = options.name ?? `rabbitmq:${options.exchange === '' ? '(default)' : options.exchange}`;
    if (typeof this.name !== 'string' || this.name === '')
      throw new OptionsError('rabbitSink.name', 'must be a non-empty string', this.name);
    const rk = options.routingKey;
    if (typeof rk === 'string') this.#routingKey = () => rk;
    else if (typeof rk === 'function') {
      this.#routingKey = (record) => {
        const k = rk(record);
        if (typeof k !== 'string')
          throw new OptionsError('rabbitSink.routingKey', `gave no routing key for record '${record.key}'`, k);
        return k;
      };
    } else if (rk === undefined) {
      this.#routingKey = (record) => {
        const s = record.envelope?.subject;
        if (s === undefined) {
          throw new OptionsError(
            'rabbitSink.routingKey',
            `record '${record.key}' has no envelope to take a subject from: give 'routingKey'`,
            s,
          );
        }
        return s;
      };
    } else throw new OptionsError('rabbitSink.routingKey', 'must be a routing key or a function of the record', rk);
    this.#codec = codecOf(options.codec, 'rabbitSink.codec');
    this.#contentType = Object.hasOwn(CONTENT_TYPE, this.#codec.name) ? CONTENT_TYPE[this.#codec.name] : undefined;
    for (const k of ['mandatory', 'persistent', 'headers'] as const) {
      if (options[k] !== undefined && typeof options[k] !== 'boolean') {
        throw new OptionsError(`rabbitSink.${k}`, 'must be true or false', options[k]);
      }
    }
    this.#mandatory = options.mandatory ?? true;
    this.#persistent = options.persistent ?? true;
    this.#headers = options.headers ?? false;
    this.#maxInFlight = intOption('rabbitSink.maxInFlight', options.maxInFlight, 256, 1);
    this.#timeoutMs = intOption('rabbitSink.timeoutMs', options.timeoutMs, 10_000, 1);
    this.#store = sinkStore('rabbitSink.store', options.store);
    this.#namespace = rabbitSinkNamespace(this.name);
    this.#target = rabbitTarget(options.connection, `rabbitSink(${this.name}).connection`);
  }

  get stats(): RabbitSinkStats {
    return { ...this.#stats };
  }

  /** @internal Connects and checks the exchange; `rabbitSink()` calls it. */
  async open(): Promise<void> {
    await this.#channelNow();
  }

  /** The confirm channel, opened again after a drop (the next batch after it does this). */
  #channelNow(): Promise<ConfirmChannel> {
    if (this.#channel !== undefined) return Promise.resolve(this.#channel);
    this.#opening ??= (async () => {
      const model = await openRabbit(this.#target, this.name);
      try {
        const channel = await model.createConfirmChannel();
        channel.on('error', () => undefined);
        channel.on('return', (msg: Message) => {
          const id = msg.properties.messageId;
          // A return for a publish already answered (its batch timed out) has nothing to change.
          if (typeof id === 'string' && this.#unconfirmed.has(id)) this.#returned.add(id);
        });
        if (this.#exchange !== '') {
          await channel.checkExchange(this.#exchange).catch((error: unknown) => {
            throw new ConnectorError(this.name, `exchange '${this.#exchange}' is not available: ${messageOf(error)}`, {
              cause: error,
            });
          });
        }
        const drop = () => {
          if (this.#channel === channel) this.#channel = undefined;
          void model.close().catch(() => undefined);
        };
        channel.on('close', drop);
        model.on('close', drop);
        this.#model = model;
        this.#channel = channel;
        return channel;
      } catch (error) {
        await model.close().catch(() => undefined);
        throw error;
      }
    })().finally(() => {
      this.#opening = undefined;
    });
    return this.#opening;
  }

  /**
   * Publishes the batch and resolves once the broker confirmed all of it (and the keys are
   * stored). Rejects with a `ConnectorError` when any publish is nack'ed, times out or is lost
   * with the connection (retryable), or comes back unroutable (not retryable); what was confirmed
   * is remembered (with `store`) and skipped when the batch comes again.
   */
  async write(records: readonly SinkRecord<T>[]): Promise<void> {
    if (this.#closed) throw new ClosedError(`rabbitSink(${this.name})`, 'the sink is closed');
    const out: Outgoing<T>[] = [];
    for (const record of records) {
      if (this.#store !== undefined && committedBefore(this.#store, this.#namespace, record)) {
        this.#stats.skipped++;
        continue;
      }
      const routingKey = this.#routingKey(record);
      const bytes = encodeWith(this.#codec, record.value, routingKey);
      // message_id carries the idempotency key; a record with a revision has `<key>#<revision>`
      // there, and the key and revision in headers. A message without headers has no table to
      // encode, which is most of what amqplib spends on a publish.
      let headers: Record<string, string> | undefined;
      const env = record.envelope;
      if (this.#headers && env !== undefined) {
        headers = { ...env.headers };
        if (env.key !== undefined) headers['sluice-key'] = env.key;
      }
      const id = messageIdOf(record);
      if (record.revision !== undefined) {
        headers ??= {};
        headers[IDEMPOTENCY_KEY_HEADER] = record.key;
        headers[REVISION_HEADER] = String(record.revision);
      }
      out.push({
        record,
        routingKey,
        content: Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength),
        id,
        options: {
          mandatory: this.#mandatory,
          persistent: this.#persistent,
          messageId: id,
          contentType: this.#contentType,
          headers,
        },
      });
    }
    if (out.length === 0) return;
    let channel: ConfirmChannel;
    try {
      channel = await this.#channelNow();
    } catch (error) {
      this.#stats.failed += out.length;
      if (error instanceof ConnectorError) throw error;
      throw new ConnectorError(this.name, `could not open a channel: ${messageOf(error)}`, {
        cause: error,
        retryable: true,
      });
    }
    const committed: SinkRecord<T>[] = [];
    const failures: { error: unknown; retryable: boolean }[] = [];
    // What waits for its confirm when the channel closes or the time is up fails, and what was not
    // sent yet with it.
    const window = new AckWindow({
      size: out.length,
      bound: this.#maxInFlight,
      send: (i) => this.#publish(channel, out[i] as Outgoing<T>, i, window.answer),
      settled: (i, error) => {
        const o = out[i] as Outgoing<T>;
        // Taken out however the publish ended: an id left behind would make a later confirm of
        // the same message (its retry, once a queue is bound) look returned.
        const returned = this.#returned.delete(o.id);
        if (error !== undefined) failures.push({ error, retryable: true });
        else if (returned) {
          // RabbitMQ sends a mandatory message's return before its confirm.
          this.#stats.returned++;
          failures.push({
            error: new Error(
              `returned unroutable: no queue is bound to exchange '${this.#exchange}' for routing key '${o.routingKey}'`,
            ),
            retryable: false,
          });
        } else committed.push(o.record);
      },
    });
    const onClose = () => window.failPending(new Error('the channel closed before the confirm'));
    channel.once('close', onClose);
    try {
      await window.run(this.#timeoutMs, () => new Error(`no confirm within ${this.#timeoutMs} ms`));
    } finally {
      channel.off('close', onClose);
    }
    this.#stats.published += committed.length;
    this.#stats.failed += failures.length - failures.filter((f) => !f.retryable).length;
    if (this.#store !== undefined) await rememberCommitted(this.#store, this.#namespace, committed);
    if (failures.length > 0) {
      const first = failures[0] as { error: unknown; retryable: boolean };
      throw new ConnectorError(
        this.name,
        `${failures.length} of ${out.length} publishes to '${this.#exchange}' failed: ${messageOf(first.error)}`,
        { cause: first.error, retryable: failures.every((f) => f.retryable) },
      );
    }
  }

  /** One publish; `answer(i, error)` runs on its confirm (error undefined) or nack, or if it cannot be sent. */
  #publish(channel: ConfirmChannel, o: Outgoing<T>, i: number, answer: (i: number, error: unknown) => void): void {
    let answered = false;
    const done = () => {
      if (answered) return;
      answered = true;
      const left = (this.#unconfirmed.get(o.id) ?? 1) - 1;
      if (left > 0) this.#unconfirmed.set(o.id, left);
      else {
        this.#unconfirmed.delete(o.id);
        // A return after the batch gave up on the publish (its time was up) is dropped here.
        this.#returned.delete(o.id);
      }
    };
    this.#unconfirmed.set(o.id, (this.#unconfirmed.get(o.id) ?? 0) + 1);
    try {
      channel.publish(this.#exchange, o.routingKey, o.content, o.options, (err) => {
        answer(
          i,
          err === null || err === undefined ? undefined : new Error(`nack'ed by the broker: ${messageOf(err)}`),
        );
        done();
      });
    } catch (error) {
      done();
      answer(i, error);
    }
  }

  /**
   * Waits for outstanding confirms, `timeoutMs` at most, and closes the connection. Rejects with a
   * `ConnectorError` naming the publishes the broker had not confirmed by then (after closing): the
   * batches that sent them fail (retryable), so their inputs are not acknowledged.
   */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    // A connection a batch is opening now (after a drop) is closed with the rest, not left open.
    await this.#opening?.catch(() => undefined);
    let unconfirmed: string[] = [];
    const channel = this.#channel;
    if (channel !== undefined && this.#unconfirmed.size > 0) {
      let timer: { cancel(): void } | undefined;
      const inTime = await Promise.race([
        channel.waitForConfirms().then(
          () => true,
          () => true,
        ),
        new Promise<false>((resolve) => {
          timer = systemClock.setTimeout(() => resolve(false), this.#timeoutMs);
        }),
      ]);
      timer?.cancel();
      // Read before the close, which answers them all with an error.
      if (!inTime) unconfirmed = [...this.#unconfirmed.keys()];
    }
    await this.#model?.close().catch(() => undefined);
    if (unconfirmed.length > 0) {
      const shown = unconfirmed.slice(0, 10).map((id) => `'${id}'`);
      if (unconfirmed.length > 10) shown.push(`and ${unconfirmed.length - 10} more`);
      throw new ConnectorError(
        this.name,
        `closed with ${unconfirmed.length} publishes the broker had not confirmed within ${this.#timeoutMs} ms (message ids ${shown.join(', ')}): the batches that sent them fail, and their inputs are not acknowledged`,
      );
    }
  }
}

interface Outgoing<T = unknown> {
  readonly record: SinkRecord<T>;
  readonly routingKey: string;
  readonly content: Buffer;
  readonly id: string;
  readonly options: Options.Publish;
}
