// The TypeScript blocks of docs/windows.md, verbatim, run by test/docs/snippets.test.ts.
import { deepStrictEqual } from 'node:assert/strict';
import { actor } from 'sluice';
import { agg, eventTime, keyBy, tumbling, WatermarkHub, type WindowResult, watermarks } from 'sluice/operators';
import { testActor } from 'sluice/testing';

// actor from 'sluice'; agg, eventTime, keyBy, tumbling, watermarks, WindowResult from 'sluice/operators'
interface Click {
  page: string;
  ts: number;
}

const pageViews = actor<Click, WindowResult<number>>({
  name: 'page-views',
  subscribe: 'clicks',
  output: 'views.1m',
  pipeline: (in$, ctx) =>
    in$.pipe(
      eventTime((c) => c.ts), // event time from the data
      keyBy((c) => c.page), // env.key: one window per page
      watermarks({ maxOutOfOrdernessMs: 2_000, idleTimeoutMs: 30_000, clock: ctx.clock }),
      tumbling({
        name: ctx.name, // first part of the idempotency key
        sizeMs: 60_000,
        allowedLatenessMs: 10_000,
        aggregate: agg.count(),
        late: (env) => ctx.bus.forward({ ...env, subject: 'clicks.late' }),
      }),
    ),
});

const hub = new WatermarkHub(); // outside the pipeline factory: shared by the lanes
const laneViews = actor<Click, WindowResult<number>>({
  name: 'lane-views',
  subscribe: 'clicks',
  output: 'views.lanes',
  partitionBy: (env) => env.data.page,
  lanes: 4,
  pipeline: (in$, ctx) =>
    in$.pipe(
      eventTime((c) => c.ts),
      watermarks({ idleTimeoutMs: 30_000, clock: ctx.clock }),
      hub.channel(ctx.lane),
      tumbling({ name: 'lane-views', sizeMs: 60_000, aggregate: agg.count() }),
    ),
});

export async function main(): Promise<void> {
  const h = testActor(pageViews);
  await h.send({ page: '/home', ts: 1_000 });
  await h.send({ page: '/home', ts: 63_000 }); // [0, 60 s) closes: 63 s - 2 s is past its end
  await h.send({ page: '/home', ts: 2_000 }); // within the 10 s of lateness: an update
  await h.send({ page: '/home', ts: 80_000 }); // [0, 60 s) is purged
  await h.send({ page: '/home', ts: 3_000 }); // later than that: the late subject
  deepStrictEqual(
    h.outputs<WindowResult<number>>().map((o) => [o.data.idempotencyKey, o.data.value, o.data.firing]),
    [
      ['page-views//home/0-60000', 1, 'on-time'],
      ['page-views//home/0-60000', 2, 'late'],
    ],
  );
  deepStrictEqual(
    h.lateData<Click>('clicks.late').map((l) => [l.env.data.ts, l.reason]),
    [[3_000, 'beyond-allowed-lateness']],
  );
  await h.stop();

  // The lanes meet in the hub: a window closes once every lane (or idleness) has passed it.
  const lanes = testActor(laneViews);
  await lanes.send({ page: '/a', ts: 1_000 });
  await lanes.send({ page: '/b', ts: 2_000 });
  await lanes.advance(30_000); // lanes that got nothing are idle now
  await lanes.send({ page: '/a', ts: 70_000 });
  await lanes.send({ page: '/b', ts: 70_000 });
  const closed = lanes.outputs<WindowResult<number>>().map((o) => [o.data.key, o.data.start, o.data.value]);
  deepStrictEqual(
    closed.sort((x, y) => String(x[0]).localeCompare(String(y[0]))),
    [
      ['/a', 0, 1],
      ['/b', 0, 1],
    ],
  );
  await lanes.stop();
}
