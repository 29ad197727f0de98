import { filter, map, mergeMap, type Observable } from 'rxjs';
import { type AnyActor, actor, createRuntime, type Envelope } from 'sluice';
import { agg, eventTime, keyBy, mapAsync, tumbling, type WindowResult, watermarks } from 'sluice/operators';
import { testActor, testPipeline } from 'sluice/testing';
import { describe, expect, test } from 'vitest';

interface Click {
  page: string;
  ts: number;
}

describe('testPipeline', () => {
  test('feeds inputs with event times and watermarks, and collects window results', () => {
    const h = testPipeline<number, WindowResult<number>>((in$) =>
      in$.pipe(tumbling({ name: 'n', sizeMs: 10, aggregate: agg.sum((x: number) => x) })),
    );
    h.send(1, { eventTime: 3, key: 'a' });
    h.send(2, { eventTime: 12, key: 'a' });
    h.send(4, { eventTime: 7, key: 'a' });
    expect(h.outputs).toHaveLength(0);
    h.watermark(9);
    expect(h.values.map((r) => [r.start, r.end, r.value])).toEqual([[0, 10, 5]]);
    h.complete();
    expect(h.values.map((r) => [r.start, r.end, r.value])).toEqual([
      [0, 10, 5],
      [10, 20, 2],
    ]);
    expect(h.completed).toBe(true);
  });

  test('reports how each input settled: dropped by a filter, acked once its window was emitted', () => {
    const h = testPipeline<number, WindowResult<number>>((in$) =>
      in$.pipe(
        filter((x) => !('data' in x) || x.data > 0),
        tumbling({ name: 'n', sizeMs: 10, aggregate: agg.count() }),
      ),
    );
    const dropped = h.send(-1, { eventTime: 1 });
    const kept = h.send(1, { eventTime: 2 });
    expect(dropped.outcome).toBe('dropped');
    expect(kept.outcome).toBeUndefined(); // absorbed in its open window
    expect(h.open).toBe(1);
    h.watermark(10);
    expect(kept.outcome).toBe('acked');
    expect(h.open).toBe(0);
  });

  test('restart replays the inputs the pipeline still held, so window state is rebuilt', () => {
    const h = testPipeline<number, WindowResult<number>>((in$) =>
      in$.pipe(tumbling({ name: 'n', sizeMs: 10, aggregate: agg.count() })),
    );
    h.send(1, { eventTime: 1 });
    h.send(1, { eventTime: 2 });
    h.restart();
    h.send(1, { eventTime: 3 });
    h.watermark(9);
    expect(h.values.map((r) => r.value)).toEqual([3]);
  });

  test('processing time moves only when advanced: early firings run on the virtual clock', async () => {
    const h = testPipeline<number, WindowResult<number>>((in$, ctx) =>
      in$.pipe(
        tumbling({ name: 'n', sizeMs: 60_000, aggregate: agg.count(), early: { everyMs: 1000 }, clock: ctx.clock }),
      ),
    );
    h.send(1, { eventTime: 5 });
    expect(h.outputs).toHaveLength(0);
    await h.advance(999);
    expect(h.outputs).toHaveLength(0);
    await h.advance(1);
    expect(h.values.map((r) => r.firing)).toEqual(['early']);
  });

  test('late data the pipeline publishes on the bus is collected by subject', () => {
    const h = testPipeline<Click, WindowResult<number>>((in$, ctx) =>
      in$.pipe(
        tumbling({
          name: 'views',
          sizeMs: 10,
          aggregate: agg.count(),
          late: (env) => ctx.bus.forward({ ...env, subject: 'clicks.late' }),
        }),
      ),
    );
    h.watermark(20);
    h.send({ page: '/', ts: 3 }, { eventTime: 3 });
    expect(h.published('clicks.late')).toHaveLength(1);
    expect(h.published('clicks.late')[0]?.headers['sluice-late-reason']).toBe('beyond-allowed-lateness');
    // lateData reads the reason from the headers, on one subject or on all of them.
    expect(h.lateData('clicks.late').map((l) => [l.env.data, l.reason])).toEqual([
      [{ page: '/', ts: 3 }, 'beyond-allowed-lateness'],
    ]);
    expect(h.lateData()).toHaveLength(1);
    expect(h.lateData('elsewhere')).toEqual([]);
  });

  test('sendAll sends [data, eventTime, key?] in order; a key in an item wins over the option', () => {
    const h = testPipeline<string, WindowResult<string[]>>((in$) =>
      in$.pipe(tumbling({ name: 'n', sizeMs: 10, aggregate: agg.collect<string>() })),
    );
    const records = h.sendAll(
      [
        ['x', 1],
        ['y', 2, 'b'],
        ['z', 11],
      ],
      { key: 'a' },
    );
    expect(records.map((r) => [r.env.data, r.env.eventTime, r.env.key])).toEqual([
      ['x', 1, 'a'],
      ['y', 2, 'b'],
      ['z', 11, 'a'],
    ]);
    h.complete();
    expect(h.values.map((r) => [r.key, r.start, r.value])).toEqual([
      ['a', 0, ['x']],
      ['b', 0, ['y']],
      ['a', 10, ['z']],
    ]);
  });

  test('the input a pipeline fails on settles as failed with the error, as the runtime takes it for the culprit', () => {
    const h = testPipeline<number, number>((in$: Observable<Envelope<number>>) =>
      in$.pipe(
        map((e): Envelope<number> => {
          if (e.data === 0) throw new Error('division by zero');
          return { ...e, data: 1 / e.data };
        }),
      ),
    );
    const ok = h.send(4);
    const culprit = h.send(0);
    expect(ok.outcome).toBe('acked');
    expect(culprit.outcome).toBe('failed');
    expect((culprit.error as Error).message).toBe('division by zero');
    h.restart(); // the culprit is not replayed
    expect(h.values).toEqual([0.25]);
  });
});

describe('testActor', () => {
  const pageViews = actor<Click, WindowResult<number>>({
    name: 'page-views',
    subscribe: 'clicks',
    output: 'views',
    pipeline: (click$, ctx) =>
      click$.pipe(
        eventTime((c: Click) => c.ts),
        keyBy((c: Click) => c.page),
        watermarks({ maxOutOfOrdernessMs: 0, clock: ctx.clock }),
        tumbling({ name: 'page-views', sizeMs: 60_000, aggregate: agg.count() }),
      ),
  });

  test('runs an actor on the virtual clock and collects its outputs', async () => {
    const h = testActor(pageViews);
    await h.send({ page: '/a', ts: 1_000 });
    await h.send({ page: '/a', ts: 2_000 });
    await h.send({ page: '/b', ts: 61_000 });
    const out = h.outputs<WindowResult<number>>();
    expect(out.map((o) => [o.data.key, o.data.start, o.data.value])).toEqual([['/a', 0, 2]]);
    const report = await h.stop();
    expect(report.drained).toBe(true);
    expect(h.outputs<WindowResult<number>>().map((o) => [o.data.key, o.data.value])).toEqual([
      ['/a', 2],
      ['/b', 1],
    ]);
  });

  test('an injected restart between two steps replays the open window into the new pipeline', async () => {
    const h = testActor(pageViews);
    await h.send({ page: '/a', ts: 1_000 });
    await h.restart();
    expect(h.ref.restarts).toBe(1);
    await h.send({ page: '/a', ts: 2_000 });
    await h.send({ page: '/a', ts: 70_000 });
    expect(h.outputs<WindowResult<number>>().map((o) => o.data.value)).toEqual([2]);
  });

  test('dead letters are collected with their reason', async () => {
    const h = testActor(
      actor<number, number>({
        name: 'inverse',
        subscribe: 'n',
        output: 'inv',
        retry: { maxAttempts: 2, backoff: { initialMs: 100 } },
        pipeline: (n$) =>
          n$.pipe(
            map((e): Envelope<number> => {
              if (e.data === 0) throw new Error('division by zero');
              return { ...e, data: 1 / e.data };
            }),
          ),
      }),
    );
    await h.send(4);
    await h.send(0);
    expect(h.deadLetters).toHaveLength(0);
    await h.advance(100);
    expect(h.deadLetters).toHaveLength(1);
    expect(h.deadLetters[0]?.headers['sluice-error']).toContain('division by zero');
    expect(h.deadLetters[0]?.headers['sluice-attempts']).toBe('2');
    expect(h.outputs<number>().map((o) => o.data)).toEqual([0.25]);
  });
});

describe('testActor with partitioned lanes', () => {
  const perLane = (builds: number[]) =>
    actor<number, number>({
      name: 'per-lane',
      subscribe: 'n',
      output: 'out',
      partitionBy: (env) => `k${env.data}`,
      lanes: 3,
      pipeline: (n$, ctx) => {
        builds[ctx.lane] = (builds[ctx.lane] ?? 0) + 1;
        return n$.pipe(map((e) => ({ ...e, data: ctx.lane })));
      },
    });

  test('laneOf tells the lane of a key; sendAll publishes many inputs and settles once', async () => {
    const h = testActor(perLane([]));
    await h.sendAll([
      [1, 10],
      [2, 20],
      [3, 30],
    ]);
    expect(h.outputs<number>().map((o) => [o.eventTime, o.data])).toEqual([
      [10, h.laneOf('k1')],
      [20, h.laneOf('k2')],
      [30, h.laneOf('k3')],
    ]);
    expect(h.ref.counters.acked).toBe(3);
  });

  test('restart fails every lane (one incident, one restart) and resolves once all of them run again', async () => {
    const builds: number[] = [];
    const h = testActor(perLane(builds));
    expect(builds).toEqual([1, 1, 1]);
    await h.restart();
    // Lanes that fail while a restart is pending join it: one backoff of 100 ms brings all back.
    expect(builds).toEqual([2, 2, 2]);
    expect(h.ref).toMatchObject({ state: 'running', restarts: 1 });
    expect(h.clock.now()).toBe(100);
    await h.restart({ lane: 2 });
    expect(builds).toEqual([2, 2, 3]);
    expect(h.ref.restarts).toBe(2);
    await expect(h.restart({ lane: 3 })).rejects.toThrow("invalid option 'harness.restart.lane'");
    await h.send(1);
    expect(h.outputs()).toHaveLength(1);
  });
});

describe('testActor with other actors', () => {
  test('runs the services an actor calls beside it', async () => {
    const doubler = actor<number, number>({
      name: 'doubler',
      subscribe: 'math.double',
      handle: async (env, ctx) => {
        await ctx.respond(env.data * 2);
      },
    });
    const caller = actor<number, number>({
      name: 'caller',
      subscribe: 'numbers',
      output: 'doubled',
      handle: async (env, ctx) => (await ctx.request<number, number>('math.double', env.data)).data,
    });
    const h = testActor(caller, { with: [doubler] });
    await h.send(21);
    expect(h.outputs<number>().map((o) => o.data)).toEqual([42]);
  });
});

describe('testPipeline - settlement mistakes', () => {
  test('an output that comes after its input settled (an async step that did not hold it) is reported', async () => {
    const h = testPipeline<number, number>((in$) =>
      in$.pipe(mergeMap(async (env) => ({ ...(env as Envelope<number>), data: (env as Envelope<number>).data * 2 }))),
    );
    const record = h.send(1);
    expect(record.outcome).toBe('dropped'); // settled when `next` returned, before the promise
    await h.advance(0);
    expect(h.values).toEqual([2]);
    expect(h.warnings).toHaveLength(1);
    expect(h.warnings[0]).toContain('came after the input settled');
  });

  test('mapAsync holds the input: no warning, and it settles as acked', async () => {
    const h = testPipeline<number, number>((in$) =>
      (in$ as Observable<Envelope<number>>).pipe(mapAsync(async (n: number) => n * 2)),
    );
    const record = h.send(1);
    expect(record.outcome).toBeUndefined();
    await h.advance(0);
    expect(h.values).toEqual([2]);
    expect(record.outcome).toBe('acked');
    expect(h.warnings).toEqual([]);
  });
});

describe('testPipeline - the README chain and watermarks pushed by the test', () => {
  test("an inline factory types its input as the actor's: eventTime, keyBy, watermarks and tumbling compile and run", () => {
    // The README's page-views pipeline, pasted inline (before, `in$` held watermarks too and this did not compile).
    const h = testPipeline<Click, WindowResult<number>>((click$, ctx) =>
      click$.pipe(
        eventTime((click) => click.ts),
        keyBy((click) => click.page),
        watermarks({ maxOutOfOrdernessMs: 2_000, idleTimeoutMs: 30_000, clock: ctx.clock }),
        tumbling({ name: 'page-views', sizeMs: 60_000, aggregate: agg.count(), allowedLatenessMs: 5_000 }),
      ),
    );
    h.send({ page: '/home', ts: 1_000 });
    h.send({ page: '/home', ts: 63_000 });
    expect(h.values.map((r) => [r.key, r.start, r.value])).toEqual([['/home', 0, 1]]);
  });

  test('eventTime and keyBy pass on a watermark pushed by h.watermark() instead of crashing', () => {
    const h = testPipeline<Click, WindowResult<number>>((click$) =>
      click$.pipe(
        eventTime((click) => click.ts),
        keyBy((click) => click.page),
        tumbling({ name: 'page-views', sizeMs: 60_000, aggregate: agg.count() }),
      ),
    );
    h.send({ page: '/home', ts: 1_000 });
    h.watermark(59_999);
    expect(h.error).toBeUndefined();
    expect(h.values.map((r) => [r.key, r.start, r.value, r.watermark])).toEqual([['/home', 0, 1, 59_999]]);
  });
});

describe('testPipeline - a pipeline error is raised, not left in h.error', () => {
  const failOn = (bad: number) =>
    testPipeline<number, number>((in$) =>
      in$.pipe(
        map((e): Envelope<number> => {
          if (e.data === bad) throw new Error(`bad input ${bad}`);
          return e;
        }),
      ),
    );

  test('the next send, watermark or complete throws it, until restart()', () => {
    const h = failOn(0);
    const culprit = h.send(0); // the failing send returns the culprit's record
    expect(culprit.outcome).toBe('failed');
    expect(() => h.send(1)).toThrow('bad input 0');
    expect(() => h.sendAll([[1, 1]])).toThrow('bad input 0');
    expect(() => h.watermark(5)).toThrow('bad input 0');
    expect(() => h.complete()).toThrow('bad input 0');
    h.restart();
    h.send(2);
    expect(h.values).toEqual([2]);
  });

  test('advance rejects with an error the pipeline failed with during it, or before it', async () => {
    const h = testPipeline<number, number>((in$, ctx) =>
      in$.pipe(
        mergeMap(
          (e) =>
            // Fails on a timer, while time is moved.
            new Promise<Envelope<number>>((resolve, reject) => {
              ctx.clock.setTimeout(() => (e.data < 0 ? reject(new Error('async failure')) : resolve(e)), 100);
            }),
        ),
      ),
    );
    h.send(-1);
    await expect(h.advance(100)).rejects.toThrow('async failure');
    await expect(h.advance(1)).rejects.toThrow('async failure');
  });

  test('a watermark that makes the pipeline fail throws at once', () => {
    const h = testPipeline<number, number>((in$) =>
      in$.pipe(
        map((item) => {
          if (!('data' in item)) throw new Error('no watermarks here');
          return item;
        }),
      ),
    );
    expect(() => h.watermark(1)).toThrow('no watermarks here');
  });
});

describe('AnyActor', () => {
  test('actors of different types go in one list, and runtime.spawn works unbound', async () => {
    const doubler = actor<number, number>({
      name: 'doubler',
      subscribe: 'n',
      output: 'n2',
      handle: (env) => env.data * 2,
    });
    const shouter = actor<string, string>({
      name: 'shouter',
      subscribe: 's',
      output: 's2',
      handle: (env) => env.data.toUpperCase(),
    });
    const all: AnyActor[] = [doubler, shouter];
    const runtime = createRuntime();
    all.forEach(runtime.spawn);
    const got: unknown[] = [];
    for (const out of ['n2', 's2']) runtime.bus.subscribe(out, { callback: (env) => void got.push(env.data) });
    await runtime.bus.publish('n', 21);
    await runtime.bus.publish('s', 'hi');
    await runtime.idle();
    expect(got).toEqual([42, 'HI']);
    expect(runtime.actor('doubler')?.state).toBe('running');
    await runtime.stop();
    // The test kit takes any actor too.
    const h = testActor(all[0] as AnyActor, { with: [shouter] });
    await h.send(1);
    expect(h.outputs().map((o) => o.data)).toEqual([2]);
    await h.stop();
  });
});
