/**
 * The MQTT source: topic filters subscribed at QoS 0 or 1, each message published on the bus (on
 * one subject, or on the subject its topic maps to) no faster than the mailboxes take it, and a
 * QoS 1 message's PUBACK sent once it settled. MQTT wants PUBACKs in arrival order, so they go out
 * as a Kafka offset commit does: when the oldest unsettled message settles, for it and every
 * settled one after it. mqtt.js is told to move on at once and the source holds the PUBACK; the
 * window of messages not acknowledged is bounded by the receive maximum the source announces (and
 * by pausing mqtt.js's reads should a broker send more). See docs/mqtt.md.
 */
import { randomBytes } from 'node:crypto';
import type { StandardSchemaV1 } from '@standard-schema/spec';
import type { IConnackPacket, IPublishPacket, MqttClient, Packet } from 'mqtt';
import type { Logger } from '../../runtime/actors/actor.ts';
import type { BusClient } from '../../runtime/bus/bus.ts';
import { validateSubject } from '../../runtime/bus/subjects.ts';
import { type Codec, type CodecChoice, codecOf } from '../../runtime/codec.ts';
import { ClosedError, ConnectorError, messageOf, OptionsError } from '../../runtime/errors.ts';
import { SourceLineage, type SourceSettlement } from '../../runtime/lineage.ts';
import { intOption, optionKeys } from '../../runtime/options.ts';
import {
  busHeaders,
  type DeliveryOptions,
  deadLetterHeaders,
  deliverHeld,
  publishDeadLetter,
  retryDelay,
} from '../../runtime/sources/delivery.ts';
import { SourceLifecycle } from '../../runtime/sources/lifecycle.ts';
import { ackOptions, checkOptions, deadLetterOption, sourceRef, subjectOption } from '../../runtime/sources/options.ts';
import type { Source, SourceHost, SourceLag, SourceRef } from '../../runtime/sources/source.ts';
import { STREAM_HEADERS } from '../../runtime/streams/stream.ts';
import {
  closeMqtt,
  type MqttConnectionOptions,
  type MqttTarget,
  mqttTarget,
  openMqtt,
  topicProblem,
  topicToSubject,
} from './config.ts';
import { MQTT_HEADERS, MQTT_PROPERTIES } from './fields.ts';

export interface MqttSourceOptions<T = unknown> {
  /** Names the source in errors, logs and gauges, and the stream of its idempotency keys. @default `mqtt:<clientId>` */
  name?: string;
  /** Where to connect. @default mqtt://127.0.0.1:1883, MQTT 5 */
  connection?: MqttConnectionOptions;
  /** The MQTT topic filters to subscribe to (`+` one level, `#` the rest). */
  topics: string | readonly string[];
  /**
   * The bus subject every message is published to, its topic in the `mqtt-topic` header. Without
   * it each message goes to the subject its topic maps to (levels as tokens, after
   * `subjectPrefix`), and the filters must map too: see docs/mqtt.md.
   */
  subject?: string;
  /** The first token(s) of mapped subjects (`mqtt` makes `a/b` into `mqtt.a.b`). @default none */
  subjectPrefix?: string;
  /** The client id: the session on the broker. A persistent session needs one that stays the same. */
  clientId?: string;
  /**
   * `'persistent'`: the broker keeps the subscriptions and the QoS 1 messages not acknowledged
   * while the source is away, and sends those again (DUP) when it is back; `'clean'`: a fresh
   * session at each connection, what was not acknowledged is lost. @default 'persistent'
   */
  session?: 'persistent' | 'clean';
  /** MQTT 5: how long the broker keeps a persistent session after a disconnect. @default 86400 */
  sessionExpirySeconds?: number;
  /** The subscription's QoS: 1 is at-least-once (PUBACK on settlement), 0 at-most-once. @default 1 */
  qos?: 0 | 1;
  /** Take the retained message of each matching topic when subscribing (flagged `mqtt-retain`). @default true */
  retained?: boolean;
  /** The codec of payloads. @default 'json' */
  codec?: CodecChoice;
  /** The schema actors subscribed through `ref` check their inputs against. */
  schema?: StandardSchemaV1<unknown, T>;
  /** Where a message goes that the source gives up on. @default `$DLQ.mqtt.<clientId>` */
  deadLetter?: string;
  /**
   * Messages received and not acknowledged, at most: the receive maximum announced to the broker
   * (MQTT 5; 3.1.1 brokers have their own bound, Mosquitto's `max_inflight_messages`). @default 1000
   */
  maxAckPending?: number;
  /** Deliveries of one message; a failure on the last one gives it up. @default 5 */
  maxDeliver?: number;
  /** Delays before a failed message is delivered again, per delivery (the last repeats). @default the runtime's backoff */
  backoffMs?: readonly number[];
}

export type { SourceHost } from '../../runtime/sources/source.ts';

/** Counts of what the source did. */
export interface MqttSourceStats {
  readonly received: number;
  readonly published: number;
  /** PUBACKs sent. */
  readonly acked: number;
  /** Deliveries again after a failure (MQTT has no negative acknowledgement: the source keeps the message). */
  readonly retried: number;
  /** Given up: dead-lettered to the bus, then acknowledged. */
  readonly terminated: number;
  /** Received with DUP: sent before, on an earlier connection. */
  readonly duplicates: number;
  /** Connections made again after a drop. */
  readonly reconnects: number;
  /**
   * Reconnections of a persistent session the broker had not kept (a restart without persistence,
   * an expired session): what it had queued for the source is lost. See docs/mqtt.md.
   */
  readonly sessionsLost: number;
}

const sourceKeys = optionKeys<keyof MqttSourceOptions>({
  name: true,
  connection: true,
  topics: true,
  subject: true,
  subjectPrefix: true,
  clientId: true,
  session: true,
  sessionExpirySeconds: true,
  qos: true,
  retained: true,
  codec: true,
  schema: true,
  deadLetter: true,
  maxAckPending: true,
  maxDeliver: true,
  backoffMs: true,
});

/** Given to mqtt.js's message callback: it moves on to the next packet and sends no PUBACK (the source will). */
const HELD_BY_SOURCE = new Error('PUBACK held until settlement');

/**
 * Makes an MQTT source; `start(runtime)` connects and subscribes.
 *
 * @example
 * const temps = mqttSource({ topics: 'sensors/+/temp', subjectPrefix: 'mqtt', clientId: 'temps' });
 * runtime.spawn(actor({ name: 'avg', subscribe: temps.ref, handle: (env) => record(env.data) }));
 * await temps.start(runtime);
 */
export function mqttSource<T = unknown>(options: MqttSourceOptions<T>): MqttSource<T> {
  return new MqttSource<T>(options);
}

export class MqttSource<T = unknown> implements Source<T> {
  readonly name: string;
  readonly ref: SourceRef<T>;
  readonly #filters: readonly string[];
  readonly #subject: string | undefined;
  readonly #prefix: string | undefined;
  readonly #clientId: string;
  readonly #clean: boolean;
  readonly #expiry: number;
  readonly #qos: 0 | 1;
  readonly #retained: boolean;
  readonly #codec: Codec;
  readonly #deadLetter: string;
  readonly #max: number;
  readonly #maxDeliver: number;
  readonly #backoffMs: readonly number[] | undefined;
  readonly #stream: string;
  readonly #target: MqttTarget;
  /** The host, bus client and logger `start` took, the registration, the timers `close` cancels. */
  readonly #life: SourceLifecycle;
  #client: MqttClient | undefined;
  /** Counts connections: a message of an earlier one cannot be acknowledged on this one. */
  #generation = 0;
  readonly #settlement: SourceSettlement<Held> = {
    sourceSettled: (held, _lineage, error) => this.#settled(held, error),
  };
  /** Received and not acknowledged (QoS 0: not settled), in arrival order: the ack window. */
  #window: Held[] = [];
  /** The first live entry of `#window` (entries before it are acknowledged). */
  #head = 0;
  /** Waiting for the mailboxes, in order. */
  #inbox: Held[] = [];
  /** The next entry of `#inbox` to deliver (a queue by index: a shift would copy up to the window each time). */
  #next = 0;
  #draining = false;
  /** mqtt.js's callback of a packet received while the window was full: its reads wait for it. */
  #paused: (() => void) | undefined;
  #onBus = 0;
  /** PUBACKs due on the current connection, sent together at the end of the turn (a new connection drops them). */
  #acks: number[] = [];
  /**
   * A persistent session's connection dropped, and whether the broker kept the session is not
   * known until the next CONNACK: what waits in the inbox is not delivered until then, as a kept
   * session sends it again.
   */
  #suspended = false;
  readonly #stats = {
    received: 0,
    published: 0,
    acked: 0,
    retried: 0,
    terminated: 0,
    duplicates: 0,
    reconnects: 0,
    sessionsLost: 0,
  };

  constructor(options: MqttSourceOptions<T>) {
    checkOptions('mqttSource', options, sourceKeys);
    const topics = typeof options.topics === 'string' ? [options.topics] : options.topics;
    if (!Array.isArray(topics) || topics.length === 0) {
      throw new OptionsError('mqttSource.topics', 'must be an MQTT topic filter or a non-empty array of them', topics);
    }
    this.#filters = Object.freeze([...(topics as string[])]);
    if (options.subjectPrefix !== undefined) {
      if (typeof options.subjectPrefix !== 'string' || options.subjectPrefix === '') {
        throw new OptionsError('mqttSource.subjectPrefix', 'must be a non-empty subject prefix', options.subjectPrefix);
      }
      validateSubject(options.subjectPrefix, 'publish');
      if (options.subject !== undefined) {
        throw new OptionsError(
          'mqttSource.subjectPrefix',
          "is for mapped subjects: not with 'subject'",
          options.subjectPrefix,
        );
      }
    }
    this.#prefix = options.subjectPrefix;
    const patterns: string[] = [];
    for (const [i, f] of this.#filters.entries()) {
      if (typeof f !== 'string') throw new OptionsError(`mqttSource.topics[${i}]`, 'must be an MQTT topic filter', f);
      if (options.subject === undefined)
        patterns.push(topicToSubject(f, this.#prefix, true, `mqttSource.topics[${i}]`));
      else {
        // Any filter MQTT takes will do; only its wildcards must be whole levels.
        const problem = topicProblem(f, true);
        if (problem !== undefined && /'[+#]'/.test(problem)) {
          throw new OptionsError(`mqttSource.topics[${i}]`, `MQTT filter '${f}' is invalid: ${problem}`, f);
        }
      }
    }
    this.#subject =
      options.subject === undefined ? undefined : subjectOption('mqttSource.subject', options.subject, 'messages');
    const session = options.session ?? 'persistent';
    if (session !== 'persistent' && session !== 'clean') {
      throw new OptionsError('mqttSource.session', "must be 'persistent' or 'clean'", session);
    }
    this.#clean = session === 'clean';
    if (options.clientId !== undefined && (typeof options.clientId !== 'string' || options.clientId === '')) {
      throw new OptionsError('mqttSource.clientId', 'must be a non-empty string', options.clientId);
    }
    if (!this.#clean && options.clientId === undefined) {
      throw new OptionsError(
        'mqttSource.clientId',
        "is needed for a persistent session (the broker keeps it under the client id); give one, or session: 'clean'",
        options.clientId,
      );
    }
    this.#clientId = options.clientId ?? `sluice-${randomBytes(6).toString('hex')}`;
    this.#expiry = intOption('mqttSource.sessionExpirySeconds', options.sessionExpirySeconds, 86_400, 0);
    const qos = options.qos ?? 1;
    if (qos !== 0 && qos !== 1) {
      throw new OptionsError(
        'mqttSource.qos',
        'must be 0 (at-most-once) or 1 (at-least-once; with idempotency keys, exactly-once in effect)',
        qos,
      );
    }
    this.#qos = qos;
    if (options.retained !== undefined && typeof options.retained !== 'boolean') {
      throw new OptionsError('mqttSource.retained', 'must be true or false', options.retained);
    }
    this.#retained = options.retained ?? true;
    this.#codec = codecOf(options.codec, 'mqttSource.codec');
    this.name = options.name ?? `mqtt:${this.#clientId}`;
    if (typeof this.name !== 'string' || this.name === '') {
      throw new OptionsError('mqttSource.name', 'must be a non-empty string', this.name);
    }
    this.#stream = this.name;
    this.#deadLetter = deadLetterOption(options.deadLetter, 'mqtt', this.#clientId);
    const acks = ackOptions('mqttSource', options, (max) => {
      if (max > 65_535)
        throw new OptionsError('mqttSource.maxAckPending', 'must be at most 65535 (MQTT receive maximum)', max);
    });
    this.#max = acks.maxAckPending;
    this.#maxDeliver = acks.maxDeliver;
    this.#backoffMs = acks.backoffMs;
    this.#target = mqttTarget(options.connection, 'mqttSource.connection');
    const name =
      this.#subject ??
      (patterns.length === 1 ? (patterns[0] as string) : this.#prefix === undefined ? '>' : `${this.#prefix}.>`);
    // Redelivered after a drop only by a persistent session at QoS 1.
    this.ref = sourceRef(name, options.schema, this.#stream, !this.#clean && this.#qos === 1);
    this.#life = new SourceLifecycle(this, () => this.#stats);
  }

  get stats(): MqttSourceStats {
    return { ...this.#stats };
  }

  /**
   * Connects (resuming the session, whose queued messages come at once) and subscribes. Rejects
   * with a `ConnectorError` when the broker cannot be reached, refuses the credentials, or refuses
   * a subscription (an ACL), naming the filter.
   */
  async start(host: SourceHost, options: { logger?: Logger } = {}): Promise<void> {
    this.#life.begin(host, options);
    this.#generation++;
    let client: MqttClient;
    try {
      client = await openMqtt(
        this.#target,
        {
          clientId: this.#clientId,
          clean: this.#clean,
          sessionExpirySeconds: this.#clean ? 0 : this.#expiry,
          receiveMaximum: this.#max,
          handleMessage: (packet, callback) => this.#onPacket(packet, callback),
          created: (c) => {
            this.#client = c;
          },
        },
        this.name,
      );
    } catch (error) {
      // Closed while it connected: close ended the connection, which is no failure to report.
      if (this.#life.closed) return;
      throw error;
    }
    if (this.#life.closed) {
      await closeMqtt(client, true);
      return;
    }
    if (typeof (client as unknown as { _sendPacket?: unknown })._sendPacket !== 'function') {
      client.end(true);
      throw new ConnectorError(
        this.name,
        'this mqtt.js has no _sendPacket, which the source sends its PUBACKs with; use mqtt 5.x',
      );
    }
    this.#client = client;
    client.on('close', () => this.#dropped());
    // Told as the CONNACK is read, before any message after it; 'connect' comes later (after
    // mqtt.js's own store is sent), when messages of the new connection may have been taken.
    client.on('packetreceive', (packet: Packet) => {
      if (packet.cmd === 'connack') this.#accepted(packet as IConnackPacket);
    });
    // mqtt.js reconnects by itself: its events are the connection's state in the runtime's status.
    client.on('reconnect', () => this.#life.health?.reconnecting());
    client.on('error', (error: unknown) => this.#life.health?.error(error));
    client.on('connect', () => {
      if (this.#life.closed) return;
      this.#life.health?.connected();
      this.#stats.reconnects++;
    });
    try {
      await this.#subscribe(client);
    } catch (error) {
      // Closed while it subscribed: the subscription failed with the connection, not by the ACL.
      const closing = this.#life.closed;
      this.#life.closed = true;
      await closeMqtt(client, true);
      this.#client = undefined;
      if (closing) return;
      throw error;
    }
    if (this.#life.closed) return;
    this.#life.register('mqtt', this.#stream, this.name);
  }

  async #subscribe(client: MqttClient): Promise<void> {
    // Retain handling 1: retained messages only for a subscription the session did not have, so a
    // persistent session resumed (or subscribed again by mqtt.js after a drop) does not take them twice.
    const map: Record<string, { qos: 0 | 1; rh?: 1 | 2 }> = {};
    for (const f of this.#filters)
      map[f] = { qos: this.#qos, ...(this.#target.protocolVersion === 5 ? { rh: this.#retained ? 1 : 2 } : {}) };
    try {
      await client.subscribeAsync(map);
    } catch (error) {
      // The SUBACK's reason codes, one per filter in order: 0x80 and above refuse it.
      const granted = (error as { packet?: { granted?: unknown } }).packet?.granted;
      const refused = Array.isArray(granted)
        ? this.#filters.filter((_, i) => typeof granted[i] === 'number' && (granted[i] & 0x80) !== 0)
        : [];
      const which = (refused.length > 0 ? refused : this.#filters).map((f) => `'${f}'`).join(', ');
      throw new ConnectorError(
        this.name,
        `the broker refused the subscription to ${which} (${messageOf(error)}); check the broker's ACL for this user's subscriptions`,
        { cause: error, retryable: false },
      );
    }
  }

  /** mqtt.js's message callback: take the packet into the window and let mqtt.js read on, unless the window is full. */
  #onPacket(packet: IPublishPacket, callback: (error?: Error) => void): void {
    const next = packet.qos > 0 ? () => callback(HELD_BY_SOURCE) : () => callback();
    if (this.#life.closed) {
      next();
      return;
    }
    this.#stats.received++;
    if (packet.dup) this.#stats.duplicates++;
    if (packet.retain && !this.#retained && this.#target.protocolVersion === 4) {
      // 3.1.1 cannot ask the broker not to send retained messages: they are acknowledged and skipped.
      const skip = this.#hold(packet);
      this.#settle(skip);
      next();
      return;
    }
    const held = this.#hold(packet);
    this.#inbox.push(held);
    if (!this.#draining) void this.#drain();
    if (this.#window.length - this.#head > this.#max) this.#paused = next;
    else next();
  }

  #hold(packet: IPublishPacket): Held {
    const held: Held = {
      packet,
      generation: this.#generation,
      // A DUP flag is all MQTT says of earlier deliveries: at least one, how many is unknown.
      attempt: packet.dup ? 2 : 1,
      receivedAt: this.#life.now(),
      state: 'inbox',
      lineage: undefined as unknown as SourceLineage<Held>,
    };
    this.#window.push(held);
    return held;
  }

  /** Publishes what the broker sent, in order, each waiting for room in the mailboxes. */
  async #drain(): Promise<void> {
    this.#draining = true;
    try {
      while (this.#next < this.#inbox.length && !this.#life.closed && !this.#suspended) {
        const held = this.#inbox[this.#next++] as Held;
        if (this.#next === this.#inbox.length || (this.#next > 1024 && this.#next * 2 > this.#inbox.length)) {
          this.#inbox = this.#inbox.slice(this.#next);
          this.#next = 0;
        }
        if (held.state !== 'inbox') continue;
        const waiting = this.#deliver(held);
        if (waiting !== undefined) await waiting;
      }
    } finally {
      this.#draining = false;
    }
  }

  /** Publishes one message; undefined when the mailboxes took it at once, else when they will. */
  #deliver(held: Held): Promise<void> | undefined {
    const packet = held.packet;
    const topic = packet.topic;
    let subject = this.#subject;
    if (subject === undefined) {
      try {
        subject = topicToSubject(topic, this.#prefix, false, 'topic');
      } catch (error) {
        // A topic with no subject (under '#', anything comes): dead-lettered with the reason.
        return this.#giveUp(held, error);
      }
      if (!(this.#life.host as SourceHost).bus.hasSubscribers(subject)) {
        return this.#giveUp(
          held,
          new ConnectorError(this.name, `nothing subscribes to '${subject}' (topic '${topic}')`),
        );
      }
    }
    let data: unknown;
    try {
      const p = packet.payload;
      const bytes = typeof p === 'string' ? Buffer.from(p) : p;
      data = this.#codec.decode(new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength), subject);
    } catch (error) {
      // Decoding again gives the same answer: given up at once.
      return this.#giveUp(held, error);
    }
    const headers = headersOf(packet);
    headers[STREAM_HEADERS.stream] = this.#stream;
    // The publisher's message id (a Sluice sink sets it from the idempotency key) is the position;
    // a message without one has none that survives a redelivery, and its outputs get no derived keys.
    const id = userProperty(packet, MQTT_PROPERTIES.messageId);
    if (id !== undefined && id !== '') headers[STREAM_HEADERS.sequence] = id;
    else delete headers[STREAM_HEADERS.sequence];
    // Refused again on every delivery: given up at once, or it would hold the ack window's head,
    // and every PUBACK after it, for ever.
    const checked = busHeaders(headers, this.name, `a message of '${topic}' (its user properties)`);
    if (checked instanceof ConnectorError) return this.#giveUp(held, checked);
    held.state = 'bus';
    this.#onBus++;
    held.lineage = new SourceLineage(this.#settlement, held, `mqtt/${held.generation}/${packet.messageId ?? 0}`);
    const options: DeliveryOptions = { headers: checked, lineage: held.lineage };
    const key = userProperty(packet, MQTT_PROPERTIES.key);
    if (key !== undefined) options.key = key;
    return deliverHeld(
      (this.#life.host as SourceHost).bus,
      this.#life.client as BusClient,
      subject,
      data,
      options,
      held.attempt,
      this.#stats,
    );
  }

  /** An input's last reference came back: acknowledge in order, deliver again after a backoff, or give up. */
  #settled(held: Held, error: unknown): void {
    if (this.#life.closed || held.state !== 'bus') return;
    this.#onBus--;
    if (error === undefined) {
      this.#settle(held);
      return;
    }
    if (error instanceof ClosedError) {
      // The runtime is stopping: left unacknowledged, for the session to send again.
      held.state = 'inbox';
      return;
    }
    if (held.attempt >= this.#maxDeliver) {
      void this.#giveUp(held, error);
      return;
    }
    this.#stats.retried++;
    held.state = 'waiting';
    const delay = retryDelay(held.attempt, this.#backoffMs);
    // MQTT cannot ask for a message again: the source keeps it (unacknowledged) and delivers it again.
    this.#life.later(delay, () => {
      if (held.state !== 'waiting') return;
      held.attempt++;
      held.state = 'inbox';
      this.#inbox.push(held);
      if (!this.#draining) void this.#drain();
    });
  }

  /** Marks a message settled and sends the PUBACKs that are due: of the settled run at the window's start. */
  #settle(held: Held): void {
    held.state = 'settled';
    const window = this.#window;
    while (this.#head < window.length && (window[this.#head] as Held).state === 'settled') {
      const h = window[this.#head++] as Held;
      // A message of an earlier connection is sent again by the broker: its PUBACK would answer another.
      if (h.packet.qos > 0 && h.generation === this.#generation) {
        // The PUBACKs of one turn of the event loop go out in one write.
        this.#acks.push(h.packet.messageId as number);
        if (this.#acks.length === 1) setImmediate(this.#flushAcks);
      }
    }
    if (this.#head > 1024 && this.#head * 2 > window.length) {
      this.#window = window.slice(this.#head);
      this.#head = 0;
    }
    if (this.#paused !== undefined && this.#window.length - this.#head <= this.#max) {
      const resume = this.#paused;
      this.#paused = undefined;
      resume();
    }
  }

  readonly #flushAcks = (): void => {
    const ids = this.#acks;
    this.#acks = [];
    const client = this.#client;
    // Gone with the connection (the broker sends those messages again), or with the source.
    if (ids.length === 0 || client === undefined || !client.connected) return;
    const stream = client.stream as { cork?: () => void; uncork?: () => void };
    stream.cork?.();
    for (const messageId of ids) {
      (client as unknown as Internal)._sendPacket({ cmd: 'puback', messageId, reasonCode: 0 });
    }
    stream.uncork?.();
    this.#stats.acked += ids.length;
  };

  /**
   * The connection dropped: nothing held can be acknowledged any more (its packet ids were of the
   * lost connection). A persistent session may send it again, which the next CONNACK tells.
   */
  #dropped(): void {
    if (this.#life.closed) return;
    this.#generation++;
    this.#acks = [];
    if (!this.#clean) this.#suspended = true;
    const resume = this.#paused;
    this.#paused = undefined;
    resume?.();
  }

  /** A CONNACK after a drop: a new connection, and the verdict on what the source held from the last. */
  #accepted(packet: IConnackPacket): void {
    if (this.#life.closed) return;
    const code = this.#target.protocolVersion === 5 ? packet.reasonCode : packet.returnCode;
    if (code !== undefined && code !== 0) return;
    // Messages after this CONNACK are of the new connection: their PUBACKs go out on it.
    this.#generation++;
    this.#acks = [];
    if (!this.#suspended) return;
    this.#suspended = false;
    if (packet.sessionPresent) this.#resent();
    else this.#sessionLost();
    if (!this.#draining) void this.#drain();
  }

  /**
   * The broker kept the session, so it sends again, with DUP, every QoS 1 message it sent and did
   * not have a PUBACK for: those the source holds settle to nothing, or each would be handled once
   * more than the DUP already makes it. A QoS 0 message is never sent again: it is kept.
   */
  #resent(): void {
    const kept: Held[] = [];
    for (let i = this.#head; i < this.#window.length; i++) {
      const h = this.#window[i] as Held;
      if (h.state === 'settled') continue;
      if (h.packet.qos === 0) {
        kept.push(h);
        continue;
      }
      if (h.state === 'bus') this.#onBus--;
      h.state = 'dropped';
    }
    this.#window = kept;
    this.#head = 0;
    this.#inbox = this.#inbox.slice(this.#next).filter((h) => h.state === 'inbox');
    this.#next = 0;
  }

  /**
   * The broker did not keep the session: it sends nothing again, so what the source holds is
   * processed and settled as it would have been, only not acknowledged (its packet ids were of the
   * dead session, and now name other messages). What the broker had queued and not sent is gone.
   * mqtt.js subscribes again, the session being new.
   */
  #sessionLost(): void {
    this.#stats.sessionsLost++;
    let held = 0;
    for (let i = this.#head; i < this.#window.length; i++) if ((this.#window[i] as Held).state !== 'settled') held++;
    const error = new ConnectorError(
      this.name,
      `the broker did not keep the session of client '${this.#clientId}' (restarted without persistence, or the session expired): ${
        held === 0
          ? 'no message was held from it'
          : `the ${held} message${held === 1 ? '' : 's'} held from it are still processed, not acknowledged`
      }; what the broker had queued for it and not sent is lost`,
    );
    this.#life.health?.error(error);
    this.#life.log.warn(error.message);
  }

  /** Dead-letters a message the source gives up on, then acknowledges it. A refused dead letter is tried again later. */
  async #giveUp(held: Held, error: unknown): Promise<void> {
    held.state = 'waiting';
    const packet = held.packet;
    const headers = headersOf(packet);
    // Without the user properties the bus refuses, or it would refuse the dead letter too.
    busHeaders(headers, this.name, 'a dead letter');
    const letter = deadLetterHeaders({
      headers,
      error,
      source: this.name,
      attempts: held.attempt,
      subject: packet.topic,
      messageId: userProperty(packet, MQTT_PROPERTIES.messageId) ?? '',
      timeMs: this.#life.now(),
    });
    const p = packet.payload;
    try {
      await publishDeadLetter(
        this.#life.client as BusClient,
        this.#deadLetter,
        new Uint8Array(typeof p === 'string' ? Buffer.from(p) : p),
        letter,
        this.#life.log,
      );
    } catch (e) {
      if (this.#life.closed || held.state !== 'waiting') return;
      this.#life.log.error(
        `${this.name}: could not dead-letter a message of '${packet.topic}' to '${this.#deadLetter}': ${messageOf(e)}`,
      );
      this.#life.later(1_000, () => void this.#giveUp(held, error));
      return;
    }
    if (held.state !== 'waiting') return;
    this.#stats.terminated++;
    this.#settle(held);
  }

  /**
   * `messages`: received and not acknowledged (what the broker still holds for this source beyond
   * that is not told by MQTT); `timeMs`: the age of the oldest of them since it arrived (MQTT
   * carries no broker time).
   */
  lag(): SourceLag {
    let oldest = Number.POSITIVE_INFINITY;
    let messages = 0;
    for (let i = this.#head; i < this.#window.length; i++) {
      const h = this.#window[i] as Held;
      if (h.state === 'settled' || h.state === 'dropped') continue;
      messages++;
      if (h.receivedAt < oldest) oldest = h.receivedAt;
    }
    return {
      messages,
      timeMs: oldest === Number.POSITIVE_INFINITY ? 0 : Math.max(1, this.#life.now() - oldest),
      ackPending: this.#onBus,
    };
  }

  /**
   * Stops taking messages and disconnects without acknowledging what is not settled: a persistent
   * session keeps it, and the broker sends it again (DUP) to the next connection with this client
   * id. Stop the runtime first, so what actors hold settles and is acknowledged. Never rejects.
   */
  async close(): Promise<void> {
    if (!this.#life.end()) return;
    this.#window = [];
    this.#head = 0;
    this.#inbox = [];
    this.#next = 0;
    this.#onBus = 0;
    this.#generation++;
    this.#acks = [];
    this.#suspended = false;
    const client = this.#client;
    this.#client = undefined;
    await closeMqtt(client);
  }
}

interface Held {
  readonly packet: IPublishPacket;
  readonly generation: number;
  attempt: number;
  readonly receivedAt: number;
  /**
   * inbox: waiting for the mailboxes; bus: published, not settled; waiting: for a retry or a dead
   * letter; dropped: the broker sends it again on a resumed session.
   */
  state: 'inbox' | 'bus' | 'waiting' | 'settled' | 'dropped';
  lineage: SourceLineage<Held>;
}

/** mqtt.js's packet writer, which its own publish handler sends PUBACKs with. */
interface Internal {
  _sendPacket(packet: { cmd: 'puback'; messageId: number | undefined; reasonCode: number }): void;
}

/** A user property (MQTT 5) as a string: the last of a repeated one. */
function userProperty(packet: IPublishPacket, name: string): string | undefined {
  const v = packet.properties?.userProperties?.[name];
  if (v === undefined) return undefined;
  return Array.isArray(v) ? v[v.length - 1] : v;
}

/** The envelope headers of a message: its topic, its retain flag, and its user properties. */
function headersOf(packet: IPublishPacket): Record<string, string> {
  const out: Record<string, string> = {};
  const props = packet.properties?.userProperties;
  if (props !== undefined) {
    for (const [k, v] of Object.entries(props)) {
      if (k === MQTT_PROPERTIES.key) continue;
      out[k] = Array.isArray(v) ? v.join(',') : String(v);
    }
  }
  out[MQTT_HEADERS.topic] = packet.topic;
  if (packet.retain) out[MQTT_HEADERS.retain] = 'true';
  return out;
}
