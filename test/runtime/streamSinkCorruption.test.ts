import { type Envelope, MemoryStore, type Runtime, type SinkRecord, StreamError, streamSink } from 'sluice';
import { describe, expect, test } from 'vitest';
import { dedupeNamespace } from '../../runtime/sinks/streamSink.ts';
import { quietLogger, rejection, testRuntime } from './helpers.ts';
import { memoryHarness } from './store/harness.ts';
import { eventually } from './streams/wait.ts';

const rec = (key: string, value: unknown): SinkRecord<unknown> => ({
  key,
  value,
  revision: undefined,
  envelope: undefined,
});

/** The idempotency keys of a stream's stored records, in sequence order. */
function keys(rt: Runtime, stream: string): (string | undefined)[] {
  const s = rt.stream(stream);
  const out = [];
  for (let seq = s.info().first; seq <= s.info().last; seq++) {
    out.push((s.get(seq) as Envelope).headers['sluice-idempotency-key']);
  }
  return out;
}

/** Flips a byte inside the stored value under `key`: its checksum no longer matches. */
function corrupt(store: MemoryStore, namespace: string, key: string): Promise<unknown> {
  return memoryHarness.tamperValue(store, namespace, key, (bytes) => {
    bytes[bytes.length - 1] = (bytes[bytes.length - 1] as number) ^ 0xff;
    return bytes;
  });
}

describe('streamSink and a corrupt de-duplication set', () => {
  test('streamSink - a corrupt entry of a key whose record retention removed is forgotten and logged, and later batches commit', async () => {
    const store = new MemoryStore();
    const { rt } = testRuntime({ store });
    const results = rt.stream({ name: 'RESULTS', subjects: ['results'], retention: { maxMessages: 2 } });
    const log = quietLogger();
    const sink = streamSink({ stream: results, logger: log });
    for (const key of ['k1', 'k2', 'k3']) await sink.write([rec(key, key)]);
    await eventually(() => expect(results.info().first).toBe(2));
    await corrupt(store, dedupeNamespace('RESULTS'), 'k1');
    // The next batch prunes k1's entry (its record is gone): unreadable, it is dropped, not fatal.
    await sink.write([rec('k4', 'k4')]);
    await sink.write([rec('k5', 'k5')]);
    expect(keys(rt, 'RESULTS').slice(-2)).toEqual(['k4', 'k5']);
    expect(store.getKey(dedupeNamespace('RESULTS'), 'k1')).toBeUndefined();
    expect(log.lines.filter((l) => /^error: streamSink\(RESULTS\): forgot key 'k1'.*corrupt/.test(l))).toHaveLength(1);
  });

  test('streamSink - a held key whose entry is corrupt fails the write and is not appended; the other records of its batch commit', async () => {
    const store = new MemoryStore();
    const { rt } = testRuntime({ store });
    const results = rt.stream({ name: 'RESULTS', subjects: ['results'] });
    const sink = streamSink({ stream: results });
    await sink.write([rec('a', 1)]);
    await corrupt(store, dedupeNamespace('RESULTS'), 'a');
    const error = await rejection(sink.write([rec('a', 1), rec('b', 2), rec('c', 3)]));
    expect(error).toBeInstanceOf(StreamError);
    expect((error as Error).message).toMatch(/streamSink\(RESULTS\): record 'a' was not appended.*corrupt/);
    expect(keys(rt, 'RESULTS')).toEqual(['a', 'b', 'c']);
    // A retry of the batch's other records finds them held; only the corrupt key fails again.
    await sink.write([rec('b', 2)]);
    await sink.write([rec('c', 3)]);
    expect(await rejection(sink.write([rec('a', 1)]))).toBeInstanceOf(StreamError);
    expect(keys(rt, 'RESULTS')).toEqual(['a', 'b', 'c']);
  });
});
