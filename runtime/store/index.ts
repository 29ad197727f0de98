export { LmdbStore, type LmdbStoreOptions } from './lmdbStore.ts';
export { MemoryStore } from './memoryStore.ts';
export type {
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
