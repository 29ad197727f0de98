import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { map } from 'rxjs';
import {
  actor,
  createRuntime,
  durable,
  LmdbStore,
  MemoryStore,
  OptionsError,
  StateError,
  type Store,
  stateNamespace,
  VirtualClock,
} from 'sluice';
import { agg, countWindow, eventTime, keyBy, session, sliding, tumbling, watermarks } from 'sluice/operators';
import { describe, expect, test } from 'vitest';
import { StoreState } from '../../../runtime/state/keyedState.ts';
import { POSITIONS_NAMESPACE } from '../../../runtime/streams/index.ts';
import { flush, quietLogger, testRuntime, thrown } from '../helpers.ts';
import { tempDir } from '../store/harness.ts';
import { eventually } from '../streams/wait.ts';

interface Order {
  readonly key: string;
  readonly n: number;
}

/** A keyed running count in ctx.state; each input's new count goes to the TOTALS stream. */
function counter(everyInputs: number | undefined, intervalMs?: number) {
  return actor<Order, { key: string; count: number; n: number }>({
    name: 'counter',
    subscribe: durable<Order>('ORDERS', { consumer: 'counter' }),
    output: 'totals.all',
    checkpoint: { everyInputs, intervalMs },
    handle: (env, ctx) => {
      const count = (ctx.state.get<number>(env.data.key) ?? 0) + 1;
      ctx.state.put(env.data.key, count);
      return { key: env.data.key, count, n: env.data.n };
    },
  });
}

function define(rt: ReturnType<typeof createRuntime>): void {
  rt.stream({ name: 'ORDERS', subjects: ['orders.>'] });
  rt.stream({ name: 'TOTALS', subjects: ['totals.>'] });
}

function outputs(store: Store): { key: string; count: number; n: number }[] {
  return store.read('TOTALS', 1).map((e) => (e.value as { d: { key: string; count: number; n: number } }).d);
}

describe('ctx.state and checkpoints', () => {
  test('ctx.state - reads see the actor’s own writes at once; the store gets them only with the checkpoint', async () => {
    const store = new MemoryStore();
    const { rt, clock } = testRuntime({ store });
    define(rt);
    const seen: (number | undefined)[] = [];
    rt.spawn(
      actor<Order, never>({
        name: 'counter',
        subscribe: durable<Order>('ORDERS', { consumer: 'counter' }),
        checkpoint: { intervalMs: 1000 },
        handle: (env, ctx) => {
          seen.push(ctx.state.get<number>('a'));
          ctx.state.put('a', (ctx.state.get<number>('a') ?? 0) + env.data.n);
          if (env.data.n === 3) ctx.state.delete('gone');
          else ctx.state.put('gone', true);
        },
      }),
    );
    for (let n = 1; n <= 3; n++) await rt.bus.publish('orders.x', { key: 'a', n });
    await eventually(() => expect(seen).toEqual([undefined, 1, 3]));
    expect(store.getKey(stateNamespace('counter'), 'a')).toBeUndefined();
    expect(rt.actor('counter')?.checkpoint).toMatchObject({ commits: 0, held: 3, pendingWrites: 2 });
    await clock.advance(1000);
    await eventually(() => expect(store.getKey(stateNamespace('counter'), 'a')).toBe(6));
    expect(store.getKey(stateNamespace('counter'), 'gone')).toBeUndefined();
    expect(rt.actor('counter')?.checkpoint).toMatchObject({ commits: 1, inputs: 3, held: 0, pendingWrites: 0 });
  });

  test('checkpoint - the consumer position is stored only with the checkpoint, never ahead of the state', async () => {
    const store = new MemoryStore();
    const { rt } = testRuntime({ store });
    define(rt);
    rt.spawn(counter(4));
    for (let n = 1; n <= 6; n++) await rt.bus.publish('orders.x', { key: 'a', n });
    // 4 inputs make a checkpoint; the 2 after it are handled but not reflected in the store.
    await eventually(() => expect(outputs(store)).toHaveLength(4));
    await eventually(() => expect(rt.actor('counter')?.checkpoint?.held).toBe(2));
    expect(store.getKey(POSITIONS_NAMESPACE, 'ORDERS/counter')).toEqual({ floor: 5 });
    expect(store.getKey(stateNamespace('counter'), 'a')).toBe(4);
    // The consumer has them acknowledged only in memory after the next checkpoint.
    expect(rt.stream('ORDERS').consumer('counter').position).toBe(5);
  });

  test('checkpoint - an input whose handler still runs is not reflected: the checkpoint waits for it', async () => {
    const store = new MemoryStore();
    const { rt, clock } = testRuntime({ store });
    define(rt);
    let release: () => void = () => {};
    rt.spawn(
      actor<Order, never>({
        name: 'slow',
        subscribe: durable<Order>('ORDERS', { consumer: 'slow' }),
        checkpoint: { intervalMs: 100 },
        concurrency: 2,
        handle: async (env, ctx) => {
          ctx.state.put(`k${env.data.n}`, env.data.n);
          if (env.data.n === 2) await new Promise<void>((resolve) => (release = resolve));
        },
      }),
    );
    await rt.bus.publish('orders.x', { key: 'a', n: 1 });
    await rt.bus.publish('orders.x', { key: 'a', n: 2 });
    await eventually(() => expect(rt.actor('slow')?.inFlight).toBe(1));
    await clock.advance(100);
    await rt.bus.publish('orders.x', { key: 'a', n: 3 });
    await clock.advance(0);
    // Due, and not taken while input 2 runs: neither its write nor its position is stored.
    expect(store.getKey(stateNamespace('slow'), 'k1')).toBeUndefined();
    expect(rt.actor('slow')?.depth).toBe(1);
    release();
    await eventually(() => expect(store.getKey(stateNamespace('slow'), 'k2')).toBe(2));
    expect(store.getKey(POSITIONS_NAMESPACE, 'ORDERS/slow')).toEqual({ floor: 3 });
    expect(store.getKey(stateNamespace('slow'), 'k3')).toBeUndefined();
  });

  test('checkpoint - a graceful stop takes a last checkpoint with the positions', async () => {
    const store = new MemoryStore();
    const clock = new VirtualClock(0);
    const rt = createRuntime({ store, clock, logger: quietLogger() });
    define(rt);
    rt.spawn(counter(100));
    for (let n = 1; n <= 5; n++) await rt.bus.publish('orders.x', { key: 'a', n });
    await eventually(() => expect(rt.actor('counter')?.checkpoint?.held).toBe(5));
    const report = await rt.stop();
    expect(report.drained).toBe(true);
    expect(store.getKey(POSITIONS_NAMESPACE, 'ORDERS/counter')).toEqual({ floor: 6 });
    expect(store.getKey(stateNamespace('counter'), 'a')).toBe(5);
    expect(outputs(store).map((o) => o.count)).toEqual([1, 2, 3, 4, 5]);
  });

  test('checkpoint - held inputs never exceed what the consumer delivers unsettled: everyInputs above maxAckPending does not stall', async () => {
    const store = new MemoryStore();
    const { rt } = testRuntime({ store });
    define(rt);
    let handled = 0;
    rt.spawn(
      actor<Order, never>({
        name: 'counter',
        subscribe: durable<Order>('ORDERS', { consumer: 'counter', maxAckPending: 10 }),
        checkpoint: { everyInputs: 100 },
        handle: () => void handled++,
      }),
    );
    for (let n = 1; n <= 35; n++) await rt.bus.publish('orders.x', { key: 'a', n });
    await eventually(() => expect(handled).toBe(35));
    await eventually(() => expect(store.getKey(POSITIONS_NAMESPACE, 'ORDERS/counter')).toEqual({ floor: 31 }));
    expect(rt.actor('counter')?.checkpoint?.held).toBe(5);
  });

  test('checkpoint - options and misuse give clear errors', () => {
    expect(thrown(() => actor({ name: 'x', subscribe: 'a', checkpoint: {}, handle: () => {} }))).toBeInstanceOf(
      OptionsError,
    );
    expect(
      thrown(() => actor({ name: 'x', subscribe: 'a', checkpoint: { intervalMs: 0 }, handle: () => {} })),
    ).toBeInstanceOf(OptionsError);
    const { rt } = testRuntime();
    const e = thrown(() =>
      rt.spawn(actor({ name: 'nostore', subscribe: 'a', checkpoint: { intervalMs: 10 }, handle: () => {} })),
    );
    expect(e).toBeInstanceOf(StateError);
    expect((e as Error).message).toMatch(/nostore.*store/);
  });

  test('ctx.state - an actor without a checkpoint gets a StateError naming what is missing', async () => {
    const { rt } = testRuntime();
    const errors: unknown[] = [];
    rt.spawn(
      actor({
        name: 'plain',
        subscribe: 'in',
        retry: { maxAttempts: 1 },
        handle: (_env, ctx) => {
          try {
            ctx.state.get('a');
          } catch (error) {
            errors.push(error);
          }
        },
      }),
    );
    await rt.bus.publish('in', 1);
    await eventually(() => expect(errors).toHaveLength(1));
    expect(errors[0]).toBeInstanceOf(StateError);
    expect((errors[0] as Error).message).toMatch(/'plain'.*checkpoint/);
  });
});

describe('checkpoints across SIGKILL (LMDB, child process)', () => {
  const fixture = fileURLToPath(new URL('./fixtures/checkpointChild.ts', import.meta.url));
  const cwd = fileURLToPath(new URL('../../..', import.meta.url));

  /**
   * Runs the fixture; with `killAt`, kills it with SIGKILL once it reports that many outputs
   * stored. Resolves with how it ended and the last count it printed.
   */
  function run(args: string[], killAt?: number): Promise<{ code: number | null; signal: string | null; out: string }> {
    return new Promise((resolve, reject) => {
      // node itself, not the tsx wrapper: SIGKILL must reach the process that runs the job.
      const child = spawn(process.execPath, ['--import', 'tsx', '--conditions=sluice-source', fixture, ...args], {
        cwd,
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let out = '';
      let err = '';
      const guard = setTimeout(() => child.kill('SIGKILL'), 60_000);
      child.stdout.on('data', (chunk: Buffer) => {
        out += chunk.toString();
        if (killAt === undefined) return;
        const last = /stored (\d+)\n(?![\s\S]*stored)/.exec(out);
        if (last !== null && Number(last[1]) >= killAt) child.kill('SIGKILL');
      });
      child.stderr.on('data', (chunk: Buffer) => {
        err += chunk.toString();
      });
      child.on('error', reject);
      child.on('close', (code, signal) => {
        clearTimeout(guard);
        if (err !== '') reject(new Error(`child wrote to stderr: ${err}`));
        else resolve({ code, signal, out });
      });
    });
  }

  test('crash - after SIGKILLs the job restores state, positions and outputs from its checkpoint: every output exactly once, windows as without a crash', async () => {
    const path = join(tempDir(), 'store');
    const total = 3000;
    expect((await run(['publish', path, String(total)])).out).toContain('published');
    const kills: number[] = [];
    for (const killAt of [400, 1500]) {
      const ended = await run(['run', path, String(total)], killAt);
      expect(ended.signal).toBe('SIGKILL');
      kills.push(killAt);
    }
    const last = await run(['run', path, String(total)]);
    expect(last.code).toBe(0);
    expect(last.out).toContain('done');
    expect(kills).toHaveLength(2);

    const store = new LmdbStore({ path });
    const records = store.read('TOTALS', 1);
    await store.close();
    const events: { n: number; key: string; seen: number }[] = [];
    const windows = new Map<string, number[]>();
    for (const r of records) {
      expect(r.error).toBeUndefined();
      const m = r.value as { s: string; d: { n: number; key: string; seen: number; id: string; count: number } };
      if (m.s === 'totals.event') events.push(m.d);
      else windows.set(m.d.id, [...(windows.get(m.d.id) ?? []), m.d.count]);
    }
    // No de-duplication anywhere: each event's output is in the stream once, in input order.
    expect(events.map((e) => e.n)).toEqual(Array.from({ length: total }, (_, i) => i + 1));
    const seen = new Map<string, number>();
    for (const e of events) {
      seen.set(e.key, (seen.get(e.key) ?? 0) + 1);
      expect(e.seen).toBe(seen.get(e.key));
    }
    // The windows, computed from the input alone: every window but each key's last closed.
    const expected = new Map<string, number>();
    const lastStart = new Map<string, number>();
    for (let n = 1; n <= total; n++) {
      const key = `k${n % 7}`;
      const start = n * 10 - ((n * 10) % 1000);
      const id = `tumbling/${key}/${start}-${start + 1000}`;
      expected.set(id, (expected.get(id) ?? 0) + 1);
      lastStart.set(key, start);
    }
    for (const [key, start] of lastStart) expected.delete(`tumbling/${key}/${start}-${start + 1000}`);
    expect(new Map([...windows].map(([id, counts]) => [id, counts]))).toEqual(
      new Map([...expected].map(([id, count]) => [id, [count]])),
    );
  }, 120_000);

  test('crash - a tumbling count with checkpointed accumulators: after SIGKILLs every window result once, with the counts of a run without a crash', async () => {
    const path = join(tempDir(), 'store');
    const total = 3000;
    expect((await run(['publish', path, String(total)])).out).toContain('published');
    for (const killAt of [700, 1900]) {
      const ended = await run(['windows', path, String(total)], killAt);
      expect(ended.signal).toBe('SIGKILL');
    }
    const last = await run(['windows', path, String(total)]);
    expect(last.code).toBe(0);
    expect(last.out).toContain('done');

    const store = new LmdbStore({ path });
    const results = store
      .read('TOTALS', 1)
      .map((r) => (r.value as { d: { idempotencyKey: string; value: number; revision: number } }).d);
    // The windows still open are in the store, not fired: the stop keeps them for the next run.
    const open = store.scan('sluice.windows/tumbling', 'counts/0/').filter((e) => !e.key.endsWith('$watermark'));
    await store.close();
    const expected = new Map<string, number>();
    for (let n = 1; n <= total; n++) {
      const key = `k${n % 7}`;
      const start = n * 10 - ((n * 10) % 1000);
      const id = `counts/${key}/${start}-${start + 1000}`;
      expected.set(id, (expected.get(id) ?? 0) + 1);
    }
    const got = new Map<string, number>();
    for (const r of results) {
      // Each window fired once: no revision 1, no result twice.
      expect(got.has(r.idempotencyKey)).toBe(false);
      expect(r.revision).toBe(0);
      got.set(r.idempotencyKey, r.value);
    }
    for (const e of open) {
      const w = e.value as { k: string; s: number; e: number; c: number };
      got.set(`counts/${w.k}/${w.s}-${w.e}`, w.c);
    }
    expect(got).toEqual(expected);
  }, 120_000);
  test('crash - a count window with checkpointed accumulators: after SIGKILLs every window once, indexes and sums of a run without a crash', async () => {
    const path = join(tempDir(), 'store');
    const total = 3000;
    expect((await run(['publish', path, String(total)])).out).toContain('published');
    for (const killAt of [600, 1700]) {
      const ended = await run(['counts', path, String(total)], killAt);
      expect(ended.signal).toBe('SIGKILL');
    }
    const last = await run(['counts', path, String(total)]);
    expect(last.code).toBe(0);
    expect(last.out).toContain('done');

    const store = new LmdbStore({ path });
    const results = store
      .read('TOTALS', 1)
      .map(
        (r) => (r.value as { d: { idempotencyKey: string; key: string; start: number; end: number; value: number } }).d,
      );
    // The open windows stay in the store (a stop does not flush them): one record per key.
    const open = store.scan('sluice.windows/counting', 'counts/0/').filter((e) => !e.key.endsWith('$watermark'));
    await store.close();
    // Computed from the input alone: per key, windows of 10 consecutive inputs summing n.
    const perKey = new Map<string, number[]>();
    for (let n = 1; n <= total; n++) perKey.set(`k${n % 7}`, [...(perKey.get(`k${n % 7}`) ?? []), n]);
    const expected: [string, number, number, number][] = [];
    const partial = new Map<string, [number, number, number]>();
    for (const [key, ns] of perKey) {
      for (let i = 0; i + 10 <= ns.length; i += 10) {
        expected.push([key, i, i + 10, ns.slice(i, i + 10).reduce((a, b) => a + b, 0)]);
      }
      const rest = ns.slice(ns.length - (ns.length % 10));
      partial.set(key, [ns.length, rest.length, rest.reduce((a, b) => a + b, 0)]);
    }
    const keysSeen = new Set<string>();
    for (const r of results) {
      expect(keysSeen.has(r.idempotencyKey)).toBe(false); // each window once, no de-duplication
      keysSeen.add(r.idempotencyKey);
    }
    const byKey = (a: [string, number, number, number], b: [string, number, number, number]) =>
      a[0].localeCompare(b[0]) || a[1] - b[1];
    expect(
      results.map((r) => [r.key, r.start, r.end, r.value] as [string, number, number, number]).sort(byKey),
    ).toEqual(expected.sort(byKey));
    expect(
      new Map(
        open.map((e) => {
          const w = e.value as { k: string; n: number; p: number; a: number | null };
          return [w.k, [w.n, w.p, w.a ?? 0]];
        }),
      ),
    ).toEqual(partial);
  }, 120_000);
});

describe('checkpointed windows', () => {
  interface Click {
    readonly page: string;
    readonly ts: number;
  }

  function clicks(op: ReturnType<typeof tumbling<Click, number, number>>, checkpoint: boolean) {
    return actor<Click, unknown>({
      name: 'views',
      subscribe: durable<Click>('CLICKS', { consumer: 'views' }),
      output: 'totals.views',
      ...(checkpoint ? { checkpoint: { everyInputs: 500 } } : {}),
      pipeline: (input$) =>
        input$.pipe(
          eventTime((c) => c.ts),
          keyBy((c) => c.page),
          watermarks({ maxOutOfOrdernessMs: 0 }),
          op,
        ),
    });
  }

  async function publishClicks(rt: ReturnType<typeof createRuntime>, from: number, to: number, keys: number) {
    for (let n = from; n <= to; n += 1000) {
      const sends: Promise<void>[] = [];
      for (let i = n; i < Math.min(n + 1000, to + 1); i++) {
        sends.push(rt.bus.publish('clicks.x', { page: `p${i % keys}`, ts: i * 5 }));
      }
      await Promise.all(sends);
    }
  }

  test('memory - a 10-minute tumbling count over 60,000 events and 2,000 keys with a checkpoint holds state per key, not per event', async () => {
    const store = new MemoryStore();
    const { rt } = testRuntime({ store });
    rt.stream({ name: 'CLICKS', subjects: ['clicks.>'] });
    rt.stream({ name: 'TOTALS', subjects: ['totals.>'] });
    const op = tumbling<Click, number, number>({ name: 'views', sizeMs: 600_000, aggregate: agg.count() });
    const ref = rt.spawn(clicks(op, true));
    const keys = 2000;
    const events = 60_000; // ts up to 300 s: all in the first window
    let maxHeld = 0;
    let maxAbsorbed = 0;
    const sample = setInterval(() => {
      maxHeld = Math.max(maxHeld, ref.checkpoint?.held ?? 0);
      maxAbsorbed = Math.max(maxAbsorbed, ref.absorbed, op.stats().absorbed);
    }, 1);
    await publishClicks(rt, 1, events, keys);
    await eventually(() => expect(rt.stream('CLICKS').consumer('views').info().acked).toBe(events), 20_000);
    clearInterval(sample);
    // The window holds its accumulators, and the inputs were acknowledged at each checkpoint.
    expect(op.stats()).toMatchObject({ keys, openWindows: keys, absorbed: 0 });
    expect(maxAbsorbed).toBe(0);
    expect(maxHeld).toBeLessThanOrEqual(500);
    const windows = () => store.scan('sluice.windows/views', 'views/0/').filter((e) => !e.key.endsWith('$watermark'));
    // The consumer counts an input acknowledged once its checkpoint's batch is built; the commit follows.
    await eventually(() => expect(windows().reduce((sum, e) => sum + (e.value as { c: number }).c, 0)).toBe(events));
    expect(windows()).toHaveLength(keys); // keys × open windows
    expect(ref.checkpoint?.commits).toBeGreaterThan(events / 1000);
  }, 60_000);

  test('memory - without a checkpoint the same window keeps every input it took (here up to maxAckPending, then the consumer waits)', async () => {
    const { rt } = testRuntime({ store: new MemoryStore() });
    rt.stream({ name: 'CLICKS', subjects: ['clicks.>'] });
    rt.stream({ name: 'TOTALS', subjects: ['totals.>'] });
    const op = tumbling<Click, number, number>({ name: 'views', sizeMs: 600_000, aggregate: agg.count() });
    const ref = rt.spawn(clicks(op, false));
    await publishClicks(rt, 1, 3000, 2000);
    await eventually(() => expect(ref.absorbed).toBe(1000));
    expect(op.stats().absorbed).toBe(1000);
    expect(rt.stream('CLICKS').consumer('views').info().acked).toBe(0);
  });

  test('windows - a stop keeps checkpointed windows open; the next runtime goes on from them', async () => {
    const store = new MemoryStore();
    const first = createRuntime({ store, clock: new VirtualClock(0), logger: quietLogger() });
    first.stream({ name: 'CLICKS', subjects: ['clicks.>'] });
    first.stream({ name: 'TOTALS', subjects: ['totals.>'] });
    const op = () => tumbling<Click, number, number>({ name: 'views', sizeMs: 1000, aggregate: agg.count() });
    first.spawn(clicks(op(), true));
    // 0..999 ms: page p0 gets 3 clicks, p1 gets 2; then stop with the window open.
    for (const [page, ts] of [
      ['p0', 100],
      ['p1', 200],
      ['p0', 300],
      ['p0', 400],
      ['p1', 500],
    ] as const) {
      await first.bus.publish('clicks.x', { page, ts });
    }
    await first.stop();
    expect(store.bounds('TOTALS').last).toBe(0);
    const second = createRuntime({ store, clock: new VirtualClock(0), logger: quietLogger() });
    second.stream({ name: 'CLICKS', subjects: ['clicks.>'] });
    second.stream({ name: 'TOTALS', subjects: ['totals.>'] });
    second.spawn(clicks(op(), true));
    await second.bus.publish('clicks.x', { page: 'p0', ts: 600 });
    await second.bus.publish('clicks.x', { page: 'p0', ts: 1500 }); // the watermark passes 999
    await second.bus.publish('clicks.x', { page: 'p1', ts: 1600 });
    await eventually(() => expect(second.actor('views')?.checkpoint?.held).toBe(3));
    // Staged in the checkpoint, not yet in the stream: the stop's last checkpoint appends them.
    expect(store.bounds('TOTALS').last).toBe(0);
    await second.stop();
    const results = store.read('TOTALS', 1).map((e) => (e.value as { d: { key: string; value: number } }).d);
    expect(results.map((r) => [r.key, r.value])).toEqual([
      ['p0', 4],
      ['p1', 2],
    ]);
  });

  test('windows - a pipeline that fails goes on from the window state of the failed one, not from the last checkpoint', async () => {
    const store = new MemoryStore();
    const { rt } = testRuntime({ store });
    rt.stream({ name: 'CLICKS', subjects: ['clicks.>'] });
    rt.stream({ name: 'TOTALS', subjects: ['totals.>'] });
    rt.spawn(
      actor<Click, unknown>({
        name: 'views',
        subscribe: durable<Click>('CLICKS', { consumer: 'views' }),
        output: 'totals.views',
        checkpoint: { everyInputs: 1000 },
        retry: { maxAttempts: 1 },
        pipeline: (input$) =>
          input$.pipe(
            map((env) => {
              if (env.data.page === 'boom') throw new Error('boom');
              return env;
            }),
            eventTime((c) => c.ts),
            keyBy((c) => c.page),
            watermarks({ maxOutOfOrdernessMs: 0 }),
            tumbling<Click, number, number>({ name: 'views', sizeMs: 1000, aggregate: agg.count() }),
          ),
      }),
    );
    await rt.bus.publish('clicks.x', { page: 'p0', ts: 100 });
    await rt.bus.publish('clicks.x', { page: 'p0', ts: 200 });
    await rt.bus.publish('clicks.x', { page: 'boom', ts: 250 });
    await rt.bus.publish('clicks.x', { page: 'p0', ts: 300 });
    await rt.bus.publish('clicks.x', { page: 'p0', ts: 1200 });
    await eventually(() => expect(rt.actor('views')?.checkpoint?.held).toBe(4));
    expect(rt.actor('views')?.counters.deadLettered).toBe(1);
    await rt.stop();
    const results = store.read('TOTALS', 1).map((e) => (e.value as { d: { key: string; value: number } }).d);
    expect(results.map((r) => [r.key, r.value])).toEqual([['p0', 3]]);
  });

  test('windows - a checkpointed count window holds no input: each settles into its key record, and a failed pipeline goes on from it', async () => {
    const store = new MemoryStore();
    const { rt } = testRuntime({ store });
    rt.stream({ name: 'CLICKS', subjects: ['clicks.>'] });
    rt.stream({ name: 'TOTALS', subjects: ['totals.>'] });
    const op = countWindow<Click, number, number>({ name: 'views', size: 3, aggregate: agg.sum((c) => c.ts) });
    const ref = rt.spawn(
      actor<Click, unknown>({
        name: 'views',
        subscribe: durable<Click>('CLICKS', { consumer: 'views' }),
        output: 'totals.views',
        checkpoint: { everyInputs: 1000 },
        retry: { maxAttempts: 1 },
        pipeline: (input$) =>
          input$.pipe(
            map((env) => {
              if (env.data.page === 'boom') throw new Error('boom');
              return env;
            }),
            keyBy((c) => c.page),
            op,
          ),
      }),
    );
    for (const [page, ts] of [
      ['p0', 100],
      ['p0', 200],
      ['boom', 0],
      ['p0', 300],
      ['p0', 400],
      ['p1', 500],
    ] as const) {
      await rt.bus.publish('clicks.x', { page, ts });
    }
    await eventually(() => expect(ref.checkpoint?.held).toBe(5));
    expect(ref.counters.deadLettered).toBe(1);
    // Settled into the window's state, not absorbed: nothing of the inputs is kept.
    expect(op.stats()).toMatchObject({ keys: 2, openWindows: 2, absorbed: 0 });
    expect(ref.absorbed).toBe(0);
    await rt.stop();
    const results = store.read('TOTALS', 1).map((e) => (e.value as { d: { key: string; value: number } }).d);
    // The restarted pipeline went on from the failed one's p0 window (100 + 200), not from the store.
    expect(results.map((r) => [r.key, r.value])).toEqual([['p0', 600]]);
    const records = store.scan('sluice.windows/views', 'views/0/').map((e) => [e.key, e.value]);
    expect(records).toEqual([
      ['views/0/=p0', expect.objectContaining({ k: 'p0', n: 4, p: 1, a: 400 })],
      ['views/0/=p1', expect.objectContaining({ k: 'p1', n: 1, p: 1, a: 500 })],
    ]);
  });

  test.each([
    ['session', () => session<Click, number, number>({ name: 'w', gapMs: 300, aggregate: agg.count() })],
    [
      'sliding',
      () => sliding<Click, number, number>({ name: 'w', sizeMs: 1000, slideMs: 500, aggregate: agg.count() }),
    ],
    [
      'tumbling count',
      () => countWindow<Click, number, number>({ name: 'w', size: 2, aggregate: agg.sum((c) => c.ts) }),
    ],
    [
      'sliding count',
      () => countWindow<Click, number, number>({ name: 'w', size: 3, slide: 2, aggregate: agg.sum((c) => c.ts) }),
    ],
  ] as const)(
    'windows - %s windows restore from the checkpoint and give the results of a run without the restart',
    async (_kind, make) => {
      const clicksAt = [100, 250, 400, 900, 1300, 1450, 2600, 2700, 4000];
      async function runWith(stopAfter: number | undefined): Promise<[unknown, number, number][]> {
        const store = new MemoryStore();
        const start = (from: number, to: number) => {
          const rt = createRuntime({ store, clock: new VirtualClock(0), logger: quietLogger() });
          rt.stream({ name: 'CLICKS', subjects: ['clicks.>'] });
          rt.stream({ name: 'TOTALS', subjects: ['totals.>'] });
          const ref = rt.spawn(
            actor<Click, unknown>({
              name: 'views',
              subscribe: durable<Click>('CLICKS', { consumer: 'views' }),
              output: 'totals.views',
              checkpoint: { everyInputs: 2 },
              pipeline: (input$) =>
                input$.pipe(
                  eventTime((c) => c.ts),
                  keyBy((c) => c.page),
                  watermarks({ maxOutOfOrdernessMs: 0 }),
                  make(),
                ),
            }),
          );
          return (async () => {
            for (const ts of clicksAt.slice(from, to)) await rt.bus.publish('clicks.x', { page: 'p', ts });
            await eventually(() => expect(ref.counters.delivered).toBe(to - from));
            await rt.stop();
          })();
        };
        if (stopAfter === undefined) await start(0, clicksAt.length);
        else {
          await start(0, stopAfter);
          await start(stopAfter, clicksAt.length);
        }
        return store
          .read('TOTALS', 1)
          .map((e) => (e.value as { d: { start: number; end: number; value: number } }).d)
          .map((d) => [d.value, d.start, d.end]);
      }
      const whole = await runWith(undefined);
      expect(whole.length).toBeGreaterThan(1);
      for (const at of [2, 5, 7]) expect(await runWith(at)).toEqual(whole);
    },
  );
});

describe('checkpoint failures', () => {
  test('checkpoint - a checkpoint that fails ends the checkpoints: nothing after it is stored or acknowledged ahead of the state', async () => {
    const store = new MemoryStore();
    const { rt, log } = testRuntime({ store });
    define(rt);
    rt.spawn(
      actor<Order, unknown>({
        name: 'w',
        subscribe: durable<Order>('ORDERS', { consumer: 'w' }),
        checkpoint: { everyInputs: 2 },
        pipeline: (input$) =>
          input$.pipe(
            eventTime(() => 0),
            keyBy((o) => o.key),
            // An accumulator msgpack cannot store: the checkpoint's batch fails to build.
            tumbling({
              name: 't',
              sizeMs: 1000,
              aggregate: { init: () => ({ f: Symbol('x') }), add: (a) => a, result: () => 0 },
            }),
          ),
      }),
    );
    for (let n = 1; n <= 6; n++) await rt.bus.publish('orders.x', { key: 'a', n });
    await eventually(() => expect(rt.actor('w')?.checkpoint?.failures).toBe(1));
    await eventually(() => expect(rt.actor('w')?.counters.delivered).toBe(6));
    await flush(5);
    // One failure, then no more attempts (each would fail alike, or store positions ahead).
    expect(rt.actor('w')?.checkpoint).toMatchObject({ commits: 0, failures: 1 });
    expect(store.getKey(POSITIONS_NAMESPACE, 'ORDERS/w')).toEqual({ floor: 1 });
    expect(log.lines.some((l) => /checkpoint failed/.test(l))).toBe(true);
  });
});

describe('ctx.state and failed inputs', () => {
  /** Moves the clock a second at a time (retry backoffs, checkpoint intervals) until `check` passes. */
  async function advanceUntil(clock: VirtualClock, check: () => void): Promise<void> {
    for (let i = 0; i < 30; i++) {
      await clock.advance(1000);
      await flush(5);
      try {
        check();
        return;
      } catch {}
    }
    check();
  }

  /** Adds each input's n to 'total'; the inputs named in `failing` throw after their write. */
  function adder(failing: (n: number, attempt: number) => boolean) {
    return actor<Order, never>({
      name: 'adder',
      subscribe: durable<Order>('ORDERS', { consumer: 'adder' }),
      checkpoint: { intervalMs: 1000 },
      retry: { maxAttempts: 3 },
      handle: (env, ctx) => {
        ctx.state.put('total', (ctx.state.get<number>('total') ?? 0) + env.data.n);
        if (failing(env.data.n, env.attempt)) throw new Error(`input ${env.data.n} failed`);
      },
    });
  }

  test('ctx.state - the writes of an attempt that throws are discarded: the retry applies the input once', async () => {
    const store = new MemoryStore();
    const { rt, clock } = testRuntime({ store });
    define(rt);
    rt.spawn(adder((n, attempt) => n === 5 && attempt === 1));
    await rt.bus.publish('orders.x', { key: 'a', n: 5 });
    await rt.bus.publish('orders.x', { key: 'a', n: 1 });
    await advanceUntil(clock, () => expect(store.getKey(POSITIONS_NAMESPACE, 'ORDERS/adder')).toEqual({ floor: 3 }));
    // Both inputs acknowledged by the checkpoint, each counted once.
    expect(store.getKey(stateNamespace('adder'), 'total')).toBe(6);
  });

  test('ctx.state - a dead-lettered input leaves nothing in the state', async () => {
    const store = new MemoryStore();
    const { rt, clock } = testRuntime({ store });
    define(rt);
    rt.spawn(adder((n) => n === 5));
    await rt.bus.publish('orders.x', { key: 'a', n: 1 });
    await rt.bus.publish('orders.x', { key: 'a', n: 5 });
    await rt.bus.publish('orders.x', { key: 'a', n: 2 });
    await advanceUntil(clock, () => expect(store.getKey(POSITIONS_NAMESPACE, 'ORDERS/adder')).toEqual({ floor: 4 }));
    expect(store.getKey(stateNamespace('adder'), 'total')).toBe(3);
  });
});

describe('StoreState attempts', () => {
  test('attempt - discard restores what each key held before, and keeps a key another attempt wrote since', async () => {
    const store = new MemoryStore();
    await store.putKey(stateNamespace('s'), 'stored', 1);
    const state = new StoreState(store, 's');
    state.put('pending', 'before');
    const failed = state.attempt();
    failed.put('pending', 'failed');
    failed.delete('stored');
    failed.put('new', true);
    failed.put('shared', 'failed');
    const other = state.attempt();
    other.put('shared', 'other');
    expect(failed.get('pending')).toBe('failed');
    failed.discard();
    expect(state.get('pending')).toBe('before');
    expect(state.get('stored')).toBe(1);
    expect(state.has('new')).toBe(false);
    expect(state.get('shared')).toBe('other');
    expect(state.size).toBe(2);
  });
});
