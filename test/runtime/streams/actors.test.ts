import { join } from 'node:path';
import {
  actor,
  createRuntime,
  DEAD_LETTER_HEADERS,
  durable,
  type Envelope,
  LmdbStore,
  MemoryStore,
  StreamError,
  subject,
  VirtualClock,
} from 'sluice';
import { describe, expect, test } from 'vitest';
import type { StoreOp } from '../../../runtime/store/baseStore.ts';
import { collect, flush, gate, quietLogger, testRuntime, thrown } from '../helpers.ts';
import { lmdbHarness, memoryHarness, tempDir } from '../store/harness.ts';
import { eventually } from './wait.ts';

describe.each([memoryHarness, lmdbHarness])('actors on durable subjects ($name store)', (harness) => {
  test('durable actors - inputs that settle are acknowledged: the position moves past them', async () => {
    const { rt } = testRuntime({ store: harness.fresh() });
    const orders = rt.stream({ name: 'ORDERS', subjects: ['orders.>'] });
    const seen: unknown[] = [];
    rt.spawn(
      actor({
        name: 'billing',
        subscribe: durable('ORDERS', { consumer: 'billing' }),
        handle: (env) => void seen.push(env.data),
      }),
    );
    for (let i = 1; i <= 5; i++) await rt.bus.publish('orders.eu', i);
    await eventually(() => expect(orders.consumer('billing').position).toBe(6));
    expect(seen).toEqual([1, 2, 3, 4, 5]);
  });

  test('durable actors - store-and-forward: what was published before the actor started is delivered to it', async () => {
    const { rt } = testRuntime({ store: harness.fresh() });
    rt.stream({ name: 'ORDERS', subjects: ['orders.>'] });
    for (let i = 1; i <= 3; i++) await rt.bus.publish('orders.eu', i);
    const seen: Envelope[] = [];
    rt.spawn(
      actor({
        name: 'late',
        subscribe: durable('ORDERS', { consumer: 'late' }),
        handle: (env) => void seen.push(env),
      }),
    );
    await eventually(() => expect(seen.map((e) => e.data)).toEqual([1, 2, 3]));
    expect(seen[0]).toMatchObject({ subject: 'orders.eu', headers: { 'sluice-stream-sequence': '1' } });
  });

  test('durable actors - an input the actor fails past its retries is dead-lettered by the actor and counts as settled', async () => {
    const { rt, clock } = testRuntime({ store: harness.fresh() });
    const s = rt.stream({ name: 'ORDERS', subjects: ['orders.>'] });
    const dead = collect(rt.bus, '$DLQ.fails');
    rt.spawn(
      actor({
        name: 'fails',
        subscribe: durable('ORDERS', { consumer: 'fails' }),
        retry: { maxAttempts: 2, backoff: { initialMs: 10, jitter: 0 } },
        handle: () => {
          throw new Error('boom');
        },
      }),
    );
    await rt.bus.publish('orders.eu', 'x');
    await flush();
    await clock.advance(10);
    await eventually(() => expect(s.consumer('fails').position).toBe(2));
    expect(dead).toHaveLength(1);
    expect(dead[0]?.headers[DEAD_LETTER_HEADERS.attempts]).toBe('2');
  });

  test('durable actors - an input whose dead letter is refused fails back to the consumer, which delivers it again', async () => {
    const { rt, clock } = testRuntime({ store: harness.fresh() });
    const s = rt.stream({ name: 'ORDERS', subjects: ['orders.>'] });
    // The actor's dead-letter subject refuses: a `fail` mailbox, full, that nobody drains.
    rt.bus.subscribe('$DLQ.picky', { mailbox: { capacity: 1, overflow: 'fail' } });
    await rt.bus.publish('$DLQ.picky', 'filler');
    const consumerDead = collect(rt.bus, '$DLQ.ORDERS.picky');
    let calls = 0;
    rt.spawn(
      actor({
        name: 'picky',
        subscribe: durable('ORDERS', { consumer: 'picky', backoff: [50], maxDeliver: 3 }),
        retry: { maxAttempts: 1 },
        handle: () => {
          calls++;
          throw new Error('no');
        },
      }),
    );
    await rt.bus.publish('orders.eu', 'bad');
    await eventually(() => expect(calls).toBe(1));
    await flush();
    expect(s.consumer('picky').position).toBe(1);
    await clock.advance(49);
    expect(calls).toBe(1);
    await clock.advance(1);
    await eventually(() => expect(calls).toBe(2));
    await flush();
    await clock.advance(50);
    await eventually(() => expect(calls).toBe(3));
    // The third delivery failed too: maxDeliver reached, the consumer dead-letters it itself.
    await eventually(() => expect(consumerDead).toHaveLength(1));
    expect(consumerDead[0]?.headers[DEAD_LETTER_HEADERS.attempts]).toBe('3');
    expect(consumerDead[0]?.headers[DEAD_LETTER_HEADERS.error]).toMatch(/MailboxFull|full/i);
    await eventually(() => expect(s.consumer('picky').position).toBe(2));
  });

  test('durable actors - backpressure: a slow actor is pushed no more than its mailbox and maxAckPending take', async () => {
    const { rt } = testRuntime({ store: harness.fresh() });
    const s = rt.stream({ name: 'ORDERS', subjects: ['orders.>'] });
    const open = gate();
    let started = 0;
    rt.spawn(
      actor({
        name: 'slow',
        subscribe: durable('ORDERS', { consumer: 'slow', maxAckPending: 100 }),
        mailbox: { capacity: 2 },
        maxInFlight: 1,
        handle: async () => {
          started++;
          await open.promise;
        },
      }),
    );
    await Promise.all(Array.from({ length: 30 }, (_, i) => rt.bus.publish('orders.eu', i)));
    await flush(10);
    // One in the handler, two in the mailbox, one publish waiting for room.
    expect(started).toBe(1);
    expect(s.consumer('slow').lag().ackPending).toBeLessThanOrEqual(4);
    open.open();
    await eventually(() => expect(s.consumer('slow').position).toBe(31));

    const capped = s.consumer('capped', { maxAckPending: 3 });
    const hold = gate();
    rt.spawn(
      actor({
        name: 'capped',
        subscribe: durable('ORDERS', { consumer: 'capped' }),
        concurrency: 10,
        maxInFlight: 10,
        handle: () => hold.promise,
      }),
    );
    await flush(10);
    expect(capped.lag().ackPending).toBe(3);
    hold.open();
    await eventually(() => expect(capped.position).toBe(31));
  });

  test('durable actors - stop drains what was pushed and pushes no more: the rest waits in the stream', async () => {
    const { rt } = testRuntime({ store: harness.fresh() });
    const s = rt.stream({ name: 'ORDERS', subjects: ['orders.>'] });
    const open = gate();
    rt.spawn(
      actor({
        name: 'worker',
        subscribe: durable('ORDERS', { consumer: 'worker', maxAckPending: 5 }),
        concurrency: 5,
        handle: () => open.promise,
      }),
    );
    for (let i = 1; i <= 20; i++) await rt.bus.publish('orders.eu', i);
    await flush(5);
    expect(s.consumer('worker').lag().ackPending).toBe(5);
    const stopping = rt.stop();
    open.open();
    const report = await stopping;
    expect(report.drained).toBe(true);
    expect(s.consumer('worker').position).toBe(6);
  });

  test('durable actors - actors naming one consumer share it: each message handled once across them', async () => {
    const { rt } = testRuntime({ store: harness.fresh() });
    const s = rt.stream({ name: 'ORDERS', subjects: ['orders.>'] });
    const seen: [string, unknown][] = [];
    for (const name of ['w1', 'w2']) {
      rt.spawn(
        actor({
          name,
          subscribe: durable('ORDERS', { consumer: 'workers' }),
          handle: async (env) => {
            seen.push([name, env.data]);
            await Promise.resolve();
          },
        }),
      );
    }
    for (let i = 1; i <= 20; i++) await rt.bus.publish('orders.eu', i);
    await eventually(() => expect(s.consumer('workers').position).toBe(21));
    expect(seen.map(([, d]) => d).sort((a, b) => (a as number) - (b as number))).toEqual(
      Array.from({ length: 20 }, (_, i) => i + 1),
    );
    expect(new Set(seen.map(([n]) => n)).size).toBe(2);
  });

  test('durable actors - a typed subject as filter checks inputs with its schema', async () => {
    const { rt } = testRuntime({ store: harness.fresh() });
    const s = rt.stream({ name: 'ORDERS', subjects: ['orders.>'] });
    const eu = subject<number>('orders.eu', {
      schema: {
        '~standard': {
          version: 1,
          vendor: 'test',
          validate: (v) => (typeof v === 'number' ? { value: v } : { issues: [{ message: 'not a number' }] }),
        },
      },
    });
    const dead = collect(rt.bus, '$DLQ.typed');
    const seen: number[] = [];
    rt.spawn(
      actor({
        name: 'typed',
        subscribe: durable('ORDERS', { consumer: 'typed', filter: eu }),
        handle: (env) => void seen.push(env.data),
      }),
    );
    await rt.bus.publish('orders.eu', 1);
    await rt.bus.publish('orders.us', 2);
    await rt.bus.publish('orders.eu', 'three');
    await eventually(() => expect(s.consumer('typed').position).toBe(4));
    expect(seen).toEqual([1]);
    expect(dead.map((e) => e.data)).toEqual(['three']);
  });
});

/** A memory store whose commits can be held back, as a slow fsync would. */
class GatedStore extends MemoryStore {
  gated = false;
  #waiting: (() => void)[] = [];
  protected override async commitOps(ops: StoreOp[]): Promise<void> {
    if (this.gated) await new Promise<void>((resolve) => this.#waiting.push(resolve));
    return super.commitOps(ops);
  }
  release(): void {
    this.gated = false;
    for (const go of this.#waiting.splice(0)) go();
  }
}

describe('durable actors - outputs to a stream', () => {
  test('durable actors - an input whose output goes to a stream is acknowledged only once that append is committed', async () => {
    const store = new GatedStore();
    const { rt } = testRuntime({ store });
    const orders = rt.stream({ name: 'ORDERS', subjects: ['orders.>'] });
    const totals = rt.stream({ name: 'TOTALS', subjects: ['totals.>'] });
    rt.spawn(
      actor({
        name: 'pricing',
        subscribe: durable('ORDERS', { consumer: 'pricing' }),
        output: 'totals.eu',
        handle: (env) => (env.data as number) * 2,
      }),
    );
    await rt.bus.publish('orders.eu', 21);
    store.gated = true;
    await flush(5);
    expect(totals.info().last).toBe(0);
    expect(orders.consumer('pricing').position).toBe(1);
    store.release();
    await eventually(() => expect(orders.consumer('pricing').position).toBe(2));
    expect(totals.get(1)?.data).toBe(42);
  });
});

describe('durable actors - refusals', () => {
  test('durable actors - spawning on an unknown stream, or without a store, is a StreamError', () => {
    const { rt } = testRuntime({ store: new MemoryStore() });
    const a = actor({ name: 'a', subscribe: durable('NOPE', { consumer: 'c' }), handle: () => {} });
    expect(thrown(() => rt.spawn(a))).toBeInstanceOf(StreamError);
    expect(thrown(() => testRuntime().rt.spawn(a))).toBeInstanceOf(StreamError);
  });
});

describe('durable subjects across a restart (LMDB)', () => {
  test('restart - a consumer resumes after what was acked; what was not acked is delivered again', async () => {
    const path = join(tempDir(), 'store');
    const config = { name: 'ORDERS', subjects: ['orders.>'] } as const;
    {
      const store = new LmdbStore({ path });
      const rt = createRuntime({ store, clock: new VirtualClock(1_000_000), logger: quietLogger() });
      rt.stream(config);
      for (let i = 1; i <= 5; i++) await rt.bus.publish('orders.eu', i);
      const c = rt.stream('ORDERS').consumer('billing');
      const got = c.fetch(4);
      got[0]?.ack();
      got[2]?.ack();
      await rt.stop();
      await store.close();
    }
    const store = new LmdbStore({ path });
    const rt = createRuntime({ store, clock: new VirtualClock(2_000_000), logger: quietLogger(), streams: [config] });
    await rt.bus.publish('orders.eu', 6);
    const c = rt.stream('ORDERS').consumer('billing');
    expect(c.position).toBe(2);
    expect(c.fetch(10).map((m) => m.seq)).toEqual([2, 4, 5, 6]);
    await rt.stop();
    await store.close();
  });

  test('restart - an actor stopped with inputs unsettled gets them again after the restart, and only those', async () => {
    const path = join(tempDir(), 'store');
    const config = { name: 'ORDERS', subjects: ['orders.>'] } as const;
    const seenBefore: unknown[] = [];
    {
      const store = new LmdbStore({ path });
      const clock = new VirtualClock(1_000_000);
      const rt = createRuntime({ store, clock, logger: quietLogger(), streams: [config] });
      const never = gate();
      rt.spawn(
        actor({
          name: 'billing',
          subscribe: durable('ORDERS', { consumer: 'billing' }),
          handle: async (env) => {
            seenBefore.push(env.data);
            if (env.data === 3) await never.promise;
          },
        }),
      );
      for (let i = 1; i <= 5; i++) await rt.bus.publish('orders.eu', i);
      await eventually(() => expect(seenBefore).toEqual([1, 2, 3]));
      const stopping = rt.stop({ deadlineMs: 0 });
      await clock.advance(0);
      await stopping;
      await store.close();
    }
    const store = new LmdbStore({ path });
    const rt = createRuntime({ store, clock: new VirtualClock(2_000_000), logger: quietLogger(), streams: [config] });
    const seen: unknown[] = [];
    rt.spawn(
      actor({
        name: 'billing',
        subscribe: durable('ORDERS', { consumer: 'billing' }),
        handle: (env) => void seen.push(env.data),
      }),
    );
    await eventually(() => expect(rt.stream('ORDERS').consumer('billing').position).toBe(6));
    expect(seen).toEqual([3, 4, 5]);
    await rt.stop();
    await store.close();
  });
});
