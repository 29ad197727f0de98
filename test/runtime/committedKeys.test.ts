import { MemoryStore, type SinkRecord } from 'sluice';
import { describe, expect, test } from 'vitest';
import { committedBefore, rememberCommitted } from '../../runtime/sinks/committedKeys.ts';

const NS = 'sluice.committed/test';

function record(key: string, revision: number | undefined): SinkRecord<string> {
  return { key, value: `${key}@${revision}`, revision, envelope: undefined };
}

describe('committed keys of broker sinks', () => {
  test('rememberCommitted - two revisions of a key committed in one batch keep the higher, whatever order they were acknowledged in', async () => {
    const store = new MemoryStore();
    // A broker may acknowledge revision 3 before revision 2 (confirms out of publish order).
    await rememberCommitted(store, NS, [record('w', 3), record('w', 2)], (r) => ({ id: `id-${r.revision}` }));
    // A replay of revision 3 is skipped: appended again, the broker would hold it twice.
    expect(committedBefore(store, NS, record('w', 3))).toBe(true);
    expect(committedBefore(store, NS, record('w', 4))).toBe(false);
    expect(store.getKey(NS, 'w')).toEqual({ r: 3, id: 'id-3' });
  });

  test('rememberCommitted - one entry per key, each with what the sink adds for it', async () => {
    const store = new MemoryStore();
    await rememberCommitted(store, NS, [record('a', undefined), record('b', 0), record('b', 1)], (_, i) => ({ i }));
    expect(store.getKey(NS, 'a')).toEqual({ r: null, i: 0 });
    expect(store.getKey(NS, 'b')).toEqual({ r: 1, i: 2 });
    expect(committedBefore(store, NS, record('a', undefined))).toBe(true);
    expect(committedBefore(store, NS, record('b', 1))).toBe(true);
  });
});
