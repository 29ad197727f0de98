/**
 * A Kafka sink implementing the runtime's `Sink` contract: one `write` is one produce request of
 * an idempotent producer, or one transaction that also commits a Kafka source's offsets.
 */
import { ProduceAcks, Producer, txnOffsetCommitV3 } from '@platformatic/kafka';
import type { Logger } from '../../runtime/actors/actor.ts';
import { trimOldest } from '../../runtime/bounded.ts';
import type { Codec } from '../../runtime/codec.ts';
import { ClosedError, ConnectorError, messageOf, OptionsError } from '../../runtime/errors.ts';
import { knownKeys, oneOf, optionKeys, optionsObject } from '../../runtime/options.ts';
import { IDEMPOTENCY_KEY_HEADER, type Sink, type SinkRecord } from '../../runtime/sinks/sink.ts';
import { REVISION_HEADER } from '../../runtime/sinks/streamSink.ts';
import type { Store } from '../../runtime/store/types.ts';
import { STREAM_HEADERS } from '../../runtime/streams/stream.ts';
import {
  type ClientConnection,
  clientConnection,
  codecOf,
  connectorError,
  type KafkaCodec,
  type KafkaConnectionOptions,
  probeConnection,
} from './config.ts';
import { BatchRelease, type KafkaTenure } from './partition.ts';
import {
  KAFKA_HEADERS,
  type KafkaCommit,
  type KafkaGroupMembership,
  type KafkaPosition,
  type KafkaSource,
} from './source.ts';

export interface KafkaSinkOptions<T = unknown> {
  /** Names the sink in errors and telemetry. @default `kafka:<topic>` */
  name?: string;
  connection: KafkaConnectionOptions;
  /** The topic written to, or a function of the record. */
  topic: string | ((record: SinkRecord<T>) => string);
  /** How values become bytes. @default 'json' */
  codec?: KafkaCodec;
  /**
   * The Kafka record key, which chooses the partition (order is kept per key).
   * @default the envelope's key, else the idempotency key
   */
  key?: (record: SinkRecord<T>) => string | undefined;
  /**
   * - `'idempotent'`: an idempotent producer, acks from all in-sync replicas: a retried request
   *   is not written twice, but a replayed input is (at-least-once).
   * - `'transactional'`: each batch is a transaction; with `source`, it also commits the source's
   *   offsets for the batch's inputs (exactly-once for `read_committed` readers, as Kafka Streams
   *   does). Needs `transactionalId`.
   * - `'dedupe'`: an idempotent producer and the keys written kept in `store`: a replayed key is
   *   not written again (exactly-once effect for inputs from any source, except a crash between
   *   the write and the store's commit, which lets that batch through once more).
   * @default 'idempotent'
   */
  mode?: 'idempotent' | 'transactional' | 'dedupe';
  /** The producer's transactional id: unique per process, the same after its restart. */
  transactionalId?: string;
  /** The Kafka source whose offsets a transaction commits (its `commit` must be `'sink'`). */
  source?: KafkaSource<unknown>;
  /** The store keeping written keys (`'dedupe'`): the runtime's `LmdbStore`. */
  store?: Store;
  logger?: Logger;
}

/** Counts of what the sink did. */
export interface KafkaSinkStats {
  readonly batches: number;
  readonly written: number;
  /** Records not written: their key was written before (dedupe), or their offsets were committed. */
  readonly skipped: number;
  readonly transactions: number;
  readonly aborted: number;
  /** Transactional producers dropped because a failed transaction could not be ended. */
  readonly producersReplaced: number;
  /** Commits of a transaction sent again after no answer (a commit is safe to repeat, an abort is not). */
  readonly commitRetries: number;
  /** Transactions whose commit was never answered, found committed in the group's offsets. */
  readonly commitsFound: number;
}

const sinkKeys = optionKeys<keyof KafkaSinkOptions>({
  name: true,
  connection: true,
  topic: true,
  codec: true,
  key: true,
  mode: true,
  transactionalId: true,
  source: true,
  store: true,
  logger: true,
});

/** Headers of an input's position: they describe where the input came from, not the output. */
const POSITION_HEADERS = new Set<string>([
  STREAM_HEADERS.stream,
  STREAM_HEADERS.sequence,
  KAFKA_HEADERS.topic,
  KAFKA_HEADERS.partition,
  KAFKA_HEADERS.offset,
  IDEMPOTENCY_KEY_HEADER,
  REVISION_HEADER,
]);

/** The names of the headers every record carries, encoded once rather than per record. */
const HEADER_NAMES = new Map<string, Buffer>(
  [IDEMPOTENCY_KEY_HEADER, REVISION_HEADER].map((name) => [name, Buffer.from(name)]),
);

const RECENT_KEYS = 100_000;
/** The calls that add to a transaction, which the broker refuses for a moment after a commit. */
const TXN_ADDS = new Set(['addPartitionsToTransaction', 'addOffsetsToTransaction']);

/** How long a transaction waits for a rebalance to end before its batch fails (and is retried). */
const MEMBERSHIP_WAIT_MS = 30_000;

/** The store namespace of a dedupe sink's keys. */
export function kafkaSinkNamespace(name: string): string {
  return `sluice.kafka-sink/${name}`;
}

/**
 * Makes a Kafka sink and connects its producer (rejects with a {@link ConnectorError} when the
 * brokers cannot be reached or refuse the credentials). Records carry their idempotency key in the
 * `sluice-idempotency-key` header and the envelope's headers (trace context included).
 *
 * @example
 * const out = await kafkaSink({ connection: { brokers: ['127.0.0.1:9092'] }, topic: 'priced', mode: 'transactional', transactionalId: 'pricing-1', source: orders });
 * runtime.spawn(sinkActor({ name: 'to-kafka', subscribe: 'priced', sink: out }));
 */
export async function kafkaSink<T = unknown>(options: KafkaSinkOptions<T>): Promise<KafkaSink<T>> {
  const sink = new KafkaSink<T>(options);
  await sink.open();
  return sink;
}

export class KafkaSink<T = unknown> implements Sink<T> {
  readonly name: string;
  readonly mode: 'idempotent' | 'transactional' | 'dedupe';
  readonly #connection: ClientConnection;
  readonly #topic: (record: SinkRecord<T>) => string;
  readonly #codec: Codec;
  readonly #key: (record: SinkRecord<T>) => string | undefined;
  readonly #transactionalId: string | undefined;
  readonly #source: KafkaSource<unknown> | undefined;
  readonly #store: Store | undefined;
  readonly #log: Logger;
  /**
   * The producers: one, or for transactions two, each under a transactional id of its own, taking
   * the transactions in turn, so that one sends its records while the one before it commits.
   */
  readonly #producers: (Producer<string | undefined, Buffer, string, string> | undefined)[];
  /** The latest transaction's records acknowledged (or it failed): the next one's go after them. */
  #lastSent: Promise<void> = Promise.resolve();
  /** The latest transaction committed (its inputs done) or failed (undefined). */
  #lastDone: Promise<Done | undefined> = Promise.resolve(new Map());
  /** Per producer, its latest transaction ended: it holds one at a time. */
  readonly #slotFree: Promise<void>[];
  /** Transactions begun, which picks the producer of the next. */
  #turn = 0;
  #closed = false;
  #opened = false;
  /** One write at a time: a transactional producer holds one transaction, and lanes share the sink. */
  #queue: Promise<void> = Promise.resolve();
  /** Writes a caller may have under way: two for transactions, which overlap (see `#producers`). */
  readonly writesAtOnce: number;
  /** Writes called and not yet ended. */
  #writes = 0;
  readonly #stats = {
    batches: 0,
    written: 0,
    skipped: 0,
    transactions: 0,
    aborted: 0,
    producersReplaced: 0,
    commitRetries: 0,
    commitsFound: 0,
  };
  /** Keys written lately by committed transactions, with their revision (-1 for none). */
  readonly #recent = new Map<string, number>();
  /**
   * A transaction whose commit got no answer: after the producer is replaced (which ends it on the
   * broker), the group's offsets tell whether it committed, before anything is written again.
   */
  #unsure: Unsure<T> | undefined;
  /** Commits the source's offsets settled since the last transaction, while no records come. */
  #idleCommits: ReturnType<typeof setInterval> | undefined;
  /** The keys of the latest transaction's records, which the next one may be sent beside. */
  #lastKeys: Set<string> | undefined;
  /** Per tenure of a source partition, the inputs whose outputs this sink wrote in it. */
  readonly #inputs = new WeakMap<KafkaTenure, Set<number>>();

  constructor(options: KafkaSinkOptions<T>) {
    optionsObject('kafkaSink', options);
    if (options === undefined) throw new OptionsError('kafkaSink', 'must give connection and topic', options);
    knownKeys('kafkaSink', options, sinkKeys);
    const topic = options.topic;
    if (typeof topic === 'string') {
      if (!/^[a-zA-Z0-9._-]{1,249}$/.test(topic))
        throw new OptionsError('kafkaSink.topic', 'a topic name is 1 to 249 of [a-zA-Z0-9._-]', topic);
    } else if (typeof topic !== 'function')
      throw new OptionsError('kafkaSink.topic', 'must be a topic name or a function of the record', topic);
    this.name = options.name ?? `kafka:${typeof topic === 'string' ? topic : 'topics'}`;
    const where = `kafkaSink '${this.name}'`;
    this.#connection = clientConnection(options.connection, `${where}.connection`);
    this.#topic = typeof topic === 'string' ? () => topic : topic;
    this.#codec = codecOf(options.codec, `${where}.codec`);
    if (options.key !== undefined && typeof options.key !== 'function')
      throw new OptionsError(`${where}.key`, 'must be a function of the record', options.key);
    this.#key = options.key ?? ((r) => r.envelope?.key ?? r.key);
    this.mode = oneOf(`${where}.mode`, options.mode, ['idempotent', 'transactional', 'dedupe'], 'idempotent');
    this.#transactionalId = options.transactionalId;
    this.#source = options.source;
    this.#store = options.store;
    this.#log = options.logger ?? console;
    if (this.mode === 'transactional' && (typeof this.#transactionalId !== 'string' || this.#transactionalId === ''))
      throw new OptionsError(
        `${where}.transactionalId`,
        "must be a non-empty string with mode 'transactional'",
        this.#transactionalId,
      );
    if (this.mode !== 'transactional' && this.#transactionalId !== undefined)
      throw new OptionsError(`${where}.transactionalId`, "is for mode 'transactional' only", this.#transactionalId);
    if (this.#source !== undefined && this.mode !== 'transactional')
      throw new OptionsError(
        `${where}.source`,
        "commits offsets in a transaction: needs mode 'transactional'",
        this.mode,
      );
    if (this.mode === 'dedupe' && (this.#store === undefined || typeof this.#store.getKey !== 'function'))
      throw new OptionsError(`${where}.store`, "must be the runtime's store with mode 'dedupe'", this.#store);
    this.writesAtOnce = this.mode === 'transactional' ? 2 : 1;
    this.#producers = new Array(this.writesAtOnce).fill(undefined);
    this.#slotFree = this.#producers.map(() => Promise.resolve());
  }

  get stats(): KafkaSinkStats {
    return { ...this.#stats };
  }

  /** Connects the producer (and, transactional, registers its id, fencing an older producer of it). */
  async open(): Promise<void> {
    await probeConnection(this.name, this.#connection);
    for (let slot = 0; slot < this.#producers.length; slot++) this.#producers[slot] = await this.#connect(slot);
    this.#opened = true;
    const source = this.#source;
    if (source === undefined) return;
    // Inputs another branch held when their outputs' transaction committed settle later, and
    // only a transaction commits this source's offsets: with no more records to write, one of
    // offsets alone does, or a restart would read them again.
    this.#idleCommits = setInterval(() => {
      if (this.#writes > 0 || this.#closed || !source.settledPastCommit()) return;
      this.write([]).catch((error: unknown) =>
        this.#log.warn(`kafka sink '${this.name}' could not commit settled offsets: ${messageOf(error)}`),
      );
    }, source.commitIntervalMs);
    this.#idleCommits.unref();
  }

  async #connect(slot: number): Promise<Producer<string | undefined, Buffer, string, string>> {
    const c = this.#connection;
    const transactionalId = this.#transactionalIdOf(slot);
    const producer = new Producer<string | undefined, Buffer, string, string>({
      clientId: c.clientId,
      bootstrapBrokers: c.bootstrapBrokers,
      connectTimeout: c.connectTimeout,
      requestTimeout: c.requestTimeout,
      // Transactions meet CONCURRENT_TRANSACTIONS at each start: room for its short retries.
      retries: transactionalId === undefined ? c.retries : Math.max(c.retries, 10),
      // Right after a commit the broker answers the next transaction's first AddOffsetsToTxn or
      // AddPartitionsToTxn with CONCURRENT_TRANSACTIONS until its markers are written
      // (milliseconds): at the full delay, every transaction of a busy sink waited for it
      // (Kafka's Java producer retries it after 20 ms too).
      retryDelay: (_client: unknown, operation: string, attempt: number) =>
        TXN_ADDS.has(operation) ? Math.min(10 * attempt, c.retryDelay) : c.retryDelay,
      ...(c.sasl === undefined ? {} : { sasl: c.sasl }),
      ...(c.tls === undefined ? {} : { tls: c.tls }),
      idempotent: true,
      acks: ProduceAcks.ALL,
      autocreateTopics: true,
      ...(transactionalId === undefined ? {} : { transactionalId }),
      serializers: {
        key: (k?: string) => (k === undefined ? undefined : Buffer.from(k)),
        value: (v?: Buffer) => v,
        headerKey: (k?: string) => (k === undefined ? undefined : (HEADER_NAMES.get(k) ?? Buffer.from(k))),
        headerValue: (v?: string) => (v === undefined ? undefined : Buffer.from(v)),
      },
    });
    try {
      if (transactionalId === undefined) await producer.initIdempotentProducer({});
      else {
        // InitProducerId under the transactional id now, not at the first write: it fences a
        // previous process of this id and aborts the transaction it left open, whose pending
        // offsets would otherwise keep the source's stable offset read waiting (and the source
        // must read them before this sink gets anything to write).
        // -1/-1 asks for the id as a new producer does (KIP-360); the client's default of 0/0
        // claims epoch 0 of producer 0, which the broker refuses as fenced once the id was used.
        const tx = await producer.beginTransaction({ producerId: -1n, producerEpoch: -1 });
        await tx.cancel();
      }
    } catch (error) {
      await producer.close().catch(() => undefined);
      throw connectorError(this.name, c, 'connecting the producer', error);
    }
    return producer;
  }

  write(records: readonly SinkRecord<T>[]): Promise<void> {
    if (this.#closed) return Promise.reject(new ClosedError(this.name, 'the sink is closed'));
    if (this.mode === 'transactional') return this.#transactional(records);
    // With none under way, the write starts now rather than a microtask later: its request then
    // leaves before the caller goes on (a sink actor settles the previous batch's inputs after
    // handing over the next batch, while this one is written).
    const run = this.#writes === 0 ? this.#write(records) : this.#queue.then(() => this.#write(records));
    this.#writes++;
    // Ended before the caller hears of it (reactions run in order), so its next write starts at once too.
    this.#queue = run.then(
      () => void this.#writes--,
      () => void this.#writes--,
    );
    return run;
  }

  async #write(records: readonly SinkRecord<T>[]): Promise<void> {
    if (this.#closed || !this.#opened) throw new ClosedError(this.name, 'the sink is not open');
    // Dropped after a transaction that could not be ended: a new one, whose registration fences
    // the old producer and aborts its transaction.
    this.#producers[0] ??= await this.#connect(0);
    const producer = this.#producers[0];
    this.#stats.batches++;
    let todo = records;
    if (this.mode === 'dedupe') {
      const ns = kafkaSinkNamespace(this.name);
      const store = this.#store as Store;
      const seen = new Map<string, number>();
      todo = records.filter((r) => {
        const held = (seen.get(r.key) ?? store.getKey(ns, r.key)) as number | undefined;
        const rev = r.revision ?? -1;
        if (held !== undefined && held >= rev) return false;
        seen.set(r.key, rev);
        return true;
      });
      this.#stats.skipped += records.length - todo.length;
      if (todo.length === 0) return;
    }
    try {
      await producer.send({ messages: todo.map((r) => this.#message(r)) });
    } catch (error) {
      throw connectorError(this.name, this.#connection, `writing ${todo.length} records`, error);
    }
    this.#stats.written += todo.length;
    if (this.mode === 'dedupe') {
      const ns = kafkaSinkNamespace(this.name);
      await (this.#store as Store).batch((b) => {
        for (const r of todo) b.put(ns, r.key, r.revision ?? -1);
      });
    }
  }

  /**
   * A transaction per write, on the producers in turn. Its records go once the previous
   * transaction's are acknowledged, so they keep their order in each partition; it commits once
   * the previous one committed, counting the previous one's inputs as done, so committed offsets
   * never go back. If the previous one failed, this one aborts: its records would come before the
   * retried ones. Each write ends after the one before it, failed or not.
   */
  #transactional(records: readonly SinkRecord<T>[]): Promise<void> {
    const slot = this.#turn++ % this.#producers.length;
    const prev: Previous = { sent: this.#lastSent, done: this.#lastDone, free: this.#slotFree[slot] as Promise<void> };
    let sent: () => void = noop;
    this.#lastSent = new Promise<void>((resolve) => void (sent = resolve));
    // A transaction that fails before its records went lets the next one go on; either way a
    // write ends after the one before it.
    const run = this.#transaction(slot, records, prev, () => sent()).catch(async (error: unknown) => {
      sent();
      await prev.done;
      throw error;
    });
    this.#lastDone = run.then(
      (done) => done,
      () => undefined,
    );
    const ended = run.then(noop, noop);
    this.#slotFree[slot] = ended;
    this.#writes++;
    this.#queue = Promise.all([this.#queue, ended.then(() => void this.#writes--)]).then(noop);
    return run.then(noop);
  }

  /** The transactional id of producer `slot`: the one given, then `<id>.2`. */
  #transactionalIdOf(slot: number): string | undefined {
    const id = this.#transactionalId;
    return id === undefined || slot === 0 ? id : `${id}.${slot + 1}`;
  }

  async #transaction(slot: number, records: readonly SinkRecord<T>[], prev: Previous, sent: () => void): Promise<Done> {
    await prev.free;
    await prev.sent;
    if (this.#closed || !this.#opened) throw new ClosedError(this.name, 'the sink is not open');
    // Dropped after a transaction that could not be ended: a new one, whose registration fences
    // the old producer and aborts its transaction.
    this.#producers[slot] ??= await this.#connect(slot);
    const producer = this.#producers[slot];
    if (this.#unsure !== undefined) await this.#settleUnsure();
    this.#stats.batches++;
    const source = this.#source;
    let todo = records;
    let offsets: KafkaCommit[] = [];
    let membership: KafkaGroupMembership | undefined;
    const inputs: Done = new Map();
    // Per record of `todo`, the source input it was read as (found once here, used at the commit).
    const readIns: ReadIns = { tenures: [], offsets: [] };
    if (source !== undefined) {
      // A transaction names the group's current generation: wait out a rebalance under way.
      membership = await source.awaitMembership(MEMBERSHIP_WAIT_MS);
      if (membership === undefined)
        throw new ConnectorError(this.name, `source '${source.name}' has no group generation to commit with`, {
          retryable: true,
        });
      const tenures = source.tenures();
      // Per partition of the batch's inputs (each is committed, which fences a member the group
      // dropped), the inputs whose every reference is this batch's: only those are done when it
      // commits. An input another branch still holds (a second subscriber, an actor's output
      // elsewhere) is not: committed with this batch, its offset went past work not done yet (lost
      // on a crash), and the next transaction's floor moved back below it. A later commit passes it.
      const release = new BatchRelease(source);
      // Consecutive records mostly come from one partition: its list is looked up once.
      let lastTenure: KafkaTenure | undefined;
      let done: number[] = [];
      const stream = source.stream;
      todo = records.filter((r) => {
        const lineage = r.envelope?.lineage;
        const delivery = release.give(lineage);
        let p: KafkaPosition | undefined;
        let readIn: KafkaTenure | undefined;
        if (delivery !== undefined && keyNames(r.key, stream, delivery.part, delivery.record.offset)) {
          // The usual record: its key names the input its lineage leads to (no key cut up).
          p = { topic: delivery.part.topic, partition: delivery.part.partition, offset: delivery.record.offset };
          readIn = delivery.part;
        } else {
          p = positionOf(r, source);
          if (p === undefined) {
            if (this.#wrote(r)) return false;
            readIns.tenures.push(undefined);
            readIns.offsets.push(-1);
            return true;
          }
          readIn =
            delivery !== undefined &&
            delivery.record.offset === p.offset &&
            delivery.part.partition === p.partition &&
            delivery.part.topic === p.topic
              ? delivery.part
              : source.tenureOf(lineage, p);
        }
        const tenure = tenures.get(p.topic)?.get(p.partition);
        if (tenure === undefined) return false; // taken away by a rebalance: its new owner writes it
        if (readIn !== undefined && readIn !== tenure) {
          // Read in an earlier tenure of the partition, lost and taken back since: the current
          // tenure reads the input again from the committed offset (or a committed transaction
          // covered it), so this output would be a second copy, and its offset is not this
          // tenure's to commit. As for a partition taken away, the input settles with the batch
          // and the old tenure, revoked, ignores it.
          return false;
        }
        if (tenure !== lastTenure) {
          lastTenure = tenure;
          done = inputs.get(tenure) ?? [];
          if (done.length === 0) inputs.set(tenure, done);
        }
        if (readIn === tenure && release.settles) done.push(p.offset);
        // Written by a committed transaction (a retry, or a batch whose commit was not heard
        // found committed): written again, a read_committed reader would see it twice.
        if (this.#wrote(r)) return false;
        if (p.offset < tenure.committed || tenure.doneAtTake(p.offset)) {
          // The group's committed offsets are the truth, as in Kafka Streams: a committed
          // transaction covered this input, so its outputs were written. A retry or a replay of
          // it, or an output of it in flight since an earlier tenure of the partition whose
          // lineage does not lead back to the source (lost, processed and committed by another
          // member, taken back), would be a second copy.
          if (!this.#wroteInput(tenure, p.offset)) return false;
          // Another output of an input whose first outputs a committed batch of this tenure held
          // (a batch cut between them): not a copy, but its input's offset is committed already.
          this.#log.warn(
            `kafka sink '${this.name}': '${r.key}' comes after its input's offset was committed; keep an input's outputs in one batch for exactly-once`,
          );
        }
        readIns.tenures.push(readIn ?? tenure);
        readIns.offsets.push(p.offset);
        return true;
      });
      this.#stats.skipped += records.length - todo.length;
      // A key the transaction before this one writes, replayed into this batch (an input retried
      // while its first outputs were being committed): whether it is a copy is known once that
      // one ends, so this batch waits for it and then leaves out what it wrote.
      const previous = this.#lastKeys;
      const keys = new Set<string>();
      let replayed = false;
      for (const r of todo) {
        keys.add(r.key);
        if (previous?.has(r.key) === true) replayed = true;
      }
      this.#lastKeys = keys;
      if (replayed) {
        await prev.done;
        const before = todo.length;
        todo = keepUnwritten(todo, readIns, (r) => !this.#wrote(r));
        this.#stats.skipped += before - todo.length;
      }
    }
    let tx: Awaited<ReturnType<typeof producer.beginTransaction>> | undefined;
    try {
      if (todo.length > 0) {
        tx = await producer.beginTransaction();
        await tx.send({ messages: todo.map((r) => this.#message(r)) });
      }
      sent();
      // Committed, the one before finished its inputs, though they may not be settled yet; failed,
      // its inputs come back later, as they do to a sink writing one batch at a time.
      const before = await prev.done;
      // Unanswered, its commit may have been made or not: until the group's offsets tell (at the
      // next transaction's start), no other commit may move them.
      if (this.#unsure !== undefined)
        throw new ConnectorError(
          this.name,
          "the commit of the transaction before this one got no answer: this one is aborted until the group's offsets tell whether that one committed",
          { retryable: true },
        );
      if (source !== undefined) offsets = source.offsetsFor(before === undefined ? inputs : mergeDone(before, inputs));
      if (tx === undefined) {
        if (offsets.length === 0) return inputs;
        tx = await producer.beginTransaction();
      }
      // The offsets after the records, one after the other. Sent at once, the offset commit's
      // check of the transaction (KIP-890: the group coordinator asks the transaction coordinator
      // whether the offsets partition is in it) met the records' AddPartitionsToTxn changing the
      // transaction and failed with COORDINATOR_LOAD_IN_PROGRESS in steady state, a few times a
      // run under load; the records of such an aborted transaction, written again by the retry,
      // were seen twice by read_committed readers in the rebalance test (docs/kafka.md).
      if (source !== undefined && membership !== undefined && offsets.length > 0) {
        await tx.addConsumer(membership.consumer);
        await this.#commitOffsets(producer, this.#transactionalIdOf(slot) as string, source, membership, offsets);
      }
      await this.#commit(tx);
    } catch (error) {
      if (error instanceof UnansweredCommit) {
        // Not aborted: the broker may have committed it. The producer is replaced, whose
        // registration completes or aborts the transaction, and the next write asks the group.
        this.#stats.producersReplaced++;
        this.#producers[slot] = undefined;
        await producer.close().catch(() => undefined);
        if (source !== undefined && offsets.length > 0) this.#unsure = { records: todo, offsets };
        throw new ConnectorError(
          this.name,
          `the commit of a transaction of ${todo.length} records got no answer (${messageOf(error.cause)}): the next write replaces the producer and ${this.#unsure === undefined ? 'writes the batch again' : "asks the group's offsets whether it committed before writing it again"}`,
          { cause: error.cause, retryable: true },
        );
      }
      this.#stats.aborted++;
      let abortError: unknown;
      if (tx !== undefined && !tx.completed) await tx.abort().catch((e: unknown) => void (abortError = e));
      // The client keeps a transaction it could not end (or begin) as the active one and refuses
      // every later one ("There is already an active transaction"): the producer is dropped and
      // the next write makes a new one. Its InitProducerId under the same transactional id bumps
      // the epoch, so the broker aborts the transaction left open and fences the old producer
      // (a late request of it is refused) before anything is written again.
      if (abortError !== undefined || producer.transaction !== undefined) {
        this.#stats.producersReplaced++;
        this.#producers[slot] = undefined;
        await producer.close().catch(() => undefined);
        const reason =
          abortError === undefined
            ? messageOf(error)
            : `${messageOf(error)}; its abort failed: ${messageOf(abortError)}`;
        throw new ConnectorError(
          this.name,
          `a transaction of ${todo.length} records failed and could not be ended (${reason}): the transactional producer is replaced at the next write, which aborts the transaction on the broker`,
          { cause: error, retryable: true },
        );
      }
      throw connectorError(this.name, this.#connection, `a transaction of ${todo.length} records`, error);
    }
    this.#committed(todo, offsets, source === undefined ? undefined : readIns);
    return inputs;
  }

  /**
   * What a committed transaction of `records` and `offsets` leaves known. `readIns`: per record,
   * the input it was read as, when the write found them (else they are looked up here).
   */
  #committed(records: readonly SinkRecord<T>[], offsets: readonly KafkaCommit[], readIns?: ReadIns): void {
    const source = this.#source;
    this.#stats.transactions++;
    this.#stats.written += records.length;
    for (const r of records) this.#remember(r);
    trimOldest(this.#recent, RECENT_KEYS);
    if (source !== undefined) {
      const tenures = readIns === undefined ? source.tenures() : undefined;
      // Consecutive records mostly come from one partition: its set of inputs is looked up once.
      let lastTenure: KafkaTenure | undefined;
      let inputs: Set<number> | undefined;
      for (let i = 0; i < records.length; i++) {
        let tenure = readIns?.tenures[i];
        let offset = readIns?.offsets[i] ?? -1;
        if (tenures !== undefined) {
          const r = records[i] as SinkRecord<T>;
          const p = positionOf(r, source);
          if (p === undefined) continue;
          // The tenure the input was read in: the current one may be a later one by now.
          tenure = source.tenureOf(r.envelope?.lineage, p) ?? tenures.get(p.topic)?.get(p.partition);
          offset = p.offset;
        }
        if (tenure === undefined) continue;
        if (tenure !== lastTenure) {
          if (inputs !== undefined) trimOldest(inputs, RECENT_KEYS);
          lastTenure = tenure;
          inputs = this.#inputsOf(lastTenure);
        }
        (inputs as Set<number>).add(offset);
      }
      if (inputs !== undefined) trimOldest(inputs, RECENT_KEYS);
      source.committedBySink(offsets);
    }
  }

  /**
   * TxnOffsetCommit with the generation and member id (KIP-447: a member fenced by a rebalance
   * cannot commit) and the offsets done above each floor as metadata, which the client's own
   * `addOffset` cannot carry.
   */
  async #commitOffsets(
    producer: Producer<string | undefined, Buffer, string, string>,
    transactionalId: string,
    source: KafkaSource<unknown>,
    m: KafkaGroupMembership,
    offsets: readonly KafkaCommit[],
  ): Promise<void> {
    const byTopic = new Map<
      string,
      {
        partitionIndex: number;
        committedOffset: bigint;
        committedLeaderEpoch: number;
        committedMetadata: string | null;
      }[]
    >();
    for (const o of offsets) {
      let list = byTopic.get(o.topic);
      if (list === undefined) byTopic.set(o.topic, (list = []));
      list.push({
        partitionIndex: o.partition,
        committedOffset: BigInt(o.offset),
        committedLeaderEpoch: -1,
        committedMetadata: o.metadata,
      });
    }
    const producerId = producer.producerId;
    const producerEpoch = producer.producerEpoch;
    if (producerId === undefined || producerEpoch === undefined)
      throw new ConnectorError(this.name, 'the transactional producer has no producer id', { retryable: true });
    try {
      const connection = await source.coordinator();
      await txnOffsetCommitV3.api.async(
        connection,
        transactionalId,
        m.groupId,
        producerId,
        producerEpoch,
        m.generationId,
        m.memberId,
        null,
        [...byTopic].map(([name, partitions]) => ({ name, partitions })),
      );
    } catch (error) {
      source.dropCoordinator();
      throw error;
    }
  }

  #wroteInput(tenure: KafkaTenure, offset: number): boolean {
    return this.#inputs.get(tenure)?.has(offset) === true;
  }

  /**
   * The inputs of this tenure with outputs in a committed transaction (an input is added as its
   * transaction commits): a later output of one of them is a sibling.
   */
  #inputsOf(tenure: KafkaTenure): Set<number> {
    let inputs = this.#inputs.get(tenure);
    if (inputs === undefined) this.#inputs.set(tenure, (inputs = new Set()));
    return inputs;
  }

  /**
   * Commits the transaction, again while no answer comes: a commit of the same transaction is
   * safe to repeat (the coordinator answers a repeat of a commit it made with success), while an
   * abort after a commit that was made, then a new transaction of the batch, would write it twice.
   * An answer that refuses the commit (fenced, the transaction timed out) means it was not made.
   */
  async #commit(tx: { commit(): Promise<void> }): Promise<void> {
    const deadline = Date.now() + this.#connection.requestTimeout * 2;
    let unanswered = false;
    for (let attempt = 1; ; attempt++) {
      try {
        await tx.commit();
        return;
      } catch (error) {
        const heard = answered(error);
        if (heard && !unanswered) throw error;
        // A refusal after an attempt that got no answer says nothing of that attempt.
        unanswered = true;
        if (heard || Date.now() > deadline) throw new UnansweredCommit(error);
        this.#stats.commitRetries++;
        await new Promise((r) => setTimeout(r, Math.min(100 * attempt, 1000)));
      }
    }
  }

  /** The transaction whose commit got no answer: the new producer ended it; did it commit? */
  async #settleUnsure(): Promise<void> {
    const unsure = this.#unsure as Unsure<T>;
    let held: boolean;
    try {
      held = await (this.#source as KafkaSource<unknown>).holdsCommits(unsure.offsets);
    } catch (error) {
      throw connectorError(
        this.name,
        this.#connection,
        "reading the group's offsets after an unanswered commit",
        error,
      );
    }
    this.#unsure = undefined;
    if (!held) return;
    this.#stats.commitsFound++;
    this.#committed(unsure.records, unsure.offsets);
  }

  /** Whether a committed transaction of this sink wrote this key at this revision or a later one. */
  #wrote(r: SinkRecord<T>): boolean {
    const held = this.#recent.get(r.key);
    return held !== undefined && held >= (r.revision ?? -1);
  }

  /** Keys written lately, so an in-process replay of a committed batch is skipped (trimmed by the caller). */
  #remember(r: SinkRecord<T>): void {
    const recent = this.#recent;
    const size = recent.size;
    recent.set(r.key, r.revision ?? -1);
    // A key written again moves to the newest end; a new one, the usual case, costs one operation.
    if (recent.size === size) {
      recent.delete(r.key);
      recent.set(r.key, r.revision ?? -1);
    }
  }

  #message(r: SinkRecord<T>): {
    topic: string;
    key: string | undefined;
    value: Buffer;
    headers: Map<string, string>;
  } {
    const topic = this.#topic(r);
    const headers = new Map<string, string>();
    const from = r.envelope?.headers;
    if (from !== undefined)
      for (const name in from) if (!POSITION_HEADERS.has(name)) headers.set(name, from[name] as string);
    headers.set(IDEMPOTENCY_KEY_HEADER, r.key);
    if (r.revision !== undefined) headers.set(REVISION_HEADER, String(r.revision));
    const bytes = this.#codec.encode(r.value, topic);
    return {
      topic,
      key: this.#key(r),
      value: Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength),
      headers,
    };
  }

  /** Waits for the write under way and closes the producer (an open transaction is aborted). */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    clearInterval(this.#idleCommits);
    await this.#queue;
    await Promise.all(
      this.#producers.map((producer) =>
        producer?.close().catch((error: unknown) => {
          this.#log.warn(`kafka sink '${this.name}' did not close cleanly: ${messageOf(error)}`);
        }),
      ),
    );
  }
}

/**
 * Per record written, the source input it came from: the tenure of its partition it was read in
 * (undefined for none) and its offset, in two lists rather than an object per record.
 */
interface ReadIns {
  readonly tenures: (KafkaTenure | undefined)[];
  readonly offsets: number[];
}

/** Per tenure of a source partition, the inputs a committed transaction finished. */
type Done = Map<KafkaTenure, number[]>;

/** What a transaction waits for: the one before it (its records sent; it ended) and its producer. */
interface Previous {
  readonly sent: Promise<void>;
  readonly done: Promise<Done | undefined>;
  readonly free: Promise<void>;
}

/** The inputs of both, per tenure (`a`'s lists are not changed). */
function mergeDone(a: Done, b: Done): Done {
  if (a.size === 0) return b;
  if (b.size === 0) return a;
  const out: Done = new Map(a);
  for (const [tenure, offsets] of b) {
    const held = out.get(tenure);
    out.set(tenure, held === undefined ? offsets : [...held, ...offsets]);
  }
  return out;
}

function noop(): void {}

/** The records `keep` says to keep, with their entries of `readIns` (changed in place). */
function keepUnwritten<T>(
  records: readonly SinkRecord<T>[],
  readIns: ReadIns,
  keep: (r: SinkRecord<T>) => boolean,
): SinkRecord<T>[] {
  const out: SinkRecord<T>[] = [];
  let at = 0;
  for (let i = 0; i < records.length; i++) {
    const r = records[i] as SinkRecord<T>;
    if (!keep(r)) continue;
    out.push(r);
    readIns.tenures[at] = readIns.tenures[i];
    readIns.offsets[at] = readIns.offsets[i] as number;
    at++;
  }
  readIns.tenures.length = at;
  readIns.offsets.length = at;
  return out;
}

interface Unsure<T> {
  readonly records: readonly SinkRecord<T>[];
  readonly offsets: readonly KafkaCommit[];
}

/** A commit that got no answer, so may or may not have been made. */
class UnansweredCommit extends Error {
  constructor(cause: unknown) {
    super(messageOf(cause), { cause });
  }
}

/**
 * Whether the broker answered a failed request (a protocol error in every attempt): it then did
 * not do it. A timeout or a broken connection in any attempt leaves the outcome unknown.
 */
function answered(error: unknown): boolean {
  const errors = (error as { errors?: unknown[] }).errors;
  if (Array.isArray(errors) && errors.length > 0) return errors.every(answered);
  return (error as { code?: unknown }).code === 'PLT_KFK_PROTOCOL';
}

/**
 * Whether `key` is `<stream>/<topic>/<partition>/<offset>[/...]` of `tenure`'s record at `offset`,
 * as {@link positionOf} would read it, compared in place rather than cut into strings.
 */
function keyNames(key: string, stream: string, tenure: KafkaTenure, offset: number): boolean {
  const topic = tenure.topic;
  let at = stream.length;
  if (key.charCodeAt(at) !== 47 || !key.startsWith(stream)) return false;
  at++;
  if (key.charCodeAt(at + topic.length) !== 47 || !key.startsWith(topic, at)) return false;
  at = numberAt(key, at + topic.length + 1, tenure.partition);
  if (at < 0 || key.charCodeAt(at) !== 47) return false;
  at = numberAt(key, at + 1, offset);
  return at > 0 && (at === key.length || key.charCodeAt(at) === 47);
}

/** The index after the digits of `key` from `at` when they read `n`, else -1. */
function numberAt(key: string, at: number, n: number): number {
  let value = 0;
  let i = at;
  for (; i < key.length; i++) {
    const digit = key.charCodeAt(i) - 48;
    if (digit < 0 || digit > 9) break;
    value = value * 10 + digit;
  }
  return i > at && value === n ? i : -1;
}

/**
 * The source position of a record: from its idempotency key (`<stream>/<topic>/<partition>/<offset>/...`,
 * as actors subscribed through the source's ref make them), else from the Kafka headers its
 * envelope copied from the input.
 */
export function positionOf(record: SinkRecord<unknown>, source: KafkaSource<unknown>): KafkaPosition | undefined {
  // `<stream>/<topic>/<partition>/<offset>[/...]`, cut at its slashes (no array per record: this
  // runs for every record of a transaction).
  const key = record.key;
  const stream = source.stream;
  if (key.length > stream.length && key.charCodeAt(stream.length) === 47 && key.startsWith(stream)) {
    const t = stream.length + 1;
    const a = key.indexOf('/', t);
    const b = a < 0 ? -1 : key.indexOf('/', a + 1);
    if (b > 0) {
      const c = key.indexOf('/', b + 1);
      const partition = Number(key.slice(a + 1, b));
      const offset = Number(c < 0 ? key.slice(b + 1) : key.slice(b + 1, c));
      if (a > t - 1 && Number.isSafeInteger(partition) && Number.isSafeInteger(offset))
        return { topic: key.slice(t, a), partition, offset };
    }
  }
  const h = record.envelope?.headers;
  if (h === undefined || h[KAFKA_HEADERS.topic] === undefined) return undefined;
  return {
    topic: h[KAFKA_HEADERS.topic] as string,
    partition: Number(h[KAFKA_HEADERS.partition]),
    offset: Number(h[KAFKA_HEADERS.offset]),
  };
}
