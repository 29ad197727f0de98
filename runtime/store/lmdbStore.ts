import { type Database, open, type RootDatabase, type RootDatabaseOptionsWithPath } from 'lmdb';
import { OptionsError } from '../errors.ts';
import { BaseStore, type StoreOp } from './baseStore.ts';
import { decodeRecord, encodeRecord } from './record.ts';
import type { Durability } from './types.ts';

export interface LmdbStoreOptions {
  /** A directory; LMDB keeps `data.mdb` and `lock.mdb` in it. Created if missing. */
  readonly path: string;
  /** Default `sync`: a write resolves once its commit is on disk. See {@link Durability}. */
  readonly durability?: 'sync' | 'lazy-may-lose-acknowledged-writes';
}

type Key = [string, string | number];

/** Keys of the `meta` database. */
const FORMAT_KEY: Key = ['format', ''];
const STORE_FORMAT = 1;
/** Past every sequence: the end key of a stream's range. */
const SEQ_END = Number.MAX_SAFE_INTEGER + 1;

/**
 * The embedded store on LMDB (the `lmdb` package): one environment with three databases, `log`
 * (keys `[stream, seq]`), `kv` (keys `[namespace, key]`) and `meta` (per stream, the sequence that
 * retention removed up to, so the end of a stream survives removing all its records). Values are
 * stored as raw bytes in the record format of record.ts (MessagePack with a CRC-32).
 *
 * Each group of writes is one child transaction of one LMDB write transaction: a group that fails
 * leaves nothing. With `durability: 'sync'` the environment is opened with `overlappingSync: false`,
 * so LMDB syncs (fdatasync) inside the commit and the write promise resolves after it; with
 * `overlappingSync` on (lmdb's default on Linux) the promise would resolve before the sync.
 */
export class LmdbStore extends BaseStore {
  protected readonly kind = 'lmdb';
  protected readonly durability: Durability;
  protected readonly label: string;
  /** The options the environment was opened with, to check its durability. */
  // Spelled out rather than lmdb's own type, so the package's declarations do not need lmdb's.
  readonly lmdbOptions: Readonly<{
    path: string;
    noSubdir: boolean;
    encoding: 'binary';
    keyEncoding: 'ordered-binary';
    overlappingSync: boolean;
    noSync: boolean;
    noMetaSync: boolean;
    useWritemap: boolean;
    compression: boolean;
    maxDbs: number;
  }>;
  private readonly env: RootDatabase<Buffer, Key>;
  private readonly log: Database<Buffer, Key>;
  private readonly kv: Database<Buffer, Key>;
  private readonly meta: Database<Buffer, Key>;

  constructor(options: LmdbStoreOptions) {
    super();
    if (typeof options?.path !== 'string' || options.path.length === 0) {
      throw new OptionsError('store.path', 'must be a non-empty string (a directory)', options?.path);
    }
    const durability = options.durability ?? 'sync';
    if (durability !== 'sync' && durability !== 'lazy-may-lose-acknowledged-writes') {
      throw new OptionsError('store.durability', "must be 'sync' or 'lazy-may-lose-acknowledged-writes'", durability);
    }
    this.durability = durability;
    this.label = `store '${options.path}'`;
    this.lmdbOptions = Object.freeze({
      path: options.path,
      noSubdir: false,
      encoding: 'binary',
      keyEncoding: 'ordered-binary',
      overlappingSync: durability !== 'sync',
      noSync: false,
      noMetaSync: false,
      useWritemap: false,
      compression: false,
      maxDbs: 8,
    } as const satisfies RootDatabaseOptionsWithPath);
    this.env = open<Buffer, Key>({ ...this.lmdbOptions });
    const sub = { encoding: 'binary', keyEncoding: 'ordered-binary', compression: false } as const;
    this.log = this.env.openDB<Buffer, Key>({ name: 'log', ...sub });
    this.kv = this.env.openDB<Buffer, Key>({ name: 'kv', ...sub });
    this.meta = this.env.openDB<Buffer, Key>({ name: 'meta', ...sub });
    const format = this.readMeta(FORMAT_KEY);
    if (format === undefined) {
      this.meta.putSync(FORMAT_KEY, encodeRecord(STORE_FORMAT));
    } else if (format !== STORE_FORMAT) {
      void this.env.close();
      throw new OptionsError(
        'store.path',
        `holds a store of format ${String(format)}; this version reads format ${STORE_FORMAT}`,
        options.path,
      );
    }
  }

  protected committedLast(stream: string): number {
    let last = 0;
    for (const key of this.log.getKeys({ start: [stream, SEQ_END], end: [stream, 0], reverse: true, limit: 1 })) {
      last = key[1] as number;
    }
    return Math.max(last, this.truncatedThrough(stream));
  }

  protected committedFirst(stream: string): number | undefined {
    for (const key of this.log.getKeys({ start: [stream, 0], end: [stream, SEQ_END], limit: 1 })) {
      return key[1] as number;
    }
    return undefined;
  }

  protected *rawRange(stream: string, from: number, to: number, limit: number) {
    const range = this.log.getRange({
      start: [stream, from],
      end: [stream, to],
      inclusiveEnd: true,
      ...(Number.isFinite(limit) ? { limit } : {}),
    });
    for (const { key, value } of range) yield { seq: key[1] as number, bytes: value };
  }

  protected rawGet(stream: string, seq: number): Uint8Array | undefined {
    return this.log.getBinary([stream, seq]);
  }

  protected rawGetKey(namespace: string, key: string): Uint8Array | undefined {
    return this.kv.getBinary([namespace, key]);
  }

  protected *rawScan(namespace: string, prefix: string, limit: number) {
    let n = 0;
    for (const { key, value } of this.kv.getRange({ start: [namespace, prefix] })) {
      const [ns, name] = key;
      if (ns !== namespace || typeof name !== 'string' || !name.startsWith(prefix) || n++ >= limit) return;
      yield { key: name, bytes: value };
    }
  }

  protected rawStreams(): string[] {
    const names = new Set<string>();
    // One key per stream: jump past each stream's records instead of visiting them.
    let start: Key | undefined = ['', 0];
    while (start !== undefined) {
      let found: Key | undefined;
      for (const key of this.log.getKeys({ start, limit: 1 })) found = key;
      if (found === undefined) break;
      names.add(found[0]);
      start = [found[0], SEQ_END];
    }
    for (const key of this.meta.getKeys({ start: ['trunc', ''], end: ['trunc', '\uffff'] })) {
      names.add(key[1] as string);
    }
    return [...names].sort();
  }

  protected commitOps(ops: StoreOp[]): Promise<void> {
    // A child transaction, so that an error midway aborts the whole group, not just stops it.
    return this.env.childTransaction(() => {
      for (const op of ops) this.apply(op);
    });
  }

  /** Runs inside the write transaction: puts and removes apply at once and reads see them. */
  private apply(op: StoreOp): void {
    switch (op.kind) {
      case 'append': {
        let seq = op.first;
        for (const record of op.records) this.log.put([op.stream, seq++], record);
        return;
      }
      case 'deleteThrough': {
        if (op.seq <= this.truncatedThrough(op.stream)) return;
        const keys = [...this.log.getKeys({ start: [op.stream, 0], end: [op.stream, op.seq], inclusiveEnd: true })];
        for (const key of keys) this.log.remove(key);
        this.meta.put(['trunc', op.stream], encodeRecord(op.seq));
        return;
      }
      case 'put':
        this.kv.put([op.namespace, op.key], op.record);
        return;
      case 'delete':
        this.kv.remove([op.namespace, op.key]);
        return;
    }
  }

  private truncatedThrough(stream: string): number {
    const through = this.readMeta(['trunc', stream]);
    return typeof through === 'number' ? through : 0;
  }

  private readMeta(key: Key): unknown {
    const bytes = this.meta.getBinary(key);
    if (bytes === undefined) return undefined;
    // Meta records are checked like any other: a corrupt one names its key.
    return decodeMeta(bytes, key);
  }

  protected closeStorage(): Promise<void> {
    return this.env.close();
  }
}

function decodeMeta(bytes: Uint8Array, key: Key): unknown {
  return decodeRecord(bytes, { namespace: '(meta)', key: `${key[0]}/${key[1]}` });
}
