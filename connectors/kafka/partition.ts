import type { RecordsBatch } from '@platformatic/kafka';
import { deliveriesOf, type Lineage, SourceLineage, type SourceSettlement, trackerOf } from '../../runtime/lineage.ts';
import { encodeRuns, MAX_COMMIT_METADATA, mergeRuns, PartitionLedger } from './partitionLedger.ts';

/**
 * One taking of a partition by a source, as a transactional sink sees it: a partition lost and
 * taken back is a new tenure (a new object), so outputs of inputs fetched before are told apart.
 */
export interface KafkaTenure {
  readonly topic: string;
  readonly partition: number;
  /** The committed offset: every input below it was processed by a committed transaction. */
  readonly committed: number;
  /** Whether the commit read when the partition was taken said `offset` (above it) was processed. */
  doneAtTake(offset: number): boolean;
}

/** One assigned partition of a source: its lane of records and its ledger of offsets. */
export class Partition implements KafkaTenure {
  readonly ledger: PartitionLedger;
  /** `topic:partition` */
  readonly key: string;
  /** Fetched, not yet published. */
  buffered: PendingRecord[] = [];
  publishing = false;
  /** Taken away by a rebalance: its settlements no longer count. */
  revoked = false;
  highWatermark = 0;
  leaderEpoch = -1;
  /** Where the next fetch starts once the buffered records are published (control records skipped). */
  nextFetch = 0;
  /** Fetches in a row the broker failed this partition in (a moving leader, say). */
  fetchErrors = 0;
  /** Not fetched before this time (ms): a partition the broker fails is not asked again at once. */
  fetchAfter = 0;
  /**
   * Offsets above the committed one that a transaction already wrote the outputs of (from the
   * commit's metadata): settled on arrival, not published again.
   */
  skip: [number, number][] = [];
  /** The commit metadata of this tenure was cut to its bound once: said once. */
  #warnedMetadata = false;
  /** The runs of `skip` as read when the partition was taken (`skip` drops those passed). */
  #doneAtTake: readonly (readonly [number, number])[] = [];
  /** The timestamp of the last record fetched, for the time lag before the oldest one is. */
  lastTimestamp = 0;
  // Ordering by key (`ordering: 'key'`): at most one record of a key is published and not settled.
  /**
   * Keys with a record published and not settled, each with the records of that key delivered
   * to the ledger after it, waiting in offset order.
   */
  readonly keys = new Map<string, Waiting[]>();
  /** Records whose key became free: published next, before any buffered record. */
  ready: Waiting[] = [];
  /** Records delivered to the ledger and not published yet (waiting behind their key, or ready). */
  held = 0;
  /** A record without a key is published and not settled: nothing after it goes out until it settles. */
  barrier = false;
  constructor(topic: string, partition: number, start: number) {
    this.ledger = new PartitionLedger(topic, partition, start);
    this.key = `${topic}:${partition}`;
  }

  get topic(): string {
    return this.ledger.topic;
  }

  get partition(): number {
    return this.ledger.partition;
  }

  get committed(): number {
    return this.ledger.committed;
  }

  /** Sets the runs above the committed offset that the commit's metadata says were processed. */
  takeSkips(runs: [number, number][]): void {
    this.skip = runs;
    this.#doneAtTake = runs.map(([a, b]) => [a, b] as const);
  }

  /**
   * What a transaction holding the outputs of the records at `offsets` commits for this partition:
   * the floor as if they were settled, and as metadata the offsets above it done, both those
   * delivered and settled and the runs of the commit read at the take not reached yet: the ledger
   * knows only what was delivered, and a commit without those runs would have the next owner
   * process them again. The metadata is bounded ({@link encodeRuns}); `warn` hears once per
   * tenure that runs were left out.
   */
  commitFor(offsets: Iterable<number>, warn: (message: string) => void): { offset: number; metadata: string | null } {
    const { floor, doneAbove } = this.ledger.commitIfSettled(offsets);
    const runs = this.skip.length === 0 ? doneAbove : mergeRuns(floor, doneAbove, this.skip);
    const { metadata, dropped } = encodeRuns(runs);
    if (dropped > 0 && !this.#warnedMetadata) {
      this.#warnedMetadata = true;
      warn(
        `partition ${this.key}: the offsets done above committed offset ${floor} make ${runs.length} runs, more than commit metadata holds (${MAX_COMMIT_METADATA} characters); the ${dropped} highest were left out, and their records are processed again if the partition moves or the process restarts before the offset passes them (duplicates, not losses). Fewer records in flight per partition (maxPendingPerPartition) keep the runs fewer`,
      );
    }
    return { offset: floor, metadata };
  }

  doneAtTake(offset: number): boolean {
    for (const [a, b] of this.#doneAtTake) if (a <= offset && offset <= b) return true;
    return false;
  }
}

/** A fetched record, kept until it is settled (a failed settlement publishes it again). */
export interface PendingRecord {
  readonly offset: number;
  readonly timestamp: number;
  readonly key: Buffer | null;
  readonly value: Buffer | null;
  readonly headers: [Buffer | null, Buffer | null][];
  attempt: number;
}

/** A record delivered to the ledger (its index) that waits to be published. */
export interface Waiting {
  readonly record: PendingRecord;
  readonly index: number;
}

/** The key a record is ordered by, `undefined` for none; latin1 keeps every byte of a binary key distinct. */
export function orderingKey(record: PendingRecord): string | undefined {
  return record.key === null ? undefined : record.key.toString('latin1');
}

/** Who hears that a published record settled: the source. */
export interface Settler {
  settled(part: Partition, record: PendingRecord, index: number, error: unknown): void;
}

/** The source reference of one published record: settles its offset when the last ref is given back. */
/** A published record as its lineage knows it: who hears of its settlement, and where it is. */
interface RecordDelivery {
  readonly settler: Settler;
  readonly part: Partition;
  readonly record: PendingRecord;
  readonly index: number;
}

const toSettler: SourceSettlement<RecordDelivery> = {
  sourceSettled: (d, _lineage, error) => d.settler.settled(d.part, d.record, d.index, error),
};

/**
 * A record's lineage that also keeps its count of references where a transactional sink can read
 * it: whether the sink's batch holds the last ones, or another branch (a second subscriber, an
 * actor's other output) still holds the record.
 */
class RecordLineage extends SourceLineage<RecordDelivery> {
  readonly delivery: RecordDelivery;
  refs = 1;
  constructor(delivery: RecordDelivery) {
    super(toSettler, delivery, `${delivery.part.key}:${delivery.record.offset}`);
    this.delivery = delivery;
  }
  override retain(): void {
    this.refs++;
    super.retain();
  }
  override absorb(): void {
    this.refs++;
    super.absorb();
  }
  override release(error?: unknown): void {
    if (this.refs > 0) this.refs--;
    super.release(error);
  }
}

export function recordLineage(
  settler: Settler,
  part: Partition,
  record: PendingRecord,
  index: number,
): SourceLineage<RecordDelivery> {
  return new RecordLineage({ settler, part, record, index });
}

/**
 * What giving back the references a sink's batch holds would settle, worked out before they are
 * given back: the transaction that writes the batch may commit a record's offset only when nothing
 * else holds the record. Each batch record holds one reference on its lineage; a lineage whose
 * every reference is the batch's would settle and give back one on its upstream, and so on up to
 * the source's record. A lineage whose counts cannot be read (a merge of several inputs, an input
 * with no record yet) counts as held: its records settle later and a later commit passes them.
 */
export class BatchRelease {
  readonly #settler: Settler;
  /** References the batch accounts for, per lineage reached with more than one. */
  readonly #given = new Map<object, number>();
  /** Whether the record the last {@link give} reached settles once the batch's references go. */
  settles = false;

  constructor(settler: Settler) {
    this.#settler = settler;
  }

  /**
   * Counts the batch's reference on `lineage` (call it once per record of the batch); returns the
   * delivery of the source's record it leads to, {@link settles} saying whether the batch's
   * references are the last on it. Undefined when the chain does not lead to one of this source's
   * records without a merge of several inputs (`tenureOfLineage` finds those).
   */
  give(lineage: Lineage | undefined): { readonly part: Partition; readonly record: PendingRecord } | undefined {
    let all = true;
    for (let l = lineage; l !== undefined; ) {
      if (l instanceof RecordLineage) {
        const d = l.delivery;
        if (d.settler !== this.#settler) return undefined;
        this.settles = all && this.#all(l, l.refs);
        return d;
      }
      const t = trackerOf(l);
      if (t === undefined) return undefined;
      // Past a link something else holds, nothing settles: the rest of the chain is only followed.
      if (all) all = this.#all(t, t.inFlight + t.absorbed);
      l = t.upstream;
    }
    return undefined;
  }

  /** One more reference of `of`'s `total` given back: whether it was the last. */
  #all(of: object, total: number): boolean {
    // The usual chain, one output per input, needs no count kept.
    if (total === 1 && !this.#given.has(of)) return true;
    const given = (this.#given.get(of) ?? 0) + 1;
    this.#given.set(of, given);
    return given === total;
  }
}

/**
 * The tenure of partition `topic`/`partition` that `settler` read the record at `offset` in, when
 * `lineage` (an output's) derives from that record: the record's own delivery knows the partition
 * object it came from. Undefined when the lineage does not lead back to it.
 */
export function tenureOfLineage(
  settler: Settler,
  lineage: Lineage | undefined,
  topic: string,
  partition: number,
  offset: number,
): KafkaTenure | undefined {
  // Numbers and a topic compared, not a `topic:partition` string made: this runs for every record
  // of a transaction.
  for (const d of deliveriesOf(lineage, toSettler))
    if (d.settler === settler && d.record.offset === offset && d.part.partition === partition && d.part.topic === topic)
      return d.part;
  return undefined;
}

/** The part of a fetch response the source reads. */
export interface FetchResponse {
  readonly responses: readonly {
    readonly topicId: string;
    readonly partitions: readonly {
      readonly partitionIndex: number;
      readonly errorCode: number;
      readonly highWatermark: bigint;
      readonly logStartOffset: bigint;
      readonly abortedTransactions?: readonly AbortedTransaction[];
      readonly records?: RecordsBatch[];
    }[];
  }[];
}

/** A transaction the broker says was aborted, overlapping a read_committed fetch's range. */
export interface AbortedTransaction {
  readonly producerId: bigint;
  readonly firstOffset: bigint;
}

const IS_TRANSACTIONAL = 1 << 4;
const IS_CONTROL_BATCH = 1 << 5;

/**
 * The batches of a read_committed fetch that belong to aborted transactions, found as Kafka's
 * Java consumer does: the aborted transactions in order of their first offset, each producer's
 * transactional batches skipped from that offset until its abort marker. The broker returns
 * aborted records (up to the last stable offset) and leaves the filtering to the client; the
 * client's own filter keeps one range per producer (a second aborted transaction of the same
 * producer in one response hides the first) and skips nothing when the abort marker is beyond the
 * response (an aborted transaction larger than one fetch), and the broker lists the transactions
 * in the order they ended, not began.
 */
export function abortedBatches(
  aborted: readonly AbortedTransaction[] | undefined,
  batches: readonly RecordsBatch[],
): Set<RecordsBatch> | undefined {
  if (aborted === undefined || aborted.length === 0) return undefined;
  const queue = [...aborted].sort((a, b) =>
    a.firstOffset < b.firstOffset ? -1 : a.firstOffset > b.firstOffset ? 1 : 0,
  );
  const open = new Set<bigint>();
  const out = new Set<RecordsBatch>();
  let next = 0;
  for (const batch of batches) {
    const last = batch.firstOffset + BigInt(batch.lastOffsetDelta);
    for (; next < queue.length && (queue[next] as AbortedTransaction).firstOffset <= last; next++)
      open.add((queue[next] as AbortedTransaction).producerId);
    if ((batch.attributes & IS_CONTROL_BATCH) !== 0) {
      // An abort marker's key is version (int16) then type (int16): 0 aborts, 1 commits.
      const key = batch.records[0]?.key;
      if (key != null && key.length >= 4 && key.readInt16BE(2) === 0) open.delete(batch.producerId);
      continue;
    }
    if ((batch.attributes & IS_TRANSACTIONAL) !== 0 && open.has(batch.producerId)) out.add(batch);
  }
  return out;
}

/** Whether `offset` is in the sorted runs; drops the runs below it, which are passed for good. */
export function skipped(runs: [number, number][], offset: number): boolean {
  while (runs.length > 0 && (runs[0] as [number, number])[1] < offset) runs.shift();
  const first = runs[0];
  return first !== undefined && first[0] <= offset;
}

/** `topic:partition` back into its parts. */
export function splitKey(key: string): [string, number] {
  const at = key.lastIndexOf(':');
  return [key.slice(0, at), Number(key.slice(at + 1))];
}
