import { BaseStore, type StoreOp } from './baseStore.ts';
import type { Durability } from './types.ts';

interface MemoryStream {
  /** The sequence of `records[0]`; `base + records.length - 1` is the last one committed. */
  base: number;
  records: Uint8Array[];
}

/**
 * The store in memory, for tests: the same API, the same encoding (values are copied through
 * MessagePack with a checksum, as on disk), the same group commit (writes become visible when
 * their commit runs, on a later turn) and the same errors. Nothing survives the process.
 */
export class MemoryStore extends BaseStore {
  protected readonly kind = 'memory';
  protected readonly durability: Durability = 'none';
  protected readonly label = 'memory store';
  private readonly logs = new Map<string, MemoryStream>();
  private readonly namespaces = new Map<string, Map<string, Uint8Array>>();

  /** The stored bytes of a record (the array itself, not a copy), for fault-injection tests. */
  rawRecord(stream: string, seq: number): Uint8Array | undefined {
    return this.rawGet(stream, seq);
  }

  /** Replaces the stored bytes of an existing record, for fault-injection tests. */
  setRawRecord(stream: string, seq: number, bytes: Uint8Array): void {
    const log = this.logs.get(stream);
    const index = log === undefined ? -1 : seq - log.base;
    if (log === undefined || index < 0 || index >= log.records.length) {
      throw new RangeError(`no record ${seq} in stream '${stream}'`);
    }
    log.records[index] = bytes;
  }

  /** The stored bytes under a key (the array itself, not a copy), for fault-injection tests. */
  rawValue(namespace: string, key: string): Uint8Array | undefined {
    return this.rawGetKey(namespace, key);
  }

  /** Replaces the stored bytes under a key, for fault-injection tests. */
  setRawValue(namespace: string, key: string, bytes: Uint8Array): void {
    this.namespaceOf(namespace).set(key, bytes);
  }

  protected committedLast(stream: string): number {
    const log = this.logs.get(stream);
    return log === undefined ? 0 : log.base + log.records.length - 1;
  }

  protected committedFirst(stream: string): number | undefined {
    const log = this.logs.get(stream);
    return log === undefined || log.records.length === 0 ? undefined : log.base;
  }

  protected *rawRange(stream: string, from: number, to: number, limit: number) {
    const log = this.logs.get(stream);
    if (log === undefined) return;
    const end = Math.min(to, log.base + log.records.length - 1);
    let n = 0;
    for (let seq = Math.max(from, log.base); seq <= end && n < limit; seq++, n++) {
      yield { seq, bytes: log.records[seq - log.base] as Uint8Array };
    }
  }

  protected rawGet(stream: string, seq: number): Uint8Array | undefined {
    const log = this.logs.get(stream);
    return log === undefined ? undefined : log.records[seq - log.base];
  }

  protected rawGetKey(namespace: string, key: string): Uint8Array | undefined {
    return this.namespaces.get(namespace)?.get(key);
  }

  protected *rawScan(namespace: string, prefix: string, limit: number) {
    const entries = this.namespaces.get(namespace);
    if (entries === undefined) return;
    // LMDB orders keys by their UTF-8 bytes, which is not JavaScript's UTF-16 order for every string.
    const keys = [...entries.keys()]
      .filter((key) => key.startsWith(prefix))
      .map((key) => ({ key, utf8: Buffer.from(key) }))
      .sort((a, b) => Buffer.compare(a.utf8, b.utf8));
    let n = 0;
    for (const { key } of keys) {
      if (n++ >= limit) return;
      yield { key, bytes: entries.get(key) as Uint8Array };
    }
  }

  protected rawStreams(): string[] {
    return [...this.logs.keys()].sort();
  }

  protected commitOps(ops: StoreOp[]): Promise<void> {
    // Checked before anything changes, so a group applies whole or not at all, as a transaction.
    const next = new Map<string, number>();
    for (const op of ops) {
      if (op.kind !== 'append') continue;
      const expected = next.get(op.stream) ?? this.committedLast(op.stream) + 1;
      if (op.first !== expected)
        return Promise.reject(new Error(`append to '${op.stream}' at ${op.first} out of order`));
      next.set(op.stream, op.first + op.records.length);
    }
    for (const op of ops) this.apply(op);
    return Promise.resolve();
  }

  private apply(op: StoreOp): void {
    switch (op.kind) {
      case 'append': {
        let log = this.logs.get(op.stream);
        if (log === undefined) this.logs.set(op.stream, (log = { base: 1, records: [] }));
        for (const record of op.records) log.records.push(record);
        return;
      }
      case 'deleteThrough': {
        const log = this.logs.get(op.stream);
        if (log === undefined) return; // never appended to: nothing to remove
        const n = Math.min(op.seq - log.base + 1, log.records.length);
        if (n > 0) {
          log.records.splice(0, n);
          log.base += n;
        }
        return;
      }
      case 'put':
        this.namespaceOf(op.namespace).set(op.key, op.record);
        return;
      case 'delete':
        this.namespaces.get(op.namespace)?.delete(op.key);
        return;
    }
  }

  private namespaceOf(namespace: string): Map<string, Uint8Array> {
    let entries = this.namespaces.get(namespace);
    if (entries === undefined) this.namespaces.set(namespace, (entries = new Map()));
    return entries;
  }

  protected closeStorage(): Promise<void> {
    return Promise.resolve();
  }
}
