import { type Actor, actor, DEAD_LETTER_HEADERS, type Envelope, type Permissions } from 'sluice';
import {
  agg,
  eventTime,
  tumbling,
  WatermarkHub,
  WINDOW_HEADERS,
  type WindowOperator,
  type WindowResult,
  watermarks,
} from 'sluice/operators';
import { type ActorHarness, testActor } from 'sluice/testing';
import { describe, expect, onTestFinished, test } from 'vitest';

// Windows in an actor on the runtime, through the test kit: partitioned lanes sharing one
// watermark, late data and dead letters, and the state a long run leaves behind.

interface Click {
  page: string;
  ts: number;
}

const SECOND = 1_000;

type Views = Actor<Click, WindowResult<number>>;

interface LanesOptions {
  lanes: number;
  /** Each lane's idleness; none by default. */
  idleTimeoutMs?: number;
}

/**
 * Page views per page per 10 s, partitioned by page over `lanes` lanes whose watermarks meet in
 * one hub, so every lane's windows close on the minimum over the lanes, as in Flink.
 */
function pageViews(options: LanesOptions) {
  const hub = new WatermarkHub();
  const op = tumbling<Click, number, number>({ name: 'views', sizeMs: 10 * SECOND, aggregate: agg.count() });
  const views = actor<Click, WindowResult<number>>({
    name: 'views',
    subscribe: 'clicks',
    output: 'views',
    partitionBy: (env) => env.data.page,
    lanes: options.lanes,
    pipeline: (click$, ctx) =>
      click$.pipe(
        eventTime((c: Click) => c.ts),
        watermarks({ maxOutOfOrdernessMs: 0, idleTimeoutMs: options.idleTimeoutMs, clock: ctx.clock }),
        hub.channel(ctx.lane),
        op,
      ),
  });
  return { hub, op, views };
}

/** The first page names `p0`, `p1`, … that go to each of these lanes, in that order. */
function pagesIn(h: ActorHarness, lanes: readonly number[]): string[] {
  return lanes.map((lane) => {
    for (let i = 0; ; i++) if (h.laneOf(`p${i}`) === lane) return `p${i}`;
  });
}

/** Starts the actor in a harness that is stopped when the test ends. */
function start(views: Views): ActorHarness {
  const h = testActor(views);
  onTestFinished(async () => {
    await h.stop();
  });
  return h;
}

const click = (h: ActorHarness, page: string, ts: number) => h.send({ page, ts });
const fired = (h: ActorHarness) =>
  h.outputs<WindowResult<number>>().map((o) => `${o.data.idempotencyKey}=${o.data.value}`);

describe('windows in an actor - partitioned lanes share one watermark (WatermarkHub)', () => {
  test('without idleness the slowest lane holds every lane back, as Flink takes the minimum', async () => {
    const { hub, views } = pageViews({ lanes: 2 });
    const h = start(views);
    const [a, b] = pagesIn(h, [0, 1]) as [string, string];
    await click(h, a, 1 * SECOND);
    await click(h, b, 1 * SECOND);
    await click(h, a, 25 * SECOND); // lane of a: 24,999; lane of b still at 999
    expect(hub.watermark).toBe(999);
    await h.advance(10 * 60 * SECOND); // processing time alone changes nothing
    expect(fired(h)).toEqual([]);
    await click(h, b, 12 * SECOND); // b's lane moves to 11,999: [0, 10 s) closes in both lanes
    expect(hub.watermark).toBe(11_999);
    expect(fired(h).sort()).toEqual([`views/${a}/0-10000=1`, `views/${b}/0-10000=1`].sort());
    await h.stop(); // the end of the input flushes the rest
    expect(fired(h).slice(2).sort()).toEqual([`views/${a}/20000-30000=1`, `views/${b}/10000-20000=1`].sort());
  });

  test('lanes that see no events, or stop seeing them, stop holding the others back once idle', async () => {
    const { hub, views } = pageViews({ lanes: 4, idleTimeoutMs: 5 * SECOND });
    const h = start(views);
    const [a, b] = pagesIn(h, [0, 1]) as [string, string];
    await h.advance(4 * SECOND);
    await click(h, a, 1 * SECOND);
    await click(h, a, 12 * SECOND);
    expect(fired(h)).toEqual([]); // three lanes have no watermark yet
    await h.advance(1 * SECOND); // 5 s: the three empty lanes are idle, a's lane is not
    expect(fired(h)).toEqual([`views/${a}/0-10000=1`]);
    expect(hub).toMatchObject({ watermark: 11_999, idle: false });

    await click(h, b, 12_500); // b's lane wakes up: it counts again
    await h.advance(3 * SECOND); // 8 s
    await click(h, a, 31 * SECOND); // a's lane at 30,999; b's at 12,499 holds it
    expect(hub.watermark).toBe(12_499);
    expect(fired(h)).toHaveLength(1);
    await h.advance(2 * SECOND); // 10 s: b's lane quiet for 5 s, idle
    expect(hub.watermark).toBe(30_999);
    expect(fired(h).slice(1).sort()).toEqual([`views/${a}/10000-20000=1`, `views/${b}/10000-20000=1`].sort());
    expect(h.deadLetters).toEqual([]);
  });

  test('a restarting lane holds the others back until it runs again, and leaves no stale channel', async () => {
    const { hub, op, views } = pageViews({ lanes: 2, idleTimeoutMs: 5 * SECOND });
    const h = start(views);
    const [a, b] = pagesIn(h, [0, 1]) as [string, string];
    await click(h, a, 1 * SECOND);
    await click(h, b, 1 * SECOND);
    await click(h, a, 12 * SECOND);
    expect(hub.watermark).toBe(999);
    expect(h.ref.absorbed).toBe(3);

    // Both lanes fail in one incident and come back together after one backoff, each replaying
    // what its windows held. While a lane is down it still holds the hub back: a restart changes no result.
    await h.restart();
    expect(h.ref.restarts).toBe(1); // both lanes failed in one incident: one restart
    expect(hub).toMatchObject({ size: 2, watermark: 999 });
    expect(op.stats()).toMatchObject({ openWindows: 3, absorbed: 3 });
    expect(fired(h)).toEqual([]);

    // b goes quiet: once its new pipeline is idle, nothing holds a's lane back. A channel left by
    // the failed pipeline of b's lane would hold the watermark at 999 for ever.
    await h.advance(5 * SECOND);
    expect(hub.watermark).toBe(11_999);
    expect(fired(h).sort()).toEqual([`views/${a}/0-10000=1`, `views/${b}/0-10000=1`].sort());

    // b's lane restarts on its own: its new pipeline takes its place, idle as it was.
    await h.restart({ lane: 1 });
    expect(hub.size).toBe(2);
    await click(h, a, 25 * SECOND);
    expect(fired(h).slice(2)).toEqual([`views/${a}/10000-20000=1`]);
    await h.stop();
    expect(hub.size).toBe(0);
    expect(fired(h).slice(3)).toEqual([`views/${a}/20000-30000=1`]);
  });
});

describe('windows in an actor - late data', () => {
  const lateViews = (late: boolean, permissions?: Permissions) =>
    actor<Click, WindowResult<number>>({
      name: 'views',
      subscribe: 'clicks',
      output: 'views',
      partitionBy: (env) => env.data.page,
      lanes: 2,
      ...(permissions === undefined ? {} : { permissions }),
      pipeline: (click$, ctx) =>
        click$.pipe(
          eventTime((c: Click) => c.ts),
          watermarks({ maxOutOfOrdernessMs: 0 }),
          tumbling({
            name: 'views',
            sizeMs: 10 * SECOND,
            allowedLatenessMs: 5 * SECOND,
            aggregate: agg.count(),
            ...(late ? { late: (env: Envelope<Click>) => ctx.bus.forward({ ...env, subject: 'clicks.late' }) } : {}),
          }),
        ),
    });

  /** On time, late within the allowed lateness, then later than that. */
  async function run(h: ActorHarness): Promise<void> {
    await click(h, 'home', 1 * SECOND);
    await click(h, 'home', 12 * SECOND); // watermark 11,999: [0, 10 s) fires
    await click(h, 'home', 3 * SECOND); // within the lateness: fires again, as an update
    await click(h, 'home', 16 * SECOND); // watermark 15,999: [0, 10 s) is purged
    await click(h, 'home', 4 * SECOND); // beyond the allowed lateness
  }

  test('beyond the allowed lateness, an input is published to the late subject with its reason', async () => {
    const h = start(lateViews(true));
    await run(h);
    expect(h.outputs<WindowResult<number>>().map((o) => [o.data.idempotencyKey, o.data.firing, o.data.value])).toEqual([
      ['views/home/0-10000', 'on-time', 1],
      ['views/home/0-10000', 'late', 2],
    ]);
    const late = h.lateData<Click>('clicks.late');
    expect(late.map((l) => [l.env.data, l.reason])).toEqual([[{ page: 'home', ts: 4_000 }, 'beyond-allowed-lateness']]);
    expect(late[0]?.env.headers).toMatchObject({
      [WINDOW_HEADERS.lateWatermark]: '15999',
      [WINDOW_HEADERS.window]: 'views',
    });
    expect(late[0]?.env).toMatchObject({ key: 'home', eventTime: 4_000 });
    expect(h.deadLetters).toEqual([]);
    // The late input settled once its copy was accepted on the late subject.
    expect(h.ref.counters).toMatchObject({ acked: 3, deadLettered: 0 });
  });

  test('without a late option, it is dead-lettered with the LateDataError and its reason', async () => {
    const h = start(lateViews(false));
    await run(h);
    expect(h.outputs()).toHaveLength(2);
    expect(h.lateData()).toEqual([]);
    expect(h.deadLetters).toHaveLength(1);
    const letter = h.deadLetters[0] as Envelope;
    expect(letter.data).toEqual({ page: 'home', ts: 4_000 });
    expect(letter.headers).toMatchObject({
      [DEAD_LETTER_HEADERS.code]: 'SLUICE_ERR_LATE_DATA',
      [DEAD_LETTER_HEADERS.actor]: 'views',
      [DEAD_LETTER_HEADERS.subject]: 'clicks',
      [DEAD_LETTER_HEADERS.attempts]: '1', // not retryable: a retry would be as late
    });
    expect(letter.headers[DEAD_LETTER_HEADERS.error]).toContain("window 'views': beyond-allowed-lateness");
    expect(letter.headers[DEAD_LETTER_HEADERS.error]).toContain('watermark 15999');
    expect(h.ref.counters).toMatchObject({ deadLettered: 1, retried: 0 });
  });

  test('a late copy the actor may not publish fails its input, which is dead-lettered with the refusal', async () => {
    const h = start(lateViews(true, { publish: { deny: ['clicks.late'] } }));
    await run(h);
    expect(h.lateData()).toEqual([]);
    expect(h.deadLetters).toHaveLength(1);
    const letter = h.deadLetters[0] as Envelope;
    expect(letter.data).toEqual({ page: 'home', ts: 4_000 });
    expect(letter.headers).toMatchObject({ [DEAD_LETTER_HEADERS.code]: 'SLUICE_ERR_PERMISSION' });
    expect(letter.headers[DEAD_LETTER_HEADERS.error]).toContain("'clicks.late'");
    expect(h.ref.counters).toMatchObject({ dropped: 0, deadLettered: 1 });
  });
});

describe('windows in an actor - state after a long run', () => {
  test('100k events over 1k keys: open windows, keys and absorbed inputs stay bounded and go to zero', async () => {
    const { op, views } = memoryViews();
    const h = start(views);
    let seed = 7;
    const random = () => ((seed = (seed * 16807) % 2147483647) - 1) / 2147483646;
    const events = 100_000;
    const chunk = 1_000;
    let max = { keys: 0, openWindows: 0, absorbed: 0 };
    for (let from = 0; from < events; from += chunk) {
      // One event per ms of event time, up to 200 ms out of order; processing time keeps pace.
      const items: [Click, number][] = [];
      for (let i = from; i < from + chunk; i++) {
        const ts = 1_000 + i - Math.floor(random() * 200);
        items.push([{ page: `p${Math.floor(random() * 1_000)}`, ts }, ts]);
      }
      await h.sendAll(items);
      await h.advance(chunk);
      const s = op.stats();
      max = {
        keys: Math.max(max.keys, s.keys),
        openWindows: Math.max(max.openWindows, s.openWindows),
        absorbed: Math.max(max.absorbed, s.absorbed),
      };
      // The actor's count of absorbed inputs is what the windows hold: nothing else keeps one.
      expect(h.ref.absorbed).toBe(s.absorbed);
      expect(h.ref.inFlight).toBe(0);
    }
    // 1 s windows: per key the current one and the one the disorder keeps open; each holds about
    // 1.2 s of inputs over all keys.
    expect(max.keys).toBeLessThanOrEqual(1_000);
    expect(max.openWindows).toBeLessThanOrEqual(2_000);
    expect(max.absorbed).toBeLessThanOrEqual(1_600);
    expect(op.stats().openWindows).toBeGreaterThan(0);

    const report = await h.stop();
    expect(report.drained).toBe(true);
    expect(op.stats()).toMatchObject({ keys: 0, idleKeys: 0, openWindows: 0, absorbed: 0, late: 0 });
    expect(h.ref).toMatchObject({ absorbed: 0, inFlight: 0 });
    const results = h.outputs<WindowResult<number>>();
    expect(results.reduce((n, r) => n + r.data.value, 0)).toBe(events);
    expect(h.ref.counters).toMatchObject({ acked: events, deadLettered: 0 });
  });
});

/** Page views per page per second over four lanes, with disorder up to 200 ms. */
function memoryViews(): { op: WindowOperator<Click, number>; views: Views } {
  const hub = new WatermarkHub();
  const op = tumbling<Click, number, number>({ name: 'views', sizeMs: SECOND, aggregate: agg.count() });
  const views = actor<Click, WindowResult<number>>({
    name: 'views',
    subscribe: 'clicks',
    output: 'views',
    partitionBy: (env) => env.data.page,
    lanes: 4,
    pipeline: (click$, ctx) =>
      click$.pipe(
        watermarks({ maxOutOfOrdernessMs: 200, idleTimeoutMs: 10 * SECOND, clock: ctx.clock }),
        hub.channel(ctx.lane),
        op,
      ),
  });
  return { op, views };
}

describe('windows in an actor - a window whose result fails', () => {
  test("dead-letters that window's inputs once, not the later inputs that moved the watermark; later windows still fire", async () => {
    const h = start(
      actor<Click, WindowResult<number>>({
        name: 'views',
        subscribe: 'clicks',
        output: 'views',
        pipeline: (click$) =>
          click$.pipe(
            eventTime((c: Click) => c.ts),
            watermarks({ maxOutOfOrdernessMs: 0 }),
            tumbling({
              name: 'views',
              sizeMs: 10 * SECOND,
              keyed: false,
              aggregate: {
                init: () => [] as string[],
                add: (acc: string[], c: Click) => [...acc, c.page],
                result: (acc: string[]) => {
                  if (acc.includes('bad')) throw new Error('cannot count a bad page');
                  return acc.length;
                },
              },
            }),
          ),
      }),
    );
    await click(h, 'bad', 1 * SECOND);
    await click(h, 'home', 2 * SECOND);
    await click(h, 'home', 12 * SECOND); // watermark 11,999: [0, 10 s) fails to make its result
    await click(h, 'home', 13 * SECOND);
    await click(h, 'home', 25 * SECOND); // [10 s, 20 s) fires
    await h.advance(60 * SECOND); // any retry would have run by now
    expect(h.deadLetters.map((d) => d.data)).toEqual([
      { page: 'bad', ts: 1_000 },
      { page: 'home', ts: 2_000 },
    ]);
    const letter = h.deadLetters[0] as Envelope;
    expect(letter.headers).toMatchObject({
      [DEAD_LETTER_HEADERS.code]: 'SLUICE_ERR_HANDLER',
      [DEAD_LETTER_HEADERS.attempts]: '1',
    });
    expect(letter.headers[DEAD_LETTER_HEADERS.error]).toContain('cannot count a bad page');
    expect(h.outputs<WindowResult<number>>().map((o) => [o.data.start, o.data.value])).toEqual([[10_000, 2]]);
    expect(h.ref.counters).toMatchObject({ retried: 0, deadLettered: 2, restarts: 0 });
  }, 10_000);
});
