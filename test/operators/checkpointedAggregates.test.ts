import { actor, createRuntime, durable, MemoryStore, VirtualClock } from 'sluice';
import { type Aggregate, agg, eventTime, keyBy, tumbling, watermarks } from 'sluice/operators';
import { describe, expect, test } from 'vitest';
import { quietLogger } from '../runtime/helpers.ts';

interface Click {
  readonly page: string;
  readonly user: string;
  readonly ms: number;
  readonly ts: number;
}

function views<A, R>(aggregate: Aggregate<Click, A, R>) {
  return actor<Click, unknown>({
    name: 'views',
    subscribe: durable<Click>('CLICKS', { consumer: 'views' }),
    output: 'totals.views',
    checkpoint: { everyInputs: 500 },
    pipeline: (input$) =>
      input$.pipe(
        eventTime((c) => c.ts),
        keyBy((c) => c.page),
        watermarks({ maxOutOfOrdernessMs: 0 }),
        tumbling({ name: 'views', sizeMs: 1000, aggregate }),
      ),
  });
}

function runtime(store: MemoryStore) {
  const rt = createRuntime({ store, clock: new VirtualClock(0), logger: quietLogger() });
  rt.stream({ name: 'CLICKS', subjects: ['clicks.>'] });
  rt.stream({ name: 'TOTALS', subjects: ['totals.>'] });
  return rt;
}

describe('aggregates in checkpointed windows', () => {
  test('approxDistinct and quantiles accumulators survive a stop and the restore from the store', async () => {
    const aggregate = () =>
      agg.combine({
        users: agg.approxDistinct((c: Click) => c.user),
        latency: agg.quantiles((c: Click) => c.ms, { quantiles: [0, 1] }),
        n: agg.count(),
      });
    const store = new MemoryStore();
    const first = runtime(store);
    first.spawn(views(aggregate()));
    for (const [user, ms, ts] of [
      ['u1', 10, 100],
      ['u2', 20, 200],
      ['u1', 30, 300],
    ] as const) {
      await first.bus.publish('clicks.x', { page: 'p0', user, ms, ts });
    }
    // The window [0, 1000) stays open across the stop, in the store.
    await first.stop();

    const second = runtime(store);
    second.spawn(views(aggregate()));
    await second.bus.publish('clicks.x', { page: 'p0', user: 'u3', ms: 40, ts: 600 });
    await second.bus.publish('clicks.x', { page: 'p0', user: 'u4', ms: 50, ts: 1500 }); // fires [0, 1000)
    await second.stop();
    const results = store.read('TOTALS', 1).map((e) => (e.value as { d: { start: number; value: unknown } }).d);
    // The same inputs without the stop; [1000, 2000) stays open in the store.
    const direct = aggregate();
    let acc = direct.init();
    for (const [user, ms] of [
      ['u1', 10],
      ['u2', 20],
      ['u1', 30],
      ['u3', 40],
    ] as const)
      acc = direct.add(acc, { page: 'p0', user, ms, ts: 0 }, 0);
    expect(direct.result(acc)).toMatchObject({ users: 3, n: 4, latency: { p100: 40 } });
    expect(results.map((r) => [r.start, r.value])).toEqual([[0, direct.result(acc)]]);
  });
});
