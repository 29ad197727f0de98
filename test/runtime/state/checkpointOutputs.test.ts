import { actor, DEAD_LETTER_HEADERS, durable, type Envelope, MemoryStore, type Store } from 'sluice';
import { describe, expect, test } from 'vitest';
import { collect, flush, gate, testRuntime } from '../helpers.ts';
import { eventually } from '../streams/wait.ts';

interface Order {
  readonly key: string;
  readonly n: number;
  readonly size?: number;
  readonly header?: string;
}

function streamed(store: Store, name: string): unknown[] {
  return store.read(name, 1).map((e) => (e.value as { d: unknown }).d);
}

/**
 * An output of a checkpointed actor to a subject a stream captures goes into the checkpoint's
 * batch instead of through the bus. It still reaches plain subscribers (after the commit), and it
 * passes the checks a publish makes.
 */
describe('checkpointed outputs', () => {
  test('outputs - plain subscribers and queue groups of a stream subject get checkpointed outputs once their checkpoint commits, never before', async () => {
    const store = new MemoryStore();
    const { rt } = testRuntime({ store });
    rt.stream({ name: 'ORDERS', subjects: ['orders.>'] });
    rt.stream({ name: 'TOTALS', subjects: ['totals.>'] });
    const plain = collect<{ n: number }>(rt.bus, 'totals.>');
    const group: [string, number][] = [];
    for (const member of ['a', 'b']) {
      rt.bus.subscribe<{ n: number }>('totals.all', {
        queue: 'q',
        callback: (env) => void group.push([member, env.data.n]),
      });
    }
    rt.spawn(
      actor<Order, { n: number }>({
        name: 'counter',
        subscribe: durable<Order>('ORDERS', { consumer: 'counter' }),
        output: 'totals.all',
        checkpoint: { everyInputs: 2 },
        handle: (env) => ({ n: env.data.n }),
      }),
    );
    await rt.bus.publish('orders.x', { key: 'a', n: 1 });
    await eventually(() => expect(rt.actor('counter')?.checkpoint?.held).toBe(1));
    await flush();
    // Staged: neither in the stream nor with the subscribers while a crash could still take it back.
    expect(streamed(store, 'TOTALS')).toEqual([]);
    expect(plain).toEqual([]);
    expect(group).toEqual([]);
    await rt.bus.publish('orders.x', { key: 'a', n: 2 });
    await eventually(() => expect(plain.map((e) => e.data.n)).toEqual([1, 2]));
    expect(streamed(store, 'TOTALS')).toEqual([{ n: 1 }, { n: 2 }]);
    // As a publish: each output to one member of the group, the stream not delivered to twice.
    expect(group.map(([, n]) => n)).toEqual([1, 2]);
    expect(new Set(group.map(([m]) => m)).size).toBe(2);
    const first = plain[0] as Envelope<{ n: number }>;
    expect(first.subject).toBe('totals.all');
    expect(first.lineage).toBeUndefined();
    expect(store.bounds('TOTALS').last).toBe(2);
  });

  test('outputs - a slow plain subscriber holds the actor back as it holds a publisher: the next checkpoint waits until its mailbox accepted the last one’s outputs', async () => {
    const store = new MemoryStore();
    const { rt } = testRuntime({ store });
    rt.stream({ name: 'ORDERS', subjects: ['orders.>'] });
    rt.stream({ name: 'TOTALS', subjects: ['totals.>'] });
    const slow = gate();
    const got: number[] = [];
    rt.bus.subscribe<{ n: number }>('totals.all', {
      mailbox: { capacity: 1, overflow: 'block' },
      callback: async (env) => {
        got.push(env.data.n);
        await slow.promise;
      },
    });
    const ref = rt.spawn(
      actor<Order, { n: number }>({
        name: 'counter',
        subscribe: durable<Order>('ORDERS', { consumer: 'counter' }),
        output: 'totals.all',
        checkpoint: { everyInputs: 1 },
        handle: (env) => ({ n: env.data.n }),
      }),
    );
    for (let n = 1; n <= 5; n++) await rt.bus.publish('orders.x', { key: 'a', n });
    // 1 in the callback, 2 in the mailbox, 3 waiting for room: the checkpoint of 4 waits for it.
    await eventually(() => expect(store.bounds('TOTALS').last).toBe(3));
    await eventually(() => expect(ref.checkpoint?.held).toBe(1));
    await flush(5);
    expect(store.bounds('TOTALS').last).toBe(3);
    expect(ref.checkpoint?.held).toBe(1);
    expect(got).toEqual([1]);
    slow.open();
    await eventually(() => expect(got).toEqual([1, 2, 3, 4, 5]));
    expect(streamed(store, 'TOTALS')).toEqual([1, 2, 3, 4, 5].map((n) => ({ n })));
  });

  test('outputs - an output over maxPayloadBytes, or with a header a publish refuses, is dead-lettered with the reason and not appended', async () => {
    const store = new MemoryStore();
    const { rt } = testRuntime({ store, bus: { maxPayloadBytes: 1024 } });
    rt.stream({ name: 'ORDERS', subjects: ['orders.>'] });
    rt.stream({ name: 'TOTALS', subjects: ['totals.>'] });
    const dead = collect<Order>(rt.bus, '$DLQ.shaper');
    const seen = collect(rt.bus, 'totals.>');
    rt.spawn(
      actor<Order, never>({
        name: 'shaper',
        subscribe: durable<Order>('ORDERS', { consumer: 'shaper' }),
        checkpoint: { everyInputs: 1 },
        retry: { maxAttempts: 1 },
        handle: async (env, ctx) => {
          const headers = env.data.header === undefined ? undefined : { [env.data.header]: 'x' };
          // A string is measured against maxPayloadBytes as it is (objects are, with `measure: 'encoded'`).
          const data = env.data.size === undefined ? { n: env.data.n } : 'p'.repeat(env.data.size);
          await ctx.publish('totals.out', data, { headers });
        },
      }),
    );
    await rt.bus.publish('orders.x', { key: 'a', n: 1 });
    await rt.bus.publish('orders.x', { key: 'a', n: 2, size: 5000 });
    await rt.bus.publish('orders.x', { key: 'a', n: 3, header: 'bad header' });
    await rt.bus.publish('orders.x', { key: 'a', n: 4 });
    await eventually(() => expect(rt.stream('ORDERS').consumer('shaper').info().acked).toBe(4));
    await eventually(() => expect(streamed(store, 'TOTALS')).toHaveLength(2));
    expect(streamed(store, 'TOTALS').map((d) => (d as { n: number }).n)).toEqual([1, 4]);
    expect(seen.map((e) => (e.data as { n: number }).n)).toEqual([1, 4]);
    expect(dead.map((e) => e.data.n)).toEqual([2, 3]);
    expect(dead[0]?.headers[DEAD_LETTER_HEADERS.code]).toBe('SLUICE_ERR_MAX_PAYLOAD');
    expect(dead[0]?.headers[DEAD_LETTER_HEADERS.error]).toMatch(/totals\.out.*exceeds the limit of 1024 bytes/);
    expect(dead[1]?.headers[DEAD_LETTER_HEADERS.error]).toMatch(/header name/);
  });

  test('outputs - an output the store cannot encode fails its input (dead-lettered), as a publish to the stream does, instead of failing the checkpoint', async () => {
    const store = new MemoryStore();
    const { rt } = testRuntime({ store });
    rt.stream({ name: 'ORDERS', subjects: ['orders.>'] });
    rt.stream({ name: 'TOTALS', subjects: ['totals.>'] });
    const dead = collect<Order>(rt.bus, '$DLQ.encoder');
    rt.spawn(
      actor<Order, { n: number; tag?: symbol }>({
        name: 'encoder',
        subscribe: durable<Order>('ORDERS', { consumer: 'encoder' }),
        output: 'totals.all',
        checkpoint: { everyInputs: 1 },
        retry: { maxAttempts: 1 },
        // MessagePack has no symbol: appended through a publish, this output would be refused.
        handle: (env) => (env.data.n === 2 ? { n: 2, tag: Symbol('x') } : { n: env.data.n }),
      }),
    );
    for (let n = 1; n <= 3; n++) await rt.bus.publish('orders.x', { key: 'a', n });
    await eventually(() => expect(rt.stream('ORDERS').consumer('encoder').info().acked).toBe(3));
    await eventually(() => expect(store.getKey('sluice.consumers', 'ORDERS/encoder')).toEqual({ floor: 4 }));
    expect(rt.actor('encoder')?.checkpoint?.failures).toBe(0);
    expect(streamed(store, 'TOTALS')).toEqual([{ n: 1 }, { n: 3 }]);
    expect(dead.map((e) => e.data.n)).toEqual([2]);
  });

  test('outputs - a pipeline output the actor may not publish fails its input (dead-lettered), instead of settling it as used', async () => {
    const store = new MemoryStore();
    const { rt } = testRuntime({ store });
    rt.stream({ name: 'ORDERS', subjects: ['orders.>'] });
    rt.stream({ name: 'TOTALS', subjects: ['totals.>'] });
    const dead = collect<Order>(rt.bus, '$DLQ.limited');
    rt.spawn(
      actor<Order, Order>({
        name: 'limited',
        subscribe: durable<Order>('ORDERS', { consumer: 'limited', filter: 'orders.>' }),
        permissions: { publish: { allow: ['totals.ok'] }, subscribe: { allow: ['orders.>'] } },
        checkpoint: { everyInputs: 1 },
        retry: { maxAttempts: 1 },
        pipeline: (input$) => input$,
        output: 'totals.denied',
      }),
    );
    await rt.bus.publish('orders.x', { key: 'a', n: 1 });
    await eventually(() => expect(dead.map((e) => e.data.n)).toEqual([1]));
    expect(dead[0]?.headers[DEAD_LETTER_HEADERS.code]).toBe('SLUICE_ERR_PERMISSION');
    expect(streamed(store, 'TOTALS')).toEqual([]);
  });
});
