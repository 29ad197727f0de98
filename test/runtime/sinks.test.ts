import {
  ConnectorError,
  DEAD_LETTER_HEADERS,
  type Envelope,
  IDEMPOTENCY_KEY_HEADER,
  type Sink,
  type SinkRecord,
  sinkActor,
} from 'sluice';
import { testActor } from 'sluice/testing';
import { describe, expect, test } from 'vitest';
import { messageIdOf } from '../../runtime/sinks/sink.ts';
import { collect, flush, testRuntime } from './helpers.ts';

/** A sink in memory whose writes can be held open, or made to fail for some keys. */
class MemorySink<T> implements Sink<T> {
  readonly name = 'memory';
  readonly rows = new Map<string, { revision: number | undefined; value: T }>();
  readonly writes: string[][] = [];
  gate: Promise<void> | undefined;
  failKeys = new Set<string>();
  async write(records: readonly SinkRecord<T>[]): Promise<void> {
    this.writes.push(records.map((r) => r.key));
    if (this.gate !== undefined) await this.gate;
    const bad = records.find((r) => this.failKeys.has(r.key));
    if (bad !== undefined) throw new Error(`refused '${bad.key}'`);
    for (const r of records) {
      const held = this.rows.get(r.key);
      if (held === undefined || (r.revision ?? -1) >= (held.revision ?? -1))
        this.rows.set(r.key, { revision: r.revision, value: r.value });
    }
  }
}

function gate(): { promise: Promise<void>; open: () => void } {
  let open!: () => void;
  const promise = new Promise<void>((resolve) => {
    open = resolve;
  });
  return { promise, open };
}

const byId = (env: Envelope<{ id: string }>) => env.data.id;

type TestRuntime = ReturnType<typeof testRuntime>;

/** Sink actor 'w' on 'in', batches of `maxSize`, retrying every 10 ms up to `maxAttempts` attempts. */
function retryingSinkActor(rt: TestRuntime['rt'], sink: Sink<{ id: string }>, maxSize: number, maxAttempts: number) {
  return rt.spawn(
    sinkActor({
      name: 'w',
      subscribe: 'in',
      sink,
      key: byId,
      batch: { maxSize, maxWaitMs: 5 },
      retry: { maxAttempts, backoff: { initialMs: 10, maxMs: 10, jitter: 0 } },
    }),
  );
}

/** Runs the test clock `steps` times 10 ms, letting what each step starts run. */
async function runRetries(clock: TestRuntime['clock'], steps: number): Promise<void> {
  for (let i = 0; i < steps; i++) {
    await clock.advance(10);
    await flush();
  }
}

describe('sinkActor', () => {
  test('writes batches of maxSize at once, and the rest after maxWaitMs on the clock', async () => {
    const { rt, clock } = testRuntime();
    const sink = new MemorySink<{ id: string }>();
    const ref = rt.spawn(
      sinkActor({ name: 'w', subscribe: 'in', sink, key: byId, batch: { maxSize: 4, maxWaitMs: 50 } }),
    );
    for (let i = 0; i < 10; i++) await rt.bus.publish('in', { id: `k${i}` });
    await flush();
    expect(sink.writes).toEqual([
      ['k0', 'k1', 'k2', 'k3'],
      ['k4', 'k5', 'k6', 'k7'],
    ]);
    expect(ref.counters.acked).toBe(8);
    await clock.advance(49);
    await flush();
    expect(sink.writes).toHaveLength(2);
    await clock.advance(1);
    await flush();
    expect(sink.writes[2]).toEqual(['k8', 'k9']);
    expect(ref.counters).toMatchObject({ acked: 10, deadLettered: 0 });
    expect(sink.rows.size).toBe(10);
  });

  test('inputs are acknowledged only after the sink committed their batch, and stay in flight until then', async () => {
    const { rt } = testRuntime();
    const sink = new MemorySink<{ id: string }>();
    const held = gate();
    sink.gate = held.promise;
    const ref = rt.spawn(sinkActor({ name: 'w', subscribe: 'in', sink, key: byId, batch: { maxSize: 3 } }));
    for (let i = 0; i < 3; i++) await rt.bus.publish('in', { id: `k${i}` });
    await flush();
    expect(sink.writes).toHaveLength(1);
    expect(ref.counters.acked).toBe(0);
    expect(ref.inFlight).toBe(3);
    held.open();
    await flush();
    expect(ref.counters.acked).toBe(3);
    expect(ref.inFlight).toBe(0);
  });

  test('maxInFlight bounds the records waiting and being written: a slow sink holds back the mailbox', async () => {
    const { rt } = testRuntime();
    const sink = new MemorySink<{ id: string }>();
    const held = gate();
    sink.gate = held.promise;
    const ref = rt.spawn(
      sinkActor({ name: 'w', subscribe: 'in', sink, key: byId, batch: { maxSize: 5 }, maxInFlight: 10 }),
    );
    for (let i = 0; i < 30; i++) void rt.bus.publish('in', { id: `k${i}` });
    await flush();
    // One write at a time: the first batch is being written, the second one waits for it.
    expect(sink.writes).toEqual([['k0', 'k1', 'k2', 'k3', 'k4']]);
    expect(ref.inFlight).toBe(10);
    expect(ref.depth).toBe(20);
    held.open();
    await rt.idle();
    expect(ref.counters.acked).toBe(30);
    expect(sink.writes.every((w) => w.length <= 5)).toBe(true);
  });

  test('a sink taking two writes at once gets the next batch while the first is written; inputs settle in order; three batches in flight by default', async () => {
    const { rt } = testRuntime();
    const gates: { open: () => void }[] = [];
    const writes: string[][] = [];
    // As the contract says: each write ends after the ones before it.
    let last = Promise.resolve();
    const sink: Sink<{ id: string }> = {
      name: 'two-at-once',
      writesAtOnce: 2,
      write(records) {
        writes.push(records.map((r) => r.key));
        const g = gate();
        gates.push(g);
        last = Promise.all([last, g.promise]).then(() => undefined);
        return last;
      },
    };
    const ref = rt.spawn(sinkActor({ name: 'w', subscribe: 'in', sink, key: byId, batch: { maxSize: 5 } }));
    for (let i = 0; i < 30; i++) void rt.bus.publish('in', { id: `k${i}` });
    await flush();
    expect(writes).toEqual([
      ['k0', 'k1', 'k2', 'k3', 'k4'],
      ['k5', 'k6', 'k7', 'k8', 'k9'],
    ]);
    // Two batches being written and the third filling: 3 × maxSize.
    expect(ref.inFlight).toBe(15);
    // The second write's own work ends first: it still ends after the first.
    gates[1]?.open();
    await flush();
    expect(ref.counters.acked).toBe(0);
    expect(writes).toHaveLength(2);
    gates[0]?.open();
    await flush();
    expect(ref.counters.acked).toBe(10);
    expect(writes).toHaveLength(4);
    for (let i = 2; i < 6; i++) {
      gates[i]?.open();
      await flush();
    }
    await rt.idle();
    expect(ref.counters.acked).toBe(30);
    expect(writes.flat()).toEqual(Array.from({ length: 30 }, (_, i) => `k${i}`));
  });

  test('a failed write fails its batch; retried one by one, the good inputs commit and the bad one is dead-lettered', async () => {
    const { rt, clock } = testRuntime();
    const dlq = collect<{ id: string }>(rt.bus, '$DLQ.w');
    const sink = new MemorySink<{ id: string }>();
    sink.failKeys.add('k2');
    const ref = rt.spawn(
      sinkActor({
        name: 'w',
        subscribe: 'in',
        sink,
        key: byId,
        batch: { maxSize: 4 },
        retry: { maxAttempts: 3, backoff: { initialMs: 10, maxMs: 10, jitter: 0 } },
      }),
    );
    for (let i = 0; i < 4; i++) await rt.bus.publish('in', { id: `k${i}` });
    await flush();
    expect(sink.rows.size).toBe(0);
    expect(ref.counters.acked).toBe(0);
    // Retries come after 10 ms; one that finds no batchmates waits maxWaitMs (100) for them.
    for (let i = 0; i < 25; i++) {
      await clock.advance(10);
      await flush();
    }
    expect([...sink.rows.keys()].sort()).toEqual(['k0', 'k1', 'k3']);
    expect(dlq.map((e) => e.data.id)).toEqual(['k2']);
    expect(dlq[0]?.headers[DEAD_LETTER_HEADERS.attempts]).toBe('3');
    expect(dlq[0]?.headers[DEAD_LETTER_HEADERS.error]).toContain("refused 'k2'");
    expect(ref.counters).toMatchObject({ acked: 3, deadLettered: 1 });
    // After the failed batch of 4, each retry went alone.
    expect(sink.writes.slice(1).every((w) => w.length === 1)).toBe(true);
  });

  test('a record the sink refuses as not retryable: its batch is retried one input at a time, the innocent ones are written, and it is dead-lettered at its first lone failure', async () => {
    const { rt, clock } = testRuntime();
    const dlq = collect<{ id: string }>(rt.bus, '$DLQ.w');
    const writes: string[][] = [];
    const sink: Sink<{ id: string }> = {
      name: 'strict',
      write: async (records) => {
        writes.push(records.map((r) => r.key));
        if (records.some((r) => r.key === 'k1'))
          throw new ConnectorError('strict', "record 'k1' breaks the sink's rule", { retryable: false });
      },
    };
    const ref = retryingSinkActor(rt, sink, 3, 5);
    for (let i = 0; i < 3; i++) await rt.bus.publish('in', { id: `k${i}` });
    await flush();
    await runRetries(clock, 20);
    expect(writes[0]).toEqual(['k0', 'k1', 'k2']);
    // Each input once more, alone; 'k1' then not again (a retry cannot help it), not 5 attempts.
    expect(writes.slice(1).sort()).toEqual([['k0'], ['k1'], ['k2']]);
    expect(ref.counters).toMatchObject({ acked: 2, retried: 3, deadLettered: 1 });
    expect(dlq.map((e) => e.data.id)).toEqual(['k1']);
    expect(dlq[0]?.headers[DEAD_LETTER_HEADERS.error]).toContain("breaks the sink's rule");
  });

  test('a batch failing with a retryable ConnectorError (the broker, not a record) is retried whole', async () => {
    const { rt, clock } = testRuntime();
    const writes: number[] = [];
    let fail = true;
    const sink: Sink<{ id: string }> = {
      name: 'flaky',
      write: async (records) => {
        writes.push(records.length);
        if (fail) {
          fail = false;
          throw new ConnectorError('flaky', 'lost the broker', { retryable: true });
        }
      },
    };
    const ref = retryingSinkActor(rt, sink, 4, 3);
    for (let i = 0; i < 4; i++) await rt.bus.publish('in', { id: `k${i}` });
    await flush();
    await runRetries(clock, 5);
    expect(ref.counters.acked).toBe(4);
    // The retry went as one batch of 4, not four batches of 1.
    expect(writes).toEqual([4, 4]);
  });

  test('an input without an idempotency key is dead-lettered, never written under a made-up key', async () => {
    const { rt, clock } = testRuntime();
    const dlq = collect(rt.bus, '$DLQ.w');
    const sink = new MemorySink<number>();
    const ref = rt.spawn(sinkActor<number>({ name: 'w', subscribe: 'in', sink, batch: { maxSize: 10, maxWaitMs: 5 } }));
    await rt.bus.publish('in', 1, { headers: { [IDEMPOTENCY_KEY_HEADER]: 'orders/1' } });
    await rt.bus.publish('in', 2);
    await clock.advance(5);
    await flush();
    expect([...sink.rows.entries()]).toEqual([['orders/1', { revision: undefined, value: 1 }]]);
    expect(dlq.map((e) => e.data)).toEqual([2]);
    expect(dlq[0]?.headers[DEAD_LETTER_HEADERS.code]).toBe('SLUICE_ERR_OPTIONS');
    expect(dlq[0]?.headers[DEAD_LETTER_HEADERS.error]).toContain('has no idempotency key');
    expect(ref.counters).toMatchObject({ acked: 1, deadLettered: 1 });
  });

  test('window results are written under their idempotencyKey and revision; an older revision never replaces a newer one', async () => {
    const { rt, clock } = testRuntime();
    const seen: SinkRecord<unknown>[] = [];
    const sink: Sink<unknown> = {
      name: 'seen',
      write: async (records) => void seen.push(...records),
    };
    rt.spawn(sinkActor({ name: 'w', subscribe: 'in', sink, batch: { maxSize: 10, maxWaitMs: 5 } }));
    const result = (revision: number, value: number) => ({
      idempotencyKey: `counts/eu/0-60000`,
      revision,
      isUpdate: revision > 0,
      value,
    });
    await rt.bus.publish('in', result(0, 3));
    await rt.bus.publish('in', result(1, 5));
    await clock.advance(5);
    await flush();
    expect(seen.map((r) => [r.key, r.revision])).toEqual([
      ['counts/eu/0-60000', 0],
      ['counts/eu/0-60000', 1],
    ]);
    expect(seen[1]?.value).toMatchObject({ value: 5 });
  });

  test('a shutdown drains the batch still waiting (written after maxWaitMs), acknowledged before stop() returns', async () => {
    const { rt, clock } = testRuntime();
    const sink = new MemorySink<{ id: string }>();
    const ref = rt.spawn(
      sinkActor({ name: 'w', subscribe: 'in', sink, key: byId, batch: { maxSize: 10, maxWaitMs: 500 } }),
    );
    for (let i = 0; i < 3; i++) await rt.bus.publish('in', { id: `k${i}` });
    await flush();
    expect(sink.writes).toEqual([]);
    const stopping = rt.stop({ deadlineMs: 1_000 });
    await clock.advance(500);
    const report = await stopping;
    expect(report.drained).toBe(true);
    expect(sink.writes).toEqual([['k0', 'k1', 'k2']]);
    expect(ref.counters.acked).toBe(3);
  });

  test('options are checked at declaration', () => {
    const sink = new MemorySink<number>();
    expect(() =>
      sinkActor({ name: 'w', subscribe: 'in', sink: { name: 'm', write: sink.write, writesAtOnce: 0 } }),
    ).toThrow("invalid option 'sinkActor 'w'.sink.writesAtOnce': must be an integer >= 1");
    expect(() => sinkActor({ name: 'w', subscribe: 'in', sink, batch: { maxSize: 100 }, maxInFlight: 10 })).toThrow(
      "invalid option 'sinkActor 'w'.maxInFlight': must be an integer >= batch.maxSize (100)",
    );
    expect(() => sinkActor({ name: 'w', subscribe: 'in', sink, batch: { maxSize: 0 } })).toThrow('batch.maxSize');
    expect(() => sinkActor({ name: 'w', subscribe: 'in', sink: {} as Sink<number> })).toThrow('must be a Sink');
    expect(() =>
      sinkActor({ name: 'w', subscribe: 'in', sink, batchSize: 3 } as unknown as Parameters<typeof sinkActor>[0]),
    ).toThrow('batchSize');
  });
});

describe('sinkActor across a pipeline restart', () => {
  test('a batch being written when the pipeline restarts is written again; every input is acked once, none lost', async () => {
    const sink = new MemorySink<{ id: string }>();
    const held = gate();
    sink.gate = held.promise;
    const a = testActor(
      sinkActor({
        name: 'w',
        subscribe: 'in',
        sink,
        key: byId,
        batch: { maxSize: 3, maxWaitMs: 10 },
        retry: { maxAttempts: 5, backoff: { initialMs: 10, maxMs: 10, jitter: 0 } },
      }),
    );
    for (let i = 0; i < 3; i++) await a.send({ id: `k${i}` });
    expect(sink.writes).toHaveLength(1);
    await a.restart();
    sink.gate = undefined;
    held.open();
    for (let i = 0; i < 10; i++) await a.advance(10);
    expect([...sink.rows.keys()].sort()).toEqual(['k0', 'k1', 'k2']);
    expect(a.deadLetters).toEqual([]);
    expect(a.ref.counters).toMatchObject({ acked: 3, deadLettered: 0, settlementErrors: 0 });
    expect(a.ref.inFlight).toBe(0);
  });
});

describe('broker message ids of sink records', () => {
  test('message ids - one per result: <key>, <key>#<revision>, and a key with a # and no revision ends in one more', () => {
    const id = (key: string, revision?: number) => messageIdOf({ key, value: null, revision, envelope: undefined });
    expect(id('order/1')).toBe('order/1');
    expect(id('order/1', 2)).toBe('order/1#2');
    expect(id('order#1')).toBe('order#1#');
    // Every pair of these is a different result, and no two share an id.
    const ids = [id('a#1'), id('a', 1), id('a'), id('a#'), id('a#', 1), id('a##'), id('a#1', 0)];
    expect(new Set(ids).size).toBe(ids.length);
  });
});
