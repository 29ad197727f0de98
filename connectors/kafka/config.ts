/**
 * Connection options shared by the Kafka source and sink, and the codecs of record values. The
 * options keep Kafka's own names (brokers, client id, SASL mechanisms) and are passed to
 * `@platformatic/kafka` (an optional peer dependency: install it to use this connector).
 */
import type { ConnectionOptions as TlsOptions } from 'node:tls';
import { Admin, type SASLMechanismValue } from '@platformatic/kafka';
import { type Codec, jsonCodec } from '../../runtime/codec.ts';
import { validName } from '../../runtime/envelope.ts';
import { ConnectorError, DecodeError, EncodeError, OptionsError } from '../../runtime/errors.ts';
import { intOption, knownKeys, optionKeys, optionsObject } from '../../runtime/options.ts';

/** SASL credentials; the broker's listener must enable the mechanism. */
export interface KafkaSaslOptions {
  mechanism: 'PLAIN' | 'SCRAM-SHA-256' | 'SCRAM-SHA-512';
  username: string;
  password: string;
}

export interface KafkaConnectionOptions {
  /** Bootstrap brokers, `host:port`. @example ['127.0.0.1:9092'] */
  brokers: readonly string[];
  /** The client id the broker logs and quotas see. @default 'sluice' */
  clientId?: string;
  /** SASL authentication (SASL_PLAINTEXT, or SASL_SSL with `tls`). @default none */
  sasl?: KafkaSaslOptions;
  /**
   * TLS: `true` for the system CAs, or Node's `tls.connect` options (`ca`, `cert`, `key`,
   * `servername`, `rejectUnauthorized`, ...). @default none (plaintext)
   */
  tls?: boolean | TlsOptions;
  /** How long a connection may take. @default 10000 */
  connectTimeoutMs?: number;
  /** How long a request may take. @default 30000 */
  requestTimeoutMs?: number;
  /** Retries of a failed request (the client's own, with `retryDelayMs` between). @default 3 */
  retries?: number;
  /** @default 250 */
  retryDelayMs?: number;
}

export const DEFAULT_KAFKA_CONNECTION = Object.freeze({
  clientId: 'sluice',
  connectTimeoutMs: 10_000,
  requestTimeoutMs: 30_000,
  retries: 3,
  retryDelayMs: 250,
});

const connectionKeys = optionKeys<keyof KafkaConnectionOptions>({
  brokers: true,
  clientId: true,
  sasl: true,
  tls: true,
  connectTimeoutMs: true,
  requestTimeoutMs: true,
  retries: true,
  retryDelayMs: true,
});
const mechanisms = ['PLAIN', 'SCRAM-SHA-256', 'SCRAM-SHA-512'] as const;

/** What `@platformatic/kafka` clients take for a connection. */
export interface ClientConnection {
  readonly clientId: string;
  readonly bootstrapBrokers: string[];
  readonly connectTimeout: number;
  readonly requestTimeout: number;
  readonly retries: number;
  readonly retryDelay: number;
  readonly sasl?: { mechanism: SASLMechanismValue; username: string; password: string };
  readonly tls?: TlsOptions;
}

/** Checks the connection options once, naming the option and the rule; `where` prefixes the path. */
export function clientConnection(options: KafkaConnectionOptions, where: string): ClientConnection {
  optionsObject(where, options);
  if (options === undefined) throw new OptionsError(where, 'must give brokers', options);
  knownKeys(where, options, connectionKeys);
  const brokers = options.brokers;
  if (!Array.isArray(brokers) || brokers.length === 0)
    throw new OptionsError(`${where}.brokers`, "must be a non-empty array of 'host:port' strings", brokers);
  for (const b of brokers) {
    if (typeof b !== 'string' || (!/^[^\s:]+:\d{1,5}$/.test(b) && !/^\[[^\]]+\]:\d{1,5}$/.test(b)))
      throw new OptionsError(`${where}.brokers`, "each broker must be 'host:port'", b);
  }
  const clientId = options.clientId ?? DEFAULT_KAFKA_CONNECTION.clientId;
  if (typeof clientId !== 'string' || clientId.length === 0)
    throw new OptionsError(`${where}.clientId`, 'must be a non-empty string', clientId);
  const out: {
    -readonly [K in keyof ClientConnection]: ClientConnection[K];
  } = {
    clientId,
    bootstrapBrokers: [...brokers],
    connectTimeout: intOption(
      `${where}.connectTimeoutMs`,
      options.connectTimeoutMs,
      DEFAULT_KAFKA_CONNECTION.connectTimeoutMs,
      1,
    ),
    requestTimeout: intOption(
      `${where}.requestTimeoutMs`,
      options.requestTimeoutMs,
      DEFAULT_KAFKA_CONNECTION.requestTimeoutMs,
      1,
    ),
    retries: intOption(`${where}.retries`, options.retries, DEFAULT_KAFKA_CONNECTION.retries, 0),
    retryDelay: intOption(`${where}.retryDelayMs`, options.retryDelayMs, DEFAULT_KAFKA_CONNECTION.retryDelayMs, 0),
  };
  if (options.sasl !== undefined) {
    const sasl = options.sasl;
    optionsObject(`${where}.sasl`, sasl);
    if (!mechanisms.includes(sasl.mechanism))
      throw new OptionsError(`${where}.sasl.mechanism`, `must be one of ${mechanisms.join(', ')}`, sasl.mechanism);
    if (typeof sasl.username !== 'string' || typeof sasl.password !== 'string')
      throw new OptionsError(`${where}.sasl`, 'username and password must be strings', '(hidden)');
    out.sasl = { mechanism: sasl.mechanism, username: sasl.username, password: sasl.password };
  }
  if (options.tls !== undefined && options.tls !== false) {
    if (options.tls !== true && (typeof options.tls !== 'object' || options.tls === null))
      throw new OptionsError(`${where}.tls`, "must be true or Node's tls.connect options", options.tls);
    out.tls = options.tls === true ? {} : { ...options.tls };
  }
  return out;
}

/**
 * Connects once and asks for the cluster's metadata, so refused credentials or an untrusted
 * certificate fail `start`/`open` with a clear {@link ConnectorError} at once (an idempotent
 * producer's own initialisation retries them for good).
 */
export async function probeConnection(connector: string, c: ClientConnection): Promise<void> {
  const admin = new Admin({
    clientId: c.clientId,
    bootstrapBrokers: c.bootstrapBrokers,
    connectTimeout: c.connectTimeout,
    requestTimeout: c.requestTimeout,
    retries: c.retries,
    retryDelay: c.retryDelay,
    ...(c.sasl === undefined ? {} : { sasl: c.sasl }),
    ...(c.tls === undefined ? {} : { tls: c.tls }),
  });
  try {
    await admin.metadata({ topics: [] });
  } catch (error) {
    throw connectorError(connector, c, 'connecting', error);
  } finally {
    await admin.close().catch(() => undefined);
  }
}

/** Where a connector's connection goes, for error messages: never the credentials. */
export function describeConnection(c: ClientConnection): string {
  const security = `${c.sasl === undefined ? '' : `SASL ${c.sasl.mechanism} as '${c.sasl.username}'`}${
    c.tls === undefined ? '' : `${c.sasl === undefined ? '' : ' over '}TLS`
  }`;
  return `${c.bootstrapBrokers.join(',')}${security === '' ? '' : ` (${security})`}`;
}

/**
 * A client error as a {@link ConnectorError} naming the connector and the brokers; authentication
 * and TLS failures say so, and are not retryable (the same credentials fail again).
 */
export function connectorError(connector: string, c: ClientConnection, doing: string, error: unknown): ConnectorError {
  const text = deepMessage(error);
  const auth = /SASL|authenticat|credential/i.test(text);
  const tls = /certificate|self.signed|TLS|SSL|handshake|EPROTO/i.test(text);
  const what = auth ? 'authentication failed' : tls ? 'TLS failed' : 'failed';
  return new ConnectorError(connector, `${doing} on ${describeConnection(c)} ${what}: ${text}`, {
    cause: error,
    retryable: !auth && !tls,
  });
}

/** The client's message and those of its causes, which hold the broker's reason. */
function deepMessage(error: unknown): string {
  const parts: string[] = [];
  const seen = new Set<unknown>();
  const visit = (e: unknown, depth: number) => {
    if (e === undefined || e === null || seen.has(e) || depth > 4) return;
    seen.add(e);
    if (e instanceof Error) {
      const message = e.message.replace(/\.$/, '');
      if (!parts.includes(message)) parts.push(message);
      visit((e as { cause?: unknown }).cause, depth + 1);
      const errors = (e as { errors?: unknown }).errors;
      if (Array.isArray(errors)) for (const inner of errors.slice(0, 3)) visit(inner, depth + 1);
    } else parts.push(String(e));
  };
  visit(error, 0);
  return parts.join(': ');
}

/** Raw bytes: a record's value as a `Buffer`, and bytes (or a string) written as they are. */
export const bytesCodec: Codec<Buffer> = Object.freeze({
  name: 'raw',
  encode(value: Buffer, subject = '?'): Uint8Array {
    if (value instanceof Uint8Array) return value;
    if (typeof value === 'string') return Buffer.from(value);
    throw new EncodeError(subject, 'raw', new Error('a raw value must be a Buffer, a Uint8Array or a string'));
  },
  decode(bytes: Uint8Array): Buffer {
    return Buffer.from(bytes);
  },
});

const utf8 = new TextDecoder('utf-8', { fatal: true });
/** UTF-8 text. */
export const stringCodec: Codec<string> = Object.freeze({
  name: 'text',
  encode(value: string): Uint8Array {
    return Buffer.from(String(value));
  },
  decode(bytes: Uint8Array, subject = '?'): string {
    try {
      return utf8.decode(bytes);
    } catch (error) {
      throw new DecodeError(subject, 'text', error);
    }
  },
});

/**
 * JSON, the runtime's codec with values encoded straight into a `Buffer`, as the producer writes
 * them: `TextEncoder` gives each value an `ArrayBuffer` of its own, which the sink then wrapped, a
 * cost per record that showed in the produce benchmark (`Buffer.from` of a short string takes a
 * slice of Node's pool). The same bytes: both write a lone surrogate as U+FFFD.
 */
export const jsonBufferCodec: Codec = Object.freeze({
  name: jsonCodec.name,
  encode(value: unknown, subject = '?'): Uint8Array {
    let text: string | undefined;
    try {
      text = JSON.stringify(value);
    } catch (error) {
      throw new EncodeError(subject, 'json', error);
    }
    // As jsonCodec: JSON has no `undefined` (nor functions, symbols), which become `null`.
    return Buffer.from(text ?? 'null');
  },
  decode: jsonCodec.decode,
});

/** A codec by name, or your own. */
export type KafkaCodec = 'json' | 'text' | 'raw' | Codec;

export function codecOf(codec: KafkaCodec | undefined, where: string): Codec {
  if (codec === undefined || codec === 'json') return jsonBufferCodec;
  if (codec === 'text') return stringCodec as Codec;
  if (codec === 'raw') return bytesCodec as Codec;
  if (
    typeof codec === 'object' &&
    codec !== null &&
    typeof codec.encode === 'function' &&
    typeof codec.decode === 'function'
  )
    return codec;
  throw new OptionsError(where, "must be 'json', 'text', 'raw' or a Codec { name, encode, decode }", codec);
}

/**
 * Kafka header names are any string and values any bytes; envelope headers are printable ASCII
 * names without `:` and string values. Headers that do not fit are left out (and counted).
 */
export function envelopeName(name: string): boolean {
  return name.length <= 256 && validName(name);
}

/** A positive integer option, for the source's and sink's own options. */
export function positive(name: string, value: number | undefined, fallback: number): number {
  return intOption(name, value, fallback, 1);
}
