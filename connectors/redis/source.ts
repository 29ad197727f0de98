/**
 * The Redis Streams source: a consumer group read with XREADGROUP, no more entries at a time than
 * the subscribers' mailboxes take, each entry acknowledged (XACK) when its input settles. Entries a
 * dead consumer left pending are claimed after an idle time (XAUTOCLAIM); a failed entry is claimed
 * again by this consumer after a backoff (XCLAIM), and Redis's delivery count is its `attempt`.
 * See docs/redis.md.
 */
import { hostname } from 'node:os';
import type { StandardSchemaV1 } from '@standard-schema/spec';
import type { Redis } from 'ioredis';
import type { Logger } from '../../runtime/actors/actor.ts';
import type { BusClient } from '../../runtime/bus/bus.ts';
import { type Codec, codecOf } from '../../runtime/codec.ts';
import { ClosedError, ConnectorError, messageOf, OptionsError } from '../../runtime/errors.ts';
import { SourceLineage, type SourceSettlement } from '../../runtime/lineage.ts';
import { intOption, optionKeys } from '../../runtime/options.ts';
import {
  busHeaders,
  type DeliveryOptions,
  deadLetterHeaders,
  deliverHeld,
  freeCapacity,
  publishDeadLetter,
  retryDelay,
} from '../../runtime/sources/delivery.ts';
import { heldLag, SourceLifecycle } from '../../runtime/sources/lifecycle.ts';
import { ackOptions, checkOptions, deadLetterOption, sourceRef, subjectOption } from '../../runtime/sources/options.ts';
import type { Source, SourceHost, SourceLag, SourceRef } from '../../runtime/sources/source.ts';
import { STREAM_HEADERS } from '../../runtime/streams/stream.ts';
import {
  closeRedis,
  connectRedis,
  type HeldRedis,
  optionsLike,
  type RedisCodec,
  type RedisConnectionRef,
} from './config.ts';
import { REDIS_FIELDS } from './fields.ts';

export interface RedisSourceOptions<T = unknown> {
  /** Names the source in errors, logs and gauges. @default `redis:<stream>/<group>` */
  name?: string;
  /** Connection options, or an ioredis client whose options the source's own two connections take. @default 127.0.0.1:6379 */
  connection?: RedisConnectionRef;
  /** The stream's key. */
  stream: string;
  /** The consumer group; sources naming the same one share its entries. */
  group: string;
  /**
   * This reader's name in the group. A name reused after a restart reads its own pending entries
   * at once; a new one leaves them to be claimed after `claimIdleMs`. @default `<host>-<pid>-<n>`
   */
  consumer?: string;
  /** Create the group (and the stream) when it does not exist. @default true */
  create?: boolean;
  /** Where a new group starts: every entry of the stream, or only new ones. @default 'all' */
  from?: 'all' | 'new';
  /** The bus subject each entry is published to. */
  subject: string;
  /** The entry field holding the payload. @default 'data' */
  field?: string;
  /** The payload's codec. @default 'json' */
  codec?: RedisCodec;
  /** The schema actors subscribed through `ref` check their inputs against. */
  schema?: StandardSchemaV1<unknown, T>;
  /** Where the source sends what it gives up on. @default `$DLQ.redis.<group>` */
  deadLetter?: string;
  /** Entries delivered and not acknowledged, at most. @default 1000 */
  maxAckPending?: number;
  /** Deliveries of one entry; a failure on the last one dead-letters it (and acknowledges it). @default 5 */
  maxDeliver?: number;
  /** Delays before a failed entry is delivered again, per delivery (the last repeats). @default the runtime's backoff */
  backoffMs?: readonly number[];
  /** Entries asked for in one read, at most. @default 256 */
  readBatch?: number;
  /** How long one read waits on the server for new entries. @default 2000 */
  blockMs?: number;
  /**
   * How long an entry stays pending with another consumer before this one claims it (XAUTOCLAIM):
   * the time after which a dead reader's entries move on. Entries this source holds are touched
   * (XCLAIM JUSTID) well within it, so they are not claimed away while it works on them. @default 30000
   */
  claimIdleMs?: number;
  /** How often lag is read from the server besides each read. @default 5000 */
  lagRefreshMs?: number;
}

/** What a source is given of the runtime (`runtime` itself fits): the one all connector sources take. */
export type { SourceHost } from '../../runtime/sources/source.ts';

/** Counts of what the source did. */
export interface RedisSourceStats {
  /** Entries read from Redis (new ones, own pending, retried and claimed). */
  readonly received: number;
  readonly published: number;
  readonly acked: number;
  /** Failed inputs whose entry is to be delivered again. */
  readonly retried: number;
  /** Entries of other (dead) consumers claimed by XAUTOCLAIM. */
  readonly claimed: number;
  /** Dead-lettered (undecodable, or failed on the last delivery) and acknowledged. */
  readonly terminated: number;
  /** XREADGROUP calls. */
  readonly reads: number;
}

const sourceKeys = optionKeys<keyof RedisSourceOptions>({
  name: true,
  connection: true,
  stream: true,
  group: true,
  consumer: true,
  create: true,
  from: true,
  subject: true,
  field: true,
  codec: true,
  schema: true,
  deadLetter: true,
  maxAckPending: true,
  maxDeliver: true,
  backoffMs: true,
  readBatch: true,
  blockMs: true,
  claimIdleMs: true,
  lagRefreshMs: true,
});

let consumers = 0;

/** The fields of an entry before they are read (one object for all, never written). */
const NO_FIELDS: Record<string, string> = Object.freeze({}) as Record<string, string>;

/** One entry as Redis returns it: the id and its field/value pairs (null: deleted since). */
type Entry = [id: Buffer, fields: Buffer[] | null];

/**
 * Makes a Redis Streams source; `start(runtime)` connects and begins. Spawn the actors that read
 * it (with `subscribe: source.ref`) before starting it: it waits for a subscriber before it reads.
 *
 * @example
 * const orders = redisSource({ stream: 'orders', group: 'billing', subject: 'orders.in' });
 * runtime.spawn(actor({ name: 'billing', subscribe: orders.ref, handle: (env) => bill(env.data) }));
 * await orders.start(runtime);
 */
export function redisSource<T = unknown>(options: RedisSourceOptions<T>): RedisSource<T> {
  return new RedisSource<T>(options);
}

export class RedisSource<T = unknown> implements Source<T> {
  readonly name: string;
  readonly ref: SourceRef<T>;
  readonly #options: RedisSourceOptions<T>;
  readonly #stream: string;
  readonly #group: string;
  readonly #consumer: string;
  readonly #subject: string;
  readonly #field: string;
  readonly #codec: Codec;
  readonly #deadLetter: string;
  readonly #maxAckPending: number;
  readonly #maxDeliver: number;
  readonly #backoffMs: readonly number[] | undefined;
  readonly #readBatch: number;
  readonly #blockMs: number;
  readonly #claimIdleMs: number;
  readonly #lagRefreshMs: number;
  /** The host, bus client and logger `start` took, the registration, the timers `close` cancels. */
  readonly #life: SourceLifecycle;
  #held: HeldRedis | undefined;
  /** The blocking reads' own connection: a blocked XREADGROUP holds its connection. */
  #reader: Redis | undefined;
  /** Where the lineage of a delivered message reports its settlement. */
  readonly #settlement: SourceSettlement<Held> = {
    sourceSettled: (held, _lineage, error) => this.#settled(held, error),
  };
  readonly #pending = new Map<string, Held>();
  #acks: string[] = [];
  readonly #stats = { received: 0, published: 0, acked: 0, retried: 0, claimed: 0, terminated: 0, reads: 0 };
  /** Entries not yet delivered to the group (XINFO GROUPS `lag`), as last read or counted down since. */
  #serverLag = 0;
  /** The id time of the next entry not delivered yet, for lag time when nothing is held. */
  #nextUndeliveredMs = 0;
  #claimCursor = '0-0';
  /**
   * This consumer's own pending list was read to its end. Until then no idle entries are claimed:
   * XAUTOCLAIM takes this consumer's own entries too, so those that wait to be read from the list
   * (idle since the last run) would be delivered by both, and one just settled, its XACK on the
   * way, read again from the list.
   */
  #ownPendingRead = false;

  constructor(options: RedisSourceOptions<T>) {
    checkOptions('redisSource', options, sourceKeys);
    this.#options = options;
    for (const k of ['stream', 'group'] as const) {
      if (typeof options[k] !== 'string' || options[k] === '') {
        throw new OptionsError(`redisSource.${k}`, 'must be a non-empty string', options[k]);
      }
    }
    this.#stream = options.stream;
    this.#group = options.group;
    this.#consumer = options.consumer ?? `${hostname()}-${process.pid}-${++consumers}`;
    if (typeof this.#consumer !== 'string' || this.#consumer === '') {
      throw new OptionsError('redisSource.consumer', 'must be a non-empty string', options.consumer);
    }
    if (options.from !== undefined && options.from !== 'all' && options.from !== 'new') {
      throw new OptionsError('redisSource.from', "must be 'all' or 'new'", options.from);
    }
    this.#subject = subjectOption('redisSource.subject', options.subject, 'entries');
    this.#field = options.field ?? 'data';
    if (typeof this.#field !== 'string' || this.#field === '') {
      throw new OptionsError('redisSource.field', 'must be a non-empty field name', options.field);
    }
    this.#codec = codecOf(options.codec, 'redisSource.codec');
    this.name = options.name ?? `redis:${this.#stream}/${this.#group}`;
    this.#deadLetter = deadLetterOption(options.deadLetter, 'redis', this.#group);
    const acks = ackOptions('redisSource', options);
    this.#maxAckPending = acks.maxAckPending;
    this.#maxDeliver = acks.maxDeliver;
    this.#backoffMs = acks.backoffMs;
    this.#readBatch = intOption('redisSource.readBatch', options.readBatch, 256, 1);
    this.#blockMs = intOption('redisSource.blockMs', options.blockMs, 2_000, 1);
    this.#claimIdleMs = intOption('redisSource.claimIdleMs', options.claimIdleMs, 30_000, 10);
    this.#lagRefreshMs = intOption('redisSource.lagRefreshMs', options.lagRefreshMs, 5_000, 10);
    this.ref = sourceRef(this.#subject, options.schema, this.#stream, true);
    this.#life = new SourceLifecycle(this, () => this.#stats);
  }

  /** What the source did so far. */
  get stats(): RedisSourceStats {
    return { ...this.#stats };
  }

  /** This reader's consumer name in the group. */
  get consumer(): string {
    return this.#consumer;
  }

  /**
   * Connects, finds (or creates) the group and starts reading: first this consumer's own pending
   * entries, then new ones. Rejects with a `ConnectorError` when the server cannot be reached,
   * refuses the credentials, or the group does not exist and `create` is false.
   */
  async start(host: SourceHost, options: { logger?: Logger } = {}): Promise<void> {
    this.#life.begin(host, options);
    // Connections of its own, also beside a caller's client: a blocked read holds its connection,
    // and the replies parsed here are RESP2's whatever protocol the caller's client speaks.
    const connection = optionsLike(this.#options.connection, this.name);
    // Both at once: a start waits for one connect, not two in a row.
    const [held, reader] = await Promise.allSettled([
      connectRedis(connection, this.name),
      connectRedis(connection, this.name),
    ]);
    if (held.status === 'rejected' || reader.status === 'rejected') {
      if (held.status === 'fulfilled') held.value.disconnect();
      if (reader.status === 'fulfilled') reader.value.disconnect();
      throw held.status === 'rejected' ? held.reason : (reader as PromiseRejectedResult).reason;
    }
    this.#held = { redis: held.value, owned: true };
    this.#reader = reader.value;
    try {
      // Closed while connecting: close found no connections to close, so they are closed here.
      if (this.#life.closed) throw new ClosedError(this.name, 'closed while starting');
      await this.#ensureGroup();
      await this.#refreshLag();
      if (this.#life.closed) throw new ClosedError(this.name, 'closed while starting');
    } catch (error) {
      this.#reader?.disconnect();
      await closeRedis(this.#held);
      // A source closed while it started has nothing to report: it was asked to stop.
      if (this.#life.closed) return;
      throw error;
    }
    const health = this.#life.register('redis', `redis:${this.#stream}`, this.#group);
    // ioredis reconnects by itself; both connections count (reads on one, acks on the other).
    for (const redis of [this.#reader, this.#held.redis]) {
      redis.on('reconnecting', () => health.reconnecting());
      redis.on('ready', () => {
        if (this.#reader?.status === 'ready' && this.#held?.redis.status === 'ready') health.connected();
      });
      redis.on('error', (error: unknown) => health.error(error));
    }
    this.#life.every(Math.max(10, Math.floor(this.#claimIdleMs / 3)), () => this.#touch());
    this.#life.every(Math.max(10, Math.floor(this.#claimIdleMs / 2)), () => this.#claimDead());
    this.#life.every(this.#lagRefreshMs, () => this.#refreshLag());
    void this.#readLoop();
  }

  async #ensureGroup(): Promise<void> {
    const redis = (this.#held as HeldRedis).redis;
    if (this.#options.create === false) {
      const groups = (await redis.call('XINFO', 'GROUPS', this.#stream).catch((error: unknown) => {
        throw new ConnectorError(this.name, `stream '${this.#stream}' is not available: ${messageOf(error)}`, {
          cause: error,
        });
      })) as unknown[][];
      if (!groups.some((g) => fieldOf(g, 'name') === this.#group)) {
        throw new ConnectorError(
          this.name,
          `group '${this.#group}' of stream '${this.#stream}' does not exist (create is false)`,
        );
      }
      return;
    }
    try {
      await redis.call(
        'XGROUP',
        'CREATE',
        this.#stream,
        this.#group,
        this.#options.from === 'new' ? '$' : '0',
        'MKSTREAM',
      );
    } catch (error) {
      // Another reader (or an earlier run) made it: use that one.
      if (!/BUSYGROUP/.test(messageOf(error))) {
        throw new ConnectorError(this.name, `could not create group '${this.#group}': ${messageOf(error)}`, {
          cause: error,
        });
      }
    }
  }

  lag(): SourceLag {
    return heldLag(this.#pending, (h) => h.timestampMs, this.#serverLag, this.#nextUndeliveredMs, 1);
  }

  /**
   * Stops reading. Entries still held stay pending in the group under this consumer's name: a
   * reader with the same `consumer` reads them at once, any other claims them after `claimIdleMs`
   * (at-least-once). Closes the connections the source opened. Stop the runtime first, so that what
   * actors hold settles and is acknowledged before the source lets go. Never rejects.
   */
  async close(): Promise<void> {
    if (!this.#life.end()) return;
    this.#life.wake();
    this.#pending.clear();
    this.#flushAcks();
    // A blocked read ends with its connection; what it returns later is never delivered.
    this.#reader?.disconnect();
    await closeRedis(this.#held);
  }

  /**
   * Reads while the subscribers have room: each read asks for no more than the free capacity of
   * the subject's mailboxes and the room under `maxAckPending` (at least one, whose publish then
   * waits for space). First this consumer's own pending entries (a restart under the same name),
   * then new ones. A failed read (a disconnect, a server restart) is retried with backoff.
   */
  async #readLoop(): Promise<void> {
    const bus = (this.#life.host as SourceHost).bus;
    let cursor: string | undefined = '0-0';
    let failures = 0;
    /** The next read of new entries, sent while the last ones were delivered. */
    let ahead: Promise<Entry[]> | undefined;
    while (!this.#life.closed) {
      let entries: Entry[];
      try {
        if (ahead !== undefined) {
          const read = ahead;
          ahead = undefined;
          entries = await read;
        } else {
          if (bus.refusal !== undefined) {
            await this.#life.changed(100);
            continue;
          }
          const room = this.#maxAckPending - this.#pending.size;
          if (room <= 0) {
            await this.#life.changed(1_000);
            continue;
          }
          if (!bus.hasSubscribers(this.#subject)) {
            this.#life.noSubscriber(this.#subject, 'entries wait in Redis');
            await this.#life.changed(50);
            continue;
          }
          entries = await this.#read(
            Math.max(1, Math.min(this.#readBatch, room, freeCapacity(bus, this.#subject))),
            cursor,
          );
        }
        failures = 0;
      } catch (error) {
        if (this.#life.closed) break;
        await this.#life.changed(this.#life.failed('read', ++failures, error));
        // The group is gone (the stream key deleted, a restart that lost it): made again as at
        // start, or every later read would fail the same way while producers append unread.
        if (/NOGROUP/.test(messageOf(error)) && this.#options.create !== false && !this.#life.closed) {
          await this.#ensureGroup().then(
            () => this.#life.log.warn(`${this.name}: group '${this.#group}' was missing; made again`),
            () => undefined,
          );
        }
        continue;
      }
      if (this.#life.closed) break;
      if (cursor !== undefined) {
        // Own pending entries: their delivery counts are in the group's pending list.
        if (entries.length === 0) {
          cursor = undefined;
          this.#ownPendingRead = true;
          continue;
        }
        cursor = (entries[entries.length - 1] as Entry)[0].toString();
        const counts = await this.#deliveryCounts(entries).catch(() => new Map<string, number>());
        for (const e of entries) {
          const waiting = this.#deliver(e, counts.get(e[0].toString()) ?? 2);
          if (waiting !== undefined) await waiting;
        }
        continue;
      }
      if (entries.length === 0) continue;
      this.#serverLag = Math.max(0, this.#serverLag - entries.length);
      // The next read goes out before these are delivered, so that Redis answers it while they
      // are: it asks for no more than the room and the free capacity left once these are in.
      const next = Math.min(
        this.#readBatch,
        this.#maxAckPending - this.#pending.size - entries.length,
        freeCapacity(bus, this.#subject) - entries.length,
      );
      if (next > 0 && bus.refusal === undefined && this.#serverLag > 0) {
        const read = this.#read(next, undefined);
        // Awaited on the next turn of the loop; a failure is handled there, not unhandled here.
        read.catch(() => undefined);
        ahead = read;
      }
      for (const e of entries) {
        const waiting = this.#deliver(e, 1);
        if (waiting !== undefined) await waiting;
      }
      if (this.#serverLag === 0) this.#refreshLag().catch(() => undefined);
    }
  }

  /** One XREADGROUP of at most `count` entries: this consumer's pending ones after `cursor`, or new ones (blocking). */
  async #read(count: number, cursor: string | undefined): Promise<Entry[]> {
    this.#stats.reads++;
    const reply = (await (this.#reader as Redis).callBuffer(
      'XREADGROUP',
      'GROUP',
      this.#group,
      this.#consumer,
      'COUNT',
      count,
      ...(cursor === undefined ? ['BLOCK', this.#blockMs] : []),
      'STREAMS',
      this.#stream,
      cursor ?? '>',
    )) as [Buffer, Entry[]][] | null;
    return reply?.[0]?.[1] ?? [];
  }

  /** The delivery count of each entry, from the group's pending list of this consumer. */
  async #deliveryCounts(entries: readonly Entry[]): Promise<Map<string, number>> {
    const first = (entries[0] as Entry)[0].toString();
    const last = (entries[entries.length - 1] as Entry)[0].toString();
    const rows = (await (this.#held as HeldRedis).redis.call(
      'XPENDING',
      this.#stream,
      this.#group,
      first,
      last,
      entries.length,
      this.#consumer,
    )) as [string, string, number, number][];
    return new Map(rows.map((r) => [r[0], Number(r[3])]));
  }

  /** Publishes one entry; undefined when the mailboxes took it at once, else when they will. */
  #deliver(entry: Entry, attempt: number): Promise<void> | undefined {
    this.#stats.received++;
    const id = entry[0].toString();
    const fields = entry[1];
    const held = this.#hold(id, attempt);
    if (fields === null) {
      // Deleted (XDEL, trimmed) while pending: nothing to deliver, nothing to keep pending.
      this.#ack(held);
      return undefined;
    }
    const headers: Record<string, string> = {};
    let payload: Buffer | undefined;
    let key: string | undefined;
    let eventTime: number | undefined;
    for (let i = 0; i + 1 < fields.length; i += 2) {
      const name = (fields[i] as Buffer).toString();
      const value = fields[i + 1] as Buffer;
      if (name === this.#field) payload = value;
      else if (name === REDIS_FIELDS.key) key = value.toString();
      else if (name === REDIS_FIELDS.eventTime) eventTime = Number(value.toString());
      else headers[name] = value.toString();
    }
    held.fields = headers;
    held.payload = payload;
    let data: unknown;
    try {
      if (payload === undefined) {
        throw new ConnectorError(this.name, `entry ${id} of '${this.#stream}' has no '${this.#field}' field`);
      }
      data = this.#codec.decode(new Uint8Array(payload.buffer, payload.byteOffset, payload.byteLength), this.#subject);
    } catch (error) {
      // Decoding again gives the same answer: dead-lettered at once, never delivered again.
      return this.#giveUp(held, error);
    }
    headers[STREAM_HEADERS.stream] = this.#stream;
    headers[STREAM_HEADERS.sequence] = id;
    // The fields the bus refuses are deleted from held.fields too, so the dead letter leaves them out.
    const checked = busHeaders(headers, this.name, `entry ${id} of '${this.#stream}'`);
    if (checked instanceof ConnectorError) return this.#giveUp(held, checked);
    const options: DeliveryOptions = {
      headers: checked,
      eventTime: eventTime !== undefined && Number.isFinite(eventTime) ? eventTime : held.timestampMs,
      lineage: held.lineage,
    };
    if (key !== undefined) options.key = key;
    const host = this.#life.host as SourceHost;
    return deliverHeld(host.bus, this.#life.client as BusClient, this.#subject, data, options, attempt, this.#stats);
  }

  #hold(id: string, attempt: number): Held {
    const held: Held = {
      id,
      attempt,
      // The id is `<ms>-<seq>`: parseInt stops at the dash, with no slice to make.
      timestampMs: Number.parseInt(id, 10),
      touchedAt: this.#life.now(),
      fields: NO_FIELDS,
      payload: undefined,
      lineage: undefined as unknown as SourceLineage<Held>,
    };
    held.lineage = new SourceLineage(this.#settlement, held, id, 'redis/');
    this.#pending.set(id, held);
    return held;
  }

  #ack(held: Held): void {
    if (this.#pending.get(held.id) === held) this.#pending.delete(held.id);
    this.#stats.acked++;
    // Acks of one turn of the event loop go out as one XACK.
    this.#acks.push(held.id);
    if (this.#acks.length === 1) setImmediate(() => this.#flushAcks());
    this.#life.wake();
  }

  #flushAcks(): void {
    const ids = this.#acks;
    if (ids.length === 0) return;
    this.#acks = [];
    (this.#held as HeldRedis).redis.call('XACK', this.#stream, this.#group, ...ids).catch((error: unknown) => {
      // Unacknowledged, they stay pending: claimed again after the idle time (at-least-once).
      if (!this.#life.closed)
        this.#life.log.warn(`${this.name}: XACK of ${ids.length} entries failed: ${messageOf(error)}`);
    });
  }

  /** An input's last reference came back: XACK, claim again after a backoff, or give up. */
  #settled(held: Held, error: unknown): void {
    if (this.#life.closed || this.#pending.get(held.id) !== held) return;
    if (error === undefined) {
      this.#pending.delete(held.id);
      this.#ack(held);
      return;
    }
    const attempt = held.attempt;
    if (error instanceof ClosedError || attempt < this.#maxDeliver) {
      this.#stats.retried++;
      const delay = error instanceof ClosedError ? 0 : retryDelay(attempt, this.#backoffMs);
      // It stays pending under this consumer (and in the count of held entries) until claimed again.
      this.#life.later(delay, () => void this.#redeliver(held));
      return;
    }
    void this.#giveUp(held, error);
  }

  /** XCLAIM (with no idle bound) counts one more delivery of an entry this consumer holds, and returns it. */
  async #redeliver(held: Held): Promise<void> {
    if (this.#pending.get(held.id) !== held) return;
    // The runtime is stopping: each claim would count a delivery and be refused again, at once, until
    // the source closes. Held as it is, the entry stays pending for this consumer's next run.
    if ((this.#life.host as SourceHost).bus.refusal !== undefined) return;
    let entries: Entry[];
    try {
      entries = (await (this.#held as HeldRedis).redis.callBuffer(
        'XCLAIM',
        this.#stream,
        this.#group,
        this.#consumer,
        0,
        held.id,
      )) as Entry[];
    } catch (error) {
      if (this.#life.closed) return;
      this.#life.log.warn(`${this.name}: could not claim ${held.id} again (${messageOf(error)}); retrying`);
      this.#life.later(1_000, () => void this.#redeliver(held));
      return;
    }
    this.#pending.delete(held.id);
    const entry = entries[0];
    // Gone from the stream (trimmed, deleted) or acknowledged elsewhere: nothing to deliver.
    if (entry === undefined) {
      this.#life.wake();
      return;
    }
    const waiting = this.#deliver(entry, held.attempt + 1);
    if (waiting !== undefined) await waiting;
  }

  /**
   * Claims entries that other consumers of the group left pending longer than `claimIdleMs` (a
   * reader that died), at most as many as there is room for, and delivers them at their count.
   */
  async #claimDead(): Promise<void> {
    const bus = (this.#life.host as SourceHost).bus;
    const room = this.#maxAckPending - this.#pending.size;
    if (room <= 0 || !this.#ownPendingRead || bus.refusal !== undefined || !bus.hasSubscribers(this.#subject)) return;
    const count = Math.max(1, Math.min(this.#readBatch, room, freeCapacity(bus, this.#subject)));
    const reply = (await (this.#held as HeldRedis).redis.callBuffer(
      'XAUTOCLAIM',
      this.#stream,
      this.#group,
      this.#consumer,
      this.#claimIdleMs,
      this.#claimCursor,
      'COUNT',
      count,
    )) as [Buffer, Entry[], Buffer[]?];
    this.#claimCursor = reply[0].toString();
    // Entries this source holds (idle past the bound in a slow actor) are not delivered twice.
    const entries = reply[1].filter((e) => !this.#pending.has(e[0].toString()));
    if (entries.length === 0 || this.#life.closed) return;
    this.#stats.claimed += entries.length;
    const counts = await this.#deliveryCounts(entries).catch(() => new Map<string, number>());
    for (const e of entries) {
      if (this.#life.closed) return;
      const waiting = this.#deliver(e, counts.get(e[0].toString()) ?? 2);
      if (waiting !== undefined) await waiting;
    }
  }

  /** Resets the idle time of entries held long, so no other reader claims them while actors work. */
  #touch(): Promise<void> | undefined {
    const now = this.#life.now();
    const ids: string[] = [];
    for (const h of this.#pending.values()) {
      if (now - h.touchedAt >= this.#claimIdleMs / 3) {
        h.touchedAt = now;
        ids.push(h.id);
      }
    }
    if (ids.length === 0) return undefined;
    return (this.#held as HeldRedis).redis
      .call('XCLAIM', this.#stream, this.#group, this.#consumer, 0, ...ids, 'JUSTID')
      .then(() => undefined);
  }

  async #refreshLag(): Promise<void> {
    const redis = (this.#held as HeldRedis).redis;
    const groups = (await redis.call('XINFO', 'GROUPS', this.#stream)) as unknown[][];
    const group = groups.find((g) => fieldOf(g, 'name') === this.#group);
    if (group === undefined) return;
    const lag = fieldOf(group, 'lag');
    // Null when Redis cannot tell (entries deleted in the range): the last count stands.
    if (lag !== null && lag !== undefined) this.#serverLag = Number(lag);
    if (this.#serverLag > 0) {
      const last = String(fieldOf(group, 'last-delivered-id'));
      const next = (await redis.call('XRANGE', this.#stream, `(${last}`, '+', 'COUNT', 1)) as [string, unknown][];
      const id = next[0]?.[0];
      this.#nextUndeliveredMs = id === undefined ? 0 : Number(id.slice(0, id.indexOf('-')));
    }
  }

  /**
   * Dead-letters an entry the source gives up on and acknowledges it, so the group never delivers
   * it again; the entry stays in the stream and its copy in the dead-letter subject. A dead letter
   * the bus refuses leaves the entry pending, to be delivered again later.
   */
  async #giveUp(held: Held, error: unknown): Promise<void> {
    const letter = deadLetterHeaders({
      headers: { ...held.fields, [STREAM_HEADERS.stream]: this.#stream, [STREAM_HEADERS.sequence]: held.id },
      error,
      source: this.name,
      attempts: held.attempt,
      subject: this.#stream,
      messageId: `${this.#stream}/${held.id}`,
      timeMs: this.#life.now(),
    });
    const bytes = held.payload === undefined ? new Uint8Array(0) : new Uint8Array(held.payload);
    try {
      await publishDeadLetter(this.#life.client as BusClient, this.#deadLetter, bytes, letter, this.#life.log);
    } catch (e) {
      this.#life.log.error(`${this.name}: could not dead-letter ${held.id} to '${this.#deadLetter}': ${messageOf(e)}`);
      this.#life.later(this.#claimIdleMs, () => void this.#redeliver(held));
      return;
    }
    this.#stats.terminated++;
    this.#ack(held);
    this.#stats.acked--;
  }
}

/** @internal One entry delivered to the bus and not settled yet. */
interface Held {
  readonly id: string;
  /** Redis's delivery count of this delivery. */
  readonly attempt: number;
  readonly timestampMs: number;
  touchedAt: number;
  fields: Record<string, string>;
  payload: Buffer | undefined;
  lineage: SourceLineage<Held>;
}

/** A field of an XINFO reply (a flat name/value list). */
function fieldOf(reply: readonly unknown[], name: string): unknown {
  for (let i = 0; i + 1 < reply.length; i += 2) if (String(reply[i]) === name) return reply[i + 1];
  return undefined;
}
