import { from, Subject } from 'rxjs';
import { type Envelope, OptionsError, VirtualClock } from 'sluice';
import {
  agg,
  eventTime,
  isWatermark,
  mergeWatermarked,
  type Timed,
  tumbling,
  Watermark,
  WatermarkHub,
  type WindowResult,
  watermarks,
} from 'sluice/operators';
import { describe, expect, test } from 'vitest';
import { ev, lateSink, run } from './helpers.ts';

/** Items as strings: `e<data>` for an envelope, `w<time>` (`i<time>` when idle) for a watermark. */
function show(items: Timed<unknown>[]): string[] {
  return items.map((x) => (isWatermark(x) ? `${x.idle ? 'i' : 'w'}${x.time}` : `e${String(x.data)}`));
}

function collect<T>(source: { subscribe: (o: (x: T) => void) => unknown }): T[] {
  const out: T[] = [];
  source.subscribe((x) => out.push(x));
  return out;
}

describe('watermarks - bounded out-of-orderness', () => {
  test('watermark = largest event time - bound - 1, emitted right after the envelope that raises it', () => {
    const out = collect(
      from([ev(1, 10), ev(2, 25), ev(3, 12), ev(4, 26), ev(5, undefined)]).pipe(watermarks({ maxOutOfOrdernessMs: 2 })),
    );
    expect(show(out)).toEqual(['e1', 'w7', 'e2', 'w22', 'e3', 'e4', 'w23', 'e5']);
  });

  test('an event time that is not a finite number moves no watermark: the input goes to late as missing-event-time', () => {
    const { late, got } = lateSink<number>();
    const items = collect(
      from([ev(1, 10), ev(2, Number.POSITIVE_INFINITY), ev(3, 20), ev(4, Number.NEGATIVE_INFINITY)]).pipe(watermarks()),
    );
    expect(show(items)).toEqual(['e1', 'w9', 'e2', 'e3', 'w19', 'e4']);
    const windows = run(
      tumbling<number, number, number>({ name: 'w', sizeMs: 100, aggregate: agg.count(), late }),
      from([ev(1, 10), ev(2, Number.POSITIVE_INFINITY), ev(3, 20), ev(4, Number.NEGATIVE_INFINITY)]).pipe(watermarks()),
    );
    expect(windows.results.map((r) => [r.data.start, r.data.count, r.data.firing])).toEqual([[0, 2, 'final']]);
    expect(got.map((g) => [g.env.data, g.reason])).toEqual([
      [2, 'missing-event-time'],
      [4, 'missing-event-time'],
    ]);
  });

  test('eventTime: an extractor that finds no time gives a missing event time; one of the wrong type is a clear error', () => {
    const { late, got } = lateSink<{ ts?: unknown }>();
    const windows = run(
      tumbling<{ ts?: unknown }, number, number>({ name: 'w', sizeMs: 100, aggregate: agg.count(), late }),
      from([ev({ ts: 10 }, 0), ev({}, 0), ev({ ts: null }, 0)]).pipe(
        eventTime((d: { ts?: unknown }) => d.ts as number),
        watermarks(),
      ),
    );
    expect(windows.results.map((r) => r.data.count)).toEqual([1]);
    expect(got.map((g) => g.reason)).toEqual(['missing-event-time', 'missing-event-time']);
    const errors: unknown[] = [];
    from([ev({ ts: '2024-01-01T00:00:00Z' }, 0)])
      .pipe(eventTime((d: { ts?: unknown }) => d.ts as number))
      .subscribe({ error: (e: unknown) => errors.push(e) });
    expect(errors[0]).toBeInstanceOf(OptionsError);
    expect(String(errors[0])).toMatch(/'eventTime'.*epoch ms.*Date.*2024-01-01T00:00:00Z/);
  });

  test('upstream watermarks are replaced, as Flink does when timestamps are assigned again', () => {
    const out = collect(from([new Watermark(100), ev(1, 10)]).pipe(watermarks()));
    expect(show(out)).toEqual(['e1', 'w9']);
  });

  test('options are checked', () => {
    expect(() => watermarks({ maxOutOfOrdernessMs: -1 })).toThrow(OptionsError);
    expect(() => watermarks({ idleTimeoutMs: 0 })).toThrow("invalid option 'watermarks.idleTimeoutMs'");
  });
});

describe('watermarks - idleness on the clock', () => {
  test('no envelope for idleTimeoutMs of processing time marks the stream idle; the next one wakes it', async () => {
    const clock = new VirtualClock(0);
    const input = new Subject<Envelope<number>>();
    const out = collect(input.pipe(watermarks({ maxOutOfOrdernessMs: 0, idleTimeoutMs: 1_000, clock })));
    input.next(ev(1, 100));
    await clock.advanceTo(600);
    input.next(ev(2, 50)); // activity at 600: not idle at 1000
    await clock.advanceTo(1_599);
    expect(show(out)).toEqual(['e1', 'w99', 'e2']);
    await clock.advanceTo(1_600);
    expect(show(out)).toEqual(['e1', 'w99', 'e2', 'i99']);
    expect(clock.pending).toBe(0); // idle: no timer until the next envelope
    input.next(ev(3, 90)); // does not raise the watermark: says "active" explicitly
    input.next(ev(4, 200));
    expect(show(out).slice(4)).toEqual(['e3', 'w99', 'e4', 'w199']);
    input.complete();
    expect(clock.pending).toBe(0);
  });

  test('a stream that never gets an envelope goes idle after the timeout', async () => {
    const clock = new VirtualClock(0);
    const out = collect(new Subject<Envelope<number>>().pipe(watermarks({ idleTimeoutMs: 500, clock })));
    await clock.runAll();
    expect(show(out)).toEqual(['i-Infinity']);
  });
});

describe('WatermarkHub - the minimum over active inputs, as Flink combines input channels', () => {
  test('a lane sees the combined watermark, driven by the slowest active lane', () => {
    const hub = new WatermarkHub();
    const a = new Subject<Timed<number>>();
    const b = new Subject<Timed<number>>();
    const outA = collect(a.pipe(hub.channel()));
    const outB = collect(b.pipe(hub.channel()));
    a.next(ev(1, 10));
    a.next(new Watermark(9)); // b has none yet: -Infinity holds the minimum
    expect(show(outA)).toEqual(['e1']);
    b.next(new Watermark(19));
    expect(hub.watermark).toBe(9);
    a.next(new Watermark(29));
    expect(show(outA)).toEqual(['e1', 'w9', 'w19']);
    expect(show(outB)).toEqual(['w9', 'w19']);
    expect(hub.watermark).toBe(19);
  });

  test('idle inputs do not count; all idle flushes the maximum; a wake-up behind never moves it back', () => {
    const hub = new WatermarkHub();
    const a = new Subject<Timed<number>>();
    const b = new Subject<Timed<number>>();
    const outA = collect(a.pipe(hub.channel()));
    collect(b.pipe(hub.channel()));
    a.next(new Watermark(10));
    b.next(new Watermark(50));
    expect(hub.watermark).toBe(10);
    b.next(new Watermark(50, true)); // b idle: a alone counts
    expect(hub.watermark).toBe(10);
    a.next(new Watermark(40));
    expect(hub.watermark).toBe(40);
    a.next(new Watermark(40, true)); // all idle: the maximum, 50, and idle
    expect(hub).toMatchObject({ watermark: 50, idle: true });
    a.next(ev(1, 45)); // a wakes up behind 50: stays at 50, active again (said before the envelope)
    expect(hub).toMatchObject({ watermark: 50, idle: false });
    expect(show(outA)).toEqual(['w10', 'w40', 'i50', 'w50', 'e1']);
  });

  test('an input that completes stops holding the others back', () => {
    const hub = new WatermarkHub();
    const a = new Subject<Timed<number>>();
    const b = new Subject<Timed<number>>();
    collect(a.pipe(hub.channel()));
    collect(b.pipe(hub.channel()));
    a.next(new Watermark(100));
    b.next(new Watermark(5));
    b.complete();
    expect(hub.watermark).toBe(100);
    expect(hub.size).toBe(1);
  });

  test('a channel with an id keeps its place and watermark while its pipeline restarts, then is taken over', () => {
    const hub = new WatermarkHub();
    const a = new Subject<Timed<number>>();
    const b1 = new Subject<Timed<number>>();
    const outA = collect(a.pipe(hub.channel(0)));
    const first = b1.pipe(hub.channel(1)).subscribe();
    a.next(new Watermark(10));
    b1.next(new Watermark(5));
    expect(hub.watermark).toBe(5);
    first.unsubscribe(); // lane 1's pipeline failed: its place still holds the watermark at 5
    a.next(new Watermark(40));
    expect(hub).toMatchObject({ size: 2, watermark: 5 });
    const b2 = new Subject<Timed<number>>();
    const outB2 = collect(b2.pipe(hub.channel(1))); // the restarted pipeline takes the place over
    expect(hub.size).toBe(2);
    b2.next(new Watermark(3)); // replayed inputs behind the place's watermark do not move it back
    expect(outB2).toEqual([]);
    b2.next(new Watermark(30));
    expect(hub.watermark).toBe(30);
    expect(show(outA)).toEqual(['w5', 'w30']);
    expect(show(outB2)).toEqual(['w30']);
    b2.complete(); // the end of its input: it leaves
    expect(hub).toMatchObject({ size: 1, watermark: 40 });
    // Without an id, an unsubscribed channel leaves at once.
    const c = new Subject<Timed<number>>().pipe(hub.channel()).subscribe();
    expect(hub.size).toBe(2);
    c.unsubscribe();
    expect(hub.size).toBe(1);
  });

  test('an upstream error also keeps the place of a channel with an id; two subscriptions at once get two places', () => {
    const hub = new WatermarkHub();
    const a = new Subject<Timed<number>>();
    a.pipe(hub.channel('x')).subscribe({ error: () => {} });
    a.next(new Watermark(7));
    a.error(new Error('operator failed'));
    expect(hub).toMatchObject({ size: 1, watermark: 7 });
    const twice = new Subject<Timed<number>>();
    const one = twice.pipe(hub.channel('x')).subscribe(); // takes the place over
    const two = twice.pipe(hub.channel('x')).subscribe(); // the place is taken: a place of its own
    expect(hub.size).toBe(2);
    one.unsubscribe(); // replaced by the newer one under 'x': it leaves
    expect(hub.size).toBe(1);
    two.unsubscribe(); // keeps the place for the next subscription
    expect(hub.size).toBe(1);
  });

  test('partitioned lanes: windows in a lane close on the combined watermark, idle lanes do not block', async () => {
    // Two lanes each see their own keys; lane B then goes quiet. Lane A's window closes only
    // once B has moved past it or has been declared idle.
    const clock = new VirtualClock(0);
    const hub = new WatermarkHub();
    const lanes = [new Subject<Envelope<string>>(), new Subject<Envelope<string>>()];
    const results: Envelope<WindowResult<number>>[] = [];
    for (const lane of lanes) {
      lane
        .pipe(
          watermarks({ maxOutOfOrdernessMs: 0, idleTimeoutMs: 5_000, clock }),
          hub.channel(),
          tumbling({ name: 'per-key', sizeMs: 10, aggregate: agg.count() }),
        )
        .subscribe((r) => results.push(r));
    }
    const [laneA, laneB] = lanes as [Subject<Envelope<string>>, Subject<Envelope<string>>];
    laneA.next(ev('x', 1, 'a'));
    laneB.next(ev('y', 2, 'b'));
    laneA.next(ev('x', 30, 'a')); // A's own watermark 29; B's is 1
    expect(results).toEqual([]);
    laneB.next(ev('y', 12, 'b')); // B at 11: [0,10) closes in both lanes
    expect(results.map((r) => r.data.idempotencyKey)).toEqual(['per-key/a/0-10', 'per-key/b/0-10']);
    await clock.advanceTo(4_999);
    expect(results).toHaveLength(2);
    await clock.advanceTo(5_000); // both idle at once: the maximum (29) flushes [10,20) of b
    expect(results.map((r) => r.data.idempotencyKey).slice(2)).toEqual(['per-key/b/10-20']);
  });
});

describe('mergeWatermarked', () => {
  test('envelopes as they come; the watermark is the minimum over open inputs, emitted once per advance', () => {
    const a = new Subject<Timed<number>>();
    const b = new Subject<Timed<number>>();
    const out: Timed<number>[] = [];
    let done = false;
    mergeWatermarked(a, b).subscribe({ next: (x) => out.push(x), complete: () => (done = true) });
    a.next(ev(1, 1));
    a.next(new Watermark(10));
    b.next(ev(2, 2));
    b.next(new Watermark(20));
    a.next(new Watermark(30));
    a.complete();
    b.next(new Watermark(40));
    expect(show(out)).toEqual(['e1', 'e2', 'w10', 'w20', 'w40']);
    expect(done).toBe(false);
    b.complete();
    expect(done).toBe(true);
  });

  test('merged streams feed a window like one stream', () => {
    const web = from([ev(1, 5, 'k'), ev(2, 15, 'k')]).pipe(watermarks());
    const app = from([ev(3, 8, 'k'), ev(4, 25, 'k')]).pipe(watermarks());
    const results = collect(mergeWatermarked(web, app).pipe(tumbling({ name: 'm', sizeMs: 10, aggregate: agg.sum() })));
    expect(results.map((r) => [r.data.start, r.data.value])).toEqual([
      [0, 4],
      [10, 2],
      [20, 4],
    ]);
  });
});
