import { ClosedError, CorruptRecordError, messageOf, OptionsError } from '../errors.ts';
import { decodeRecord, encodeRecord } from './record.ts';
import type {
  Durability,
  KvEntry,
  LogEntry,
  ReadOptions,
  ScanOptions,
  SequenceRange,
  Store,
  StoreBatch,
  StoreStats,
  StreamBounds,
} from './types.ts';

/** A write as the implementations apply it: values already encoded, sequences already given. */
export type StoreOp =
  | { readonly kind: 'append'; readonly stream: string; readonly first: number; readonly records: Buffer[] }
  | { readonly kind: 'put'; readonly namespace: string; readonly key: string; readonly record: Buffer }
  | { readonly kind: 'delete'; readonly namespace: string; readonly key: string }
  | { readonly kind: 'deleteThrough'; readonly stream: string; readonly seq: number };

/** LMDB keys are at most 1978 bytes; names and keys share that with the key's framing. */
const MAX_NAME_BYTES = 480;
const MAX_KEY_BYTES = 1200;

interface Waiter {
  resolve(): void;
  reject(error: unknown): void;
}

/**
 * What both stores share, so that their semantics are the same by construction: validation,
 * encoding with a checksum, sequence assignment, atomic batches and group commit. An implementation
 * supplies the raw storage: reading committed records and applying a group of writes in one
 * transaction.
 */
export abstract class BaseStore implements Store {
  protected abstract readonly kind: 'lmdb' | 'memory';
  protected abstract readonly durability: Durability;
  protected abstract readonly label: string;

  /** The next sequence to give per stream, ahead of what is committed while writes are pending. */
  private readonly next = new Map<string, number>();
  private pendingOps: StoreOp[] = [];
  private pendingWaiters: Waiter[] = [];
  private committing = false;
  private scheduled = false;
  private failed: unknown;
  private closing: Promise<void> | undefined;
  private commits = 0;
  private writes = 0;
  private appended = 0;
  private idle: (() => void) | undefined;
  private readonly validNames = new Set<string>();

  // ---- what an implementation supplies ----

  /** The highest sequence ever committed to `stream` (records or retention), 0 if none. */
  protected abstract committedLast(stream: string): number;
  /** The lowest stored sequence of `stream`, or undefined when it holds none. */
  protected abstract committedFirst(stream: string): number | undefined;
  protected abstract rawRange(
    stream: string,
    from: number,
    to: number,
    limit: number,
  ): Iterable<{ seq: number; bytes: Uint8Array }>;
  protected abstract rawGet(stream: string, seq: number): Uint8Array | undefined;
  protected abstract rawGetKey(namespace: string, key: string): Uint8Array | undefined;
  protected abstract rawScan(
    namespace: string,
    prefix: string,
    limit: number,
  ): Iterable<{ key: string; bytes: Uint8Array }>;
  protected abstract rawStreams(): string[];
  /** Applies `ops` in order, all or none, and resolves once that is durable as `durability` says. */
  protected abstract commitOps(ops: StoreOp[]): Promise<void>;
  protected abstract closeStorage(): Promise<void>;

  // ---- logs ----

  append(stream: string, values: readonly unknown[]): Promise<SequenceRange> {
    try {
      const { op, range } = this.prepareAppend(stream, values, this.nextSeq(stream));
      this.next.set(stream, range.last + 1);
      this.appended += values.length;
      return this.submit([op]).then(() => range);
    } catch (error) {
      return Promise.reject(error);
    }
  }

  read(stream: string, from: number, options: ReadOptions = {}): LogEntry[] {
    this.checkOpen();
    this.checkName('stream', stream);
    checkSeq('from', from, 0);
    const to = options.to ?? Number.MAX_SAFE_INTEGER;
    checkSeq('to', to, 0);
    const limit = options.limit ?? Number.POSITIVE_INFINITY;
    if (options.limit !== undefined) checkSeq('limit', options.limit, 0);
    const entries: LogEntry[] = [];
    if (limit === 0 || to < from) return entries;
    for (const { seq, bytes } of this.rawRange(stream, from, to, limit)) {
      try {
        entries.push({ seq, value: decodeRecord(bytes, { stream, sequence: seq }) });
      } catch (error) {
        if (!(error instanceof CorruptRecordError)) throw error;
        entries.push({ seq, error });
      }
    }
    return entries;
  }

  get(stream: string, seq: number): unknown {
    this.checkOpen();
    this.checkName('stream', stream);
    checkSeq('seq', seq, 1);
    const bytes = this.rawGet(stream, seq);
    return bytes === undefined ? undefined : decodeRecord(bytes, { stream, sequence: seq });
  }

  bounds(stream: string): StreamBounds {
    this.checkOpen();
    this.checkName('stream', stream);
    const last = this.committedLast(stream);
    const first = this.committedFirst(stream) ?? last + 1;
    return { first, last, count: last - first + 1 };
  }

  deleteThrough(stream: string, seq: number): Promise<void> {
    try {
      return this.submit([this.prepareDeleteThrough(stream, seq, this.nextSeq(stream))]);
    } catch (error) {
      return Promise.reject(error);
    }
  }

  streams(): string[] {
    this.checkOpen();
    return this.rawStreams();
  }

  // ---- key-value namespaces ----

  getKey(namespace: string, key: string): unknown {
    this.checkOpen();
    this.checkName('namespace', namespace);
    checkKey(key);
    const bytes = this.rawGetKey(namespace, key);
    return bytes === undefined ? undefined : decodeRecord(bytes, { namespace, key });
  }

  putKey(namespace: string, key: string, value: unknown): Promise<void> {
    try {
      return this.submit([this.preparePut(namespace, key, value)]);
    } catch (error) {
      return Promise.reject(error);
    }
  }

  deleteKey(namespace: string, key: string): Promise<void> {
    try {
      return this.submit([this.prepareDelete(namespace, key)]);
    } catch (error) {
      return Promise.reject(error);
    }
  }

  scan(namespace: string, prefix: string, options: ScanOptions = {}): KvEntry[] {
    this.checkOpen();
    this.checkName('namespace', namespace);
    checkKey(prefix);
    const limit = options.limit ?? Number.POSITIVE_INFINITY;
    if (options.limit !== undefined) checkSeq('limit', options.limit, 0);
    const entries: KvEntry[] = [];
    if (limit === 0) return entries;
    for (const { key, bytes } of this.rawScan(namespace, prefix, limit)) {
      try {
        entries.push({ key, value: decodeRecord(bytes, { namespace, key }) });
      } catch (error) {
        if (!(error instanceof CorruptRecordError)) throw error;
        entries.push({ key, error });
      }
    }
    return entries;
  }

  // ---- atomic batches ----

  batch<R>(build: (batch: StoreBatch) => R): Promise<R> {
    try {
      this.checkWritable();
      const ops: StoreOp[] = [];
      // Sequences given inside the batch stay local until `build` returns: a batch that throws
      // midway gives out nothing, so the next append gets the sequence it would have had.
      const local = new Map<string, number>();
      const nextOf = (stream: string): number => local.get(stream) ?? this.nextSeq(stream);
      let appended = 0;
      let bytes = 0;
      let open = true;
      const checkBuilding = (): void => {
        if (!open) throw new ClosedError('store batch', 'it was used after its build function returned');
      };
      const builder: StoreBatch = {
        append: (stream, values) => {
          checkBuilding();
          const { op, range } = this.prepareAppend(stream, values, nextOf(stream));
          local.set(stream, range.last + 1);
          appended += values.length;
          // Each record goes under its stream's name and an 8-byte sequence.
          for (const r of (op as Extract<StoreOp, { kind: 'append' }>).records) bytes += r.length + 8;
          ops.push(op);
          return range;
        },
        put: (namespace, key, value) => {
          checkBuilding();
          const op = this.preparePut(namespace, key, value) as Extract<StoreOp, { kind: 'put' }>;
          bytes += op.record.length + Buffer.byteLength(key);
          ops.push(op);
        },
        delete: (namespace, key) => {
          checkBuilding();
          ops.push(this.prepareDelete(namespace, key));
        },
        deleteThrough: (stream, seq) => {
          checkBuilding();
          ops.push(this.prepareDeleteThrough(stream, seq, nextOf(stream)));
        },
        get bytes() {
          return bytes;
        },
      };
      let result: R;
      try {
        result = build(builder);
      } finally {
        open = false;
      }
      if (isThenable(result)) {
        throw new OptionsError('store.batch', 'the build function must be synchronous', 'a promise');
      }
      for (const [stream, next] of local) this.next.set(stream, next);
      this.appended += appended;
      const done = ops.length === 0 ? Promise.resolve() : this.submit(ops);
      return done.then(() => result);
    } catch (error) {
      return Promise.reject(error);
    }
  }

  // ---- lifecycle ----

  stats(): StoreStats {
    return {
      kind: this.kind,
      durability: this.durability,
      commits: this.commits,
      writes: this.writes,
      appended: this.appended,
    };
  }

  close(): Promise<void> {
    this.closing ??= (async () => {
      if (this.committing || this.scheduled) await new Promise<void>((resolve) => (this.idle = resolve));
      await this.closeStorage();
    })();
    return this.closing;
  }

  // ---- the group commit ----

  /**
   * Queues `ops` for the next commit. Every write accepted while no commit runs is committed
   * together on the next turn; every write accepted while one runs waits for it and then shares
   * the following one. So N concurrent writers cost about one sync per round trip, not N.
   */
  private submit(ops: StoreOp[]): Promise<void> {
    this.checkWritable();
    this.writes++;
    for (const op of ops) this.pendingOps.push(op);
    return new Promise<void>((resolve, reject) => {
      this.pendingWaiters.push({ resolve, reject });
      if (!this.committing && !this.scheduled) {
        this.scheduled = true;
        // Writes issued in this turn join the commit: it starts after the turn's I/O callbacks.
        setImmediate(() => this.flush());
      }
    });
  }

  private flush(): void {
    this.scheduled = false;
    const ops = this.pendingOps;
    const waiters = this.pendingWaiters;
    this.pendingOps = [];
    this.pendingWaiters = [];
    this.committing = true;
    let committed: Promise<void>;
    try {
      committed = this.commitOps(ops);
    } catch (error) {
      committed = Promise.reject(error);
    }
    committed.then(
      () => {
        this.commits++;
        this.committing = false;
        for (const waiter of waiters) waiter.resolve();
        if (this.pendingWaiters.length > 0) this.flush();
        else this.settleIdle();
      },
      (error: unknown) => {
        // Fail-stop: whether the disk holds this commit is unknown, and the sequences given out
        // after it assumed it would land. Refuse further writes rather than guess.
        this.failed = error;
        this.committing = false;
        for (const waiter of waiters) waiter.reject(error);
        const queued = this.pendingWaiters;
        this.pendingOps = [];
        this.pendingWaiters = [];
        for (const waiter of queued) waiter.reject(this.failedError());
        this.settleIdle();
      },
    );
  }

  private settleIdle(): void {
    const idle = this.idle;
    this.idle = undefined;
    idle?.();
  }

  // ---- preparing writes (throws before anything is queued) ----

  private prepareAppend(
    stream: string,
    values: readonly unknown[],
    first: number,
  ): { op: StoreOp; range: SequenceRange } {
    this.checkWritable();
    this.checkName('stream', stream);
    if (!Array.isArray(values) || values.length === 0) {
      throw new OptionsError('store.append values', 'must be a non-empty array', values);
    }
    const records = new Array<Buffer>(values.length);
    for (let i = 0; i < values.length; i++) records[i] = encodeRecord(values[i]);
    const range = { first, last: first + values.length - 1 };
    return { op: { kind: 'append', stream, first, records }, range };
  }

  private preparePut(namespace: string, key: string, value: unknown): StoreOp {
    this.checkWritable();
    this.checkName('namespace', namespace);
    checkKey(key);
    return { kind: 'put', namespace, key, record: encodeRecord(value) };
  }

  private prepareDelete(namespace: string, key: string): StoreOp {
    this.checkWritable();
    this.checkName('namespace', namespace);
    checkKey(key);
    return { kind: 'delete', namespace, key };
  }

  private prepareDeleteThrough(stream: string, seq: number, next: number): StoreOp {
    this.checkWritable();
    this.checkName('stream', stream);
    checkSeq('seq', seq, 0);
    // Never past the last sequence given: retention must not move the stream's end, or a later
    // append would reuse the sequences in between.
    return { kind: 'deleteThrough', stream, seq: Math.min(seq, next - 1) };
  }

  private nextSeq(stream: string): number {
    let next = this.next.get(stream);
    if (next === undefined) {
      this.checkOpen();
      this.checkName('stream', stream);
      next = this.committedLast(stream) + 1;
      this.next.set(stream, next);
    }
    return next;
  }

  // ---- checks ----

  private checkOpen(): void {
    if (this.closing !== undefined) throw new ClosedError(this.label, 'the store is closed');
  }

  private checkWritable(): void {
    this.checkOpen();
    if (this.failed !== undefined) throw this.failedError();
  }

  private failedError(): ClosedError {
    return new ClosedError(this.label, `a commit failed, the store takes no more writes: ${messageOf(this.failed)}`);
  }

  private checkName(kind: 'stream' | 'namespace', name: string): void {
    if (this.validNames.has(name)) return;
    if (typeof name !== 'string' || name.length === 0 || Buffer.byteLength(name) > MAX_NAME_BYTES) {
      throw new OptionsError(`store.${kind}`, `must be a non-empty string of at most ${MAX_NAME_BYTES} bytes`, name);
    }
    this.validNames.add(name);
  }
}

function checkKey(key: string): void {
  if (typeof key !== 'string' || Buffer.byteLength(key) > MAX_KEY_BYTES) {
    throw new OptionsError('store.key', `must be a string of at most ${MAX_KEY_BYTES} bytes`, key);
  }
}

function checkSeq(name: string, value: number, min: number): void {
  if (!Number.isSafeInteger(value) || value < min) {
    throw new OptionsError(`store.${name}`, `must be an integer >= ${min}`, value);
  }
}

function isThenable(value: unknown): boolean {
  return typeof value === 'object' && value !== null && typeof (value as { then?: unknown }).then === 'function';
}
