import type { CorruptRecordError } from '../errors.ts';

/**
 * How an acknowledged write relates to the disk.
 * - `sync` (the default): a write resolves only after its commit is synced to disk (fdatasync).
 * - `lazy-may-lose-acknowledged-writes`: a write resolves at commit and the sync follows in the
 *   background. Faster, but a power loss or an operating-system crash can lose writes that were
 *   already acknowledged (a killed process loses nothing: the commit is in the page cache).
 * - `none`: nothing is persisted ({@link MemoryStore}).
 */
export type Durability = 'sync' | 'lazy-may-lose-acknowledged-writes' | 'none';

/** The sequences one append was given: contiguous, `first` to `last` inclusive. */
export interface SequenceRange {
  readonly first: number;
  readonly last: number;
}

/**
 * One record of a stream as read back. A record that fails its checksum or does not decode comes
 * back with `error` set instead of `value`, so one bad record does not hide the others.
 */
export type LogEntry =
  | { readonly seq: number; readonly value: unknown; readonly error?: undefined }
  | { readonly seq: number; readonly value?: undefined; readonly error: CorruptRecordError };

/** One key of a namespace as scanned, with `error` set (and no value) when its record is corrupt. */
export type KvEntry =
  | { readonly key: string; readonly value: unknown; readonly error?: undefined }
  | { readonly key: string; readonly value?: undefined; readonly error: CorruptRecordError };

export interface StreamBounds {
  /** The lowest stored sequence; `last + 1` when the stream holds nothing. */
  readonly first: number;
  /** The highest sequence ever given (0 if none): retention never lowers it, sequences never repeat. */
  readonly last: number;
  /** Records stored, `last - first + 1`. */
  readonly count: number;
}

export interface ReadOptions {
  /** The last sequence to read, inclusive. Default: the end of the stream. */
  readonly to?: number;
  /** At most this many entries. Default: no limit. */
  readonly limit?: number;
}

export interface ScanOptions {
  /** At most this many entries. Default: no limit. */
  readonly limit?: number;
}

/**
 * The writes of one atomic commit, collected synchronously by {@link Store.batch}. Values are
 * encoded as they are added, so a value that cannot be stored throws here, before anything is
 * written.
 */
export interface StoreBatch {
  /** Appends records to a stream; the sequences are known at once and are kept if the batch commits. */
  append(stream: string, values: readonly unknown[]): SequenceRange;
  put(namespace: string, key: string, value: unknown): void;
  delete(namespace: string, key: string): void;
  /** Retention: removes the records of `stream` up to and including `seq`. */
  deleteThrough(stream: string, seq: number): void;
  /** Bytes this batch writes so far: the encoded records and values, and the keys they go under. */
  readonly bytes: number;
}

export interface StoreStats {
  readonly kind: 'lmdb' | 'memory';
  readonly durability: Durability;
  /** Commits made (each synced once under `sync`). Far fewer than `writes` under load: group commit. */
  readonly commits: number;
  /** Write calls accepted (append, put, delete, deleteThrough, batch), each resolved by one commit. */
  readonly writes: number;
  /** Records appended to streams. */
  readonly appended: number;
}

/**
 * The embedded durable store that durable subjects (streams), durable consumers and checkpointed
 * state stand on: append-only logs with a sequence per stream, key-value namespaces (consumer
 * positions, keyed actor state, window accumulators, a de-duplication set), and atomic batches
 * that combine both in one commit.
 *
 * Writes resolve when their commit is durable (see {@link Durability}); writes issued while a
 * commit is under way share the next one (group commit), so throughput does not pay one sync per
 * write. A write that resolved is visible to every read that follows. Reads are synchronous and
 * see committed writes only. One process owns a store: sequences are given out in memory.
 *
 * After a failed commit the store refuses further writes (a `ClosedError` naming the cause):
 * whether the disk holds that commit is unknown, and sequences given out after it could repeat.
 */
export interface Store {
  append(stream: string, values: readonly unknown[]): Promise<SequenceRange>;
  /** Entries of `stream` from sequence `from` (inclusive), in order. */
  read(stream: string, from: number, options?: ReadOptions): LogEntry[];
  /** One record; throws a `CorruptRecordError` naming the stream and sequence if it is corrupt. */
  get(stream: string, seq: number): unknown;
  bounds(stream: string): StreamBounds;
  /** Retention: removes the records of `stream` up to and including `seq`. */
  deleteThrough(stream: string, seq: number): Promise<void>;
  /** Names of the streams that were ever appended to. */
  streams(): string[];

  /** The value under `key`, or `undefined`; throws a `CorruptRecordError` if its record is corrupt. */
  getKey(namespace: string, key: string): unknown;
  putKey(namespace: string, key: string, value: unknown): Promise<void>;
  deleteKey(namespace: string, key: string): Promise<void>;
  /** Keys of `namespace` that start with `prefix` (all keys for ''), in UTF-8 byte order. */
  scan(namespace: string, prefix: string, options?: ScanOptions): KvEntry[];

  /**
   * Runs `build` synchronously to collect writes, then commits them all in one transaction: all
   * of them or none. If `build` throws, nothing is written and the promise rejects with its error.
   */
  batch<R>(build: (batch: StoreBatch) => R): Promise<R>;

  stats(): StoreStats;
  /** Waits for writes already accepted to commit, then closes; later calls throw `ClosedError`. */
  close(): Promise<void>;
}
