import { type Envelope, MemoryStore, type Store, StreamError } from 'sluice';
import { describe, expect, test } from 'vitest';
import type { StoreOp } from '../../../runtime/store/baseStore.ts';
import { flush, testRuntime, thrown } from '../helpers.ts';
import { lmdbHarness, memoryHarness } from '../store/harness.ts';
import { eventually } from './wait.ts';

/** A memory store whose commits wait for the test to let them through: a slow fsync. */
class GatedStore extends MemoryStore {
  #open: (() => void)[] = [];
  held = 0;
  protected override async commitOps(ops: StoreOp[]): Promise<void> {
    this.held++;
    await new Promise<void>((resolve) => this.#open.push(resolve));
    return super.commitOps(ops);
  }
  release(): void {
    for (const open of this.#open.splice(0)) open();
  }
}

describe.each([memoryHarness, lmdbHarness])('streams ($name store)', (harness) => {
  test('streams - each captured message gets the next sequence, its append time as event time, and its envelope back', async () => {
    const store = harness.fresh();
    const { rt, clock } = testRuntime({ store });
    const orders = rt.stream({ name: 'ORDERS', subjects: ['orders.>'] });
    await rt.bus.publish('orders.eu', { id: 1 }, { key: 'k1', headers: { trace: 'a' } });
    await clock.advance(5);
    await rt.bus.publish('orders.us', { id: 2 }, { eventTime: 42 });
    await rt.bus.publish('other', { id: 3 });
    expect(orders.info()).toMatchObject({ first: 1, last: 2, messages: 2 });
    const first = orders.get(1) as Envelope;
    expect(first).toMatchObject({ subject: 'orders.eu', data: { id: 1 }, key: 'k1', eventTime: 1_000_000 });
    expect(first.headers).toEqual({ trace: 'a', 'sluice-stream': 'ORDERS', 'sluice-stream-sequence': '1' });
    expect(orders.get(2)).toMatchObject({ subject: 'orders.us', eventTime: 42 });
    expect(store.read('ORDERS', 1).map((e) => (e.value as { t: number }).t)).toEqual([1_000_000, 1_000_005]);
  });

  test('streams - retention by count removes the oldest on append', async () => {
    const { rt } = testRuntime({ store: harness.fresh() });
    const s = rt.stream({ name: 'S', subjects: ['s.*'], retention: { maxMessages: 3 } });
    for (let i = 1; i <= 5; i++) await rt.bus.publish('s.x', i);
    await eventually(() => expect(s.info()).toMatchObject({ first: 3, last: 5, messages: 3 }));
    expect(s.get(2)).toBeUndefined();
    expect(s.get(3)?.data).toBe(3);
  });

  test('streams - retention by bytes keeps the stored bytes under the limit, newest kept', async () => {
    const { rt } = testRuntime({ store: harness.fresh() });
    const s = rt.stream({ name: 'S', subjects: ['s'], retention: { maxBytes: 400 } });
    for (let i = 1; i <= 10; i++) await rt.bus.publish('s', 'x'.repeat(100));
    await eventually(() => expect(s.info().bytes).toBeLessThanOrEqual(400));
    await eventually(() => expect(s.info().messages).toBeLessThan(4));
    const info = s.info();
    expect(info.bytes).toBeLessThanOrEqual(400);
    expect(info.messages).toBeGreaterThanOrEqual(2);
    expect(info.messages).toBeLessThan(4);
    expect(info.last).toBe(10);
    expect(info.first).toBe(10 - info.messages + 1);
  });

  test('streams - retention by age on the runtime clock removes what is older than maxAgeMs', async () => {
    const { rt, clock } = testRuntime({ store: harness.fresh() });
    const s = rt.stream({ name: 'S', subjects: ['s'], retention: { maxAgeMs: 1000 } });
    await rt.bus.publish('s', 'old');
    await clock.advance(600);
    await rt.bus.publish('s', 'young');
    await clock.advance(500);
    await eventually(() => expect(s.info()).toMatchObject({ first: 2, last: 2, messages: 1 }));
    await clock.advance(1000);
    await eventually(() => expect(s.info()).toMatchObject({ first: 3, last: 2, messages: 0 }));
  });
});

describe('streams - publishing', () => {
  test('streams - a publish to a stream subject resolves only once the append is committed', async () => {
    const store = new GatedStore();
    const { rt } = testRuntime({ store });
    const s = rt.stream({ name: 'S', subjects: ['s'] });
    let resolved = false;
    const publishing = rt.bus.publish('s', 1).then(() => {
      resolved = true;
    });
    await flush();
    expect(store.held).toBe(1);
    expect(resolved).toBe(false);
    expect(s.info().last).toBe(0);
    store.release();
    await publishing;
    expect(store.stats().commits).toBe(1);
    expect(s.info().last).toBe(1);
  });

  test('streams - concurrent publishes share group commits', async () => {
    const store: Store = new MemoryStore();
    const { rt } = testRuntime({ store });
    rt.stream({ name: 'S', subjects: ['s'] });
    await Promise.all(Array.from({ length: 500 }, (_, i) => rt.bus.publish('s', i)));
    expect(store.stats().appended).toBe(500);
    expect(store.stats().commits).toBeLessThanOrEqual(3);
  });

  test('streams - tryPublish on a stream subject is refused with a StreamError and stores nothing', async () => {
    const { rt } = testRuntime({ store: new MemoryStore() });
    const s = rt.stream({ name: 'S', subjects: ['s.>'] });
    const error = thrown(() => rt.bus.tryPublish('s.a', 1));
    expect(error).toBeInstanceOf(StreamError);
    expect((error as Error).message).toMatch(/stream 'S': tryPublish .* use publish/);
    expect(rt.bus.tryPublish('t', 1)).toBe(true);
    await flush();
    expect(s.info().last).toBe(0);
  });

  test('streams - overlapping subjects of two streams, a stream without a store and an unknown stream are refused', () => {
    const { rt } = testRuntime({ store: new MemoryStore() });
    rt.stream({ name: 'A', subjects: ['orders.*.new'] });
    expect((thrown(() => rt.stream({ name: 'B', subjects: ['orders.eu.>'] })) as Error).message).toMatch(
      /overlaps 'orders\.\*\.new' of stream 'A'/,
    );
    expect(thrown(() => rt.stream('C'))).toBeInstanceOf(StreamError);
    const bare = testRuntime().rt;
    expect(thrown(() => bare.stream({ name: 'A', subjects: ['x'] }))).toBeInstanceOf(StreamError);
  });
});
