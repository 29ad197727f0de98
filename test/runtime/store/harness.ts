import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { open } from 'lmdb';
import { onTestFinished } from 'vitest';
import { LmdbStore, type LmdbStoreOptions, MemoryStore, type Store } from '../../../runtime/store/index.ts';

/**
 * One store implementation as the conformance suite drives it: a fresh store per test, and a way
 * to change the bytes of a stored record behind the store's back (for LMDB, through a raw lmdb
 * handle on the same files while the store is closed). `tamper` returns the store to go on with.
 */
export interface StoreHarness {
  readonly name: 'memory' | 'lmdb';
  fresh(): Store;
  tamperRecord(store: Store, stream: string, seq: number, change: (bytes: Buffer) => Buffer): Promise<Store>;
  tamperValue(store: Store, namespace: string, key: string, change: (bytes: Buffer) => Buffer): Promise<Store>;
}

/** A temporary directory removed when the test ends. */
export function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'sluice-store-'));
  onTestFinished(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** An LMDB store in a temporary directory, closed (if still open) and removed when the test ends. */
export function lmdbStore(options: Partial<LmdbStoreOptions> = {}): LmdbStore {
  const store = new LmdbStore({ path: join(tempDir(), 'store'), ...options });
  onTestFinished(() => store.close());
  return store;
}

/** Changes the raw bytes under `key` of the named database of an LMDB store's files. */
export async function tamperLmdb(
  path: string,
  dbName: 'log' | 'kv',
  key: [string, string | number],
  change: (bytes: Buffer) => Buffer,
): Promise<void> {
  const env = open<Buffer, [string, string | number]>({ path, encoding: 'binary', maxDbs: 8 });
  try {
    const db = env.openDB<Buffer, [string, string | number]>({ name: dbName, encoding: 'binary' });
    const bytes = db.getBinary(key);
    if (bytes === undefined) throw new Error(`no raw value under ${JSON.stringify(key)} in '${dbName}'`);
    db.putSync(key, change(Buffer.from(bytes)));
  } finally {
    await env.close();
  }
}

export const memoryHarness: StoreHarness = {
  name: 'memory',
  fresh: () => new MemoryStore(),
  async tamperRecord(store, stream, seq, change) {
    const memory = store as MemoryStore;
    const bytes = memory.rawRecord(stream, seq);
    if (bytes === undefined) throw new Error(`no record ${seq}`);
    memory.setRawRecord(stream, seq, change(Buffer.from(bytes)));
    return store;
  },
  async tamperValue(store, namespace, key, change) {
    const memory = store as MemoryStore;
    const bytes = memory.rawValue(namespace, key);
    if (bytes === undefined) throw new Error(`no key ${key}`);
    memory.setRawValue(namespace, key, change(Buffer.from(bytes)));
    return store;
  },
};

export const lmdbHarness: StoreHarness = {
  name: 'lmdb',
  fresh: () => lmdbStore(),
  async tamperRecord(store, stream, seq, change) {
    const path = (store as LmdbStore).lmdbOptions.path as string;
    await store.close();
    await tamperLmdb(path, 'log', [stream, seq], change);
    const reopened = new LmdbStore({ path });
    onTestFinished(() => reopened.close());
    return reopened;
  },
  async tamperValue(store, namespace, key, change) {
    const path = (store as LmdbStore).lmdbOptions.path as string;
    await store.close();
    await tamperLmdb(path, 'kv', [namespace, key], change);
    const reopened = new LmdbStore({ path });
    onTestFinished(() => reopened.close());
    return reopened;
  },
};
