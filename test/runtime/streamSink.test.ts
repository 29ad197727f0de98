import {
  durable,
  type Envelope,
  LmdbStore,
  MemoryStore,
  OptionsError,
  type Runtime,
  type SinkRecord,
  type Store,
  sinkActor,
  streamSink,
} from 'sluice';
import { describe, expect, test } from 'vitest';
import { dedupeNamespace, dedupeSeqNamespace } from '../../runtime/sinks/streamSink.ts';
import { flush, testRuntime, thrown } from './helpers.ts';
import { lmdbHarness, memoryHarness, tempDir } from './store/harness.ts';
import { eventually } from './streams/wait.ts';

const rec = (key: string, value: unknown, revision?: number): SinkRecord<unknown> => ({
  key,
  value,
  revision,
  envelope: undefined,
});

/** The stored records of a stream: key header, revision header and value, in sequence order. */
function stored(
  rt: Runtime,
  stream: string,
): { key: string | undefined; revision: string | undefined; value: unknown }[] {
  const s = rt.stream(stream);
  const out = [];
  for (let seq = s.info().first; seq <= s.info().last; seq++) {
    const env = s.get(seq) as Envelope;
    out.push({
      key: env.headers['sluice-idempotency-key'],
      revision: env.headers['sluice-revision'],
      value: env.data,
    });
  }
  return out;
}

describe.each([memoryHarness, lmdbHarness])('streamSink ($name store)', (harness) => {
  test('streamSink - a replayed key is skipped, a newer revision is appended, an older or equal one is not', async () => {
    const { rt } = testRuntime({ store: harness.fresh() });
    const results = rt.stream({ name: 'RESULTS', subjects: ['results'] });
    const sink = streamSink({ stream: results });
    await sink.write([rec('a', 1), rec('w', { n: 1 }, 0)]);
    await sink.write([rec('a', 1), rec('w', { n: 1 }, 0)]);
    await sink.write([rec('w', { n: 2 }, 1), rec('w', { n: 1 }, 0), rec('w', { n: 2 }, 1)]);
    await sink.write([rec('a', 'other'), rec('w', { n: 3 }, 2), rec('w', { n: 2 }, 1)]);
    expect(stored(rt, 'RESULTS')).toEqual([
      { key: 'a', revision: undefined, value: 1 },
      { key: 'w', revision: '0', value: { n: 1 } },
      { key: 'w', revision: '1', value: { n: 2 } },
      { key: 'w', revision: '2', value: { n: 3 } },
    ]);
    expect(results.get(1)?.subject).toBe('results');
  });

  test('streamSink - concurrent batches with the same key append it once, and both resolve after it is stored', async () => {
    const store = harness.fresh();
    const { rt } = testRuntime({ store });
    const results = rt.stream({ name: 'RESULTS', subjects: ['results'] });
    // Two sinks on one stream (two lanes, two actors) share the set.
    const one = streamSink({ stream: results });
    const two = streamSink({ stream: results, name: 'second' });
    const writes = [
      one.write([rec('k', 1), rec('x', 1)]),
      two.write([rec('k', 1)]),
      one.write([rec('k', 1), rec('r', 'r0', 0)]),
      two.write([rec('r', 'r0', 0), rec('r', 'r1', 1)]),
    ];
    await Promise.all(writes);
    expect(stored(rt, 'RESULTS').map((r) => `${r.key}:${String(r.value)}`)).toEqual(['k:1', 'x:1', 'r:r0', 'r:r1']);
    expect(store.scan(dedupeNamespace('RESULTS'), '').map((e) => e.key)).toEqual(['k', 'r', 'x']);
  });

  test('streamSink - the set forgets a key once retention removed its record, so it stays as small as the stream', async () => {
    const store = harness.fresh();
    const { rt } = testRuntime({ store });
    const results = rt.stream({ name: 'RESULTS', subjects: ['results'], retention: { maxMessages: 3 } });
    const sink = streamSink({ stream: results });
    for (let i = 1; i <= 20; i++) {
      await sink.write([rec(`k${i}`, i)]);
      await eventually(() => expect(results.info().messages).toBeLessThanOrEqual(3));
      // Pruned as the sink writes: at most the stream's 3 records and those of the last two
      // writes (retention runs after the commit that went over the limit).
      expect(store.scan(dedupeNamespace('RESULTS'), '').length).toBeLessThanOrEqual(5);
      expect(store.scan(dedupeSeqNamespace('RESULTS'), '').length).toBeLessThanOrEqual(5);
    }
    // Still stored: a replay is skipped.
    await sink.write([rec('k20', 20), rec('k19', 19)]);
    expect(results.info()).toMatchObject({ first: 18, last: 20 });
    // The documented trade-off: a key whose record retention removed is appended again.
    await sink.write([rec('k1', 1)]);
    expect(results.info().last).toBe(21);
    expect(stored(rt, 'RESULTS').at(-1)).toEqual({ key: 'k1', revision: undefined, value: 1 });
  });

  test('streamSink - a key whose older revision retention removed is still held by its newer record', async () => {
    const store = harness.fresh();
    const { rt } = testRuntime({ store });
    const results = rt.stream({ name: 'RESULTS', subjects: ['results'], retention: { maxMessages: 4 } });
    const sink = streamSink({ stream: results });
    for (const batch of [[rec('w', 'v0', 0)], [rec('w', 'v1', 1)], [rec('a', 1)], [rec('b', 2)], [rec('c', 3)]]) {
      await sink.write(batch);
      await eventually(() => expect(results.info().messages).toBeLessThanOrEqual(4));
    }
    expect(results.info().first).toBe(2); // w at revision 0 is gone, w at revision 1 is record 2
    await sink.write([rec('w', 'v1', 1), rec('w', 'v0', 0)]); // this write forgets record 1's entry
    expect(store.scan(dedupeSeqNamespace('RESULTS'), '').some((e) => e.key.endsWith('0001'))).toBe(false);
    expect(store.getKey(dedupeNamespace('RESULTS'), 'w')).toEqual({ r: 1, s: 2 });
    await sink.write([rec('w', 'v1', 1), rec('w', 'v0', 0)]);
    expect(results.info().last).toBe(5);
    await sink.write([rec('w', 'v2', 2)]);
    expect(results.info().last).toBe(6);
  });

  test('streamSink - records from a durable source through a sink actor, redelivered after a failure, are stored once', async () => {
    const { rt, clock } = testRuntime({ store: harness.fresh() });
    rt.stream({ name: 'ORDERS', subjects: ['orders.>'] });
    const results = rt.stream({ name: 'RESULTS', subjects: ['results'] });
    const inner = streamSink<unknown>({ stream: results });
    let failures = 1;
    // The first batch is stored, then reported failed: the inputs are retried and written again.
    const sink = {
      name: 'flaky',
      async write(records: readonly SinkRecord<unknown>[]) {
        await inner.write(records);
        if (failures-- > 0) throw new Error('lost acknowledgement');
      },
    };
    rt.spawn(
      sinkActor({
        name: 'to-results',
        subscribe: durable('ORDERS', { consumer: 'results' }),
        sink,
        key: (env) => `order/${(env.data as { id: string }).id}`,
        retry: { maxAttempts: 3, backoff: { initialMs: 0, maxMs: 0 } },
        batch: { maxSize: 10, maxWaitMs: 0 },
      }),
    );
    for (const id of ['o1', 'o2', 'o3']) await rt.bus.publish('orders.eu', { id });
    // Virtual time for the batch wait and the retries' backoff; real time (bounded) for LMDB's commits.
    const consumer = rt.stream('ORDERS').consumer('results');
    for (const until = Date.now() + 5000; consumer.info().acked < 3 && Date.now() < until; ) {
      await clock.advance(10);
      await flush(1);
    }
    expect(consumer.info()).toMatchObject({ acked: 3 });
    // The failed batch's 3 inputs were each written again, alone.
    expect(failures).toBe(-3);
    expect(stored(rt, 'RESULTS').map((r) => r.key)).toEqual(['order/o1', 'order/o2', 'order/o3']);
  });
});

describe('streamSink on LMDB', () => {
  test('streamSink - a replay after a restart (the store reopened) is skipped; the set survives it', async () => {
    const path = `${tempDir()}/store`;
    const first = new LmdbStore({ path });
    const a = testRuntime({ store: first });
    const sink1 = streamSink({ stream: a.rt.stream({ name: 'RESULTS', subjects: ['results'] }) });
    await sink1.write([rec('k1', 1), rec('k2', 2), rec('w', 'v0', 0)]);
    await a.rt.stop();
    await first.close();

    const second: Store = new LmdbStore({ path });
    const b = testRuntime({ store: second });
    try {
      const results = b.rt.stream({ name: 'RESULTS', subjects: ['results'] });
      const sink2 = streamSink({ stream: results });
      await sink2.write([rec('k1', 1), rec('k2', 2), rec('w', 'v0', 0), rec('k3', 3), rec('w', 'v1', 1)]);
      expect(stored(b.rt, 'RESULTS').map((r) => `${r.key}:${String(r.value)}`)).toEqual([
        'k1:1',
        'k2:2',
        'w:v0',
        'k3:3',
        'w:v1',
      ]);
    } finally {
      await b.rt.stop();
      await second.close();
    }
  });
});

describe('streamSink options', () => {
  test('streamSink - refuses what is not a runtime stream and a subject the stream does not capture', () => {
    const { rt } = testRuntime({ store: new MemoryStore() });
    const s = rt.stream({ name: 'S', subjects: ['s.*'] });
    expect(thrown(() => streamSink({ stream: {} as never }))).toBeInstanceOf(OptionsError);
    // Several subjects, or a wildcard: which one to store under must be said.
    expect(thrown(() => streamSink({ stream: s }))).toMatchObject({ option: 'streamSink(S).subject' });
    expect(thrown(() => streamSink({ stream: s, subject: 'other' }))).toBeInstanceOf(OptionsError);
    expect(streamSink({ stream: s, subject: 's.x' }).name).toBe('streamSink(S)');
  });
});

describe('streamSink and byte retention', () => {
  test('streamSink - a batch the store cannot take leaves the stream’s byte count as it was, so retention keeps what fits', async () => {
    const { rt } = testRuntime({ store: new MemoryStore() });
    const results = rt.stream({ name: 'RESULTS', subjects: ['results'], retention: { maxBytes: 10_000 } });
    const sink = streamSink({ stream: results });
    // The second value has no MessagePack form: the batch fails, and nothing of it is stored.
    await expect(sink.write([rec('a', 'x'.repeat(4000)), rec('b', Symbol('no'))])).rejects.toThrow();
    expect(results.info()).toMatchObject({ messages: 0, bytes: 0 });
    // Two records of about 4 KB fit under 10 KB: neither may go.
    await sink.write([rec('c', 'x'.repeat(4000)), rec('d', 'x'.repeat(4000))]);
    await flush();
    expect(stored(rt, 'RESULTS').map((r) => r.key)).toEqual(['c', 'd']);
  });
});
