import { concat, map, mergeMap, of, throwError } from 'rxjs';
import { actor, durable, type Envelope, IDEMPOTENCY_KEY_HEADER, MemoryStore } from 'sluice';
import { describe, expect, test } from 'vitest';
import { collect, flush, testRuntime } from '../helpers.ts';
import { eventually } from './wait.ts';

const keysOf = (envs: readonly Envelope[]) => envs.map((e) => e.headers[IDEMPOTENCY_KEY_HEADER]);

/** A runtime with stream ORDERS and an actor 'splitter' that emits two copies of each input to 'split'. */
function splitter(alsoPlain: boolean) {
  const { rt } = testRuntime({ store: new MemoryStore() });
  const orders = rt.stream({ name: 'ORDERS', subjects: ['orders.>'] });
  const out = collect(rt.bus, 'split');
  const fromStream = durable<number>('ORDERS', { consumer: 'splitter' });
  rt.spawn(
    actor<number, number>({
      name: 'splitter',
      subscribe: alsoPlain ? [fromStream, 'plain'] : fromStream,
      output: 'split',
      pipeline: (in$) =>
        in$.pipe(mergeMap((env) => of({ ...env, data: env.data * 10 }, { ...env, data: env.data * 10 + 1 }))),
    }),
  );
  return { rt, orders, out };
}

describe('idempotency keys of outputs derived from stream positions', () => {
  test('output keys - two outputs of one input get distinct keys <stream>/<sequence>/<actor>/<index>', async () => {
    const { rt, orders, out } = splitter(false);
    await rt.bus.publish('orders.eu', 1);
    await rt.bus.publish('orders.eu', 2);
    await eventually(() => expect(orders.consumer('splitter').position).toBe(3));
    expect(out.map((e) => e.data)).toEqual([10, 11, 20, 21]);
    expect(keysOf(out)).toEqual([
      'ORDERS/1/splitter/0',
      'ORDERS/1/splitter/1',
      'ORDERS/2/splitter/0',
      'ORDERS/2/splitter/1',
    ]);
  });

  test('output keys - a replayed input (retried by a handler) produces outputs with the same keys', async () => {
    const { rt, clock } = testRuntime({ store: new MemoryStore() });
    const orders = rt.stream({ name: 'ORDERS', subjects: ['orders.>'] });
    const out = collect(rt.bus, 'billed');
    rt.spawn(
      actor<string, never>({
        name: 'billing',
        subscribe: durable<string>('ORDERS', { consumer: 'billing' }),
        retry: { maxAttempts: 3, backoff: { initialMs: 10, jitter: 0 } },
        handle: async (env, ctx) => {
          await ctx.publish('billed', `${env.data}-a`);
          await ctx.publish('billed', `${env.data}-b`);
          // The first attempt fails after its outputs went out: the retry emits them again.
          if (env.attempt === 1) throw new Error('lost the connection');
        },
      }),
    );
    await rt.bus.publish('orders.eu', 'o1');
    await flush();
    await clock.advance(10);
    await eventually(() => expect(orders.consumer('billing').position).toBe(2));
    expect(out.map((e) => e.data)).toEqual(['o1-a', 'o1-b', 'o1-a', 'o1-b']);
    expect(keysOf(out)).toEqual([
      'ORDERS/1/billing/0',
      'ORDERS/1/billing/1',
      'ORDERS/1/billing/0',
      'ORDERS/1/billing/1',
    ]);
  });

  test('output keys - a pipeline that fails and is rebuilt replays its input onto the same keys', async () => {
    const { rt, clock } = testRuntime({ store: new MemoryStore() });
    const orders = rt.stream({ name: 'ORDERS', subjects: ['orders.>'] });
    const out = collect(rt.bus, 'doubled');
    let failures = 0;
    rt.spawn(
      actor<number, number>({
        name: 'doubler',
        subscribe: durable<number>('ORDERS', { consumer: 'doubler' }),
        output: 'doubled',
        retry: { maxAttempts: 3, backoff: { initialMs: 10, jitter: 0 } },
        pipeline: (in$) =>
          in$.pipe(
            mergeMap((env) => {
              // One output out, then the pipeline fails on this input, once.
              if (failures++ === 0)
                return concat(
                  of({ ...env, data: env.data * 2 }),
                  throwError(() => new Error('boom')),
                );
              return of({ ...env, data: env.data * 2 });
            }),
          ),
      }),
    );
    await rt.bus.publish('orders.eu', 21);
    await flush();
    await clock.advance(10);
    await eventually(() => expect(orders.consumer('doubler').position).toBe(2));
    expect(out.map((e) => e.data)).toEqual([42, 42]);
    expect(keysOf(out)).toEqual(['ORDERS/1/doubler/0', 'ORDERS/1/doubler/0']);
  });

  test('output keys - a key the output carries is kept, and inputs from a plain subject get none', async () => {
    const { rt } = testRuntime({ store: new MemoryStore() });
    const orders = rt.stream({ name: 'ORDERS', subjects: ['orders.>'] });
    const out = collect(rt.bus, 'keyed');
    rt.spawn(
      actor<string, never>({
        name: 'keyer',
        subscribe: [durable<string>('ORDERS', { consumer: 'keyer' }), 'plain'],
        handle: async (env, ctx) => {
          await ctx.publish('keyed', 'own', { headers: { [IDEMPOTENCY_KEY_HEADER]: `order-${env.data}` } });
          await ctx.publish('keyed', 'derived');
        },
      }),
    );
    await rt.bus.publish('orders.eu', 'o7');
    await eventually(() => expect(orders.consumer('keyer').position).toBe(2));
    await rt.bus.publish('plain', 'p1');
    await eventually(() => expect(out).toHaveLength(4));
    // The key the code set does not take an index: the derived one is the input's output 0.
    expect(keysOf(out)).toEqual(['order-o7', 'ORDERS/1/keyer/0', 'order-p1', undefined]);
  });

  test("output keys - outputs that copy their input's key with { ...env }: the first keeps it, the next get <key>/<actor>/<index>", async () => {
    const { rt, orders, out } = splitter(true);
    await rt.bus.publish('orders.eu', 1, { headers: { [IDEMPOTENCY_KEY_HEADER]: 'order-1' } });
    await eventually(() => expect(orders.consumer('splitter').position).toBe(2));
    await rt.bus.publish('plain', 2, { headers: { [IDEMPOTENCY_KEY_HEADER]: 'order-2' } });
    await eventually(() => expect(out).toHaveLength(4));
    expect(out.map((e) => e.data)).toEqual([10, 11, 20, 21]);
    // One key each: a sink that keeps one result per key keeps all four.
    expect(keysOf(out)).toEqual(['order-1', 'order-1/splitter/1', 'order-2', 'order-2/splitter/1']);
  });

  test("output keys - one output per input keeps its input's key, from a plain subject too", async () => {
    const { rt } = testRuntime();
    const out = collect(rt.bus, 'mapped');
    rt.spawn(
      actor<number, number>({
        name: 'mapper',
        subscribe: 'plain',
        output: 'mapped',
        pipeline: (in$) => in$.pipe(map((env) => ({ ...env, data: env.data + 1 }))),
      }),
    );
    await rt.bus.publish('plain', 1, { headers: { [IDEMPOTENCY_KEY_HEADER]: 'k-1' } });
    await rt.bus.publish('plain', 2, { headers: { [IDEMPOTENCY_KEY_HEADER]: 'k-2' } });
    await rt.bus.publish('plain', 3);
    await eventually(() => expect(out).toHaveLength(3));
    expect(keysOf(out)).toEqual(['k-1', 'k-2', undefined]);
  });

  test("output keys - a handler publishing its input's headers twice gives the second <key>/<actor>/1", async () => {
    const { rt } = testRuntime();
    const out = collect(rt.bus, 'copies');
    rt.spawn(
      actor<string, never>({
        name: 'copier',
        subscribe: 'plain',
        handle: async (env, ctx) => {
          await ctx.publish('copies', `${env.data}-a`, { headers: env.headers });
          await ctx.publish('copies', `${env.data}-b`, { headers: env.headers });
        },
      }),
    );
    await rt.bus.publish('plain', 'p', { headers: { [IDEMPOTENCY_KEY_HEADER]: 'k-p' } });
    await eventually(() => expect(out).toHaveLength(2));
    expect(keysOf(out)).toEqual(['k-p', 'k-p/copier/1']);
  });

  test('output keys - a keyed output carries checked headers, and one with a header the bus refuses fails its input as forward would', async () => {
    const { rt } = testRuntime({ store: new MemoryStore() });
    rt.stream({ name: 'ORDERS', subjects: ['orders.>'] });
    const out = collect(rt.bus, 'tagged');
    const dead = collect(rt.bus, '$DLQ.tagger');
    rt.spawn(
      actor<number, number>({
        name: 'tagger',
        subscribe: durable<number>('ORDERS', { consumer: 'tagger' }),
        output: 'tagged',
        retry: { maxAttempts: 1 },
        pipeline: (in$) =>
          in$.pipe(
            map(
              (env): Envelope<number> => ({
                ...env,
                headers: env.data === 2 ? { 'bad name': 'x' } : { tag: `t${env.data}` },
              }),
            ),
          ),
      }),
    );
    await rt.bus.publish('orders.eu', 1);
    await rt.bus.publish('orders.eu', 2);
    await eventually(() => expect(dead).toHaveLength(1));
    expect(out.map((e) => e.data)).toEqual([1]);
    expect(out[0]?.headers).toEqual({ tag: 't1', [IDEMPOTENCY_KEY_HEADER]: 'ORDERS/1/tagger/0' });
    expect(Object.isFrozen(out[0]?.headers)).toBe(true);
    expect(dead[0]?.data).toBe(2);
    expect(dead[0]?.headers['sluice-error']).toContain("forward.headers['bad name']");
  });
});
