/**
 * The Redis Streams sink: records appended with XADD (pipelined, one round trip per batch), the
 * idempotency key in a field of each entry, `MAXLEN` trimming as an option, and the keys committed
 * kept in the embedded store so that a replay is skipped (Redis itself keeps no message ids). See
 * docs/redis.md.
 */
import { codecOf, encodeWith, jsonCodec } from '../../runtime/codec.ts';
import { ClosedError, ConnectorError, EncodeError, messageOf, OptionsError } from '../../runtime/errors.ts';
import { intOption, knownKeys, optionKeys, optionsObject } from '../../runtime/options.ts';
import { committedBefore, rememberCommitted, sinkStore } from '../../runtime/sinks/committedKeys.ts';
import type { Sink, SinkRecord } from '../../runtime/sinks/sink.ts';
import type { Store } from '../../runtime/store/types.ts';
import { closeRedis, type HeldRedis, openRedis, type RedisCodec, type RedisConnectionRef } from './config.ts';
import { REDIS_FIELDS } from './fields.ts';

export interface RedisSinkOptions<T = unknown> {
  /** Names the sink in errors and telemetry, and its key set in the store. @default `redis:<stream>` */
  name?: string;
  /** Connection options, or an ioredis client you own and close. @default 127.0.0.1:6379 */
  connection?: RedisConnectionRef;
  /** The stream's key: one, or a function of the record. */
  stream: string | ((record: SinkRecord<T>) => string);
  /** The entry field holding the payload. @default 'data' */
  field?: string;
  /** How values are encoded. @default 'json' */
  codec?: RedisCodec;
  /**
   * Trim the stream to about this many entries on each append (`MAXLEN ~ n`: Redis trims whole
   * nodes, so a few more may stay). @default no trimming
   */
  maxLen?: number;
  /** Trim to exactly `maxLen` (`MAXLEN = n`), at a higher cost per append. @default false */
  exactTrim?: boolean;
  /**
   * Write the envelope's headers, key and event time as fields besides the payload and the
   * idempotency key (which is always written). @default false
   */
  headers?: boolean;
  /**
   * The runtime's store, where the sink keeps each key it committed (and its revision): a replay
   * of a key already committed is skipped, however late it comes and across restarts. Without it
   * a replay appends again (at-least-once); readers can skip by the idempotency key field.
   */
  store?: Store;
}

/** The store namespace of a Redis sink's committed keys. */
export function redisSinkNamespace(name: string): string {
  return `sluice.redis-sink/${name}`;
}

/** Counts of what the sink did. */
export interface RedisSinkStats {
  /** Entries appended. */
  readonly published: number;
  /** Records skipped because the store held their key (a replay after a commit). */
  readonly skipped: number;
  /** Appends that failed (their batch was rejected and will be retried). */
  readonly failed: number;
}

const sinkKeys = optionKeys<keyof RedisSinkOptions>({
  name: true,
  connection: true,
  stream: true,
  field: true,
  codec: true,
  maxLen: true,
  exactTrim: true,
  headers: true,
  store: true,
});

/**
 * Connects and returns a Redis Streams sink for `sinkActor` or `writeTo`. Rejects with a
 * `ConnectorError` when the server cannot be reached or refuses the credentials.
 *
 * @example
 * const out = await redisSink({ stream: 'totals', maxLen: 100_000, store });
 * runtime.spawn(sinkActor({ name: 'to-redis', subscribe: 'totals.in', sink: out }));
 */
export async function redisSink<T = unknown>(options: RedisSinkOptions<T>): Promise<RedisSink<T>> {
  const sink = new RedisSink<T>(options);
  await sink.open();
  return sink;
}

export class RedisSink<T = unknown> implements Sink<T> {
  readonly name: string;
  readonly #options: RedisSinkOptions<T>;
  readonly #stream: (record: SinkRecord<T>) => string;
  readonly #field: string;
  readonly #codec;
  readonly #trim: readonly (string | number)[];
  readonly #headers: boolean;
  readonly #store: Store | undefined;
  readonly #namespace: string;
  #held: HeldRedis | undefined;
  #closed = false;
  readonly #stats = { published: 0, skipped: 0, failed: 0 };

  constructor(options: RedisSinkOptions<T>) {
    optionsObject('redisSink', options);
    if (options === undefined) throw new OptionsError('redisSink', 'must be an options object', options);
    knownKeys('redisSink', options, sinkKeys);
    this.#options = options;
    const stream = options.stream;
    if (typeof stream === 'string' && stream !== '') this.#stream = () => stream;
    else if (typeof stream === 'function') {
      this.#stream = (record) => {
        const s = stream(record);
        if (typeof s !== 'string' || s === '') {
          throw new OptionsError('redisSink.stream', `gave no stream key for record '${record.key}'`, s);
        }
        return s;
      };
    } else throw new OptionsError('redisSink.stream', 'must be a stream key or a function of the record', stream);
    this.name = options.name ?? (typeof stream === 'string' ? `redis:${stream}` : 'redis');
    if (typeof this.name !== 'string' || this.name === '')
      throw new OptionsError('redisSink.name', 'must be a non-empty string', this.name);
    this.#field = options.field ?? 'data';
    if (typeof this.#field !== 'string' || this.#field === '') {
      throw new OptionsError('redisSink.field', 'must be a non-empty field name', options.field);
    }
    this.#codec = codecOf(options.codec, 'redisSink.codec');
    if (options.exactTrim !== undefined && typeof options.exactTrim !== 'boolean') {
      throw new OptionsError('redisSink.exactTrim', 'must be true or false', options.exactTrim);
    }
    if (options.exactTrim !== undefined && options.maxLen === undefined) {
      throw new OptionsError('redisSink.exactTrim', "needs 'maxLen'", options.exactTrim);
    }
    this.#trim =
      options.maxLen === undefined
        ? []
        : ['MAXLEN', options.exactTrim === true ? '=' : '~', intOption('redisSink.maxLen', options.maxLen, 0, 1)];
    this.#headers = options.headers ?? false;
    if (typeof this.#headers !== 'boolean')
      throw new OptionsError('redisSink.headers', 'must be true or false', this.#headers);
    this.#store = sinkStore('redisSink.store', options.store);
    this.#namespace = redisSinkNamespace(this.name);
  }

  get stats(): RedisSinkStats {
    return { ...this.#stats };
  }

  /** @internal Connects; `redisSink()` calls it. */
  async open(): Promise<void> {
    this.#held = await openRedis(this.#options.connection, `redisSink(${this.name})`);
  }

  /**
   * Appends the batch in one pipeline and resolves once Redis took all of it (and the keys are
   * stored). Rejects with a retryable `ConnectorError` when any append fails; what did commit is
   * remembered (with `store`) and skipped when the batch comes again.
   */
  async write(records: readonly SinkRecord<T>[]): Promise<void> {
    const held = this.#held;
    if (this.#closed || held === undefined) throw new ClosedError(`redisSink(${this.name})`, 'the sink is closed');
    // Encoded before anything is sent: a value the codec refuses fails the batch, nothing half-sent.
    const out: { record: SinkRecord<T>; args: (string | number | Buffer)[] }[] = [];
    for (const record of records) {
      if (this.#store !== undefined && committedBefore(this.#store, this.#namespace, record)) {
        this.#stats.skipped++;
        continue;
      }
      const stream = this.#stream(record);
      const payload = this.#payload(record.value, stream);
      const args: (string | number | Buffer)[] =
        this.#trim.length === 0
          ? ['XADD', stream, '*', this.#field, payload, REDIS_FIELDS.idempotencyKey, record.key]
          : ['XADD', stream, ...this.#trim, '*', this.#field, payload, REDIS_FIELDS.idempotencyKey, record.key];
      if (record.revision !== undefined) args.push(REDIS_FIELDS.revision, String(record.revision));
      const env = record.envelope;
      if (this.#headers && env !== undefined) {
        if (env.key !== undefined) args.push(REDIS_FIELDS.key, env.key);
        if (env.eventTime !== undefined) args.push(REDIS_FIELDS.eventTime, String(env.eventTime));
        for (const [k, v] of Object.entries(env.headers)) {
          if (k !== this.#field && k !== REDIS_FIELDS.idempotencyKey && k !== REDIS_FIELDS.revision) args.push(k, v);
        }
      }
      out.push({ record, args });
    }
    if (out.length === 0) return;
    const pipeline = held.redis.pipeline();
    // The command name leads the arguments: one array per entry, not spread into another.
    for (const o of out) pipeline.call(...(o.args as [string, ...(string | number | Buffer)[]]));
    let results: [Error | null, unknown][];
    try {
      results = (await pipeline.exec()) ?? [];
    } catch (error) {
      this.#stats.failed += out.length;
      throw new ConnectorError(this.name, `could not append ${out.length} entries: ${messageOf(error)}`, {
        cause: error,
        retryable: true,
      });
    }
    // Entry ids are kept only for the store.
    const committed: [SinkRecord<T>, string][] = [];
    const keep = this.#store !== undefined;
    let first: unknown;
    let failed = 0;
    for (let i = 0; i < out.length; i++) {
      const result = results[i];
      const error = result === undefined ? new Error('no reply') : result[0];
      if (error === null) {
        if (keep) committed.push([(out[i] as (typeof out)[number]).record, String((result as [null, unknown])[1])]);
      } else {
        failed++;
        first ??= error;
      }
    }
    this.#stats.published += out.length - failed;
    this.#stats.failed += failed;
    // Kept even when part of the batch failed: its retry skips what did commit.
    if (this.#store !== undefined) {
      await rememberCommitted(
        this.#store,
        this.#namespace,
        committed.map(([record]) => record),
        (_, i) => ({ id: (committed[i] as [SinkRecord<T>, string])[1] }),
      );
    }
    if (failed > 0) {
      throw new ConnectorError(this.name, `${failed} of ${out.length} appends failed: ${messageOf(first)}`, {
        cause: first,
        retryable: true,
      });
    }
  }

  /**
   * The payload field's value: JSON as a string, which the client writes as UTF-8 without the
   * copies of an encoded buffer (the bytes jsonCodec would give); other codecs' bytes as a Buffer.
   */
  #payload(value: unknown, stream: string): string | Buffer {
    if (this.#codec === jsonCodec) {
      let text: string | undefined;
      try {
        text = JSON.stringify(value);
      } catch (error) {
        throw new EncodeError(stream, 'json', error);
      }
      return text ?? 'null';
    }
    const bytes = encodeWith(this.#codec, value, stream);
    return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  /** Closes the connection if the sink opened it. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await closeRedis(this.#held);
  }
}
