/**
 * The NATS sink: records published to core subjects (flushed before the batch resolves) or to
 * JetStream (each publish acknowledged by the stream, `Nats-Msg-Id` from the idempotency key), with
 * the keys committed kept in the embedded store so that a replay after JetStream's duplicate window
 * is still skipped. See docs/nats.md.
 */
import { JetStreamApiError, type JetStreamClient, jetstream } from '@nats-io/jetstream';
import type { MsgHdrs } from '@nats-io/transport-node';
import { validateSubject } from '../../runtime/bus/subjects.ts';
import { encodeWith } from '../../runtime/codec.ts';
import { ClosedError, ConnectorError, messageOf, OptionsError, SluiceError } from '../../runtime/errors.ts';
import { intOption, knownKeys, optionKeys, optionsObject } from '../../runtime/options.ts';
import { committedBefore, rememberCommitted, sinkStore } from '../../runtime/sinks/committedKeys.ts';
import { IDEMPOTENCY_KEY_HEADER, messageIdOf, type Sink, type SinkRecord } from '../../runtime/sinks/sink.ts';
import { REVISION_HEADER } from '../../runtime/sinks/streamSink.ts';
import type { Store } from '../../runtime/store/types.ts';
import { closeConnection, type HeldConnection, type NatsConnectionRef, openConnection } from './config.ts';
import {
  CONTENT_TYPE,
  Codecs,
  carriedAsIs,
  carriedHeaders,
  contentTypeOf,
  MSG_ID,
  NATS_HEADERS,
  type NatsCodec,
  shownValue,
  UNCARRIED_RULE,
  writeHeaders,
} from './payload.ts';

export interface NatsSinkOptions<T = unknown> {
  /** Names the sink in errors and telemetry, and its key set in the store. @default `nats` or `jetstream` */
  name?: string;
  /** Connection options, or a connection you own and close. @default a connection to nats://127.0.0.1:4222 */
  connection?: NatsConnectionRef;
  /** The NATS subject of each record: one, or a function of the record. @default the record's envelope subject */
  subject?: string | ((record: SinkRecord<T>) => string);
  /**
   * Publish to JetStream: each message is acknowledged by its stream, with `Nats-Msg-Id` set from
   * the idempotency key (and revision). Without it, core publishes (at-most-once at the broker).
   * @default false
   */
  jetstream?: boolean;
  /** How values are encoded; its content type goes in the `Content-Type` header. @default 'json' */
  codec?: NatsCodec;
  /**
   * Write NATS headers: the envelope's, its key and event time, `sluice-idempotency-key`,
   * `sluice-revision` and `Content-Type` (and `Nats-Msg-Id` for JetStream, which is always sent).
   * `false` writes the payload alone, as a plain client does. Headers triple the client's cost of a
   * core publish (0.34x against 0.90x of the raw client's rate in `npm run bench -- nats`), while a
   * JetStream publish is bound by its acknowledgement. @default true with `jetstream`, else false
   */
  headers?: boolean;
  /** Publishes awaiting their acknowledgement at once, at most (JetStream). @default 256 */
  maxInFlight?: number;
  /** How long a publish acknowledgement (or a core flush) may take. @default 5000 */
  timeoutMs?: number;
  /**
   * The runtime's store, where the sink keeps each key it committed (and its revision): a replay
   * of a key already committed is skipped however late it comes, after JetStream's duplicate
   * window has passed and across restarts. Without it, de-duplication holds within the window only.
   */
  store?: Store;
}

/** The store namespace of a NATS sink's committed keys. */
export function natsSinkNamespace(name: string): string {
  return `sluice.nats-sink/${name}`;
}

const sinkKeys = optionKeys<keyof NatsSinkOptions>({
  name: true,
  connection: true,
  subject: true,
  jetstream: true,
  codec: true,
  headers: true,
  maxInFlight: true,
  timeoutMs: true,
  store: true,
});

/** Counts of what the sink did. */
export interface NatsSinkStats {
  /** Messages published (and acknowledged by JetStream, or flushed). */
  readonly published: number;
  /** Records skipped because the store held their key (a replay after a commit). */
  readonly skipped: number;
  /** JetStream acknowledgements that said the message was a duplicate within the window. */
  readonly duplicates: number;
  /** Publishes that failed (their batch was rejected and will be retried). */
  readonly failed: number;
}

/**
 * Connects and returns a NATS sink for `sinkActor` or `writeTo`. Rejects with a `ConnectorError`
 * when the server cannot be reached or refuses the credentials.
 *
 * @example
 * const out = await natsSink({ connection: { servers: url }, jetstream: true, subject: 'totals', store });
 * runtime.spawn(sinkActor({ name: 'to-nats', subscribe: 'totals.in', sink: out }));
 */
export async function natsSink<T = unknown>(options: NatsSinkOptions<T> = {}): Promise<NatsSink<T>> {
  const sink = new NatsSink<T>(options);
  await sink.open();
  return sink;
}

export class NatsSink<T = unknown> implements Sink<T> {
  readonly name: string;
  readonly #options: NatsSinkOptions<T>;
  readonly #jetstream: boolean;
  readonly #subject: (record: SinkRecord<T>) => string;
  readonly #codecs: Codecs;
  readonly #contentType: string | undefined;
  readonly #headers: boolean;
  readonly #maxInFlight: number;
  readonly #timeoutMs: number;
  readonly #store: Store | undefined;
  readonly #namespace: string;
  #held: HeldConnection | undefined;
  #js: JetStreamClient | undefined;
  #closed = false;
  readonly #stats = { published: 0, skipped: 0, duplicates: 0, failed: 0 };

  constructor(options: NatsSinkOptions<T>) {
    optionsObject('natsSink', options);
    knownKeys('natsSink', options, sinkKeys);
    this.#options = options;
    this.#jetstream = options.jetstream ?? false;
    if (typeof this.#jetstream !== 'boolean')
      throw new OptionsError('natsSink.jetstream', 'must be true or false', this.#jetstream);
    this.name = options.name ?? (this.#jetstream ? 'jetstream' : 'nats');
    if (typeof this.name !== 'string' || this.name === '')
      throw new OptionsError('natsSink.name', 'must be a non-empty string', this.name);
    const subject = options.subject;
    if (typeof subject === 'string') {
      validateSubject(subject, 'publish');
      this.#subject = () => subject;
    } else if (typeof subject === 'function') {
      this.#subject = (record) => {
        const s = subject(record);
        validateSubject(s, 'publish');
        return s;
      };
    } else if (subject === undefined) {
      this.#subject = (record) => {
        const s = record.envelope?.subject;
        if (s === undefined) {
          throw new OptionsError(
            'natsSink.subject',
            `record '${record.key}' has no envelope to take a subject from: give 'subject'`,
            s,
          );
        }
        return s;
      };
    } else {
      throw new OptionsError('natsSink.subject', 'must be a subject or a function of the record', subject);
    }
    this.#codecs = new Codecs(options.codec, undefined, 'natsSink');
    this.#contentType = contentTypeOf(this.#codecs.of('', undefined));
    this.#headers = options.headers ?? this.#jetstream;
    if (typeof this.#headers !== 'boolean')
      throw new OptionsError('natsSink.headers', 'must be true or false', this.#headers);
    this.#maxInFlight = intOption('natsSink.maxInFlight', options.maxInFlight, 256, 1);
    this.#timeoutMs = intOption('natsSink.timeoutMs', options.timeoutMs, 5_000, 1);
    sinkStore('natsSink.store', options.store);
    if (options.store !== undefined && !this.#jetstream) {
      throw new OptionsError(
        'natsSink.store',
        'keeps committed keys of JetStream publishes; core publishes are not de-duplicated',
        'store',
      );
    }
    this.#store = options.store;
    this.#namespace = natsSinkNamespace(this.name);
  }

  get stats(): NatsSinkStats {
    return { ...this.#stats };
  }

  /** @internal Connects; `natsSink()` calls it. */
  async open(): Promise<void> {
    this.#held = await openConnection(this.#options.connection, `natsSink(${this.name})`);
    if (this.#jetstream) this.#js = jetstream(this.#held.nc, { timeout: this.#timeoutMs });
  }

  /**
   * Publishes the batch and resolves once all of it is committed: every JetStream publish
   * acknowledged (and the keys stored), or every core message flushed to the server. Rejects with
   * a retryable `ConnectorError` when any publish fails; what did commit is remembered (JetStream)
   * and skipped when the batch comes again.
   */
  async write(records: readonly SinkRecord<T>[]): Promise<void> {
    const held = this.#held;
    if (this.#closed || held === undefined) throw new ClosedError(`natsSink(${this.name})`, 'the sink is closed');
    if (held.nc.isClosed()) throw new ConnectorError(this.name, 'the connection is closed', { retryable: true });
    // Encoded before anything is sent: a value the codec refuses fails the batch, nothing half-sent.
    const out: Outgoing[] = [];
    const maxPayload = held.nc.info?.max_payload;
    for (const record of records) {
      if (this.#store !== undefined && committedBefore(this.#store, this.#namespace, record)) {
        this.#stats.skipped++;
        continue;
      }
      const subject = this.#subject(record);
      const env = record.envelope;
      const codec = this.#codecs.of(subject, undefined);
      const bytes = encodeWith(codec, record.value, subject);
      const id = messageIdOf(record);
      let headers: MsgHdrs | undefined;
      if (this.#headers) {
        // A value NATS cannot carry would make the client throw mid-batch, the same on every retry.
        const refuse = (name: string, value: string) => this.#refuseHeader(record, subject, name, value);
        const from = env === undefined ? undefined : carriedHeaders(env.headers, refuse);
        if (env?.key !== undefined && !carriedAsIs(env.key)) refuse(NATS_HEADERS.key, env.key);
        if (!carriedAsIs(record.key)) refuse(IDEMPOTENCY_KEY_HEADER, record.key);
        const extra: Record<string, string> = { [IDEMPOTENCY_KEY_HEADER]: record.key };
        if (this.#contentType !== undefined) extra[CONTENT_TYPE] = this.#contentType;
        if (record.revision !== undefined) extra[REVISION_HEADER] = String(record.revision);
        headers = writeHeaders(from, env?.key, env?.eventTime, extra);
      }
      if (this.#jetstream && !carriedAsIs(id)) this.#refuseHeader(record, subject, MSG_ID, id);
      if (maxPayload !== undefined) this.#checkSize(record, subject, bytes, headers, id, maxPayload);
      out.push({ record, subject, bytes, headers, id });
    }
    if (out.length === 0) return;
    if (this.#jetstream) await this.#writeJetStream(out);
    else await this.#writeCore(out, held);
  }

  /**
   * The client refuses a message past the server's `max_payload` (payload and headers) when it is
   * published: in a core batch after the messages before it had gone out, so every retry sent
   * those again. Sending it again can never work, so it fails the batch before anything is sent.
   */
  #checkSize(
    record: SinkRecord<T>,
    subject: string,
    bytes: Uint8Array,
    headers: MsgHdrs | undefined,
    id: string,
    limit: number,
  ): void {
    let size = bytes.length;
    if (size <= limit && this.#jetstream) {
      // JetStream adds `Nats-Msg-Id: <id>` to the headers (and their `NATS/1.0` line when there are none).
      size += (headers === undefined ? 12 : 0) + 15 + Buffer.byteLength(id);
    }
    // The headers' text is what goes on the wire.
    if (size <= limit && headers !== undefined) size += Buffer.byteLength(headers.toString());
    if (size > limit) {
      throw new ConnectorError(
        this.name,
        `record '${record.key}' is ${size} bytes on '${subject}' (payload and headers), over the server's max_payload of ${limit} bytes`,
        { retryable: false },
      );
    }
  }

  /**
   * A record with a header value NATS cannot carry (a line break, which the client refuses, or
   * white space at either end, which NATS trims) fails the same way whenever it is sent: its batch
   * fails before anything is sent, not retryable, so `sinkActor` writes its batchmates and
   * dead-letters this one with the reason. A dead letter's reason is folded onto one line instead.
   */
  #refuseHeader(record: SinkRecord<T>, subject: string, name: string, value: string): never {
    throw new ConnectorError(
      this.name,
      `record '${record.key}' cannot be sent on '${subject}': its header '${name}' breaks the rule that ${UNCARRIED_RULE} (${shownValue(value)})`,
      { retryable: false },
    );
  }

  async #writeCore(out: readonly Outgoing[], held: HeldConnection): Promise<void> {
    try {
      for (const o of out)
        held.nc.publish(o.subject, o.bytes, o.headers === undefined ? undefined : { headers: o.headers });
      // The round trip proves the server read every message before it (TCP keeps their order).
      await withTimeout(held.nc.flush(), this.#timeoutMs, 'flush');
    } catch (error) {
      this.#stats.failed += out.length;
      throw new ConnectorError(this.name, `could not publish ${out.length} messages: ${messageOf(error)}`, {
        cause: error,
        retryable: true,
      });
    }
    this.#stats.published += out.length;
  }

  async #writeJetStream(out: readonly Outgoing[]): Promise<void> {
    const js = this.#js as JetStreamClient;
    const committed: [Outgoing, number][] = [];
    const errors: unknown[] = [];
    let next = 0;
    // A bounded number of publishes wait for their acknowledgement at once; each worker takes the next.
    const worker = async () => {
      while (next < out.length) {
        const o = out[next++] as Outgoing;
        try {
          const ack = await js.publish(o.subject, o.bytes, {
            msgID: o.id,
            headers: o.headers,
            timeout: this.#timeoutMs,
          });
          if (ack.duplicate) this.#stats.duplicates++;
          committed.push([o, ack.seq]);
        } catch (error) {
          errors.push(error);
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(this.#maxInFlight, out.length) }, worker));
    this.#stats.published += committed.length;
    this.#stats.failed += errors.length;
    // Kept even when part of the batch failed: its retry skips what did commit.
    if (this.#store !== undefined) {
      await rememberCommitted(
        this.#store,
        this.#namespace,
        committed.map(([o]) => o.record),
        (_, i) => ({ s: (committed[i] as (typeof committed)[number])[1] }),
      );
    }
    if (errors.length > 0) {
      const first = errors[0];
      // A retryable ConnectorError says the broker was lost, and its batch is retried whole. A
      // message the stream refused for what it is fails again, whole batch or not: said so, the
      // batch's inputs are retried one at a time and only that one is dead-lettered.
      const retryable = errors.every((e) => !refusedForGood(e) && (!(e instanceof SluiceError) || e.retryable));
      throw new ConnectorError(
        this.name,
        `${errors.length} of ${out.length} JetStream publishes were not acknowledged (first on '${out[0]?.subject}'): ${messageOf(first)}`,
        { cause: first, retryable },
      );
    }
  }

  /** Flushes and closes the connection if the sink opened it. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await closeConnection(this.#held);
  }
}

interface Outgoing {
  readonly record: SinkRecord<unknown>;
  readonly subject: string;
  readonly bytes: Uint8Array;
  readonly headers: MsgHdrs | undefined;
  readonly id: string;
}

/**
 * JetStream's answers that refuse the message itself, whenever it is sent: larger than the
 * stream's `max_msg_size` (10054), headers over its limit (10097).
 */
const REFUSED_FOR_GOOD = new Set([10_054, 10_097]);

function refusedForGood(error: unknown): boolean {
  return error instanceof JetStreamApiError && REFUSED_FOR_GOOD.has(error.code);
}

function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    promise,
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what} timed out after ${ms} ms`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}
