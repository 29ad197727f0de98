/**
 * The NATS transport of the bus: `createRuntime({ transport: natsTransport({ servers }) })` runs the
 * same actors with their messages on NATS, so actors in several processes share subjects and queue
 * groups. Publishes go to NATS with the envelope in headers; subscriptions (queue groups included)
 * are NATS subscriptions feeding the local mailboxes; request/reply uses NATS inboxes; durable
 * subjects are JetStream streams read by durable pull consumers (the connector's JetStream source).
 * See docs/nats.md.
 */
import {
  type JetStreamClient,
  type JetStreamManager,
  jetstream,
  jetstreamManager,
  type StreamConfig as NatsStreamConfig,
} from '@nats-io/jetstream';
import {
  createInbox,
  errors,
  type Msg,
  type MsgHdrs,
  type NatsConnection,
  type Subscription as NatsSubscription,
} from '@nats-io/transport-node';
import { trimOldest } from '../../runtime/bounded.ts';
import type { RequestManyLimits, Route } from '../../runtime/bus/bus.ts';
import { subjectMatches, validateSubject } from '../../runtime/bus/subjects.ts';
import { encodeWith } from '../../runtime/codec.ts';
import { createEnvelope, type Envelope } from '../../runtime/envelope.ts';
import {
  ClosedError,
  ConnectorError,
  MailboxFullError,
  messageOf,
  NoRespondersError,
  OptionsError,
  PermissionError,
  StreamError,
  TimeoutError,
} from '../../runtime/errors.ts';
import { intOption, knownKeys, oneOf, optionKeys, optionsObject } from '../../runtime/options.ts';
import { IDEMPOTENCY_KEY_HEADER } from '../../runtime/sinks/sink.ts';
import { checkName, patternsOverlap } from '../../runtime/streams/stream.ts';
import type { DurableRef, RetentionOptions, StreamConfig } from '../../runtime/streams/types.ts';
import type { Transport, TransportHost } from '../../runtime/transport/transport.ts';
import {
  clientOptions,
  closeConnection,
  type HeldConnection,
  type NatsConnectionOptions,
  openConnection,
} from './config.ts';
import {
  CONTENT_TYPE,
  Codecs,
  carriedAsIs,
  carriedHeaders,
  contentTypeOf,
  type NatsCodec,
  readHeaders,
  shownValue,
  UNCARRIED_RULE,
  writeHeaders,
} from './payload.ts';
import { NatsSource } from './source.ts';

/** Headers the transport adds to carry an envelope's own fields (besides `sluice-key` and `sluice-event-time`). */
export const TRANSPORT_HEADERS = Object.freeze({ id: 'sluice-id', attempt: 'sluice-attempt' });

export const publishConfirms = ['flush', 'none'] as const;
/**
 * When an awaited publish resolves. `flush`: once the server has read it (one round trip shared by
 * the publishes of the same turn), so a publish the server's permissions deny rejects with a
 * `PermissionError`, and a publisher cannot run ahead of the server. `none`: once the client took
 * it (buffered); denials are reported to `onError` only.
 */
export type PublishConfirm = (typeof publishConfirms)[number];

export interface NatsTransportOptions extends NatsConnectionOptions {
  /** The codec of payloads without a known `Content-Type` (and of what is published). @default the bus's codec (msgpack) */
  codec?: NatsCodec;
  /** Codecs per subject pattern (first match). */
  codecs?: Readonly<Record<string, NatsCodec>>;
  /** @default 'flush' */
  publishConfirm?: PublishConfirm;
  /**
   * Messages received by one subscription and not yet accepted by its mailbox, at most: core NATS
   * cannot be paused, so past this the subscription drops (and counts) what arrives, as
   * nats-server cuts off a slow consumer. @default 65536
   */
  maxPending?: number;
  /** How long a JetStream publish waits for its acknowledgement. @default 5000 */
  jetstreamTimeoutMs?: number;
  /** Errors that have no caller to reject: a subscription the server denied, a message that does not decode. @default logs */
  onError?: (error: Error) => void;
}

/** Counts of what the transport did. */
export interface NatsTransportStats {
  readonly published: number;
  readonly received: number;
  /** Received and dropped: past `maxPending`, refused by a `fail` mailbox, or not decodable. */
  readonly dropped: number;
  /** Operations the server denied. */
  readonly denied: number;
}

const transportKeys = optionKeys<Exclude<keyof NatsTransportOptions, keyof NatsConnectionOptions>>({
  codec: true,
  codecs: true,
  publishConfirm: true,
  maxPending: true,
  jetstreamTimeoutMs: true,
  onError: true,
});

/**
 * A NATS transport for `createRuntime({ transport })`. It connects at once; `await
 * transport.ready()` waits for the connection, the streams and the subscriptions made so far to
 * be on the server (and rejects with a `ConnectorError` when the server cannot be reached or
 * refuses the credentials). Close it after `runtime.stop()`.
 *
 * @example
 * const transport = natsTransport({ servers: 'nats://127.0.0.1:4222' });
 * const runtime = createRuntime({ transport });
 */
export function natsTransport(options: NatsTransportOptions = {}): NatsTransport {
  return new NatsTransport(options);
}

export class NatsTransport implements Transport {
  readonly name = 'nats';
  readonly #options: NatsTransportOptions;
  readonly #connection: NatsConnectionOptions;
  readonly #confirm: PublishConfirm;
  readonly #maxPending: number;
  readonly #jsTimeoutMs: number;
  readonly #onError: (error: Error) => void;
  #host: TransportHost | undefined;
  #codecs: Codecs | undefined;
  #held: HeldConnection | undefined;
  #nc: NatsConnection | undefined;
  readonly #connected: Promise<NatsConnection>;
  #js: JetStreamClient | undefined;
  #jsm: Promise<JetStreamManager> | undefined;
  #closed = false;
  #closing: Promise<void> | undefined;
  readonly #stats = { published: 0, received: 0, dropped: 0, denied: 0 };
  readonly #subs = new Set<RemoteSubscription>();
  /** Reply subjects of requests received here, which a restricted client may answer once. */
  readonly #replies = new Set<string>();
  /** Flush rounds under way, each with the subjects published in it and the denials seen meanwhile. */
  #round: FlushRound | undefined;
  readonly #rounds = new Set<FlushRound>();
  /** Durable subjects: stream name -> its config and its definition on the server. */
  readonly #streams = new Map<string, { readonly config: StreamConfig; readonly defined: Promise<void> }>();
  readonly #streamOf = new Map<string, string | null>();
  /** One JetStream source per durable consumer, shared by the actors that read it. */
  readonly #durables = new Map<string, DurableSource>();

  constructor(options: NatsTransportOptions) {
    optionsObject('natsTransport', options);
    const connection: Record<string, unknown> = {};
    const own: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(options)) {
      if (transportKeys.has(k)) own[k] = v;
      else connection[k] = v;
    }
    knownKeys('natsTransport', own, transportKeys);
    this.#options = options;
    this.#connection = connection as NatsConnectionOptions;
    this.#confirm = oneOf('natsTransport.publishConfirm', options.publishConfirm, publishConfirms, 'flush');
    this.#maxPending = intOption('natsTransport.maxPending', options.maxPending, 65_536, 1);
    this.#jsTimeoutMs = intOption('natsTransport.jetstreamTimeoutMs', options.jetstreamTimeoutMs, 5_000, 1);
    if (options.onError !== undefined && typeof options.onError !== 'function') {
      throw new OptionsError('natsTransport.onError', 'must be a function of an error', options.onError);
    }
    const report = options.onError ?? ((error: Error) => this.#host?.log.error(`natsTransport: ${error.message}`));
    // Called from the client's callbacks, where a throw ends the loop that reads the connection
    // (or from the status loop, as an unhandled rejection): a handler's own failure is logged.
    this.#onError = (error) => {
      try {
        report(error);
      } catch (thrown) {
        this.#host?.log.error(`natsTransport: onError threw (${messageOf(thrown)}) on: ${error.message}`);
      }
    };
    // Checked now, so a bad option throws here rather than in the connection promise.
    if (options.codec !== undefined) new Codecs(options.codec, options.codecs, 'natsTransport');
    // The connection's options are checked now, so a bad one throws here, not in a promise.
    clientOptions(this.#connection, 'natsTransport');
    this.#connected = openConnection(this.#connection, 'natsTransport').then((held) => {
      this.#held = held;
      this.#nc = held.nc;
      this.#js = jetstream(held.nc, { timeout: this.#jsTimeoutMs });
      void this.#watch(held.nc);
      for (const sub of this.#subs) sub.open(held.nc);
      return held.nc;
    });
    // Reported by ready() and by each operation that waits for it, never unhandled.
    this.#connected.catch(() => undefined);
  }

  /** What the transport did so far. */
  get stats(): NatsTransportStats {
    return { ...this.#stats };
  }

  /** The connection, once made (for tests and tools: the transport owns it). */
  get connection(): NatsConnection | undefined {
    return this.#nc;
  }

  bind(host: TransportHost): void {
    if (this.#host !== undefined) {
      throw new OptionsError('runtime.transport', 'a transport serves one runtime; make one per runtime', this.name);
    }
    this.#host = host;
    this.#codecs = new Codecs(this.#options.codec ?? host.bus.codec, this.#options.codecs, 'natsTransport');
  }

  /**
   * Resolves once connected, with the streams defined so far created and the subscriptions made so
   * far known to the server (a message published after this reaches them).
   */
  async ready(): Promise<void> {
    const nc = await this.#connected;
    await Promise.all([...this.#streams.values()].map((s) => s.defined));
    await nc.flush();
  }

  // ---- publish ----

  publish(env: Envelope, wait: boolean): Promise<void> | boolean {
    if (this.#closed) throw new ClosedError('natsTransport', 'the transport is closed');
    const stream = this.#streams.size === 0 ? undefined : this.#streamFor(env.subject);
    if (stream !== undefined) {
      if (!wait) {
        throw new StreamError(
          stream,
          'tryPublish cannot be used on a subject a JetStream stream captures: its acknowledgement cannot be waited for here; use publish',
        );
      }
      return this.#publishJetStream(env, stream);
    }
    const nc = this.#nc;
    if (nc === undefined) {
      if (!wait) return false;
      return this.#connected.then(() => this.publish(env, true) as Promise<void>);
    }
    const { headers, bytes } = this.#encode(env);
    if (this.#replies.size > 0) this.#replies.delete(env.subject);
    try {
      nc.publish(env.subject, bytes, env.replyTo === undefined ? { headers } : { headers, reply: env.replyTo });
    } catch (error) {
      throw this.#failure(error, 'publish', env.subject);
    }
    this.#stats.published++;
    if (!wait) return true;
    return this.#confirm === 'flush' ? this.#flushed(nc, env.subject) : Promise.resolve();
  }

  /** The payload by the subject's codec, and the envelope's fields in headers (with the codec's content type). */
  #encode(env: Envelope): { headers: MsgHdrs; bytes: Uint8Array } {
    const codec = (this.#codecs as Codecs).of(env.subject, undefined);
    const bytes = encodeWith(codec, env.data, env.subject);
    // A dead letter's reason travels on one line; any other value NATS cannot carry is refused.
    const envHeaders = carriedHeaders(env.headers, (name, value) => refuseHeader(name, value, env.subject));
    if (env.key !== undefined) carried('sluice-key', env.key, env.subject);
    carried(TRANSPORT_HEADERS.id, env.id, env.subject);
    const extra: Record<string, string> = { [TRANSPORT_HEADERS.id]: env.id };
    if (env.attempt !== 1) extra[TRANSPORT_HEADERS.attempt] = String(env.attempt);
    const contentType = contentTypeOf(codec);
    if (contentType !== undefined) extra[CONTENT_TYPE] = contentType;
    return { headers: writeHeaders(envHeaders, env.key, env.eventTime, extra), bytes };
  }

  /**
   * Resolves once the server has read the publish: the publishes of one turn share one round trip.
   * A denial the server sends for the subject before its answer rejects the publish.
   */
  #flushed(nc: NatsConnection, subject: string): Promise<void> {
    let round = this.#round;
    if (round === undefined) {
      const r: FlushRound = { subjects: new Set(), denied: new Map(), done: Promise.resolve() };
      this.#round = r;
      this.#rounds.add(r);
      r.done = (async () => {
        // Publishes made in this turn join the round before its PING goes out.
        await Promise.resolve();
        if (this.#round === r) this.#round = undefined;
        try {
          await nc.flush();
        } finally {
          // The server's -ERR comes before its PONG; its status event a few promise steps later.
          await new Promise<void>((resolve) => setImmediate(resolve));
          this.#rounds.delete(r);
        }
      })();
      round = r;
    }
    round.subjects.add(subject);
    const r = round;
    return r.done.then(
      () => {
        const denial = r.denied.get(subject);
        if (denial !== undefined) throw denial;
      },
      (error: unknown) => {
        throw this.#failure(error, 'publish', subject);
      },
    );
  }

  async #publishJetStream(env: Envelope, stream: string): Promise<void> {
    await (this.#streams.get(stream) as { defined: Promise<void> }).defined;
    await this.#connected;
    const { headers, bytes } = this.#encode(env);
    // A retried publish keeps its message id, so JetStream stores it once within its duplicate window.
    const msgID = env.headers[IDEMPOTENCY_KEY_HEADER] ?? env.id;
    try {
      await (this.#js as JetStreamClient).publish(env.subject, bytes, { msgID, headers, timeout: this.#jsTimeoutMs });
    } catch (error) {
      throw this.#failure(error, 'publish', env.subject);
    }
    this.#stats.published++;
  }

  #streamFor(subject: string): string | undefined {
    let name = this.#streamOf.get(subject);
    if (name === undefined) {
      name = null;
      for (const s of this.#streams.values()) {
        if (s.config.subjects.some((p) => subjectMatches(p, subject))) {
          name = s.config.name;
          break;
        }
      }
      if (this.#streamOf.size >= 10_000) this.#streamOf.clear();
      this.#streamOf.set(subject, name);
    }
    return name ?? undefined;
  }

  // ---- subscribe ----

  subscribe(pattern: string, route: Route): () => void {
    if (this.#closed) throw new ClosedError('natsTransport', 'the transport is closed');
    const sub = new RemoteSubscription(this, pattern, route);
    this.#subs.add(sub);
    if (this.#nc !== undefined) sub.open(this.#nc);
    return () => {
      this.#subs.delete(sub);
      sub.close();
    };
  }

  /** @internal A message for a subscription: the envelope it carries. */
  decode(msg: Msg): Envelope {
    this.#stats.received++;
    const codecs = this.#codecs as Codecs;
    const reply = msg.reply === '' ? undefined : msg.reply;
    if (reply !== undefined) this.#remember(reply);
    const now = (this.#host as TransportHost).clock.now();
    if (msg.headers === undefined) {
      // A plain client's message: its bytes by the subject's codec, a new id.
      const data = codecs.of(msg.subject, undefined).decode(msg.data, msg.subject);
      return createEnvelope(msg.subject, data, reply === undefined ? undefined : { replyTo: reply }, now);
    }
    const h = readHeaders(msg.headers);
    const data = codecs.of(msg.subject, h.contentType).decode(msg.data, msg.subject);
    const headers = h.headers;
    const id = headers[TRANSPORT_HEADERS.id];
    const attempt = Number(headers[TRANSPORT_HEADERS.attempt] ?? 1);
    delete headers[TRANSPORT_HEADERS.id];
    delete headers[TRANSPORT_HEADERS.attempt];
    return createEnvelope(
      msg.subject,
      data,
      {
        id: id === undefined || id === '' || id.length > 256 ? undefined : id,
        key: h.key,
        eventTime: h.eventTime,
        headers,
        replyTo: reply,
        attempt: Number.isSafeInteger(attempt) && attempt >= 1 ? attempt : 1,
      },
      now,
    );
  }

  /** @internal Delivers into a route's mailbox. */
  deliver(route: Route, env: Envelope, wait: boolean): Promise<void> | boolean {
    return (this.#host as TransportHost).deliver(route, env, wait);
  }

  /** @internal */
  get maxPending(): number {
    return this.#maxPending;
  }

  /** @internal Something received that no mailbox will have: counted, and reported once in a while. */
  dropped(pattern: string, reason: string): void {
    if (this.#stats.dropped++ % 10_000 === 0) {
      this.#onError(
        new ConnectorError(
          'natsTransport',
          `a message on '${pattern}' was dropped: ${reason} (${this.#stats.dropped} so far)`,
        ),
      );
    }
  }

  /** @internal A subscription the server refused or ended. */
  subscriptionFailed(pattern: string, queue: string | undefined, error: unknown): void {
    this.#onError(this.#failure(error, 'subscribe', pattern, queue));
  }

  #remember(reply: string): void {
    this.#replies.add(reply);
    trimOldest(this.#replies, 10_000);
  }

  awaitsReply(subject: string): boolean {
    return this.#replies.has(subject);
  }

  // ---- request/reply ----

  async request(env: Envelope, timeoutMs: number): Promise<Envelope> {
    const nc = await this.#connected;
    const { headers, bytes } = this.#encode(env);
    let reply: Msg;
    try {
      reply = await nc.request(env.subject, bytes, { timeout: timeoutMs, headers });
    } catch (error) {
      throw this.#failure(error, 'publish', env.subject, undefined, timeoutMs);
    }
    return this.decode(reply);
  }

  /**
   * Scatter-gather on an inbox of its own: every reply until the count, the time, a stall or the
   * sentinel. The server answers a request nobody listens to with a 503 status: `NoRespondersError`.
   */
  async requestMany(env: Envelope, limits: RequestManyLimits): Promise<Envelope[]> {
    const nc = await this.#connected;
    const { headers, bytes } = this.#encode(env);
    // The client's own prefix, as its request uses: a user may be allowed no other inbox.
    const inbox = createInbox(this.#connection.client?.inboxPrefix);
    return new Promise<Envelope[]>((resolve, reject) => {
      const replies: Envelope[] = [];
      let stall: NodeJS.Timeout | undefined;
      let sub: NatsSubscription | undefined;
      let settled = false;
      const end = () => {
        settled = true;
        clearTimeout(timer);
        clearTimeout(stall);
        sub?.unsubscribe();
      };
      const finish = () => {
        end();
        resolve(replies);
      };
      const fail = (error: unknown) => {
        end();
        reject(error);
      };
      const timer = setTimeout(finish, limits.timeoutMs);
      const collect = (msg: Msg) => {
        if (msg.headers?.code === 503 && msg.data.length === 0) {
          if (replies.length === 0) fail(new NoRespondersError(env.subject));
          else finish();
          return;
        }
        let reply: Envelope;
        try {
          reply = this.decode(msg);
        } catch (e) {
          this.#onError(e instanceof Error ? e : new Error(messageOf(e)));
          return;
        }
        if (limits.sentinel?.(reply) === true) return finish();
        replies.push(reply);
        if (replies.length >= limits.maxReplies) return finish();
        if (limits.stallMs !== undefined) {
          clearTimeout(stall);
          stall = setTimeout(finish, limits.stallMs);
        }
      };
      try {
        sub = nc.subscribe(inbox, {
          callback: (error, msg) => {
            if (error !== null) return fail(this.#failure(error, 'subscribe', inbox));
            // The client reads the whole connection in the loop that calls this: a throw here
            // (the caller's sentinel) would end that loop, and every subscription and request with it.
            try {
              collect(msg);
            } catch (thrown) {
              fail(thrown);
            }
          },
        });
      } catch (error) {
        // A connection closed meanwhile: the timer must not outlive the call.
        fail(this.#failure(error, 'subscribe', inbox));
        return;
      }
      // The inbox ends with the connection (the transport's close): no reply can come any more.
      const ended = () => {
        if (settled) return;
        fail(new ClosedError('natsTransport', `the connection closed (requestMany on '${env.subject}')`));
      };
      sub.closed.then(ended, ended);
      try {
        nc.publish(env.subject, bytes, { headers, reply: inbox });
        this.#stats.published++;
      } catch (error) {
        fail(this.#failure(error, 'publish', env.subject));
        return;
      }
      // The server answers a denied publish with an error and nothing else: without its round
      // trip the request would wait out its time and resolve with no replies, the denial unseen.
      this.#flushed(nc, env.subject).catch((error: unknown) => {
        if (error instanceof PermissionError) fail(error);
      });
    });
  }

  // ---- durable subjects ----

  defineStream(config: StreamConfig): void {
    optionsObject('stream', config);
    checkName(config.name, 'stream.name');
    if (!Array.isArray(config.subjects) || config.subjects.length === 0) {
      throw new OptionsError(
        `stream '${config.name}'.subjects`,
        'must be a non-empty array of subjects',
        config.subjects,
      );
    }
    for (const s of config.subjects) validateSubject(s, 'subscribe');
    if (this.#streams.has(config.name)) {
      throw new OptionsError('stream.name', 'must be unique in the runtime; a stream of that name exists', config.name);
    }
    for (const other of this.#streams.values()) {
      for (const a of config.subjects) {
        for (const b of other.config.subjects) {
          if (patternsOverlap(a, b)) {
            throw new OptionsError(
              `stream '${config.name}'.subjects`,
              `'${a}' overlaps '${b}' of stream '${other.config.name}': a message would be stored twice`,
              config.subjects,
            );
          }
        }
      }
    }
    const r = config.retention ?? {};
    optionsObject(`stream '${config.name}'.retention`, r);
    const limit = (option: keyof RetentionOptions, value: number | undefined) =>
      value === undefined ? undefined : intOption(`stream '${config.name}'.retention.${option}`, value, 0, 1);
    const maxAgeMs = limit('maxAgeMs', r.maxAgeMs);
    const maxBytes = limit('maxBytes', r.maxBytes);
    const maxMessages = limit('maxMessages', r.maxMessages);
    const wanted: Partial<NatsStreamConfig> & { name: string } = {
      name: config.name,
      subjects: [...config.subjects],
      // A limit not given is asked at the server's default (none), so one removed from the
      // configuration is removed from the stream; a merge would keep it there.
      max_age: maxAgeMs === undefined ? 0 : maxAgeMs * 1_000_000,
      max_bytes: maxBytes ?? -1,
      max_msgs: maxMessages ?? -1,
    };
    const defined = this.#manager().then(async (jsm) => {
      // Made when missing, updated to this configuration when it exists: the job declares its streams.
      // Several processes of one job define the same stream at once; the server may refuse the add
      // that lost the race (as overlapping "an existing stream": its own), so a refused add looks again.
      for (let attempt = 1; ; attempt++) {
        const existing = await jsm.streams.info(config.name).catch(() => undefined);
        if (existing !== undefined) {
          await convergeStream(jsm, existing.config, wanted);
          return;
        }
        try {
          await jsm.streams.add(wanted);
          return;
        } catch (error) {
          if (attempt < 3) {
            // A moment for the winner's stream to show (a cluster answers the look-up from any
            // server); a real refusal (JetStream off, a true overlap) fails after the third try.
            await new Promise((resolve) => setTimeout(resolve, 50 * attempt));
            continue;
          }
          throw new StreamError(config.name, `could not define the JetStream stream: ${messageOf(error)}`);
        }
      }
    });
    defined.catch((error: unknown) => this.#onError(error instanceof Error ? error : new Error(messageOf(error))));
    this.#streams.set(config.name, { config: Object.freeze({ ...config }), defined });
    this.#streamOf.clear();
  }

  #manager(): Promise<JetStreamManager> {
    this.#jsm ??= this.#connected.then((nc) => jetstreamManager(nc, { timeout: this.#jsTimeoutMs }));
    return this.#jsm;
  }

  durable(ref: DurableRef): () => void {
    const key = `${ref.stream}/${ref.consumer}`;
    let d = this.#durables.get(key);
    if (d === undefined) {
      d = { users: 0, source: undefined, started: undefined };
      this.#durables.set(key, d);
      const held = d;
      held.started = this.#startDurable(ref, held).catch((error: unknown) => {
        this.#onError(
          new ConnectorError(`nats:${key}`, `the durable subscription could not start: ${messageOf(error)}`, {
            cause: error,
          }),
        );
      });
    }
    d.users++;
    const held = d;
    let ended = false;
    return () => {
      if (ended) return;
      ended = true;
      if (--held.users > 0) return;
      this.#durables.delete(key);
      void held.started?.then(() => held.source?.close());
    };
  }

  async #startDurable(ref: DurableRef, held: DurableSource): Promise<void> {
    const nc = await this.#connected;
    await this.#streams.get(ref.stream)?.defined;
    const o = ref.options;
    const filter = o.filter === undefined ? undefined : typeof o.filter === 'string' ? o.filter : o.filter.name;
    const source = new NatsSource({
      name: `nats:${ref.stream}/${ref.consumer}`,
      connection: nc,
      jetstream: {
        stream: ref.stream,
        consumer: ref.consumer,
        ...(filter !== undefined ? { filterSubject: filter } : {}),
        ...(o.deliver !== undefined ? { deliver: o.deliver } : {}),
        ...(o.ackWaitMs !== undefined ? { ackWaitMs: o.ackWaitMs } : {}),
        ...(o.maxAckPending !== undefined ? { maxAckPending: o.maxAckPending } : {}),
        ...(o.maxDeliver !== undefined ? { maxDeliver: o.maxDeliver } : {}),
        ...(o.backoff !== undefined ? { backoffMs: o.backoff } : {}),
      },
      // Delivered in this process only: the acknowledgement follows each input's settlement here.
      subject: ref.deliverSubject,
      codec: this.#codecs?.of('', undefined),
      ...(this.#options.codecs !== undefined ? { codecs: this.#options.codecs } : {}),
      deadLetter: o.deadLetter ?? `$DLQ.${ref.stream}.${ref.consumer}`,
    });
    held.source = source;
    if (held.users === 0) return;
    const host = this.#host as TransportHost;
    await source.start({ bus: host.bus, telemetry: host.telemetry, clock: host.clock }, { logger: host.log });
  }

  quiesce(): void {
    // Durable sources pull nothing while the bus refuses outside input (see NatsSource).
  }

  async stopDurables(): Promise<void> {
    const all = [...this.#durables.values()];
    this.#durables.clear();
    await Promise.all(
      all.map(async (d) => {
        await d.started;
        await d.source?.close();
      }),
    );
  }

  /** Stops the durable subscriptions, ends the subscriptions and closes the connection (after a flush). */
  close(): Promise<void> {
    // A second caller (the application and a shutdown hook) waits for the same close, not for nothing.
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    this.#closed = true;
    await this.stopDurables();
    for (const sub of this.#subs) sub.close();
    this.#subs.clear();
    await this.#connected.catch(() => undefined);
    if (this.#nc !== undefined && !this.#nc.isClosed()) await this.#nc.flush().catch(() => undefined);
    await closeConnection(this.#held);
  }

  // ---- errors ----

  /** Watches the connection's status: the server's denials of publishes reach the flush rounds. */
  async #watch(nc: NatsConnection): Promise<void> {
    for await (const s of nc.status()) {
      if (s.type !== 'error') continue;
      const error = (s as { error?: unknown }).error;
      if (!(error instanceof errors.PermissionViolationError) || error.operation !== 'publish') continue;
      const denial = this.#failure(error, 'publish', error.subject);
      let waited = false;
      for (const round of this.#rounds) {
        if (round.subjects.has(error.subject)) {
          round.denied.set(error.subject, denial);
          waited = true;
        }
      }
      if (!waited) this.#onError(denial);
    }
  }

  /** The client's error as Sluice's: denied, no responders, timed out, or a connector error. */
  #failure(
    error: unknown,
    operation: 'publish' | 'subscribe',
    subject: string,
    queue?: string,
    timeoutMs?: number,
  ): Error {
    const cause = error instanceof Error && error.cause instanceof Error ? error.cause : undefined;
    const violation =
      error instanceof errors.PermissionViolationError
        ? error
        : cause instanceof errors.PermissionViolationError
          ? cause
          : undefined;
    if (violation !== undefined) {
      this.#stats.denied++;
      const host = this.#host as TransportHost;
      const who = this.#connection.user ?? this.#connection.name ?? 'sluice';
      const rule = `the NATS server denied it (the permissions of user '${who}')${queue === undefined ? '' : ` in queue group '${queue}'`}`;
      return host === undefined
        ? new PermissionError(operation, subject, who, rule)
        : host.bus.denied(operation === 'publish' ? 'publish' : 'subscribe', violation.subject || subject, who, rule);
    }
    if (error instanceof errors.RequestError && error.isNoResponders()) return new NoRespondersError(subject);
    if (error instanceof errors.NoRespondersError || cause instanceof errors.NoRespondersError) {
      return new NoRespondersError(subject);
    }
    if (error instanceof errors.TimeoutError || cause instanceof errors.TimeoutError) {
      return new TimeoutError('request', subject, timeoutMs ?? 0);
    }
    if (
      error instanceof errors.ClosedConnectionError ||
      error instanceof errors.DrainingConnectionError ||
      cause instanceof errors.ClosedConnectionError ||
      // What the client rejects a request under way with when its connection closes.
      (error instanceof errors.RequestError && error.message === 'connection closed')
    ) {
      return new ClosedError('natsTransport', `the connection is closed (${operation} on '${subject}')`);
    }
    if (error instanceof MailboxFullError || error instanceof StreamError) return error;
    if (error instanceof errors.InvalidArgumentError || cause instanceof errors.InvalidArgumentError) {
      // The client refuses the message itself (over the server's max_payload): sending it again
      // gives the same answer, so a retry policy must dead-letter it rather than spin on it.
      return new ConnectorError('natsTransport', `${operation} on '${subject}' was refused: ${messageOf(error)}`, {
        cause: error,
        retryable: false,
      });
    }
    return new ConnectorError('natsTransport', `${operation} on '${subject}' failed: ${messageOf(error)}`, {
      cause: error,
      retryable: true,
    });
  }
}

/**
 * Updates an existing stream to what a runtime's configuration says of it (its subjects and its
 * retention limits, a limit not given at the server's default). What the configuration cannot say
 * (storage, replicas, retention policy, per-subject limits, made by hand or by another tool) is
 * the stream owner's and stays as it is: the update starts from the stream's own configuration.
 */
async function convergeStream(
  jsm: JetStreamManager,
  current: NatsStreamConfig,
  wanted: Partial<NatsStreamConfig> & { name: string },
): Promise<void> {
  try {
    await jsm.streams.update(wanted.name, { ...current, ...wanted });
  } catch (error) {
    throw new StreamError(
      wanted.name,
      `could not update the JetStream stream to this configuration (subjects and retention limits): ${messageOf(error)}`,
    );
  }
}

/** Refuses a header value NATS would refuse or trim, unless it carries it as it is. */
function carried(name: string, value: string, subject: string): void {
  if (!carriedAsIs(value)) refuseHeader(name, value, subject);
}

/**
 * Refuses a header value NATS would refuse or trim: the client rejects a line break with an error
 * of its own, and both ends of the wire trim white space, so the receiver would see another value.
 * Sending it again changes nothing, so the error is not retryable.
 */
function refuseHeader(name: string, value: string, subject: string): never {
  throw new ConnectorError(
    'natsTransport',
    `header '${name}' of a message on '${subject}' cannot travel over NATS: ${UNCARRIED_RULE} (${shownValue(value)})`,
    { retryable: false },
  );
}

interface FlushRound {
  readonly subjects: Set<string>;
  readonly denied: Map<string, Error>;
  done: Promise<void>;
}

interface DurableSource {
  users: number;
  source: NatsSource | undefined;
  started: Promise<void> | undefined;
}

/**
 * One bus route's NATS subscription. Core NATS cannot be paused: what the mailbox cannot take now
 * waits here, in order, up to the transport's `maxPending`, and is dropped (and counted) past it.
 */
class RemoteSubscription {
  readonly #transport: NatsTransport;
  readonly #pattern: string;
  readonly #route: Route;
  #sub: NatsSubscription | undefined;
  #closed = false;
  readonly #queue: Envelope[] = [];
  #draining = false;

  constructor(transport: NatsTransport, pattern: string, route: Route) {
    this.#transport = transport;
    this.#pattern = pattern;
    this.#route = route;
  }

  open(nc: NatsConnection): void {
    if (this.#closed || this.#sub !== undefined) return;
    const route = this.#route;
    this.#sub = nc.subscribe(this.#pattern, {
      ...(route.queue !== undefined ? { queue: route.queue } : {}),
      ...(route.max !== undefined ? { max: route.max } : {}),
      callback: (error, msg) => {
        if (error !== null) {
          this.#transport.subscriptionFailed(this.#pattern, route.queue, error);
          return;
        }
        this.#onMessage(msg);
      },
    });
  }

  #onMessage(msg: Msg): void {
    if (this.#closed) return;
    let env: Envelope;
    try {
      env = this.#transport.decode(msg);
    } catch (error) {
      this.#transport.dropped(this.#pattern, `it does not decode: ${messageOf(error)}`);
      return;
    }
    if (this.#queue.length === 0) {
      try {
        if (this.#transport.deliver(this.#route, env, false) === true) return;
      } catch (error) {
        this.#transport.dropped(this.#pattern, messageOf(error));
        return;
      }
    }
    if (this.#queue.length >= this.#transport.maxPending) {
      this.#transport.dropped(this.#pattern, `${this.#queue.length} messages wait for the mailbox (maxPending)`);
      return;
    }
    this.#queue.push(env);
    if (!this.#draining) void this.#drain();
  }

  async #drain(): Promise<void> {
    this.#draining = true;
    try {
      while (this.#queue.length > 0 && !this.#closed) {
        const env = this.#queue[0] as Envelope;
        try {
          await this.#transport.deliver(this.#route, env, true);
        } catch (error) {
          this.#transport.dropped(this.#pattern, messageOf(error));
        }
        this.#queue.shift();
      }
    } finally {
      this.#draining = false;
    }
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#queue.length = 0;
    try {
      this.#sub?.unsubscribe();
    } catch {
      // The connection is closed: the server dropped the subscription with it.
    }
  }
}
