/**
 * The MQTT sink: records published at QoS 0, 1 or 2 (retained, as an option), a bounded number
 * awaiting their acknowledgement, the idempotency key in MQTT 5 user properties, and the keys
 * committed kept in the embedded store so that a replay is skipped (no MQTT broker de-duplicates).
 * See docs/mqtt.md.
 */
import type { IClientPublishOptions, MqttClient } from 'mqtt';
import { type CodecChoice, codecOf, encodeWith } from '../../runtime/codec.ts';
import { ClosedError, ConnectorError, messageOf, OptionsError, SluiceError } from '../../runtime/errors.ts';
import { intOption, knownKeys, optionKeys, optionsObject } from '../../runtime/options.ts';
import { AckWindow } from '../../runtime/sinks/ackWindow.ts';
import { committedBefore, rememberCommitted, sinkStore } from '../../runtime/sinks/committedKeys.ts';
import { messageIdOf, type Sink, type SinkRecord } from '../../runtime/sinks/sink.ts';
import type { Store } from '../../runtime/store/types.ts';
import {
  closeMqtt,
  type MqttConnectionOptions,
  type MqttTarget,
  mqttTarget,
  openMqtt,
  subjectToTopic,
} from './config.ts';
import { MQTT_PROPERTIES } from './fields.ts';

export interface MqttSinkOptions<T = unknown> {
  /** Names the sink in errors and telemetry, and its key set in the store. @default `mqtt:<topic>` */
  name?: string;
  /** Where to connect. @default mqtt://127.0.0.1:1883, MQTT 5 */
  connection?: MqttConnectionOptions;
  /** The client id. @default a random one (a clean session) */
  clientId?: string;
  /**
   * The topic: one, or a function of the record. @default the record's envelope subject as a
   * topic (tokens as levels, without `subjectPrefix`)
   */
  topic?: string | ((record: SinkRecord<T>) => string);
  /** The subject prefix taken off an envelope subject before it becomes a topic. */
  subjectPrefix?: string;
  /** 0: sent, never acknowledged; 1: acknowledged (PUBACK); 2: acknowledged once (PUBREC/PUBCOMP). @default 1 */
  qos?: 0 | 1 | 2;
  /** Retain each message: the broker keeps the last one per topic for new subscribers. @default false */
  retain?: boolean;
  /** How values are encoded. @default 'json' */
  codec?: CodecChoice;
  /**
   * Publishes awaiting their acknowledgement at once, at most; at QoS 1 and 2 never more than the
   * broker's receive maximum (MQTT 5; Mosquitto's is `max_inflight_messages`, 20). @default 256
   */
  maxInFlight?: number;
  /** How long a batch's acknowledgements may take before it fails (retryable). @default 10000 */
  timeoutMs?: number;
  /** Write the envelope's headers as MQTT 5 user properties. @default false */
  headers?: boolean;
  /**
   * The runtime's store, where the sink keeps each key it committed (and its revision): a replay of
   * a key already acknowledged is skipped however late it comes, across restarts. Without it a
   * replay is published again, with the same `message-id` property, for consumers that de-duplicate.
   */
  store?: Store;
}

/** The store namespace of an MQTT sink's committed keys. */
export function mqttSinkNamespace(name: string): string {
  return `sluice.mqtt-sink/${name}`;
}

/** Counts of what the sink did. */
export interface MqttSinkStats {
  /** Messages acknowledged by the broker (QoS 0: written to the connection). */
  readonly published: number;
  /** Records skipped because the store held their key. */
  readonly skipped: number;
  /** Publishes refused by the broker (a reason code), timed out or lost with the connection. */
  readonly failed: number;
}

const sinkKeys = optionKeys<keyof MqttSinkOptions>({
  name: true,
  connection: true,
  clientId: true,
  topic: true,
  subjectPrefix: true,
  qos: true,
  retain: true,
  codec: true,
  maxInFlight: true,
  timeoutMs: true,
  headers: true,
  store: true,
});

/** MQTT 5 reason codes of a refused publish that the same publish would meet again. */
const PERMANENT = new Set([0x83, 0x87, 0x90, 0x99]);

/**
 * Connects and returns an MQTT sink for `sinkActor` or `writeTo`. Rejects with a `ConnectorError`
 * when the broker cannot be reached or refuses the credentials.
 *
 * @example
 * const out = await mqttSink({ topic: 'alerts/high', qos: 1, store });
 * runtime.spawn(sinkActor({ name: 'to-mqtt', subscribe: 'alerts', sink: out }));
 */
export async function mqttSink<T = unknown>(options: MqttSinkOptions<T>): Promise<MqttSink<T>> {
  const sink = new MqttSink<T>(options);
  await sink.open();
  return sink;
}

export class MqttSink<T = unknown> implements Sink<T> {
  readonly name: string;
  readonly #target: MqttTarget;
  readonly #clientId: string | undefined;
  readonly #topic: (record: SinkRecord<T>) => string;
  readonly #qos: 0 | 1 | 2;
  readonly #retain: boolean;
  readonly #codec;
  readonly #maxInFlight: number;
  readonly #timeoutMs: number;
  readonly #headers: boolean;
  readonly #store: Store | undefined;
  readonly #namespace: string;
  #client: MqttClient | undefined;
  #closed = false;
  readonly #stats = { published: 0, skipped: 0, failed: 0 };

  constructor(options: MqttSinkOptions<T>) {
    optionsObject('mqttSink', options);
    if (options === undefined) throw new OptionsError('mqttSink', 'must be an options object', options);
    knownKeys('mqttSink', options, sinkKeys);
    const t = options.topic;
    const prefix = options.subjectPrefix;
    if (prefix !== undefined && (typeof prefix !== 'string' || prefix === '')) {
      throw new OptionsError('mqttSink.subjectPrefix', 'must be a non-empty subject prefix', prefix);
    }
    const checked = (topic: unknown, record: SinkRecord<T> | undefined): string => {
      const problem = typeof topic !== 'string' ? 'a topic is a string' : mqttTopicProblem(topic);
      if (problem !== undefined) {
        throw new OptionsError(
          'mqttSink.topic',
          `${record === undefined ? '' : `for record '${record.key}': `}'${String(topic)}' is no MQTT topic to publish to: ${problem}`,
          topic,
        );
      }
      return topic as string;
    };
    if (typeof t === 'string') {
      const topic = checked(t, undefined);
      this.#topic = () => topic;
    } else if (typeof t === 'function') this.#topic = (record) => checked(t(record), record);
    else if (t === undefined) {
      this.#topic = (record) => {
        const s = record.envelope?.subject;
        if (s === undefined) {
          throw new OptionsError(
            'mqttSink.topic',
            `record '${record.key}' has no envelope to take a subject from: give 'topic'`,
            s,
          );
        }
        return checked(subjectToTopic(s, prefix), record);
      };
    } else throw new OptionsError('mqttSink.topic', 'must be a topic or a function of the record', t);
    this.name = options.name ?? (typeof t === 'string' ? `mqtt:${t}` : 'mqtt');
    if (typeof this.name !== 'string' || this.name === '') {
      throw new OptionsError('mqttSink.name', 'must be a non-empty string', this.name);
    }
    if (options.clientId !== undefined && (typeof options.clientId !== 'string' || options.clientId === '')) {
      throw new OptionsError('mqttSink.clientId', 'must be a non-empty string', options.clientId);
    }
    this.#clientId = options.clientId;
    const qos = options.qos ?? 1;
    if (qos !== 0 && qos !== 1 && qos !== 2) throw new OptionsError('mqttSink.qos', 'must be 0, 1 or 2', qos);
    this.#qos = qos;
    for (const k of ['retain', 'headers'] as const) {
      if (options[k] !== undefined && typeof options[k] !== 'boolean') {
        throw new OptionsError(`mqttSink.${k}`, 'must be true or false', options[k]);
      }
    }
    this.#retain = options.retain ?? false;
    this.#headers = options.headers ?? false;
    this.#codec = codecOf(options.codec, 'mqttSink.codec');
    this.#maxInFlight = intOption('mqttSink.maxInFlight', options.maxInFlight, 256, 1);
    this.#timeoutMs = intOption('mqttSink.timeoutMs', options.timeoutMs, 10_000, 1);
    this.#store = sinkStore('mqttSink.store', options.store);
    this.#namespace = mqttSinkNamespace(this.name);
    this.#target = mqttTarget(options.connection, `mqttSink(${this.name}).connection`);
  }

  get stats(): MqttSinkStats {
    return { ...this.#stats };
  }

  /** @internal Connects; `mqttSink()` calls it. */
  async open(): Promise<void> {
    this.#client = await openMqtt(
      this.#target,
      { clientId: this.#clientId ?? `sluice-sink-${Math.random().toString(16).slice(2, 12)}`, clean: true },
      this.name,
    );
  }

  /**
   * Publishes the batch and resolves once the broker acknowledged all of it (and the keys are
   * stored). Rejects with a `ConnectorError` when a publish is refused (a reason code: not
   * retryable when it means the ACL or the topic), times out or is lost with the connection
   * (retryable); what was acknowledged is remembered (with `store`) and skipped when the batch comes again.
   */
  async write(records: readonly SinkRecord<T>[]): Promise<void> {
    const client = this.#client;
    if (this.#closed || client === undefined) throw new ClosedError(`mqttSink(${this.name})`, 'the sink is closed');
    const out: SinkRecord<T>[] = [];
    for (const record of records) {
      if (this.#store !== undefined && committedBefore(this.#store, this.#namespace, record)) {
        this.#stats.skipped++;
        continue;
      }
      out.push(record);
    }
    if (out.length === 0) return;
    const committed: SinkRecord<T>[] = [];
    const failures: { error: unknown; retryable: boolean; topic: string | undefined }[] = [];
    // Topics and payloads are made as each record is sent, not all before the first: the first
    // publishes are on the wire while the rest are encoded. One that cannot be made fails alone
    // (not retryable), as a refused publish does.
    const topics: (string | undefined)[] = new Array(out.length);
    // MQTT 5: no more unacknowledged QoS 1 and 2 publishes than the broker's receive maximum.
    const receiveMaximum = this.#qos > 0 ? client.serverProperties?.receiveMaximum : undefined;
    const bound = Math.min(this.#maxInFlight, receiveMaximum ?? Number.POSITIVE_INFINITY);
    // mqtt.js hands over the acknowledgements a read brought one per tick: the publishes they free
    // go out from a microtask, in one socket write.
    const window: AckWindow = new AckWindow({
      size: out.length,
      bound,
      deferSends: true,
      send: (i) => {
        let o: Outgoing;
        try {
          o = this.#outgoing(out[i] as SinkRecord<T>);
        } catch (error) {
          window.answer(i, error);
          return;
        }
        topics[i] = o.topic;
        this.#publish(client, o, i, window.answer);
      },
      settled: (i, error) => {
        if (error === undefined) committed.push(out[i] as SinkRecord<T>);
        else {
          const code = (error as { code?: unknown }).code;
          const retryable =
            !(error instanceof SluiceError && !error.retryable) && !(typeof code === 'number' && PERMANENT.has(code));
          failures.push({ error, retryable, topic: topics[i] });
        }
      },
    });
    await window.run(this.#timeoutMs, () => new Error(`no acknowledgement within ${this.#timeoutMs} ms`));
    this.#stats.published += committed.length;
    this.#stats.failed += failures.length;
    if (this.#store !== undefined) await rememberCommitted(this.#store, this.#namespace, committed);
    if (failures.length > 0) {
      const first = failures[0] as (typeof failures)[number];
      throw new ConnectorError(
        this.name,
        `${failures.length} of ${out.length} publishes failed (first ${first.topic === undefined ? 'before it had a topic' : `to '${first.topic}'`}): ${messageOf(first.error)}`,
        { cause: first.error, retryable: failures.every((f) => f.retryable) },
      );
    }
  }

  /** What goes out for `record`: its topic, payload and options (throws when it has no topic or cannot be encoded). */
  #outgoing(record: SinkRecord<T>): Outgoing {
    const topic = this.#topic(record);
    const bytes = encodeWith(this.#codec, record.value, topic);
    return {
      topic,
      payload: Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength),
      options: this.#publishOptions(record),
    };
  }

  /**
   * A record's publish options. Under MQTT 5 the idempotency key goes in the `message-id` user
   * property; a record with a revision has `<key>#<revision>` there, and the key and the revision
   * in properties of their own. Each user property is several writes for mqtt.js, so none is sent twice.
   */
  #publishOptions(record: SinkRecord<T>): IClientPublishOptions {
    if (this.#target.protocolVersion !== 5) return { qos: this.#qos, retain: this.#retain };
    const properties: Record<string, string> = {};
    const env = record.envelope;
    if (this.#headers && env !== undefined) {
      Object.assign(properties, env.headers);
      if (env.key !== undefined) properties[MQTT_PROPERTIES.key] = env.key;
    }
    properties[MQTT_PROPERTIES.messageId] = messageIdOf(record);
    if (record.revision !== undefined) {
      properties[MQTT_PROPERTIES.idempotencyKey] = record.key;
      properties[MQTT_PROPERTIES.revision] = String(record.revision);
    }
    return { qos: this.#qos, retain: this.#retain, properties: { userProperties: properties } };
  }

  /** One publish; `done(i, error)` runs on its acknowledgement (error undefined), its refusal, or if it cannot be sent. */
  #publish(client: MqttClient, o: Outgoing, i: number, done: (i: number, error: unknown) => void): void {
    try {
      client.publish(o.topic, o.payload, o.options, (error) => done(i, error ?? undefined));
    } catch (error) {
      done(i, error);
    }
  }

  /** Waits (a bounded time) for what is in flight and disconnects. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await closeMqtt(this.#client);
  }
}

/** Why `topic` is no topic to publish to (MQTT's rule: not empty, no wildcard), or undefined. */
function mqttTopicProblem(topic: string): string | undefined {
  if (topic === '') return 'a topic has at least one character';
  if (topic.includes('+') || topic.includes('#')) return "'+' and '#' are wildcards, not allowed in a topic";
  return undefined;
}

interface Outgoing {
  readonly topic: string;
  readonly payload: Buffer;
  readonly options: IClientPublishOptions;
}
