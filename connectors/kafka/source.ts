/**
 * A Kafka consumer-group source: each assigned partition is an ordered lane of records published
 * on the bus, each acknowledged (its offset settled) once its settlement on the bus says so
 * (docs/settlement.md), and offsets committed only up to the lowest one not settled yet.
 */
import {
  type Connection,
  Consumer,
  FetchIsolationLevels,
  MultipleErrors,
  protocolErrorsCodesById,
  type RecordsBatch,
  ResponseError,
} from '@platformatic/kafka';
import type { StandardSchemaV1 } from '@standard-schema/spec';
import type { Logger } from '../../runtime/actors/actor.ts';
import { DEAD_LETTER_HEADERS } from '../../runtime/actors/deadLetters.ts';
import type { Bus, BusClient } from '../../runtime/bus/bus.ts';
import { validateSubject } from '../../runtime/bus/subjects.ts';
import type { Codec } from '../../runtime/codec.ts';
import { ClosedError, ConnectorError, messageOf, OptionsError, SluiceError } from '../../runtime/errors.ts';
import type { Lineage } from '../../runtime/lineage.ts';
import { knownKeys, oneOf, optionKeys, optionsObject } from '../../runtime/options.ts';
import type { SourceHealth } from '../../runtime/sources/registry.ts';
import type { Source, SourceLag, SourceRef } from '../../runtime/sources/source.ts';
import { STREAM_HEADERS } from '../../runtime/streams/stream.ts';
import type { Telemetry } from '../../runtime/telemetry.ts';
import {
  type ClientConnection,
  clientConnection,
  codecOf,
  connectorError,
  envelopeName,
  type KafkaCodec,
  type KafkaConnectionOptions,
  positive,
  probeConnection,
} from './config.ts';
import { GroupCoordinator } from './groupCoordinator.ts';
import {
  abortedBatches,
  type FetchResponse,
  type KafkaTenure,
  orderingKey,
  Partition,
  type PendingRecord,
  recordLineage,
  skipped,
  splitKey,
  tenureOfLineage,
} from './partition.ts';
import { decodeRuns } from './partitionLedger.ts';

export interface KafkaSourceOptions<T = unknown> {
  /** Names the source in errors, logs and gauges. @default `kafka:<groupId>` */
  name?: string;
  connection: KafkaConnectionOptions;
  /** The consumer group: processes sharing it split the partitions. */
  groupId: string;
  /** Topics to read. */
  topics: string | readonly string[];
  /**
   * The bus subject each record is published to: one subject, or a function of the topic.
   * @default the topic (Kafka topic names are valid subjects; a `.` makes tokens)
   */
  subject?: string | ((topic: string) => string);
  /** How record values become data. @default 'json' */
  codec?: KafkaCodec;
  /** The schema actors subscribed through `ref` check their inputs against. */
  schema?: StandardSchemaV1<unknown, T>;
  /** Where a partition without a committed offset starts. @default 'earliest' */
  start?: 'earliest' | 'latest';
  /**
   * Records published and not settled, per partition: past it, that partition is not fetched
   * until some settle (the others go on). A partition also stops while the records from its
   * lowest unsettled one on, settled or not, number `WINDOW_PER_PENDING` (10) times this: one record
   * that does not settle holds the committed offset, and what settles above it is tracked (and
   * walked by each commit) until it does. @default 1000
   */
  maxPendingPerPartition?: number;
  /**
   * The order records of one partition are handed out in.
   *
   * - `'partition'`: in offset order, as fast as the mailboxes take them; an actor handling one
   *   input at a time (the default) handles them in that order.
   * - `'key'`: at most one record of each Kafka key is published and not settled: the next record
   *   of a key goes out once the one before it settled, and records of other keys go past it. So
   *   an actor with `concurrency` (or a pipeline with `mapAsync`) handles different keys of a
   *   partition at once and the records of one key one at a time, in offset order. A record
   *   without a key keeps partition order: it goes out once every record before it settled, and
   *   nothing after it goes out until it settled. Records waiting behind their key count against
   *   `maxPendingPerPartition`, and the committed offset stays below the lowest one not settled.
   *
   * @default 'partition'
   */
  ordering?: 'partition' | 'key';
  /**
   * Who commits offsets. `'source'`: the source, every `commitIntervalMs`, at rebalances and on
   * close (at-least-once). `'sink'`: only a transactional `kafkaSink` given this source commits
   * them, with its outputs (exactly-once). @default 'source'
   */
  commit?: 'source' | 'sink';
  /** @default 1000 */
  commitIntervalMs?: number;
  /** Read only committed transactional records. @default 'read_committed' */
  isolation?: 'read_committed' | 'read_uncommitted';
  /** The group's session timeout. @default 10000 */
  sessionTimeoutMs?: number;
  /** @default 1000 */
  heartbeatIntervalMs?: number;
  /** How long a fetch waits on the broker for records. @default 500 */
  maxWaitMs?: number;
  /**
   * How long `close()` waits for the records in flight to settle before it commits and leaves the
   * group (what is not settled by then is read again by the partitions' next owner). @default 10000
   */
  drainTimeoutMs?: number;
  /** The name in the `sluice-stream` header: the root of output idempotency keys. @default 'kafka' */
  stream?: string;
  /** Where records whose value cannot be decoded go. @default `$DLQ.kafka.<groupId>` */
  deadLetter?: string;
}

/** What a source is given of the runtime: `runtime` itself fits. */
export interface KafkaSourceHost {
  readonly bus: Bus;
  readonly telemetry?: Telemetry;
  readonly logger?: Logger;
}

/** Counts of what the source did. */
export interface KafkaSourceStats {
  readonly fetches: number;
  readonly received: number;
  readonly published: number;
  readonly settled: number;
  /** Settlements that failed (the record is published again). */
  readonly failed: number;
  readonly commits: number;
  /** Source commits that failed: refused for a stale generation, or the broker unreachable. */
  readonly commitsRefused: number;
  readonly rebalances: number;
  /** Assignments that failed to be taken (their start offsets unread) and were taken again. */
  readonly assignmentRetries: number;
  /** Records of partitions taken away while in flight: their outcome no longer counts here. */
  readonly released: number;
  readonly deadLettered: number;
  /** Records a transaction had written above the committed offset: settled without publishing. */
  readonly skipped: number;
  /** Records that waited for an earlier record of their key to settle (`ordering: 'key'`). */
  readonly keyWaits: number;
  /**
   * Partitions whose position was outside the log (OFFSET_OUT_OF_RANGE: retention or
   * `deleteRecords` removed records not read yet, or the log ends below it) and was moved to the
   * log's start or end, as `start` says.
   */
  readonly offsetResets: number;
  /** Record headers left out of envelopes: their names are no bus header names (logged once per name). */
  readonly headersDropped: number;
}

/** An offset to commit for a partition, with the offsets done above it as metadata. */
export interface KafkaCommit {
  readonly topic: string;
  readonly partition: number;
  /** The next offset to read. */
  readonly offset: number;
  readonly metadata: string | null;
}

/** A record's position, for transactions and keys. */
export interface KafkaPosition {
  readonly topic: string;
  readonly partition: number;
  readonly offset: number;
}

/** @internal The tenures of the partitions a source holds, by topic, then partition number. */
export type KafkaTenures = Map<string, Map<number, KafkaTenure>>;

/** The group membership a transaction's offsets must name (KIP-447 fencing). */
export interface KafkaGroupMembership {
  readonly consumer: Consumer;
  readonly groupId: string;
  readonly generationId: number;
  readonly memberId: string;
  readonly coordinatorId: number;
}

/** The headers the source adds to each record's envelope. */
export const KAFKA_HEADERS = Object.freeze({
  topic: 'kafka-topic',
  partition: 'kafka-partition',
  offset: 'kafka-offset',
});

const sourceKeys = optionKeys<keyof KafkaSourceOptions>({
  name: true,
  connection: true,
  groupId: true,
  topics: true,
  subject: true,
  codec: true,
  schema: true,
  start: true,
  maxPendingPerPartition: true,
  ordering: true,
  commit: true,
  commitIntervalMs: true,
  isolation: true,
  sessionTimeoutMs: true,
  heartbeatIntervalMs: true,
  maxWaitMs: true,
  drainTimeoutMs: true,
  stream: true,
  deadLetter: true,
});

const TOPIC = /^[a-zA-Z0-9._-]{1,249}$/;
const IS_CONTROL = 1 << 5;
const OFFSET_OUT_OF_RANGE = 1;
/**
 * Partition errors of a fetch that say the metadata it was sent by is stale: the leader moved or
 * is being elected, or the topic was made again under a new id (UNKNOWN_TOPIC_OR_PARTITION,
 * LEADER_NOT_AVAILABLE, NOT_LEADER_OR_FOLLOWER, REPLICA_NOT_AVAILABLE, KAFKA_STORAGE_ERROR,
 * FENCED_LEADER_EPOCH, UNKNOWN_LEADER_EPOCH, UNKNOWN_TOPIC_ID, INCONSISTENT_TOPIC_ID).
 */
const STALE_METADATA: ReadonlySet<number> = new Set([3, 5, 6, 9, 56, 74, 75, 100, 103]);
const PARTITION_BACKOFF_MS = 100;
const MAX_PARTITION_BACKOFF_MS = 5_000;
const REDELIVER_MS = 1_000;
const MAX_REDELIVERIES = 5;
/**
 * How many times `maxPendingPerPartition` records a partition may have delivered from its lowest
 * unsettled one on. The pending bound counts unsettled records only, so one record stuck at the
 * floor while the rest settle let fetching go on without end: the ledger keeps every offset above
 * the floor and a commit walks them all. Wide enough that a record retried for a few seconds does
 * not stop a partition at once.
 */
export const WINDOW_PER_PENDING = 10;

/**
 * Makes a Kafka source; `start(runtime)` joins the group and begins. Spawn the actors that read it
 * (`subscribe: source.ref`) first.
 *
 * - **Lanes**: each assigned partition is published in offset order, one record at a time into
 *   the subscribers' mailboxes; a full mailbox stops that partition only.
 * - **Offsets**: committed up to the lowest record not settled in each partition, so a crash
 *   redelivers what was not done (at-least-once), never skips it.
 * - **Backpressure**: a partition with `maxPendingPerPartition` unsettled records is not fetched,
 *   nor one with `WINDOW_PER_PENDING` times that from its lowest unsettled record on.
 * - **Rebalances**: fetching stops, what is settled is committed while the old generation still
 *   may, and the records of partitions taken away are released: their later settlements are
 *   ignored and the new owner reads them again from the committed offset (an idempotent or
 *   transactional sink keeps one result of each).
 * - **Keys**: envelopes carry `sluice-stream` (`stream`) and `sluice-stream-sequence`
 *   (`<topic>/<partition>/<offset>`), so actors subscribed through `ref` key their outputs
 *   `kafka/<topic>/<partition>/<offset>/<actor>/<index>`; Kafka headers become envelope headers
 *   (trace context included), the record key the envelope key, its timestamp the event time.
 * - **Lag**: `lag()` and the `sluice.consumer.lag` gauge: high watermark minus floor, summed.
 *
 * @example
 * const orders = kafkaSource({ connection: { brokers: ['127.0.0.1:9092'] }, groupId: 'billing', topics: 'orders' });
 * runtime.spawn(actor({ name: 'billing', subscribe: orders.ref, handle: (env) => bill(env.data) }));
 * await orders.start(runtime);
 */
export function kafkaSource<T = unknown>(options: KafkaSourceOptions<T>): KafkaSource<T> {
  return new KafkaSource<T>(options);
}

export class KafkaSource<T = unknown> implements Source<T> {
  readonly name: string;
  readonly ref: SourceRef<T>;
  readonly groupId: string;
  readonly topics: readonly string[];
  readonly #connection: ClientConnection;
  readonly #subject: (topic: string) => string;
  readonly #codec: Codec;
  readonly #start: 'earliest' | 'latest';
  readonly #maxPending: number;
  /** `WINDOW_PER_PENDING` times `#maxPending`. */
  readonly #maxWindow: number;
  readonly #byKey: boolean;
  readonly #commitMode: 'source' | 'sink';
  readonly #commitIntervalMs: number;
  readonly #isolation: number;
  readonly #readCommitted: boolean;
  readonly #sessionTimeoutMs: number;
  readonly #heartbeatIntervalMs: number;
  readonly #maxWaitMs: number;
  readonly #drainTimeoutMs: number;
  readonly #stream: string;
  readonly #deadLetter: string;
  #consumer: Consumer | undefined;
  #client: BusClient | undefined;
  #log: Logger = console;
  #health: SourceHealth | undefined;
  readonly #partitions = new Map<string, Partition>();
  /** Settlements no longer count: the source closed. */
  #closed = false;
  /** No more fetching or publishing: the source is closing. */
  #stopping = false;
  #started = false;
  /** `start()` has finished: a failed assignment is retried instead of failing it. */
  #running = false;
  #rejoining = false;
  /** Between a rebalance starting and the new assignment being taken. */
  #rebalancing = false;
  #generation = -1;
  /**
   * The generation and member id whose assignment `#partitions` holds. The client takes a new
   * generation from the JoinGroup answer, before SyncGroup gives that generation's partitions and
   * before the source releases the ones it lost; and it joins again without a rebalance event when
   * the group dropped it (UNKNOWN_MEMBER_ID, ILLEGAL_GENERATION at a heartbeat).
   */
  #applied: { readonly generationId: number; readonly memberId: string } | undefined;
  /** The member id whose assignment `#partitions` holds (kept while `#applied` is cleared). */
  #memberId: string | undefined;
  #wake: (() => void) | undefined;
  #loop: Promise<void> | undefined;
  #commitTimer: NodeJS.Timeout | undefined;
  #coordinator: GroupCoordinator | undefined;
  #committing: Promise<void> | undefined;
  #assigning: Promise<void> = Promise.resolve();
  /** A fetch found a partition's leader or topic id moved: the next one asks the brokers again. */
  #staleMetadata = false;
  /** The client joined the group since its last heartbeat began (see `consumer:rejoin`). */
  #joinedSinceHeartbeat = false;
  readonly #stats = {
    fetches: 0,
    received: 0,
    published: 0,
    settled: 0,
    failed: 0,
    commits: 0,
    commitsRefused: 0,
    rebalances: 0,
    assignmentRetries: 0,
    released: 0,
    deadLettered: 0,
    skipped: 0,
    keyWaits: 0,
    offsetResets: 0,
    headersDropped: 0,
  };
  /** Header names dropped and logged already (bounded: names made per record must not grow it). */
  readonly #droppedNames = new Set<string>();

  constructor(options: KafkaSourceOptions<T>) {
    optionsObject('kafkaSource', options);
    if (options === undefined)
      throw new OptionsError('kafkaSource', 'must give connection, groupId and topics', options);
    knownKeys('kafkaSource', options, sourceKeys);
    if (typeof options.groupId !== 'string' || options.groupId.length === 0)
      throw new OptionsError('kafkaSource.groupId', 'must be a non-empty string', options.groupId);
    this.groupId = options.groupId;
    const where = `kafkaSource '${options.name ?? `kafka:${options.groupId}`}'`;
    this.name = options.name ?? `kafka:${options.groupId}`;
    const topics = typeof options.topics === 'string' ? [options.topics] : options.topics;
    if (!Array.isArray(topics) || topics.length === 0)
      throw new OptionsError(`${where}.topics`, 'must be a topic name or a non-empty array of them', options.topics);
    for (const t of topics)
      if (typeof t !== 'string' || !TOPIC.test(t))
        throw new OptionsError(`${where}.topics`, 'a topic name is 1 to 249 of [a-zA-Z0-9._-]', t);
    this.topics = Object.freeze([...topics]);
    this.#connection = clientConnection(options.connection, `${where}.connection`);
    const subject = options.subject;
    if (typeof subject === 'string') validateSubject(subject, 'publish');
    else if (subject !== undefined && typeof subject !== 'function')
      throw new OptionsError(`${where}.subject`, 'must be a subject or a function of the topic', subject);
    this.#subject = subject === undefined ? (t) => t : typeof subject === 'string' ? () => subject : subject;
    for (const t of this.topics) validateSubject(this.#subject(t), 'publish');
    this.#codec = codecOf(options.codec, `${where}.codec`);
    this.#start = oneOf(`${where}.start`, options.start, ['earliest', 'latest'], 'earliest');
    this.#maxPending = positive(`${where}.maxPendingPerPartition`, options.maxPendingPerPartition, 1000);
    this.#maxWindow = WINDOW_PER_PENDING * this.#maxPending;
    this.#byKey = oneOf(`${where}.ordering`, options.ordering, ['partition', 'key'], 'partition') === 'key';
    this.#commitMode = oneOf(`${where}.commit`, options.commit, ['source', 'sink'], 'source');
    this.#commitIntervalMs = positive(`${where}.commitIntervalMs`, options.commitIntervalMs, 1000);
    const isolation = oneOf(
      `${where}.isolation`,
      options.isolation,
      ['read_committed', 'read_uncommitted'],
      'read_committed',
    );
    this.#readCommitted = isolation === 'read_committed';
    this.#isolation =
      isolation === 'read_committed' ? FetchIsolationLevels.READ_COMMITTED : FetchIsolationLevels.READ_UNCOMMITTED;
    this.#sessionTimeoutMs = positive(`${where}.sessionTimeoutMs`, options.sessionTimeoutMs, 10_000);
    this.#heartbeatIntervalMs = positive(`${where}.heartbeatIntervalMs`, options.heartbeatIntervalMs, 1_000);
    this.#maxWaitMs = positive(`${where}.maxWaitMs`, options.maxWaitMs, 500);
    this.#drainTimeoutMs = positive(`${where}.drainTimeoutMs`, options.drainTimeoutMs, 10_000);
    this.#stream = options.stream ?? 'kafka';
    if (typeof this.#stream !== 'string' || !/^[^\s/]+$/.test(this.#stream))
      throw new OptionsError(`${where}.stream`, 'must be a non-empty string without white space or /', this.#stream);
    this.#deadLetter = options.deadLetter ?? `$DLQ.kafka.${this.groupId.replace(/[^a-zA-Z0-9_-]/g, '_')}`;
    validateSubject(this.#deadLetter, 'publish');
    const names = [...new Set(this.topics.map(this.#subject))];
    this.ref = Object.freeze({
      // One subject per source: several topics published to several subjects need one ref each.
      name: names.length === 1 ? (names[0] as string) : commonPattern(names),
      schema: options.schema,
      source: Object.freeze({ stream: this.#stream, durable: true }),
    });
  }

  get stats(): KafkaSourceStats {
    return { ...this.#stats };
  }

  /** Partitions assigned now, as `topic:partition`. */
  get assignments(): string[] {
    return [...this.#partitions.values()].filter((p) => !p.revoked).map((p) => p.key);
  }

  /** The group membership a transactional sink names when it commits this source's offsets. */
  membership(): KafkaGroupMembership | undefined {
    const c = this.#consumer;
    const applied = this.#applied;
    if (c === undefined || applied === undefined || this.#rebalancing) return undefined;
    // The broker checks a transaction's offset commit against the generation, not the assignment:
    // naming a generation whose partitions the source has not taken yet would let it commit
    // partitions another member owns in that generation. Until the source applied the client's
    // current generation there is none to name.
    if (c.generationId !== applied.generationId || c.memberId !== applied.memberId) return undefined;
    return {
      consumer: c,
      groupId: this.groupId,
      generationId: applied.generationId,
      memberId: applied.memberId,
      coordinatorId: c.coordinatorId ?? -1,
    };
  }

  /**
   * What a transaction holding outputs of `inputs` commits: per partition of them still assigned
   * in the same tenure, the floor as if the inputs listed for it were settled (those whose every
   * reference the transaction's batch holds), with the offsets done above it as metadata
   * (`sluice:<runs>`, the runs read at the take and not reached yet included, at most
   * `MAX_COMMIT_METADATA` characters), so a restart skips them; never below the offset committed
   * before. Partitions taken away are left out: their new owner commits them. So is a partition
   * of none of `inputs` whose floor has not moved past its committed offset: one that has
   * (records another branch held when their outputs' transaction committed, settled since) is
   * committed too.
   */
  offsetsFor(inputs: ReadonlyMap<KafkaTenure, readonly number[]>): KafkaCommit[] {
    const out: KafkaCommit[] = [];
    const warn = (message: string) => this.#log.warn(`kafka source '${this.name}': ${message}`);
    const add = (part: Partition, offsets: readonly number[]) => {
      const { offset, metadata } = part.commitFor(offsets, warn);
      out.push({ topic: part.topic, partition: part.partition, offset: Math.max(offset, part.committed), metadata });
    };
    for (const [tenure, offsets] of inputs) {
      const part = this.#partitions.get(`${tenure.topic}:${tenure.partition}`);
      if (part === tenure && !part.revoked) add(part, offsets);
    }
    for (const part of this.#partitions.values())
      if (!part.revoked && part.ledger.floor > part.committed && !inputs.has(part)) add(part, []);
    return out;
  }

  /** How often settled offsets are committed when nothing else commits them (ms). */
  get commitIntervalMs(): number {
    return this.#commitIntervalMs;
  }

  /** @internal Whether a partition's floor moved past its committed offset: a commit would move it. */
  settledPastCommit(): boolean {
    for (const part of this.#partitions.values())
      if (!part.revoked && part.ledger.floor > part.ledger.committed) return true;
    return false;
  }

  /**
   * The group membership once no rebalance is under way (a transaction must name the current
   * generation), waiting up to `timeoutMs`; undefined when the source is closing or it timed out.
   */
  async awaitMembership(timeoutMs: number): Promise<KafkaGroupMembership | undefined> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const m = this.membership();
      if (m !== undefined || this.#stopping || Date.now() > deadline) return m;
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  /** @internal The group coordinator's connection, for the transactional sink's offset commits. */
  coordinator(): Promise<Connection> {
    return (this.#coordinator as GroupCoordinator).connection();
  }

  /** @internal That connection failed: the next call makes a new one. */
  dropCoordinator(): void {
    this.#coordinator?.drop();
  }

  /** The name in the `sluice-stream` header, the first part of its records' keys. */
  get stream(): string {
    return this.#stream;
  }

  /** The committed offset of each partition assigned now, by `topic:partition`. */
  committedOffsets(): Map<string, number> {
    const out = new Map<string, number>();
    for (const p of this.#partitions.values()) if (!p.revoked) out.set(p.key, p.ledger.committed);
    return out;
  }

  /**
   * @internal The tenure of each partition assigned now, by topic, then partition number: the same
   * object while the source holds the partition, a new one each time it takes it again.
   */
  tenures(): KafkaTenures {
    const out: KafkaTenures = new Map();
    for (const p of this.#partitions.values()) {
      if (p.revoked) continue;
      let partitions = out.get(p.topic);
      if (partitions === undefined) out.set(p.topic, (partitions = new Map()));
      partitions.set(p.partition, p);
    }
    return out;
  }

  /**
   * @internal The tenure of its partition that the input at `position` was read in, when
   * `lineage` (an output's) derives from it, through any number of actors: a partition lost and
   * taken back is a new tenure, while its earlier tenure's records may still be in flight. Undefined
   * when the lineage does not lead back to it (an envelope made without its input's lineage).
   */
  tenureOf(lineage: Lineage | undefined, position: KafkaPosition): KafkaTenure | undefined {
    return tenureOfLineage(this, lineage, position.topic, position.partition, position.offset);
  }

  /**
   * @internal Whether the group's stable committed offsets hold `offsets` (each at least as far,
   * or as far with the same metadata): a transaction whose end was not heard committed them.
   */
  async holdsCommits(offsets: readonly KafkaCommit[]): Promise<boolean> {
    const byTopic = new Map<string, number[]>();
    for (const o of offsets) {
      let list = byTopic.get(o.topic);
      if (list === undefined) byTopic.set(o.topic, (list = []));
      list.push(o.partition);
    }
    const committed = await (this.#coordinator as GroupCoordinator).stableOffsets(byTopic, 30_000);
    return offsets.every((o) => {
      const c = committed.get(o.topic)?.[o.partition];
      const at = BigInt(o.offset);
      // The broker keeps no metadata as an empty string.
      return c !== undefined && (c.offset > at || (c.offset === at && (c.metadata ?? '') === (o.metadata ?? '')));
    });
  }

  /** Called by a transactional sink once its transaction committed these offsets. */
  committedBySink(offsets: readonly KafkaCommit[]): void {
    for (const o of offsets) {
      const part = this.#partitions.get(`${o.topic}:${o.partition}`);
      if (part !== undefined && o.offset > part.ledger.committed) part.ledger.committed = o.offset;
    }
  }

  /**
   * `messages`: high watermark minus the floor, summed. `timeMs`: the age (by record timestamp)
   * of the oldest record not settled in any partition with messages behind: the record at the
   * floor once fetched; before it is (a partition waiting for its first fetch after a restart or
   * a rebalance), the last record fetched from it, an upper bound, or 0 when none was.
   */
  lag(): SourceLag {
    let messages = 0;
    let ackPending = 0;
    let oldest = Number.POSITIVE_INFINITY;
    for (const p of this.#partitions.values()) {
      if (p.revoked) continue;
      const behind = Math.max(0, p.highWatermark - p.ledger.floor);
      messages += behind;
      ackPending += p.ledger.pending - p.held;
      if (behind === 0) continue;
      const at = p.ledger.floorTimestamp ?? p.buffered[0]?.timestamp ?? p.lastTimestamp;
      if (at > 0 && at < oldest) oldest = at;
    }
    return { messages, timeMs: oldest === Number.POSITIVE_INFINITY ? 0 : Math.max(1, Date.now() - oldest), ackPending };
  }

  /**
   * Joins the group and begins fetching. Rejects with a {@link ConnectorError} when the brokers
   * cannot be reached or refuse the credentials. When `close()` runs meanwhile, it resolves
   * without having begun.
   */
  async start(host: KafkaSourceHost): Promise<void> {
    if (this.#started) throw new ClosedError(this.name, 'already started');
    this.#started = true;
    this.#log = host.logger ?? console;
    this.#client = host.bus.internalClient(`kafka:${this.name}`);
    const c = this.#connection;
    await probeConnection(this.name, c);
    // close() found no consumer to close: none is made.
    if (this.#stopping) return;
    const consumer = new Consumer({
      clientId: c.clientId,
      bootstrapBrokers: c.bootstrapBrokers,
      connectTimeout: c.connectTimeout,
      requestTimeout: c.requestTimeout,
      retries: c.retries,
      retryDelay: c.retryDelay,
      ...(c.sasl === undefined ? {} : { sasl: c.sasl }),
      ...(c.tls === undefined ? {} : { tls: c.tls }),
      groupId: this.groupId,
      sessionTimeout: this.#sessionTimeoutMs,
      heartbeatInterval: this.#heartbeatIntervalMs,
      rebalanceTimeout: Math.max(this.#sessionTimeoutMs, 10_000),
      isolationLevel: this.#isolation,
      autocommit: false,
    });
    this.#consumer = consumer;
    this.#coordinator = new GroupCoordinator(this.name, this.groupId, this.topics, c, () => consumer);
    consumer.on('consumer:group:rebalance', () => this.#rebalanceStarted());
    consumer.on('consumer:group:join', (payload) => {
      this.#joinedSinceHeartbeat = true;
      // The assignment of this generation, as joined: the client's may be a later one by the time
      // the queue gets to it.
      const joined: Joined = {
        generationId: payload.generationId ?? -1,
        memberId: payload.memberId ?? null,
        assignments: payload.assignments ?? consumer.assignments ?? [],
      };
      this.#queueAssignment(joined, 1);
    });
    consumer.on('error', (error: unknown) => {
      this.#health?.error(error);
      this.#log.warn(`kafka source '${this.name}': ${messageOf(error)}`);
    });
    // A heartbeat the broker did not answer (a restart, a lost connection). The client stops
    // heartbeating after one, for good: the group drops the member at the end of its session
    // and the client never hears of it (fetching needs no membership). So the source joins again.
    consumer.on('consumer:heartbeat:error', (payload: { error?: unknown }) => {
      if (this.#stopping) return;
      this.#health?.reconnecting(payload.error);
      void this.#rejoin();
    });
    // A broker's connection closed: requests to it are retried inside the client (the source sees
    // an error only once they run out), so its state shows here. The next fetch or heartbeat that
    // works shows connected again.
    consumer.on('client:broker:disconnect', () => {
      if (!this.#stopping) this.#health?.reconnecting();
    });
    consumer.on('consumer:heartbeat:end', () => {
      if (!this.#rejoining) this.#health?.connected();
    });
    consumer.on('consumer:heartbeat:start', () => {
      this.#joinedSinceHeartbeat = false;
    });
    // A heartbeat answered REBALANCE_IN_PROGRESS, UNKNOWN_MEMBER_ID or ILLEGAL_GENERATION: the
    // client stopped heartbeating and joined again, and says it is done here, joined or not. When
    // its tries all failed it emitted only 'error' before: no join came, it never heartbeats again,
    // and the source stayed rebalancing (fetching nothing) for good. So the source joins again.
    consumer.on('consumer:rejoin', () => {
      if (this.#stopping || this.#joinedSinceHeartbeat) return;
      this.#health?.reconnecting();
      void this.#rejoin();
    });
    consumer.topics.trackAll(...this.topics);
    try {
      await consumer.metadata({ topics: [...this.topics], autocreateTopics: true });
      await consumer.joinGroup({});
      await this.#assigning;
    } catch (error) {
      this.#closed = true;
      await consumer.close().catch(() => undefined);
      // close() closed the consumer under the join: not a failure to report.
      if (this.#stopping) return;
      throw connectorError(this.name, c, `joining group '${this.groupId}'`, error);
    }
    // close() ran while joining: it cleared no timer and waited for no loop, and closes the
    // consumer itself. A timer or a loop made now would run on after it, and the source's status
    // would say connected.
    if (this.#stopping) return;
    const stream = this.#stream;
    this.#health = host.telemetry?.registerSource({
      name: this.name,
      kind: 'kafka',
      stream,
      consumer: `${this.groupId}`,
      lag: () => this.lag(),
      counters: () => this.#stats,
    });
    this.#health?.connected();
    this.#running = true;
    if (this.#commitMode === 'source') {
      this.#commitTimer = setInterval(() => void this.commit(), this.#commitIntervalMs);
      this.#commitTimer.unref();
    }
    this.#loop = this.#fetchLoop();
  }

  /**
   * Commits, for each assigned partition, the lowest offset not settled (when it moved). With
   * `commit: 'sink'` the transactional sink commits instead and this does nothing.
   */
  async commit(): Promise<void> {
    if (this.#commitMode === 'sink') return;
    while (this.#committing !== undefined) await this.#committing;
    const consumer = this.#consumer;
    const coordinator = this.#coordinator;
    // Between a JoinGroup answer and the source taking that generation's partitions there is no
    // generation to name: the floors go with the next commit.
    const applied = this.#applied;
    if (consumer === undefined || coordinator === undefined || applied === undefined) return;
    const offsets: {
      topic: string;
      partition: number;
      offset: bigint;
      leaderEpoch: number;
      part: Partition;
      floor: number;
    }[] = [];
    for (const p of this.#partitions.values()) {
      if (p.revoked) continue;
      const floor = p.ledger.floor;
      if (floor > p.ledger.committed)
        offsets.push({
          topic: p.ledger.topic,
          partition: p.ledger.partition,
          offset: BigInt(floor),
          leaderEpoch: p.leaderEpoch,
          part: p,
          floor,
        });
    }
    if (offsets.length === 0) return;
    this.#committing = coordinator
      .commit(applied.generationId, applied.memberId, offsets)
      .then(
        () => {
          this.#stats.commits++;
          for (const o of offsets) if (o.floor > o.part.ledger.committed) o.part.ledger.committed = o.floor;
        },
        (error: unknown) => {
          // A rebalance (the generation is stale: refused) or a broker restart: the next commit,
          // under the generation the source takes next, carries the floors still held.
          this.#stats.commitsRefused++;
          // Refused for the generation the client is still in: the group dropped this member and
          // the client, no longer heartbeating, does not know.
          if (
            hasApiError(error, ['UNKNOWN_MEMBER_ID', 'ILLEGAL_GENERATION']) &&
            consumer.generationId === applied.generationId
          )
            void this.#rejoin();
          this.#log.warn(
            `kafka source '${this.name}' could not commit offsets: ${messageOf(error)}${apiErrorsOf(error)}`,
          );
        },
      )
      .finally(() => {
        this.#committing = undefined;
      });
    await this.#committing;
  }

  /**
   * Stops fetching and publishing, waits (up to `drainTimeoutMs`, by default the option's) for
   * what was published to settle, commits, leaves the group and closes the client. Close the
   * source before stopping the runtime, so the actors finish what it handed them. What is not
   * settled by then is read again by whoever gets the partitions next (at-least-once). Never
   * rejects.
   */
  async close(drainTimeoutMs = this.#drainTimeoutMs): Promise<void> {
    if (this.#stopping) return;
    this.#stopping = true;
    if (this.#commitTimer !== undefined) clearInterval(this.#commitTimer);
    this.#wake?.();
    await this.#loop?.catch(() => undefined);
    await this.#assigning.catch(() => undefined);
    const deadline = Date.now() + drainTimeoutMs;
    // Records waiting behind their key were never published: only those in flight are waited for.
    const pending = () =>
      [...this.#partitions.values()].some((p) => !p.revoked && (p.ledger.pending > p.held || p.publishing));
    while (pending() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    this.#health?.closed();
    const consumer = this.#consumer;
    if (consumer !== undefined) await this.commit().catch(() => undefined);
    this.#closed = true;
    this.dropCoordinator();
    for (const p of this.#partitions.values()) this.#release(p);
    await consumer?.close().catch((error: unknown) => {
      this.#log.warn(`kafka source '${this.name}' did not close cleanly: ${messageOf(error)}`);
    });
  }

  // ---- settlement ----

  /** @internal A published record's lineage settled. */
  settled(part: Partition, record: PendingRecord, index: number, error: unknown): void {
    if (part.revoked || this.#closed) return;
    if (error === undefined || record.attempt >= MAX_REDELIVERIES) {
      if (error !== undefined)
        this.#log.error(
          `kafka source '${this.name}' gave up on ${part.key}@${record.offset} after ${record.attempt} deliveries: ${messageOf(error)}`,
        );
      this.#stats.settled++;
      part.ledger.settle(index);
      if (this.#byKey) this.#keyFree(part, record);
      if (part.ready.length > 0) void this.#pump(part);
      else if (!this.#full(part)) {
        // Records held back by the bound go out first; the fetch loop waits for them.
        if (part.buffered.length > 0) void this.#pump(part);
        else this.#wake?.();
      }
      return;
    }
    // The settlement failed (a dead letter refused, say): published again after a pause, in its lane's order no more.
    this.#stats.failed++;
    record.attempt++;
    const t = setTimeout(() => {
      if (part.revoked || this.#stopping) return;
      this.#publishOne(part, record, index).catch(() => undefined);
    }, REDELIVER_MS);
    t.unref();
  }

  // ---- group membership ----

  #rebalanceStarted(): void {
    if (this.#rebalancing) return;
    this.#rebalancing = true;
    this.#stats.rebalances++;
    // The old generation may still commit while the group prepares the rebalance.
    if (this.#commitMode === 'source') void this.commit();
  }

  async #assigned(joined: Joined): Promise<void> {
    const consumer = this.#consumer;
    if (consumer === undefined || this.#closed) return;
    const generation = joined.generationId;
    if (generation !== -1 && generation === this.#generation && !this.#rebalancing) return;
    this.#generation = generation;
    // No transaction names a generation while its partitions are being taken.
    this.#applied = undefined;
    const now = new Set<string>();
    for (const a of joined.assignments) for (const p of a.partitions) now.add(`${a.topic}:${p}`);
    // A new member id: the group dropped this member (no revocation was heard) and, in between,
    // gave its partitions to others, who may have processed and committed past what this member
    // holds. Kept, a partition's in-flight outputs would pass as the current tenure's and be
    // written again, and its floor, committed under the new generation, would move the group's
    // offset back. So every partition is released and taken again from the group's offsets.
    const rejoined = joined.memberId !== null && this.#memberId !== undefined && joined.memberId !== this.#memberId;
    if (joined.memberId !== null) this.#memberId = joined.memberId;
    for (const [key, part] of this.#partitions) {
      if (now.has(key) && !rejoined) continue;
      this.#release(part);
      this.#partitions.delete(key);
    }
    const added = [...now].filter((k) => !this.#partitions.has(k));
    if (added.length > 0) {
      const skips = new Map<string, [number, number][]>();
      const starts = await this.#startOffsets(added, skips);
      for (const key of added) {
        const [topic, partition] = splitKey(key);
        const part = new Partition(topic, partition, starts.get(key) ?? 0);
        part.takeSkips(skips.get(key) ?? []);
        this.#partitions.set(key, part);
      }
    }
    if (joined.memberId !== null) this.#applied = { generationId: generation, memberId: joined.memberId };
    this.#rebalancing = false;
    for (const part of this.#partitions.values())
      if (part.buffered.length > 0 || part.ready.length > 0) void this.#pump(part);
    this.#wake?.();
  }

  /**
   * Takes a generation's assignment after those queued before it. One that fails (the start
   * offsets could not be read: a broker restart, a coordinator moving) is taken again after a
   * pause while the client is still in that generation; a later generation's assignment, queued
   * behind it, replaces it. Before, the failure rejected the queue, every later assignment was
   * chained to the rejection and never ran, and the source fetched nothing again while the client
   * went on heartbeating as a member holding its partitions. Taken again rather than joining the
   * group again: the assignment is still this member's, and a join would move every member's
   * partitions for a failure of one. At start, the failure fails `start()`.
   */
  #queueAssignment(joined: Joined, attempt: number): void {
    this.#assigning = this.#assigning
      .then(() => this.#assigned(joined))
      .catch((error: unknown) => {
        if (!this.#running) throw error;
        // Taken again as a new generation, not skipped as the one already applied.
        this.#generation = -1;
        this.#stats.assignmentRetries++;
        this.#health?.error(error);
        const delayMs = Math.min(250 * 2 ** (attempt - 1), 10_000);
        this.#log.warn(
          `kafka source '${this.name}' could not take the partitions of generation ${joined.generationId} (again in ${delayMs} ms): ${messageOf(error)}`,
        );
        const timer = setTimeout(() => {
          if (this.#stopping || this.#consumer?.generationId !== joined.generationId) return;
          this.#queueAssignment(joined, attempt + 1);
        }, delayMs);
        timer.unref();
      });
  }

  /**
   * Joins the group again (once at a time), until it worked or the source stops: after a failed
   * heartbeat, and after a commit refused for a generation the client still holds (the group
   * dropped the member without the client knowing). A member still in the group keeps its
   * generation and partitions; one the group dropped gets a new generation and assignment, taken
   * as any other.
   */
  async #rejoin(): Promise<void> {
    if (this.#rejoining) return;
    this.#rejoining = true;
    try {
      for (let delayMs = 250; !this.#stopping; delayMs = Math.min(delayMs * 2, 5_000)) {
        const consumer = this.#consumer;
        if (consumer === undefined) return;
        try {
          await consumer.joinGroup({});
          this.#health?.connected();
          return;
        } catch (error) {
          if (this.#stopping) return;
          this.#health?.reconnecting(error);
          this.#log.warn(
            `kafka source '${this.name}' could not join group '${this.groupId}' again (again in ${delayMs} ms): ${messageOf(error)}`,
          );
          await new Promise((r) => setTimeout(r, delayMs).unref());
        }
      }
    } finally {
      this.#rejoining = false;
    }
  }

  /** A partition taken away: what it buffered is dropped, what is in flight no longer counts. */
  #release(part: Partition): void {
    part.revoked = true;
    this.#stats.released += part.ledger.pending + part.buffered.length;
    part.buffered = [];
    part.ready = [];
    part.keys.clear();
  }

  /** A settled record's key (`ordering: 'key'`) passes to the next record of it, or is free. */
  #keyFree(part: Partition, record: PendingRecord): void {
    const key = orderingKey(record);
    if (key === undefined) {
      part.barrier = false;
      return;
    }
    const waiting = part.keys.get(key);
    if (waiting === undefined) return;
    const next = waiting.shift();
    if (next === undefined) part.keys.delete(key);
    else part.ready.push(next);
  }

  /** Committed offsets of new partitions, else the earliest or latest. */
  async #startOffsets(keys: readonly string[], skips: Map<string, [number, number][]>): Promise<Map<string, number>> {
    const consumer = this.#consumer as Consumer;
    const byTopic = new Map<string, number[]>();
    for (const key of keys) {
      const [topic, partition] = splitKey(key);
      let list = byTopic.get(topic);
      if (list === undefined) byTopic.set(topic, (list = []));
      list.push(partition);
    }
    const out = new Map<string, number>();
    const committed = await (this.#coordinator as GroupCoordinator).stableOffsets(byTopic);
    const missing = new Map<string, number[]>();
    for (const [topic, partitions] of byTopic) {
      const offsets = committed.get(topic) ?? [];
      for (const p of partitions) {
        const o = offsets[p];
        if (o !== undefined && o.offset >= 0n) {
          out.set(`${topic}:${p}`, Number(o.offset));
          const runs = decodeRuns(o.metadata);
          if (runs.length > 0) skips.set(`${topic}:${p}`, runs);
        } else {
          let list = missing.get(topic);
          if (list === undefined) missing.set(topic, (list = []));
          list.push(p);
        }
      }
    }
    if (missing.size > 0) {
      const listed = await consumer.listOffsets({
        topics: [...missing.keys()],
        partitions: Object.fromEntries(missing),
        timestamp: this.#start === 'earliest' ? -2n : -1n,
      });
      for (const [topic, partitions] of missing) {
        const offsets = listed.get(topic) ?? [];
        for (const p of partitions) out.set(`${topic}:${p}`, Number(offsets[p] ?? 0n));
      }
    }
    return out;
  }

  /**
   * The group's committed offsets, asking the coordinator for stable ones (`require_stable`, as
   * Kafka's Java consumer does under read_committed): an offset a transaction of the partition's
   * previous owner is still committing is refused (UNSTABLE_OFFSET_COMMIT) until the transaction
   * ends, instead of an older offset being returned and its records read again.
   */
  // ---- fetching and publishing ----

  async #fetchLoop(): Promise<void> {
    let backoffMs = 100;
    while (!this.#stopping) {
      const now = Date.now();
      const ready = this.#rebalancing
        ? []
        : [...this.#partitions.values()].filter(
            (p) => !p.revoked && !p.publishing && p.buffered.length === 0 && !this.#full(p) && p.fetchAfter <= now,
          );
      if (ready.length === 0) {
        await new Promise<void>((resolve) => {
          this.#wake = resolve;
          // A bound, so a missed wake costs a moment, never a stall.
          setTimeout(resolve, 200).unref();
        });
        this.#wake = undefined;
        continue;
      }
      try {
        await this.#fetch(ready);
        backoffMs = 100;
        if (!this.#rejoining) this.#health?.connected();
      } catch (error) {
        if (this.#stopping) break;
        this.#health?.reconnecting(error);
        this.#log.warn(`kafka source '${this.name}' fetch failed (retrying in ${backoffMs} ms): ${messageOf(error)}`);
        await new Promise((r) => setTimeout(r, backoffMs).unref());
        backoffMs = Math.min(backoffMs * 2, 5_000);
      }
    }
  }

  async #fetch(ready: readonly Partition[]): Promise<void> {
    const consumer = this.#consumer as Consumer;
    const forceUpdate = this.#staleMetadata;
    this.#staleMetadata = false;
    const metadata = await consumer.metadata({ topics: [...this.topics], forceUpdate });
    const byLeader = new Map<number, { topicId: string; partitions: Partition[] }[]>();
    for (const part of ready) {
      const topic = metadata.topics.get(part.ledger.topic);
      const pm = topic?.partitions[part.ledger.partition];
      if (topic === undefined || pm === undefined) continue;
      part.leaderEpoch = pm.leaderEpoch;
      let list = byLeader.get(pm.leader);
      if (list === undefined) byLeader.set(pm.leader, (list = []));
      let entry = list.find((e) => e.topicId === topic.id);
      if (entry === undefined) list.push((entry = { topicId: topic.id, partitions: [] }));
      entry.partitions.push(part);
    }
    await Promise.all(
      [...byLeader].map(async ([node, entries]) => {
        const requested = new Map<string, number>();
        const topics = entries.map((e) => ({
          topicId: e.topicId,
          partitions: e.partitions.map((p) => {
            requested.set(p.key, p.ledger.undelivered);
            return {
              partition: p.ledger.partition,
              fetchOffset: BigInt(p.ledger.undelivered),
              partitionMaxBytes: 1 << 20,
              currentLeaderEpoch: -1,
              lastFetchedEpoch: -1,
            };
          }),
        }));
        this.#stats.fetches++;
        let response: FetchResponse;
        try {
          response = await consumer.fetch({
            node,
            topics,
            maxWaitTime: this.#maxWaitMs,
            minBytes: 1,
            maxBytes: 8 << 20,
            isolationLevel: this.#isolation,
          });
        } catch (error) {
          // The client fails the whole response when one partition of it has an error: thrown,
          // one partition out of range or without its leader stalled every partition of the broker.
          const partial = partialFetch(error);
          if (partial === undefined) throw error;
          response = partial;
        }
        const idToTopic = new Map<string, string>();
        for (const [name, t] of metadata.topics) idToTopic.set(t.id, name);
        const outOfRange = this.#take(response, idToTopic, requested);
        if (outOfRange.length > 0) await this.#resetOffsets(outOfRange);
      }),
    );
  }

  /** Takes a fetch's records; returns the partitions the broker said are out of range, with the offset asked for. */
  #take(
    response: FetchResponse,
    idToTopic: Map<string, string>,
    requested: Map<string, number>,
  ): { part: Partition; from: number }[] {
    const outOfRange: { part: Partition; from: number }[] = [];
    for (const t of response.responses) {
      const topic = idToTopic.get(t.topicId);
      if (topic === undefined) continue;
      for (const r of t.partitions) {
        const part = this.#partitions.get(`${topic}:${r.partitionIndex}`);
        const from = requested.get(`${topic}:${r.partitionIndex}`);
        if (part === undefined || part.revoked || from === undefined || part.ledger.undelivered !== from) continue;
        if (r.errorCode !== 0) {
          // The broker sends -1 for the watermarks and the log start with an error: none is kept.
          if (r.errorCode === OFFSET_OUT_OF_RANGE) outOfRange.push({ part, from });
          else this.#partitionFailed(part, r.errorCode);
          continue;
        }
        part.fetchErrors = 0;
        part.highWatermark = Number(r.highWatermark);
        const batches = r.records as RecordsBatch[] | undefined;
        if (batches === undefined || batches.length === 0) continue;
        const aborted = this.#readCommitted ? abortedBatches(r.abortedTransactions, batches) : undefined;
        let next = from;
        for (const batch of batches) {
          const last = Number(batch.firstOffset) + batch.lastOffsetDelta;
          if (last + 1 > next) next = last + 1;
          if ((batch.attributes & IS_CONTROL) !== 0 || aborted?.has(batch)) continue;
          const first = Number(batch.firstOffset);
          for (const rec of batch.records) {
            const offset = first + rec.offsetDelta;
            if (offset < from) continue;
            const timestamp = Number(batch.firstTimestamp + rec.timestampDelta);
            part.lastTimestamp = timestamp;
            part.buffered.push({
              offset,
              timestamp,
              key: rec.key,
              value: rec.value,
              headers: rec.headers,
              attempt: 1,
            });
            this.#stats.received++;
          }
        }
        // The records of a batch cut short by maxBytes come again from `next` on.
        if (part.buffered.length === 0) part.ledger.undelivered = next;
        else part.nextFetch = next;
        void this.#pump(part);
      }
    }
    return outOfRange;
  }

  /**
   * A partition the broker failed in a fetch: not fetched again for a while (longer each time in a
   * row), so a leader election does not turn the loop into a stream of requests; the metadata is
   * asked again when it says the leader or the topic moved.
   */
  #partitionFailed(part: Partition, errorCode: number): void {
    const name = protocolErrorsCodesById[errorCode] ?? `error code ${errorCode}`;
    if (STALE_METADATA.has(errorCode)) this.#staleMetadata = true;
    part.fetchErrors++;
    const delayMs = Math.min(PARTITION_BACKOFF_MS * 2 ** (part.fetchErrors - 1), MAX_PARTITION_BACKOFF_MS);
    part.fetchAfter = Date.now() + delayMs;
    this.#log.warn(
      `kafka source '${this.name}': the broker failed partition ${part.key} in a fetch with ${name} (fetched again in ${delayMs} ms; the other partitions go on)`,
    );
  }

  /**
   * Moves partitions whose fetch offset is outside the log to its start or its end, as `start`
   * says, as Kafka's Java consumer does with `auto.offset.reset`: retention or `deleteRecords`
   * removed records the group had not read (a group offline longer than the retention), or the log
   * ends below the offset (truncated, or the offset committed by hand). Left there, the partition
   * failed every fetch for good. Forward, the partition keeps its tenure: what it has in flight
   * still holds the floor. Backward, the offsets between are records the source has not seen at
   * those offsets, so the partition is taken again as a new tenure from there: its earlier ledger
   * and committed offset (above the new position) would count them as done.
   */
  async #resetOffsets(outOfRange: readonly { part: Partition; from: number }[]): Promise<void> {
    const consumer = this.#consumer as Consumer;
    const byTopic = new Map<string, number[]>();
    for (const { part } of outOfRange) {
      let list = byTopic.get(part.topic);
      if (list === undefined) byTopic.set(part.topic, (list = []));
      list.push(part.partition);
    }
    const listed = await consumer.listOffsets({
      topics: [...byTopic.keys()],
      partitions: Object.fromEntries(byTopic),
      timestamp: this.#start === 'earliest' ? -2n : -1n,
    });
    for (const { part, from } of outOfRange) {
      const at = listed.get(part.topic)?.[part.partition];
      // Changed while the offsets were asked for (a rebalance took it, the source is closing).
      if (at === undefined || this.#stopping || part.revoked || part.ledger.undelivered !== from) continue;
      if (this.#partitions.get(part.key) !== part) continue;
      const to = Number(at);
      // The log reached the offset in between (records written up to it): in range now.
      if (to === from) continue;
      this.#stats.offsetResets++;
      const where = this.#start === 'earliest' ? "the log's start" : "the log's end";
      if (to > from) {
        this.#log.warn(
          `kafka source '${this.name}': partition ${part.key} offset ${from} is out of range (retention or deleteRecords removed records not read): offsets ${from} to ${to - 1} skipped, reading from ${to}, ${where} (start: '${this.#start}')`,
        );
        part.ledger.undelivered = to;
        continue;
      }
      this.#log.warn(
        `kafka source '${this.name}': partition ${part.key} offset ${from} is out of range (the log ends below it): reading from ${to}, ${where} (start: '${this.#start}'); offsets ${to} to ${from - 1} are read when written, as records new to this group`,
      );
      this.#release(part);
      const fresh = new Partition(part.topic, part.partition, to);
      fresh.leaderEpoch = part.leaderEpoch;
      this.#partitions.set(part.key, fresh);
    }
  }

  /**
   * Publishes a partition's buffered records in order, each once the mailboxes took the one
   * before. By key, records whose key became free go first, and a record whose key has one in
   * flight waits behind it (delivered to the ledger, so the floor stays below it).
   */
  async #pump(part: Partition): Promise<void> {
    if (part.publishing) return;
    part.publishing = true;
    try {
      while (!this.#stopping && !this.#rebalancing && !part.revoked) {
        const ready = part.ready.shift();
        if (ready !== undefined) {
          part.held--;
          await this.#publishOne(part, ready.record, ready.index);
          continue;
        }
        if (part.barrier || part.buffered.length === 0 || this.#full(part)) break;
        const record = part.buffered[0] as PendingRecord;
        const key = this.#byKey ? orderingKey(record) : undefined;
        if (this.#byKey && key === undefined && part.ledger.pending > 0) {
          // No key: partition order, so it waits for every record before it (and holds those after it).
          break;
        }
        part.buffered.shift();
        const index = part.ledger.deliver(record.offset, record.timestamp);
        if (part.skip.length > 0 && skipped(part.skip, record.offset)) {
          // Its outputs were committed with the offsets above the floor: done already.
          this.#stats.skipped++;
          part.ledger.settle(index);
          continue;
        }
        if (this.#byKey) {
          if (key === undefined) part.barrier = true;
          else {
            const waiting = part.keys.get(key);
            if (waiting !== undefined) {
              this.#stats.keyWaits++;
              waiting.push({ record, index });
              part.held++;
              continue;
            }
            part.keys.set(key, []);
          }
        }
        await this.#publishOne(part, record, index);
      }
      if (part.buffered.length === 0 && part.nextFetch > part.ledger.undelivered)
        part.ledger.undelivered = part.nextFetch;
    } finally {
      part.publishing = false;
      this.#wake?.();
    }
  }

  /** Neither fetched nor delivered from its buffer: too many records unsettled, or too many since the floor. */
  #full(part: Partition): boolean {
    return part.ledger.pending >= this.#maxPending || part.ledger.window >= this.#maxWindow;
  }

  /**
   * A record header whose name the bus refuses (not printable ASCII, white space, a colon): the
   * record is still published, as headers are its metadata, without that one; counted, and logged
   * the first time a name is seen, so that it is not lost in silence nor logged per record.
   */
  #droppedHeader(name: string, position: string): void {
    this.#stats.headersDropped++;
    if (this.#droppedNames.has(name) || this.#droppedNames.size >= 100) return;
    this.#droppedNames.add(name);
    this.#log.warn(
      `kafka source '${this.name}': record ${position} has a header named ${JSON.stringify(name)}, which is no bus header name (printable ASCII without white space or colon, at most 256 characters): it is left out of the envelope (counted in stats.headersDropped; logged once per name)`,
    );
  }

  async #publishOne(part: Partition, record: PendingRecord, index: number): Promise<void> {
    const client = this.#client as BusClient;
    const lineage = recordLineage(this, part, record, index);
    const { topic, partition } = part.ledger;
    const position = `${topic}/${partition}/${record.offset}`;
    const headers: Record<string, string> = {};
    for (const [k, v] of record.headers) {
      if (k === null) continue;
      const name = k.toString();
      if (envelopeName(name)) headers[name] = v === null ? '' : v.toString();
      else this.#droppedHeader(name, position);
    }
    headers[STREAM_HEADERS.stream] = this.#stream;
    headers[STREAM_HEADERS.sequence] = position;
    headers[KAFKA_HEADERS.topic] = topic;
    headers[KAFKA_HEADERS.partition] = String(partition);
    headers[KAFKA_HEADERS.offset] = String(record.offset);
    const subject = this.#subject(topic);
    let data: unknown;
    let target = subject;
    try {
      data = record.value === null ? null : this.#codec.decode(record.value, subject);
    } catch (error) {
      data = record.value;
      target = this.#deadLetter;
      headers[DEAD_LETTER_HEADERS.error] = messageOf(error);
      headers[DEAD_LETTER_HEADERS.code] = error instanceof SluiceError ? error.code : 'SLUICE_ERR_DECODE';
      headers[DEAD_LETTER_HEADERS.actor] = this.name;
      headers[DEAD_LETTER_HEADERS.subject] = subject;
      this.#stats.deadLettered++;
    }
    const options = {
      headers,
      eventTime: record.timestamp,
      lineage,
      ...(record.key === null ? {} : { key: record.key.toString() }),
    };
    this.#stats.published++;
    try {
      if (!client.tryPublish(target, data, options)) await client.publish(target, data, options);
    } catch (error) {
      lineage.release(error);
      return;
    }
    lineage.release();
  }
}

/**
 * The response of a fetch the client failed for errors of some of its partitions (the client
 * throws a `ResponseError` holding it; after retries, inside a `MultipleErrors`, the last
 * attempt's last), when the request itself succeeded; else undefined.
 */
function partialFetch(error: unknown): FetchResponse | undefined {
  const last = error instanceof MultipleErrors && !(error instanceof ResponseError) ? error.errors.at(-1) : error;
  if (!(last instanceof ResponseError)) return undefined;
  const response: unknown = last.response;
  if (typeof response !== 'object' || response === null) return undefined;
  const r = response as { errorCode?: unknown; responses?: unknown };
  if (r.errorCode !== 0 || !Array.isArray(r.responses)) return undefined;
  return response as FetchResponse;
}

/** The broker's error names (`apiId`) in the client's error and the errors inside it. */
function apiErrors(error: unknown, out = new Set<string>(), depth = 0): Set<string> {
  if (typeof error !== 'object' || error === null || depth > 4) return out;
  const e = error as { apiId?: unknown; errors?: unknown; cause?: unknown };
  if (typeof e.apiId === 'string') out.add(e.apiId);
  if (Array.isArray(e.errors)) for (const inner of e.errors) apiErrors(inner, out, depth + 1);
  return apiErrors(e.cause, out, depth + 1);
}

function hasApiError(error: unknown, ids: readonly string[]): boolean {
  const found = apiErrors(error);
  return ids.some((id) => found.has(id));
}

/** ` (NAME, ...)` for a log line, or nothing. */
function apiErrorsOf(error: unknown): string {
  const found = apiErrors(error);
  return found.size === 0 ? '' : ` (${[...found].join(', ')})`;
}

/** The narrowest pattern matching every subject: shared leading tokens, then `>`. */
function commonPattern(subjects: readonly string[]): string {
  const split = subjects.map((s) => s.split('.'));
  const shared: string[] = [];
  for (let i = 0; ; i++) {
    const token = split[0]?.[i];
    if (token === undefined || split.some((s) => s[i] !== token || s.length === i + 1)) break;
    shared.push(token);
  }
  return shared.length === 0 ? '>' : `${shared.join('.')}.>`;
}

/** A generation the client joined, with its member id and that generation's assignment. */
interface Joined {
  readonly generationId: number;
  readonly memberId: string | null;
  readonly assignments: readonly { readonly topic: string; readonly partitions: readonly number[] }[];
}
