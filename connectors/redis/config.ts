/**
 * Connection options of the Redis Streams connector, and the connection itself (ioredis). See
 * docs/redis.md.
 */
import { Redis, type RedisOptions } from 'ioredis';
import type { CodecChoice } from '../../runtime/codec.ts';
import { ConnectorError, messageOf, OptionsError } from '../../runtime/errors.ts';
import { intOption, knownKeys, optionKeys } from '../../runtime/options.ts';

/**
 * Where and how to connect: a `redis://` URL or host and port, with ACL credentials. Everything
 * else ioredis takes (`tls`, `db`, `retryStrategy`, ...) passes through `client`.
 */
export interface RedisConnectionOptions {
  /** `redis://[user:pass@]host:port[/db]` (or `rediss://` for TLS); wins over host and port. */
  url?: string;
  /** @default '127.0.0.1' */
  host?: string;
  /** @default 6379 */
  port?: number;
  /** An ACL user (Redis 6+); without it the `default` user. */
  username?: string;
  password?: string;
  /** The database number. @default 0 */
  db?: number;
  /** Time to connect before giving up. @default 5000 */
  timeoutMs?: number;
  /** More ioredis options, as it names them; these win over the above. */
  client?: Partial<RedisOptions>;
}

/** The connection of a source or sink: one of its own (closed with it) or one the caller shares. */
export type RedisConnectionRef = Redis | RedisConnectionOptions;

/** A codec by name, or your own: how an entry's payload field becomes data, and back. */
export type RedisCodec = CodecChoice;

const connectionKeys = optionKeys<keyof RedisConnectionOptions>({
  url: true,
  host: true,
  port: true,
  username: true,
  password: true,
  db: true,
  timeoutMs: true,
  client: true,
});

function isClient(ref: RedisConnectionRef): ref is Redis {
  return ref instanceof Redis;
}

/** @internal The ioredis options, checked; throws an `OptionsError` naming the option. */
export function redisOptions(options: RedisConnectionOptions, where: string): RedisOptions {
  knownKeys(where, options, connectionKeys);
  for (const k of ['url', 'host', 'username', 'password'] as const) {
    if (options[k] !== undefined && (typeof options[k] !== 'string' || options[k] === '')) {
      throw new OptionsError(`${where}.${k}`, 'must be a non-empty string', k === 'password' ? '(hidden)' : options[k]);
    }
  }
  const port = intOption(`${where}.port`, options.port, 6379, 1);
  const db = intOption(`${where}.db`, options.db, 0, 0);
  const timeout = intOption(`${where}.timeoutMs`, options.timeoutMs, 5_000, 1);
  let fromUrl: RedisOptions = {};
  if (options.url !== undefined) {
    let url: URL;
    try {
      url = new URL(options.url);
    } catch {
      throw new OptionsError(`${where}.url`, 'must be a redis:// or rediss:// URL', options.url);
    }
    if (url.protocol !== 'redis:' && url.protocol !== 'rediss:') {
      throw new OptionsError(`${where}.url`, 'must be a redis:// or rediss:// URL', options.url);
    }
    fromUrl = {
      host: url.hostname,
      port: url.port === '' ? 6379 : Number(url.port),
      ...(url.username !== '' ? { username: decodeURIComponent(url.username) } : {}),
      ...(url.password !== '' ? { password: decodeURIComponent(url.password) } : {}),
      ...(url.pathname.length > 1 ? { db: Number(url.pathname.slice(1)) } : {}),
      ...(url.protocol === 'rediss:' ? { tls: {} } : {}),
    };
  }
  return {
    host: options.host ?? '127.0.0.1',
    port,
    db,
    ...(options.username !== undefined ? { username: options.username } : {}),
    ...(options.password !== undefined ? { password: options.password } : {}),
    ...fromUrl,
    connectTimeout: timeout,
    // Named in CLIENT LIST, so an operator can tell Sluice's connections.
    connectionName: 'sluice',
    lazyConnect: true,
    // RESP2 replies (flat arrays) are what the connector parses; ioredis 6 defaults to RESP3.
    protocol: 2,
    // Commands fail at once while disconnected: a source retries its loop, a sink its batch.
    enableOfflineQueue: false,
    maxRetriesPerRequest: 1,
    retryStrategy: (times: number) => Math.min(5_000, 100 * 2 ** Math.min(times, 6)),
    ...options.client,
  };
}

/** A connection in use by a source or sink, and whether closing them closes it. */
export interface HeldRedis {
  readonly redis: Redis;
  readonly owned: boolean;
}

/**
 * @internal Connects (or takes the caller's connection). A refused connection is a
 * `ConnectorError` naming the server and the reason (refused, wrong credentials).
 */
export async function openRedis(ref: RedisConnectionRef | undefined, name: string): Promise<HeldRedis> {
  if (ref !== undefined && isClient(ref)) return { redis: ref, owned: false };
  const options = redisOptions(ref ?? {}, `${name}.connection`);
  return { redis: await connectRedis(options, name), owned: true };
}

/**
 * @internal The options of a new connection like `ref`: a caller's client gives its own (with the
 * RESP2 replies the source parses), options are checked.
 */
export function optionsLike(ref: RedisConnectionRef | undefined, name: string): RedisOptions {
  if (ref !== undefined && isClient(ref)) return { ...ref.options, lazyConnect: true, protocol: 2 };
  return redisOptions(ref ?? {}, `${name}.connection`);
}

/** @internal A new connection with `options`; a `ConnectorError` when it cannot be made. */
export async function connectRedis(options: RedisOptions, name: string): Promise<Redis> {
  // No retries while connecting: a refused first connection is the caller's to hear about.
  const redis = new Redis({ ...options, lazyConnect: true });
  // Errors of a live connection are retried by the client; its `error` events are not crashes. The
  // last one says why a connect failed (ioredis rejects with "Connection is closed" after an AUTH error).
  let last: unknown;
  const onError = (error: unknown) => {
    last = error;
  };
  redis.on('error', onError);
  try {
    await redis.connect();
    await redis.ping();
  } catch (error) {
    redis.disconnect();
    const text = messageOf(last ?? error);
    const auth = /WRONGPASS|NOAUTH|NOPERM|auth/i.test(text);
    throw new ConnectorError(
      name,
      `could not connect to redis at ${options.host}:${options.port}: ${
        auth ? `the server refused the credentials (${text}); check username and password` : text
      }`,
      { cause: last ?? error, retryable: !auth },
    );
  }
  redis.off('error', onError);
  redis.on('error', () => undefined);
  return redis;
}

/** @internal Closes a connection the source or sink opened; a shared one stays open. */
export async function closeRedis(held: HeldRedis | undefined): Promise<void> {
  if (held === undefined || !held.owned) return;
  await held.redis.quit().catch(() => held.redis.disconnect());
}
