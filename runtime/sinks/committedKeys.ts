/**
 * The keys a broker sink committed, kept in the embedded store for brokers that de-duplicate
 * nothing themselves (Redis, RabbitMQ, MQTT, core NATS): a replay of a key already committed is
 * skipped, however late it comes and across restarts. One entry per key: the revision committed
 * (`null`: none) and what the sink adds (an entry id, a stream sequence).
 */
import { OptionsError } from '../errors.ts';
import type { Store } from '../store/types.ts';
import { type SinkRecord, supersedes } from './sink.ts';

/** What the store keeps per committed key. */
export interface CommittedKey {
  readonly r: number | null;
}

/** @internal The `store` option of a sink, checked: an `OptionsError` naming it when it is not a store. */
export function sinkStore(where: string, store: unknown): Store | undefined {
  if (
    store !== undefined &&
    (typeof store !== 'object' || store === null || typeof (store as Store).batch !== 'function')
  ) {
    throw new OptionsError(where, "must be the runtime's store (LmdbStore or MemoryStore)", store);
  }
  return store as Store | undefined;
}

/** @internal Whether `record`'s key (at its revision or a later one) was committed. */
export function committedBefore(store: Store, namespace: string, record: SinkRecord<unknown>): boolean {
  const held = store.getKey(namespace, record.key) as CommittedKey | undefined;
  if (held === undefined) return false;
  if (record.revision === undefined || held.r === null) return true;
  return record.revision <= held.r;
}

/** @internal Stores the keys of `committed` in one batch, each with what `extra` adds to it. */
export async function rememberCommitted<R extends SinkRecord<unknown>>(
  store: Store,
  namespace: string,
  committed: readonly R[],
  extra?: (record: R, index: number) => Record<string, unknown>,
): Promise<void> {
  if (committed.length === 0) return;
  // Two revisions of a key in one batch, acknowledged in either order: the higher one is kept, as
  // a later put of the lower would make a replay of the higher look new and append it again.
  const latest = new Map<string, number>();
  for (const [i, record] of committed.entries()) {
    const held = latest.get(record.key);
    if (held === undefined || supersedes(record, committed[held] as R)) latest.set(record.key, i);
  }
  await store.batch((b) => {
    for (const i of latest.values()) {
      const record = committed[i] as R;
      b.put(namespace, record.key, { r: record.revision ?? null, ...extra?.(record, i) } satisfies CommittedKey);
    }
  });
}
