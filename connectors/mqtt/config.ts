/**
 * Connection options of the MQTT connector (mqtt.js), the connection itself, and the mapping
 * between MQTT topics and bus subjects. See docs/mqtt.md.
 */
import mqtt, { type IClientOptions, type IConnackPacket, type MqttClient } from 'mqtt';
import { validateSubject } from '../../runtime/bus/subjects.ts';
import { ConnectorError, messageOf, OptionsError } from '../../runtime/errors.ts';
import { intOption, knownKeys, optionKeys } from '../../runtime/options.ts';

/** Where and how to connect. */
export interface MqttConnectionOptions {
  /** `mqtt://host:port` (or `mqtts://`, `ws://`, `wss://`); wins over host and port. */
  url?: string;
  /** @default '127.0.0.1' */
  host?: string;
  /** @default 1883 */
  port?: number;
  username?: string;
  password?: string;
  /** MQTT 5 (receive maximum, reason codes, user properties) or 3.1.1. @default 5 */
  protocolVersion?: 4 | 5;
  /** Keep-alive interval in seconds, so a dead peer is noticed. @default 30 */
  keepaliveSeconds?: number;
  /** Time to connect before giving up. @default 5000 */
  timeoutMs?: number;
  /** Delay before connecting again after a drop. @default 1000 */
  reconnectMs?: number;
  /** More mqtt.js options, as it names them (`ca`, `cert`, `key`, ...); these win over the above. */
  client?: Partial<IClientOptions>;
}

const connectionKeys = optionKeys<keyof MqttConnectionOptions>({
  url: true,
  host: true,
  port: true,
  username: true,
  password: true,
  protocolVersion: true,
  keepaliveSeconds: true,
  timeoutMs: true,
  reconnectMs: true,
  client: true,
});

/** @internal The checked options: what to connect to, and how. */
export interface MqttTarget {
  readonly url: string;
  /** The URL without credentials, for messages. */
  readonly where: string;
  readonly options: IClientOptions;
  readonly protocolVersion: 4 | 5;
  readonly reconnectMs: number;
}

/** @internal Checks the options; an `OptionsError` naming the option (never showing a password). */
export function mqttTarget(options: MqttConnectionOptions | undefined, where: string): MqttTarget {
  const o = options ?? {};
  knownKeys(where, o, connectionKeys);
  for (const k of ['url', 'host', 'username', 'password'] as const) {
    if (o[k] !== undefined && (typeof o[k] !== 'string' || (o[k] === '' && k !== 'password'))) {
      throw new OptionsError(`${where}.${k}`, 'must be a non-empty string', k === 'password' ? '(hidden)' : o[k]);
    }
  }
  if (o.url !== undefined && !/^(mqtts?|wss?):\/\//.test(o.url)) {
    throw new OptionsError(`${where}.url`, 'must be an mqtt://, mqtts://, ws:// or wss:// URL', redact(o.url));
  }
  const version = o.protocolVersion ?? 5;
  if (version !== 4 && version !== 5) {
    throw new OptionsError(`${where}.protocolVersion`, 'must be 5 (MQTT 5) or 4 (MQTT 3.1.1)', version);
  }
  const port = intOption(`${where}.port`, o.port, 1883, 1);
  const keepalive = intOption(`${where}.keepaliveSeconds`, o.keepaliveSeconds, 30, 0);
  const timeoutMs = intOption(`${where}.timeoutMs`, o.timeoutMs, 5_000, 1);
  const reconnectMs = intOption(`${where}.reconnectMs`, o.reconnectMs, 1_000, 1);
  const url = o.url ?? `mqtt://${o.host ?? '127.0.0.1'}:${port}`;
  return {
    url,
    where: redact(url),
    protocolVersion: version,
    reconnectMs,
    options: {
      protocolVersion: version,
      keepalive,
      connectTimeout: timeoutMs,
      ...(o.username !== undefined ? { username: o.username } : {}),
      ...(o.password !== undefined ? { password: o.password } : {}),
      ...o.client,
    },
  };
}

function redact(url: string): string {
  return url.replace(/\/\/[^@/]*@/, '//');
}

/** What a source or sink asks of its connection besides the target. */
export interface MqttSession {
  readonly clientId: string;
  /** Start a fresh session (and end it at disconnect), or resume the one the broker keeps. */
  readonly clean: boolean;
  /** MQTT 5: how long the broker keeps the session after a disconnect. */
  readonly sessionExpirySeconds?: number;
  /** MQTT 5: how many QoS 1 and 2 messages the broker may send before their acknowledgement. */
  readonly receiveMaximum?: number;
  /**
   * Set on the client before it connects, so that no message the broker sends right after the
   * CONNACK reaches mqtt.js's default handler (which acknowledges at once).
   */
  readonly handleMessage?: MqttClient['handleMessage'];
  /** Told of the client as soon as it exists, before the broker accepted it. */
  readonly created?: (client: MqttClient) => void;
}

/** Reason codes of a refused CONNACK that mean the credentials, by protocol (3.1.1: 4, 5; MQTT 5: 134, 135). */
const AUTH_CODES = new Set([4, 5, 134, 135]);

/**
 * @internal Connects, resolving once the broker accepted the connection (mqtt.js then reconnects
 * on its own after a drop). A refused connection is a `ConnectorError` naming the broker and the
 * reason: the credentials (not retryable), or the network (retryable).
 */
export async function openMqtt(target: MqttTarget, session: MqttSession, name: string): Promise<MqttClient> {
  const properties: NonNullable<IClientOptions['properties']> = { ...target.options.properties };
  if (target.protocolVersion === 5) {
    if (session.sessionExpirySeconds !== undefined) properties.sessionExpiryInterval = session.sessionExpirySeconds;
    if (session.receiveMaximum !== undefined) properties.receiveMaximum = session.receiveMaximum;
  }
  const client = mqtt.connect(target.url, {
    ...target.options,
    clientId: session.clientId,
    clean: session.clean,
    // No retries while connecting: a refused first connection is the caller's to hear about.
    reconnectPeriod: 0,
    ...(target.protocolVersion === 5 ? { properties } : {}),
  });
  if (session.handleMessage !== undefined) client.handleMessage = session.handleMessage;
  session.created?.(client);
  // Small packets go out at once: with Nagle's algorithm the last publishes of a batch (or the
  // PUBACKs of a quiet moment) wait for the peer's delayed ACK, about 40 ms each time.
  const noDelay = () => (client.stream as { setNoDelay?: (on: boolean) => void } | undefined)?.setNoDelay?.(true);
  noDelay();
  client.on('connect', noDelay);
  try {
    await new Promise<IConnackPacket>((resolve, reject) => {
      const onConnect = (ack: IConnackPacket) => {
        done();
        resolve(ack);
      };
      const onError = (error: Error) => {
        done();
        reject(error);
      };
      const onClose = () => {
        done();
        reject(new Error('the connection closed before the broker accepted it'));
      };
      // Ended by its owner (a source closed while it starts): mqtt.js then says 'end', not 'close'.
      const onEnd = () => {
        done();
        reject(new Error('the connection was ended before the broker accepted it'));
      };
      const done = () => {
        client.off('connect', onConnect);
        client.off('error', onError);
        client.off('close', onClose);
        client.off('end', onEnd);
      };
      client.on('connect', onConnect);
      client.on('error', onError);
      client.on('close', onClose);
      client.on('end', onEnd);
    });
  } catch (error) {
    client.end(true);
    const code = (error as { code?: unknown }).code;
    const auth = typeof code === 'number' && AUTH_CODES.has(code);
    const text = messageOf(error);
    throw new ConnectorError(
      name,
      `could not connect to ${target.where}: ${
        auth ? `the broker refused the credentials (${text}); check username and password` : text
      }`,
      { cause: error, retryable: !auth },
    );
  }
  // Errors of a live connection come again as `close`, where mqtt.js reconnects; not a crash.
  client.on('error', () => undefined);
  client.options.reconnectPeriod = target.reconnectMs;
  return client;
}

/** @internal Ends a connection: gracefully within a bound, else cut. */
export async function closeMqtt(client: MqttClient | undefined, force = false): Promise<void> {
  if (client === undefined) return;
  await new Promise<void>((resolve) => {
    const timer = setTimeout(() => {
      client.end(true);
      resolve();
    }, 2_000);
    client.end(force, () => {
      clearTimeout(timer);
      resolve();
    });
  });
}

/**
 * Why an MQTT topic or filter has no bus subject, or undefined when it has one: each level is a
 * subject token, so a level may not be empty, hold `.` (the subject separator) or `*`/`>` (the
 * subject wildcards); in a filter, `+` and a last `#` are MQTT's wildcards and become `*` and `>`.
 */
export function topicProblem(topic: string, filter: boolean): string | undefined {
  if (topic === '') return 'a topic has at least one character';
  const levels = topic.split('/');
  for (const [i, level] of levels.entries()) {
    const at = `level ${i + 1} ('${level}')`;
    if (filter && level === '#') {
      if (i !== levels.length - 1) return `${at}: '#' must be the last level`;
      continue;
    }
    if (filter && level === '+') continue;
    if (level.includes('#') || level.includes('+')) {
      return filter
        ? `${at}: '+' and '#' must be a whole level`
        : `${at}: '+' and '#' are wildcards, not allowed in a topic`;
    }
    if (level === '') return `${at} is empty; an empty level has no subject token (no leading, trailing or double '/')`;
    if (level.includes('.')) return `${at} holds '.', the subject token separator`;
    if (level.includes('*') || level.includes('>')) return `${at} holds '*' or '>', the subject wildcards`;
  }
  return undefined;
}

/**
 * The bus subject of an MQTT topic (or the pattern of a filter): `prefix` then the levels as
 * tokens, `+` as `*` and `#` as `>`. Throws an `OptionsError` naming the topic and the rule.
 *
 * @example topicToSubject('sensors/+/temp', 'mqtt', true) // 'mqtt.sensors.*.temp'
 */
export function topicToSubject(topic: string, prefix: string | undefined, filter: boolean, where: string): string {
  const problem = topicProblem(topic, filter);
  if (problem !== undefined) {
    throw new OptionsError(
      where,
      `MQTT ${filter ? 'filter' : 'topic'} '${topic}' has no bus subject: ${problem}`,
      topic,
    );
  }
  let subject = topic.replaceAll('/', '.');
  if (filter) {
    subject = subject
      .split('.')
      .map((t) => (t === '+' ? '*' : t === '#' ? '>' : t))
      .join('.');
  }
  if (prefix !== undefined) subject = `${prefix}.${subject}`;
  try {
    validateSubject(subject, filter ? 'subscribe' : 'publish');
  } catch (error) {
    throw new OptionsError(
      where,
      `MQTT ${filter ? 'filter' : 'topic'} '${topic}' maps to an invalid subject: ${messageOf(error)}`,
      topic,
    );
  }
  return subject;
}

/**
 * The MQTT topic of a bus subject: tokens as levels. A subject with a wildcard has none; the sink
 * refuses one.
 */
export function subjectToTopic(subject: string, prefix: string | undefined): string {
  const tail = prefix !== undefined && subject.startsWith(`${prefix}.`) ? subject.slice(prefix.length + 1) : subject;
  return tail.replaceAll('.', '/');
}
