/**
 * Connection options of the RabbitMQ connector (AMQP 0-9-1, amqplib), the connection itself, and
 * its re-opening after a drop with exponential backoff. See docs/rabbitmq.md.
 */
import { type ChannelModel, connect, type Options } from 'amqplib';
import { ConnectorError, messageOf, OptionsError } from '../../runtime/errors.ts';
import { intOption, knownKeys, optionKeys } from '../../runtime/options.ts';

/** Where and how to connect. */
export interface RabbitConnectionOptions {
  /** `amqp://user:pass@host:port/vhost` (or `amqps://`); wins over the fields below. */
  url?: string;
  /** @default '127.0.0.1' */
  hostname?: string;
  /** @default 5672 */
  port?: number;
  /** @default 'guest' */
  username?: string;
  /** @default 'guest' */
  password?: string;
  /** @default '/' */
  vhost?: string;
  /** Heartbeat interval in seconds, so a dead peer is noticed. @default 10 */
  heartbeat?: number;
  /** Time to connect before giving up. @default 5000 */
  timeoutMs?: number;
  /** Re-opening after a dropped connection: exponential backoff from the first delay to the longest. */
  reconnect?: { initialDelayMs?: number; maxDelayMs?: number };
}

const connectionKeys = optionKeys<keyof RabbitConnectionOptions>({
  url: true,
  hostname: true,
  port: true,
  username: true,
  password: true,
  vhost: true,
  heartbeat: true,
  timeoutMs: true,
  reconnect: true,
});
const reconnectKeys = optionKeys<'initialDelayMs' | 'maxDelayMs'>({ initialDelayMs: true, maxDelayMs: true });

/** @internal The checked options: what to connect to and how to back off. */
export interface RabbitTarget {
  readonly url: string | Options.Connect;
  readonly where: string;
  readonly timeoutMs: number;
  readonly initialDelayMs: number;
  readonly maxDelayMs: number;
}

/** @internal Checks the options; an `OptionsError` naming the option. */
export function rabbitTarget(options: RabbitConnectionOptions | undefined, where: string): RabbitTarget {
  const o = options ?? {};
  knownKeys(where, o, connectionKeys);
  knownKeys(`${where}.reconnect`, o.reconnect, reconnectKeys);
  for (const k of ['url', 'hostname', 'username', 'password', 'vhost'] as const) {
    if (o[k] !== undefined && (typeof o[k] !== 'string' || (o[k] === '' && k !== 'password'))) {
      throw new OptionsError(`${where}.${k}`, 'must be a non-empty string', k === 'password' ? '(hidden)' : o[k]);
    }
  }
  if (o.url !== undefined && !/^amqps?:\/\//.test(o.url)) {
    throw new OptionsError(`${where}.url`, 'must be an amqp:// or amqps:// URL', o.url);
  }
  const port = intOption(`${where}.port`, o.port, 5672, 1);
  const heartbeat = intOption(`${where}.heartbeat`, o.heartbeat, 10, 0);
  const timeoutMs = intOption(`${where}.timeoutMs`, o.timeoutMs, 5_000, 1);
  const initialDelayMs = intOption(`${where}.reconnect.initialDelayMs`, o.reconnect?.initialDelayMs, 100, 1);
  const maxDelayMs = intOption(`${where}.reconnect.maxDelayMs`, o.reconnect?.maxDelayMs, 5_000, initialDelayMs);
  const hostname = o.hostname ?? '127.0.0.1';
  const vhost = o.vhost ?? '/';
  const url: string | Options.Connect = o.url ?? {
    protocol: 'amqp',
    hostname,
    port,
    username: o.username ?? 'guest',
    password: o.password ?? 'guest',
    vhost,
    heartbeat,
  };
  const where2 = o.url === undefined ? `amqp://${hostname}:${port}${vhost === '/' ? '/' : `/${vhost}`}` : redact(o.url);
  return { url, where: where2, timeoutMs, initialDelayMs, maxDelayMs };
}

function redact(url: string): string {
  return url.replace(/\/\/[^@/]*@/, '//');
}

/** @internal Opens a connection; a `ConnectorError` saying what to check when it is refused. */
export async function openRabbit(target: RabbitTarget, name: string): Promise<ChannelModel> {
  try {
    const model = await connect(target.url, { timeout: target.timeoutMs, clientProperties: { connection_name: name } });
    // Errors come again as `close`, where the owner reacts; an `error` event alone is no crash.
    model.on('error', () => undefined);
    return model;
  } catch (error) {
    const text = messageOf(error);
    const auth = /ACCESS_REFUSED|403|auth/i.test(text);
    // The server closes the connection in answer to connection.open when the vhost is missing or
    // not allowed; amqplib says only that it "expected ConnectionOpenOk".
    const vhost = /NOT_ALLOWED|vhost|ConnectionOpenOk/i.test(text);
    throw new ConnectorError(
      name,
      `could not connect to ${target.where}: ${
        auth
          ? `the server refused the credentials (${text}); check username and password`
          : vhost
            ? `the virtual host is missing or not allowed for this user (${text}); check vhost and its permissions`
            : text
      }`,
      { cause: error, retryable: !auth && !vhost },
    );
  }
}

/** @internal The delay before re-opening attempt `n` (from 1): doubling, with a quarter of jitter. */
export function reconnectDelay(target: RabbitTarget, n: number): number {
  const base = Math.min(target.maxDelayMs, target.initialDelayMs * 2 ** Math.min(n - 1, 30));
  return Math.round(base * (0.75 + Math.random() * 0.25));
}
