import type { StandardSchemaV1 } from '@standard-schema/spec';
import { filter, map, merge, partition, take } from 'rxjs';
import {
  type Actor,
  actor,
  Bus,
  type BusOptions,
  createRuntime,
  DEAD_LETTER_HEADERS,
  type HandlerActor,
  jsonCodec,
  OptionsError,
  type RuntimeOptions,
  SubjectError,
  type SubscriptionOptions,
  subject,
} from 'sluice';
import { describe, expect, expectTypeOf, test } from 'vitest';
import { z } from 'zod';
import { collect, flush, gate, seeded, testRuntime, thrown } from './helpers.ts';

describe('actor - pipeline mode', () => {
  test('maps and filters; a filtered input settles as dropped and leaves nothing in flight', async () => {
    const { rt } = testRuntime();
    const got = collect<number>(rt.bus, 'evens.tenfold');
    const ref = rt.spawn(
      actor<number, number>({
        name: 'tenfold',
        subscribe: 'numbers',
        output: 'evens.tenfold',
        pipeline: (in$) =>
          in$.pipe(
            filter((env) => env.data % 2 === 0),
            map((env) => ({ ...env, data: env.data * 10 })),
          ),
      }),
    );
    const published: string[] = [];
    for (let i = 1; i <= 10; i++) {
      await rt.bus.publish('numbers', i, { key: `k${i}`, headers: { origin: 'test' } });
    }
    await rt.idle();
    await flush();

    expect(got.map((e) => e.data)).toEqual([20, 40, 60, 80, 100]);
    // An output keeps the input's key and headers, under an id of its own.
    expect(got.map((e) => e.key)).toEqual(['k2', 'k4', 'k6', 'k8', 'k10']);
    expect(got.every((e) => e.headers.origin === 'test')).toBe(true);
    published.push(...got.map((e) => e.id));
    expect(new Set(published).size).toBe(5);
    expect(ref.counters).toMatchObject({ delivered: 10, published: 5, acked: 5, dropped: 5, deadLettered: 0 });
    expect(rt.telemetry.counters).toMatchObject({ acked: 5, dropped: 5 });
    expect({ inFlight: ref.inFlight, absorbed: ref.absorbed, depth: ref.depth }).toEqual({
      inFlight: 0,
      absorbed: 0,
      depth: 0,
    });
  });

  test('a pipeline may subscribe to its input several times; one that leaves mid-input does not cost the others it', async () => {
    const { rt } = testRuntime();
    const got = collect<string>(rt.bus, 'labelled');
    const ref = rt.spawn(
      actor<number, string>({
        name: 'labeller',
        subscribe: 'numbers',
        output: 'labelled',
        pipeline: (in$) => {
          const [evens, odds] = partition(in$, (env) => env.data % 2 === 0);
          return merge(
            // Subscribed first, and unsubscribed while the first input is still being handed out.
            in$.pipe(
              take(1),
              map((env) => ({ ...env, data: `first ${env.data}` })),
            ),
            evens.pipe(map((env) => ({ ...env, data: `even ${env.data}` }))),
            odds.pipe(map((env) => ({ ...env, data: `odd ${env.data}` }))),
          );
        },
      }),
    );
    for (let i = 2; i <= 5; i++) await rt.bus.publish('numbers', i);
    await rt.idle();
    await flush();
    expect(got.map((e) => e.data)).toEqual(['first 2', 'even 2', 'odd 3', 'even 4', 'odd 5']);
    expect({ acked: ref.counters.acked, inFlight: ref.inFlight, absorbed: ref.absorbed }).toEqual({
      acked: 4,
      inFlight: 0,
      absorbed: 0,
    });
  });

  test('an input counts as absorbed, not in flight, while a downstream consumer holds its output', async () => {
    const { rt } = testRuntime();
    const downstream = gate();
    rt.bus.subscribe('out', { callback: () => downstream.promise });
    const ref = rt.spawn(
      actor<number, number>({ name: 'relay', subscribe: 'in', output: 'out', pipeline: (in$) => in$ }),
    );
    await rt.bus.publish('in', 1);
    await flush();
    expect({ inFlight: ref.inFlight, absorbed: ref.absorbed, acked: ref.counters.acked }).toEqual({
      inFlight: 0,
      absorbed: 1,
      acked: 0,
    });
    downstream.open();
    await flush();
    expect({ inFlight: ref.inFlight, absorbed: ref.absorbed, acked: ref.counters.acked }).toEqual({
      inFlight: 0,
      absorbed: 0,
      acked: 1,
    });
  });
});

describe('actor - handle mode', () => {
  test('publishes the result to its output and what it publishes through ctx, settling with both', async () => {
    const { rt } = testRuntime();
    const priced = collect<{ sku: string; total: number }>(rt.bus, 'orders.priced');
    const audit: string[] = [];
    const auditGate = gate();
    // A slow audit consumer with room for one message: the third audit publish has to wait.
    rt.bus.subscribe<string>('audit', {
      mailbox: { capacity: 1 },
      callback: async (env) => {
        await auditGate.promise;
        audit.push(env.data);
      },
    });
    const ref = rt.spawn(
      actor<{ sku: string; qty: number }, { sku: string; total: number }>({
        name: 'pricer',
        subscribe: 'orders',
        output: 'orders.priced',
        handle: (env, ctx) => {
          // Not awaited: the input still settles only once this publish is accepted.
          void ctx.publish('audit', `priced ${env.data.sku}`);
          return { sku: env.data.sku, total: env.data.qty * 2 };
        },
      }),
    );
    for (const sku of ['a', 'b', 'c']) await rt.bus.publish('orders', { sku, qty: 3 });
    await flush();

    expect(priced.map((e) => e.data)).toEqual([
      { sku: 'a', total: 6 },
      { sku: 'b', total: 6 },
      { sku: 'c', total: 6 },
    ]);
    // 'a' is with the audit consumer, 'b' in its mailbox, 'c' waits for room: c's order is in flight.
    expect(ref.inFlight).toBe(1);
    expect(ref.counters.acked).toBe(0);

    auditGate.open();
    await rt.idle();
    await flush();
    expect(audit).toEqual(['priced a', 'priced b', 'priced c']);
    expect(ref.inFlight).toBe(0);
    expect(ref.counters).toMatchObject({ delivered: 3, published: 6, acked: 3, dropped: 0 });
  });

  test('a handler that returns nothing is acknowledged, not counted as dropped', async () => {
    const { rt } = testRuntime();
    const seen: number[] = [];
    const ref = rt.spawn(
      actor<number, never>({ name: 'sink', subscribe: 'in', handle: (env) => void seen.push(env.data) }),
    );
    for (let i = 0; i < 4; i++) await rt.bus.publish('in', i);
    await rt.idle();
    expect(seen).toEqual([0, 1, 2, 3]);
    expect(ref.counters).toMatchObject({ acked: 4, dropped: 0 });
  });

  test('request/reply: ctx.respond answers the request; a message without replyTo is dead-lettered', async () => {
    const { rt } = testRuntime();
    const dlq = collect(rt.bus, '$DLQ.adder');
    const ref = rt.spawn(
      actor<{ a: number; b: number }, never>({
        name: 'adder',
        subscribe: 'math.add',
        retry: { maxAttempts: 1 },
        handle: async (env, ctx) => {
          await ctx.respond(env.data.a + env.data.b);
        },
      }),
    );
    const reply = await rt.bus.request<{ a: number; b: number }, number>('math.add', { a: 2, b: 3 });
    expect(reply.data).toBe(5);
    const replies = await Promise.all([1, 2, 3].map((a) => rt.bus.request<object, number>('math.add', { a, b: 10 })));
    expect(replies.map((r) => r.data)).toEqual([11, 12, 13]);

    await rt.bus.publish('math.add', { a: 1, b: 1 });
    await rt.idle();
    await flush();
    expect(dlq).toHaveLength(1);
    expect(dlq[0]?.headers[DEAD_LETTER_HEADERS.code]).toBe('SLUICE_ERR_OPTIONS');
    expect(dlq[0]?.headers[DEAD_LETTER_HEADERS.error]).toContain('no replyTo subject');
    expect(ref.counters).toMatchObject({ acked: 4, deadLettered: 1 });
  });

  test('a handler that returns a value without an output subject is dead-lettered naming the option', async () => {
    const { rt } = testRuntime();
    const dlq = collect(rt.bus, '$DLQ.noout');
    rt.spawn(actor<number, number>({ name: 'noout', subscribe: 'in', handle: (env) => env.data + 1 }));
    await rt.bus.publish('in', 1);
    await rt.idle();
    await flush();
    expect(dlq.map((e) => e.data)).toEqual([1]);
    expect(dlq[0]?.headers[DEAD_LETTER_HEADERS.error]).toContain("'actor 'noout'.output'");
  });

  test('a refused publish of a handler result fails the input, which is dead-lettered, and rejects nothing unhandled', async () => {
    const { rt } = testRuntime();
    const dlq = collect(rt.bus, '$DLQ.denied');
    const ref = rt.spawn(
      actor<number, number>({
        name: 'denied',
        subscribe: 'in',
        output: 'out',
        retry: { maxAttempts: 1 },
        permissions: { publish: { deny: ['out'] } },
        handle: (env) => env.data + 1,
      }),
    );
    await rt.bus.publish('in', 1);
    await rt.idle();
    await flush();
    expect(dlq.map((e) => e.data)).toEqual([1]);
    expect(dlq[0]?.headers[DEAD_LETTER_HEADERS.code]).toBe('SLUICE_ERR_PERMISSION');
    expect(ref.counters).toMatchObject({ acked: 0, deadLettered: 1 });
  });
});

describe('actor - typed input', () => {
  const Order = z.object({
    id: z.string(),
    qty: z.number().int().positive(),
    tags: z.array(z.string()).default([]),
  });
  const orders = subject('orders.new', { schema: Order });

  test('a zod schema checks each input: valid ones arrive parsed, invalid ones go to $DLQ.<name> naming the issue', async () => {
    const { rt } = testRuntime();
    const seen: z.infer<typeof Order>[] = [];
    const dlq = collect(rt.bus, '$DLQ.validator');
    const ref = rt.spawn(
      actor({
        name: 'validator',
        subscribe: orders,
        handle: (env) => {
          expectTypeOf(env.data).toEqualTypeOf<z.infer<typeof Order>>();
          seen.push(env.data);
        },
      }),
    );
    await rt.bus.publish(orders, { id: 'a', qty: 2, tags: [] });
    await rt.bus.publish('orders.new', { id: 'b', qty: 1 }); // tags filled in by the schema's default
    const badQty = { id: 'c', qty: -1 };
    await rt.bus.publish('orders.new', badQty);
    await rt.bus.publish('orders.new', { qty: 1 });
    await rt.idle();
    await flush();

    expect(seen).toEqual([
      { id: 'a', qty: 2, tags: [] },
      { id: 'b', qty: 1, tags: [] },
    ]);
    expect(dlq.map((e) => e.data)).toEqual([badQty, { qty: 1 }]);
    const qtyIssue = Order.safeParse(badQty).error?.issues[0]?.message as string;
    const idIssue = Order.safeParse({ qty: 1 }).error?.issues[0]?.message as string;
    expect(dlq[0]?.headers).toMatchObject({
      [DEAD_LETTER_HEADERS.code]: 'SLUICE_ERR_SCHEMA',
      [DEAD_LETTER_HEADERS.actor]: 'validator',
      [DEAD_LETTER_HEADERS.attempts]: '1',
      [DEAD_LETTER_HEADERS.subject]: 'orders.new',
    });
    expect(dlq[0]?.headers[DEAD_LETTER_HEADERS.error]).toBe(`invalid data on 'orders.new': qty: ${qtyIssue}`);
    expect(dlq[1]?.headers[DEAD_LETTER_HEADERS.error]).toBe(`invalid data on 'orders.new': id: ${idIssue}`);
    expect(ref.counters).toMatchObject({ delivered: 4, acked: 2, deadLettered: 2, retried: 0 });
    expect(ref.inFlight).toBe(0);
  });

  test('an async schema checks inputs too; an actor stopped while one runs dead-letters that input', async () => {
    const { rt } = testRuntime();
    const seen: number[] = [];
    const dlq = collect<number>(rt.bus, '$DLQ.async-check');
    const Positive = z.number().refine(async (n) => n > 0, 'must be positive');
    rt.spawn(
      actor({
        name: 'async-check',
        subscribe: subject('nums', { schema: Positive }),
        handle: (e) => void seen.push(e.data),
      }),
    );
    await rt.bus.publish('nums', 1);
    await rt.bus.publish('nums', -1);
    await rt.idle();
    await flush();
    expect(seen).toEqual([1]);
    expect(dlq.map((e) => e.data)).toEqual([-1]);
    expect(dlq[0]?.headers[DEAD_LETTER_HEADERS.error]).toBe("invalid data on 'nums': must be positive");

    // A schema whose check the test finishes by hand.
    const checks: (() => void)[] = [];
    const slow: StandardSchemaV1<unknown, number> = {
      '~standard': {
        version: 1,
        vendor: 'test',
        validate: (value) => new Promise((resolve) => checks.push(() => resolve({ value: value as number }))),
      },
    };
    const dlqSlow = collect<number>(rt.bus, '$DLQ.slow-check');
    const ref = rt.spawn(
      actor({
        name: 'slow-check',
        subscribe: subject('slow', { schema: slow }),
        handle: (e) => void seen.push(e.data),
      }),
    );
    await rt.bus.publish('slow', 2);
    expect(ref.inFlight).toBe(1);
    await ref.stop();
    checks.shift()?.();
    await flush();
    expect(seen).toEqual([1]);
    expect(dlqSlow.map((e) => [e.data, e.headers[DEAD_LETTER_HEADERS.code]])).toEqual([[2, 'SLUICE_ERR_CLOSED']]);
    expect(ref.inFlight).toBe(0);
  });

  test('undecodable bytes with codec jsonCodec go to the dead-letter subject; decodable ones arrive decoded', async () => {
    const { rt } = testRuntime();
    const seen: unknown[] = [];
    const dlq = collect<Uint8Array>(rt.bus, '$DLQ.decoder');
    rt.spawn(actor({ name: 'decoder', subscribe: 'raw', codec: jsonCodec, handle: (env) => void seen.push(env.data) }));
    await rt.bus.publish('raw', new TextEncoder().encode('{"x":1}'));
    const garbage = new Uint8Array([0x7b, 0x22, 0xff]);
    await rt.bus.publish('raw', garbage);
    await rt.bus.publish('raw', { already: 'decoded' });
    await rt.idle();
    await flush();

    expect(seen).toEqual([{ x: 1 }, { already: 'decoded' }]);
    expect(dlq).toHaveLength(1);
    expect(dlq[0]?.data).toEqual(garbage);
    expect(dlq[0]?.headers[DEAD_LETTER_HEADERS.code]).toBe('SLUICE_ERR_DECODE');
    expect(dlq[0]?.headers[DEAD_LETTER_HEADERS.error]).toContain("invalid payload on 'raw': not decodable as json");
  });
});

describe('actor - distribution', () => {
  test('two actors in one queue group split the messages; a plain subscriber still gets every one', async () => {
    const { rt } = testRuntime();
    const byWorker: Record<string, number[]> = { a: [], b: [] };
    for (const w of ['a', 'b']) {
      rt.spawn(
        actor<number, never>({
          name: `worker-${w}`,
          subscribe: 'jobs',
          queue: 'workers',
          handle: (env) => void byWorker[w]?.push(env.data),
        }),
      );
    }
    const all = collect<number>(rt.bus, 'jobs');
    for (let i = 0; i < 20; i++) await rt.bus.publish('jobs', i);
    await rt.idle();
    await flush();

    expect(byWorker.a).toHaveLength(10);
    expect(byWorker.b).toHaveLength(10);
    expect([...(byWorker.a ?? []), ...(byWorker.b ?? [])].sort((x, y) => x - y)).toEqual(
      Array.from({ length: 20 }, (_, i) => i),
    );
    expect(all.map((e) => e.data)).toHaveLength(20);
  });

  test('partitionBy keeps per-key order across lanes with async handlers of random duration', async () => {
    const { rt, clock } = testRuntime();
    const random = seeded(7);
    const done: { key: string; seq: number }[] = [];
    const laneOfKey = new Map<string, Set<number>>();
    let active = 0;
    let maxActive = 0;
    const ref = rt.spawn(
      actor<{ key: string; seq: number }, never>({
        name: 'ordered',
        subscribe: 'events',
        partitionBy: (env) => env.data.key,
        lanes: 4,
        handle: async (env, ctx) => {
          expect(env.key).toBe(env.data.key);
          const lanes = laneOfKey.get(env.data.key) ?? new Set();
          lanes.add(ctx.lane);
          laneOfKey.set(env.data.key, lanes);
          active++;
          maxActive = Math.max(maxActive, active);
          await ctx.clock.sleep(1 + Math.floor(random() * 50));
          active--;
          done.push(env.data);
        },
      }),
    );
    const keys = ['ann', 'bob', 'cy', 'dee', 'eve', 'fay', 'gus', 'hal'];
    const sent: { key: string; seq: number }[] = [];
    const next = new Map<string, number>();
    for (let i = 0; i < 240; i++) {
      const key = keys[Math.floor(random() * keys.length)] as string;
      const seq = next.get(key) ?? 0;
      next.set(key, seq + 1);
      sent.push({ key, seq });
      await rt.bus.publish('events', { key, seq });
    }
    await clock.runAll();
    await rt.idle();

    expect(done).toHaveLength(sent.length);
    for (const key of keys) {
      const seqs = done.filter((d) => d.key === key).map((d) => d.seq);
      expect(seqs).toEqual(Array.from({ length: next.get(key) ?? 0 }, (_, i) => i));
      expect(laneOfKey.get(key)?.size).toBe(1);
    }
    // Keys ran in parallel (up to one per lane), so the overall order is not the publish order.
    expect(maxActive).toBeGreaterThan(1);
    expect(maxActive).toBeLessThanOrEqual(4);
    expect(done).not.toEqual(sent);
    expect(ref.counters.acked).toBe(sent.length);
  });
});

describe('actor - definition errors', () => {
  const ok = { name: 'ok', subscribe: 'in', handle: () => {} };
  const cases: [option: string, definition: Record<string, unknown>][] = [
    ['actor.name', { ...ok, name: 'has.dot' }],
    ['actor.name', { ...ok, name: '' }],
    ["actor 'ok'.pipeline", { ...ok, pipeline: (in$: unknown) => in$ }],
    ["actor 'ok'.pipeline", { name: 'ok', subscribe: 'in' }],
    ["actor 'ok'.subscribe", { ...ok, subscribe: [] }],
    ["actor 'ok'.lanes", { ...ok, lanes: 4 }],
    ["actor 'ok'.lanes", { ...ok, partitionBy: () => 'k', lanes: 0 }],
    ["actor 'ok'.maxInFlight", { ...ok, maxInFlight: 0 }],
    ["actor 'ok'.maxInFlight", { ...ok, maxInFlight: 1.5 }],
    ["actor 'ok'.queue", { ...ok, queue: 'two words' }],
    ["actor 'ok'.queueStrategy", { ...ok, queue: 'q', queueStrategy: 'random' }],
    ["actor 'ok'.partitionBy", { ...ok, partitionBy: 'key' }],
    ["actor 'ok'.mailbox.capacity", { ...ok, mailbox: { capacity: 0 } }],
    ["actor 'ok'.mailbox.overflow", { ...ok, mailbox: { overflow: 'spill' } }],
    ["actor 'ok'.retry.maxAttempts", { ...ok, retry: { maxAttempts: 0 } }],
    ["actor 'ok'.retry.backoff.maxMs", { ...ok, retry: { backoff: { initialMs: 500, maxMs: 100 } } }],
    ["actor 'ok'.restart.onLimit", { ...ok, restart: { onLimit: 'explode' } }],
    ["actor 'ok'.restart.windowMs", { ...ok, restart: { windowMs: 0 } }],
    ["actor 'ok'.concurrency", { ...ok, concurrency: 0 }],
    ["actor 'ok'.concurrency", { ...ok, concurrency: 300 }],
    ["actor 'ok'.concurrency", { ...ok, partitionBy: () => 'k', concurrency: 2 }],
    ["actor 'ok'.concurrency", { name: 'ok', subscribe: 'in', pipeline: (in$: unknown) => in$, concurrency: 2 }],
    ["actor 'ok'.retry", { ...ok, retry: 3 }],
  ];

  test.each(cases)('an invalid %s is an OptionsError naming it, thrown by actor()', (option, definition) => {
    let error: unknown;
    try {
      actor(definition as unknown as HandlerActor<unknown, unknown>);
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(OptionsError);
    expect(error).toMatchObject({ name: 'OptionsError', code: 'SLUICE_ERR_OPTIONS', option });
    expect((error as Error).message).toContain(`invalid option '${option}'`);
  });

  test('a first backoff delay above the default cap raises the cap, unless maxMs is given', () => {
    expect(() => actor({ ...ok, retry: { backoff: { initialMs: 60_000 } } })).not.toThrow();
    expect(() => actor({ ...ok, restart: { backoff: { initialMs: 60_000 } } })).not.toThrow();
    expect(() => actor({ ...ok, retry: { backoff: { initialMs: 60_000, maxMs: 30_000 } } })).toThrow(
      "invalid option 'actor 'ok'.retry.backoff.maxMs': must be >= actor 'ok'.retry.backoff.initialMs (60000), got 30000",
    );
  });

  test('an invalid subject is a SubjectError; a second actor of the same name is refused at spawn', () => {
    expect(() => actor({ ...ok, subscribe: 'in..x' })).toThrow(SubjectError);
    expect(() => actor({ ...ok, output: 'out.*' })).toThrow(SubjectError);
    expect(() => actor({ ...ok, deadLetter: 'dead letters' })).toThrow(SubjectError);
    const { rt } = testRuntime();
    const a: Actor = actor(ok);
    rt.spawn(a);
    expect(() => rt.spawn(a)).toThrow(OptionsError);
    expect(() => rt.spawn(a)).toThrow(/'actor.name': must be unique/);
  });
});

describe('actor - unknown option keys', () => {
  const ok = { name: 'ok', subscribe: 'in', handle: () => {} };
  const cases: [option: string, suggestion: string | undefined, definition: Record<string, unknown>][] = [
    ["actor 'ok'.maxInflight", 'maxInFlight', { ...ok, maxInflight: 10 }],
    ["actor 'ok'.deadletter", 'deadLetter', { ...ok, deadletter: 'dead' }],
    ["actor 'ok'.mailbox.capacty", 'capacity', { ...ok, mailbox: { capacty: 10 } }],
    ["actor 'ok'.retry.attempts", 'maxAttempts', { ...ok, retry: { attempts: 5 } }],
    ["actor 'ok'.retry.backoff.initalMs", 'initialMs', { ...ok, retry: { backoff: { initalMs: 5 } } }],
    ["actor 'ok'.restart.maxRestart", 'maxRestarts', { ...ok, restart: { maxRestart: 1 } }],
    ["actor 'ok'.restart.backoff.jiter", 'jitter', { ...ok, restart: { backoff: { jiter: 0 } } }],
    ["actor 'ok'.colour", undefined, { ...ok, colour: 'blue' }],
  ];

  test.each(cases)('%s is an OptionsError at actor() naming the path and the key', (option, suggestion, definition) => {
    const error = thrown(() => actor(definition as unknown as HandlerActor<unknown, unknown>));
    expect(error).toBeInstanceOf(OptionsError);
    expect(error).toMatchObject({ option });
    const key = option.split('.').at(-1) as string;
    expect((error as Error).message).toContain(`'${key}' is not an option`);
    if (suggestion === undefined) expect((error as Error).message).not.toContain('did you mean');
    else expect((error as Error).message).toContain(`did you mean '${suggestion}'?`);
  });

  test('the bus, the runtime and subscriptions refuse unknown keys too', () => {
    expect(thrown(() => new Bus({ maxPayload: 10 } as BusOptions))).toMatchObject({
      option: 'bus.maxPayload',
      message: expect.stringContaining("did you mean 'maxPayloadBytes'?"),
    });
    expect(thrown(() => createRuntime({ shutdownDeadline: 10 } as RuntimeOptions))).toMatchObject({
      option: 'runtime.shutdownDeadline',
      message: expect.stringContaining("did you mean 'shutdownDeadlineMs'?"),
    });
    expect(thrown(() => createRuntime({ bus: { requestTimeout: 10 } } as RuntimeOptions))).toMatchObject({
      option: 'bus.requestTimeout',
      message: expect.stringContaining("did you mean 'requestTimeoutMs'?"),
    });
    const bus = new Bus();
    expect(thrown(() => bus.subscribe('x', { concurency: 4 } as SubscriptionOptions<unknown>))).toMatchObject({
      option: 'subscription.concurency',
      message: expect.stringContaining("did you mean 'concurrency'?"),
    });
    expect(
      thrown(() => bus.subscribe('x', { mailbox: { overflw: 'fail' } } as SubscriptionOptions<unknown>)),
    ).toMatchObject({ option: 'mailbox.overflw', message: expect.stringContaining("did you mean 'overflow'?") });
    // Nothing was left subscribed by the refused calls.
    expect(bus.subscriptions).toBe(0);
  });
});

describe('actor - no loops to itself', () => {
  const ok = { name: 'ok', subscribe: 'orders.>', handle: () => {} };

  test.each([
    ['the same subject', { ...ok, subscribe: 'x', output: 'x' }, 'x'],
    ['a subject its wildcard matches', { ...ok, output: 'orders.priced' }, 'orders.>'],
    ['a subject one of several subscriptions matches', { ...ok, subscribe: ['a', 'b.*'], output: 'b.c' }, 'b.*'],
  ])('an output on %s is refused, for handlers', (_, definition, matched) => {
    const error = thrown(() => actor(definition as HandlerActor<unknown, unknown>));
    expect(error).toBeInstanceOf(OptionsError);
    expect(error).toMatchObject({ option: "actor 'ok'.output" });
    expect((error as Error).message).toContain(`subscribes to ('${matched}')`);
  });

  test('an output its own subscription matches is refused for pipelines too', () => {
    const error = thrown(() =>
      actor<number, number>({ name: 'p', subscribe: 'x.*', output: 'x.y', pipeline: (in$) => in$ }),
    );
    expect(error).toMatchObject({ option: "actor 'p'.output" });
  });

  test('a dead-letter subject its own subscriptions match is refused', () => {
    expect(thrown(() => actor({ ...ok, deadLetter: 'orders.failed' }))).toMatchObject({
      option: "actor 'ok'.deadLetter",
    });
    expect(
      thrown(() => actor<number, number>({ name: 'p', subscribe: '>', deadLetter: 'dead', pipeline: (in$) => in$ })),
    ).toMatchObject({ option: "actor 'p'.deadLetter" });
  });

  test('the default dead-letter subject of an actor on $DLQ.> is $DEAD.<name>, outside its subscription', () => {
    expect(actor({ ...ok, name: 'dlq-reader', subscribe: '$DLQ.>' }).deadLetter).toBe('$DEAD.dlq-reader');
    expect(actor({ ...ok, name: 'reader', subscribe: '$DLQ.other' }).deadLetter).toBe('$DLQ.reader');
    expect(actor(ok).deadLetter).toBe('$DLQ.ok');
  });
});

describe('actor - output loops', () => {
  test('a pipeline output that keeps its input subject (no output option) is dead-lettered, not looped back', async () => {
    const { rt } = testRuntime();
    const dead: string[] = [];
    rt.bus.subscribe<number>('$DLQ.echo', { callback: (env) => void dead.push(env.headers['sluice-error'] ?? '') });
    const ref = rt.spawn(
      actor<number, number>({
        name: 'echo',
        subscribe: 'numbers',
        pipeline: (n$) => n$.pipe(map((e) => ({ ...e, data: e.data + 1 }))),
      }),
    );
    await rt.bus.publish('numbers', 1);
    await flush();
    expect(ref.counters.delivered).toBe(1);
    expect(dead).toHaveLength(1);
    expect(dead[0]).toContain("invalid option 'actor 'echo'.output'");
    expect(dead[0]).toContain('would loop back');
  });
});

describe('actor - replies and permissions', () => {
  test("an actor whose publish permissions do not list inboxes can still respond to a request (as NATS's allow_responses)", async () => {
    const { rt } = testRuntime();
    rt.spawn(
      actor<number, number>({
        name: 'doubler',
        subscribe: 'math.double',
        permissions: { publish: { allow: ['results.>'] } },
        handle: async (env, ctx) => {
          await ctx.respond(env.data * 2);
        },
      }),
    );
    const reply = await rt.bus.request<number, number>('math.double', 21);
    expect(reply.data).toBe(42);
    // Anything else stays restricted.
    await expect(rt.bus.client('c', { publish: { allow: ['results.>'] } }).publish('math.double', 1)).rejects.toThrow(
      'permission denied',
    );
  });
});

describe('actor - handler concurrency', () => {
  async function deposits(concurrency: number | undefined): Promise<{ balance: number; maxActive: number }> {
    const { rt, clock } = testRuntime();
    let balance = 0;
    let active = 0;
    let maxActive = 0;
    rt.spawn(
      actor<number, never>({
        name: 'account',
        subscribe: 'deposits',
        ...(concurrency === undefined ? {} : { concurrency }),
        handle: async (env, ctx) => {
          active++;
          maxActive = Math.max(maxActive, active);
          // Read, await, write: safe only if no other deposit runs in between.
          const read = balance;
          await ctx.clock.sleep(1);
          balance = read + env.data;
          active--;
        },
      }),
    );
    for (let i = 0; i < 100; i++) await rt.bus.publish('deposits', 1);
    await clock.runAll();
    await rt.idle();
    return { balance, maxActive };
  }

  test('by default a handler takes one message at a time: 100 read-modify-write deposits lose none', async () => {
    expect(await deposits(undefined)).toEqual({ balance: 100, maxActive: 1 });
  });

  test('concurrency: n lets up to n messages overlap in the handler', async () => {
    const { balance, maxActive } = await deposits(8);
    expect(maxActive).toBe(8);
    // The overlap is real: the unguarded read-modify-write lost deposits.
    expect(balance).toBeLessThan(100);
  });
});

describe('actor - thenables', () => {
  /** A thenable that is not a Promise, as some libraries return. */
  function later<T>(outcome: { value: T } | { error: unknown }): PromiseLike<T> {
    return {
      // biome-ignore lint/suspicious/noThenProperty: the point of the test is a non-Promise thenable
      then(onFulfilled, onRejected) {
        return Promise.resolve().then(() =>
          'value' in outcome ? onFulfilled?.(outcome.value) : onRejected?.(outcome.error),
        ) as never;
      },
    };
  }

  test('a handler that returns a thenable has its value published, as with a promise', async () => {
    const { rt } = testRuntime();
    const out = collect<number>(rt.bus, 'out');
    const ref = rt.spawn(
      actor<number, number>({
        name: 'lazy',
        subscribe: 'in',
        output: 'out',
        handle: (e) => later({ value: e.data * 2 }),
      }),
    );
    await rt.bus.publish('in', 21);
    await rt.idle();
    await flush();
    expect(out.map((e) => e.data)).toEqual([42]);
    expect(ref.counters).toMatchObject({ acked: 1, deadLettered: 0 });
  });

  test('a thenable that rejects, or whose then getter throws, fails the message', async () => {
    const { rt, clock } = testRuntime();
    const dlq = collect<number>(rt.bus, '$DLQ.sour');
    const out = collect(rt.bus, 'out');
    const ref = rt.spawn(
      actor<number, number>({
        name: 'sour',
        subscribe: 'in',
        output: 'out',
        retry: { maxAttempts: 1 },
        handle: (e) => {
          if (e.data === 1) return later<number>({ error: new Error('rejected thenable') });
          return Object.defineProperty({}, 'then', {
            get() {
              throw new Error('hostile then');
            },
          }) as number;
        },
      }),
    );
    await rt.bus.publish('in', 1);
    await rt.bus.publish('in', 2);
    await clock.runAll();
    await rt.idle();
    await flush();
    expect(out).toEqual([]);
    expect(dlq.map((e) => [e.data, e.headers[DEAD_LETTER_HEADERS.error]])).toEqual([
      [1, 'rejected thenable'],
      [2, 'hostile then'],
    ]);
    expect(ref.counters).toMatchObject({ acked: 0, deadLettered: 2 });
  });

  test('a Standard Schema whose validate returns a thenable is awaited', async () => {
    const { rt } = testRuntime();
    const schema: StandardSchemaV1<unknown, number> = {
      '~standard': {
        version: 1,
        vendor: 'test',
        validate: (value) =>
          later(
            typeof value === 'number'
              ? { value: { value: value + 1 } }
              : { value: { issues: [{ message: 'not a number' }] } },
          ) as unknown as StandardSchemaV1.Result<number>,
      },
    };
    const seen: unknown[] = [];
    const dlq = collect(rt.bus, '$DLQ.checked');
    rt.spawn(actor({ name: 'checked', subscribe: subject('nums', { schema }), handle: (e) => void seen.push(e.data) }));
    await rt.bus.publish('nums', 1);
    await rt.bus.publish('nums', 'two');
    await rt.idle();
    await flush();
    expect(seen).toEqual([2]);
    expect(dlq.map((e) => e.headers[DEAD_LETTER_HEADERS.error])).toEqual(["invalid data on 'nums': not a number"]);
  });
});

describe('actor - partitionBy from untyped code', () => {
  test('a key that is not a string dead-letters the input with an OptionsError naming partitionBy', async () => {
    const { rt } = testRuntime();
    const dlq = collect<{ n: unknown }>(rt.bus, '$DLQ.keyed');
    const handled: unknown[] = [];
    rt.spawn(
      actor<{ n: unknown }, never>({
        name: 'keyed',
        subscribe: 'in',
        lanes: 4,
        // From JavaScript nothing stops a number key, which would send every key to one lane.
        partitionBy: (env) => env.data.n as string,
        handle: (env) => void handled.push(env.key),
      }),
    );
    await rt.bus.publish('in', { n: 5 });
    await rt.bus.publish('in', { n: 'k' });
    await rt.idle();
    expect(handled).toEqual(['k']);
    expect(dlq.map((e) => e.headers['sluice-error'])).toEqual([
      "invalid option 'actor 'keyed'.partitionBy': must return a string key, got 5",
    ]);
  });
});
