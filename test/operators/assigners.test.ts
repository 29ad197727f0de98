import { OptionsError } from 'sluice';
import { agg, session, sliding, tumbling, Watermark } from 'sluice/operators';
import { describe, expect, test } from 'vitest';
import { ev, lateSink, run } from './helpers.ts';

// Cases worked out by hand from Flink's documentation ("Windows": tumbling, sliding and session
// assigners; "window start = timestamp - (timestamp - offset + size) % size") and from the cases of
// its TumblingEventTimeWindowsTest, SlidingEventTimeWindowsTest and EventTimeSessionWindowsTest.

const HOUR = 3_600_000;
const MIN = 60_000;

/** The windows an input at each time lands in: [start, end) per input, in Flink's order. */
function windowsOf(op: ReturnType<typeof tumbling<number, number[], number[]>>, times: number[]): [number, number][][] {
  return times.map((t) => {
    const got = run(op, [ev(t, t, 'k')]);
    return got.results.map((r) => [r.data.start, r.data.end] as [number, number]);
  });
}

describe('tumbling - assignment as Flink defines it', () => {
  const op = () => tumbling({ name: 't', sizeMs: 5_000, aggregate: agg.collect<number>() });

  test('windows are half-open and aligned to the epoch: 0 and 4999 share [0, 5000), 5000 starts the next', () => {
    expect(windowsOf(op(), [0, 4_999, 5_000, 12_345])).toEqual([
      [[0, 5_000]],
      [[0, 5_000]],
      [[5_000, 10_000]],
      [[10_000, 15_000]],
    ]);
  });

  test('negative event times round down, not toward zero: -1 is in [-5000, 0)', () => {
    expect(windowsOf(op(), [-1, -5_000, -5_001])).toEqual([[[-5_000, 0]], [[-5_000, 0]], [[-10_000, -5_000]]]);
  });

  test('an offset shifts the windows: 1-hour windows offset by 15 minutes run 1:15:00.000 to 2:14:59.999', () => {
    const hourly = tumbling({ name: 't', sizeMs: HOUR, offsetMs: 15 * MIN, aggregate: agg.collect<number>() });
    const t115 = HOUR + 15 * MIN;
    expect(windowsOf(hourly, [t115, t115 + HOUR - 1, t115 + HOUR, 14 * MIN])).toEqual([
      [[t115, t115 + HOUR]],
      [[t115, t115 + HOUR]],
      [[t115 + HOUR, t115 + 2 * HOUR]],
      [[15 * MIN - HOUR, 15 * MIN]],
    ]);
  });

  test('days in UTC+8: size 1 day, offset -8 hours, start at 16:00 UTC', () => {
    const daily = tumbling({ name: 'd', sizeMs: 24 * HOUR, offsetMs: -8 * HOUR, aggregate: agg.collect<number>() });
    const jan2 = Date.UTC(2024, 0, 2, 3, 0); // 11:00 on Jan 2 in UTC+8
    const [[w]] = windowsOf(daily, [jan2]) as [[[number, number]]];
    expect(new Date(w[0]).toISOString()).toBe('2024-01-01T16:00:00.000Z');
    expect(new Date(w[1]).toISOString()).toBe('2024-01-02T16:00:00.000Z');
  });

  test('Flink test case: offset 100 on 5 s windows puts 100 and 5099 in [100, 5100), 5100 in the next', () => {
    const shifted = tumbling({ name: 't', sizeMs: 5_000, offsetMs: 100, aggregate: agg.collect<number>() });
    expect(windowsOf(shifted, [100, 5_099, 5_100])).toEqual([[[100, 5_100]], [[100, 5_100]], [[5_100, 10_100]]]);
  });

  test('a window fires when the watermark reaches end - 1, not before', () => {
    const before = run(op(), [ev(1, 1_000, 'k'), new Watermark(4_998), ev(2, 2_000, 'k')]);
    expect(before.results.map((r) => r.data.value)).toEqual([[1, 2]]);
    const sink = lateSink<number>();
    const at = run(tumbling({ name: 't', sizeMs: 5_000, aggregate: agg.collect<number>(), late: sink.late }), [
      ev(1, 1_000, 'k'),
      new Watermark(4_999),
      ev(2, 2_000, 'k'),
    ]);
    // Fired at 4999 with [1]; the input at 2000 came after the window closed (no lateness): late.
    expect(at.results.map((r) => r.data.value)).toEqual([[1]]);
    expect(sink.got.map((l) => [l.env.data, l.reason])).toEqual([[2, 'beyond-allowed-lateness']]);
  });

  test('each window has its own key space: keyed windows per env.key, global with keyed: false', () => {
    const items = [ev('a1', 1, 'a'), ev('b1', 2, 'b'), ev('a2', 3, 'a')];
    const keyed = run(tumbling({ name: 't', sizeMs: 10, aggregate: agg.collect<string>() }), items);
    expect(keyed.results.map((r) => [r.data.key, r.data.value, r.data.idempotencyKey])).toEqual([
      ['a', ['a1', 'a2'], 't/a/0-10'],
      ['b', ['b1'], 't/b/0-10'],
    ]);
    const global = run(tumbling({ name: 't', sizeMs: 10, keyed: false, aggregate: agg.collect<string>() }), items);
    expect(global.results.map((r) => [r.data.key, r.data.value, r.data.idempotencyKey])).toEqual([
      [undefined, ['a1', 'b1', 'a2'], 't//0-10'],
    ]);
  });

  test('options are checked, naming the option and the value', () => {
    const make = (o: Record<string, unknown>) => () =>
      tumbling({ name: 't', sizeMs: 10, aggregate: agg.count(), ...o } as never);
    expect(make({ sizeMs: 0 })).toThrow(OptionsError);
    expect(make({ sizeMs: 0 })).toThrow("invalid option 'tumbling.sizeMs'");
    expect(make({ offsetMs: 10 })).toThrow("invalid option 'tumbling.offsetMs'");
    expect(make({ name: 'a/b' })).toThrow("invalid option 'tumbling.name'");
    expect(make({ name: '' })).toThrow("invalid option 'tumbling.name'");
    expect(make({ aggregate: {} })).toThrow("invalid option 'tumbling.aggregate'");
    expect(make({ allowedLatenessMs: -1 })).toThrow("invalid option 'tumbling.allowedLatenessMs'");
    expect(make({ early: { everyEvents: 0 } })).toThrow("invalid option 'tumbling.early.everyEvents'");
    expect(make({ late: 'nope' })).toThrow("invalid option 'tumbling.late'");
    try {
      make({ sizeMs: -5 })();
    } catch (error) {
      expect(error).toMatchObject({ code: 'SLUICE_ERR_OPTIONS', option: 'tumbling.sizeMs', value: -5 });
    }
  });
});

describe('sliding - assignment as Flink defines it', () => {
  test('10-minute windows sliding by 5 minutes: an input belongs to two, latest first', () => {
    const op = sliding({ name: 's', sizeMs: 10 * MIN, slideMs: 5 * MIN, aggregate: agg.collect<number>() });
    const t = 7 * MIN;
    const got = run(op, [ev(1, t, 'k')]);
    expect(got.results.map((r) => [r.data.start, r.data.end])).toEqual([
      [0, 10 * MIN],
      [5 * MIN, 15 * MIN],
    ]);
  });

  test('Flink test case: size 5000, slide 1000: 0 is in five windows, [-4000, 1000) to [0, 5000)', () => {
    const op = sliding({ name: 's', sizeMs: 5_000, slideMs: 1_000, aggregate: agg.collect<number>() });
    const windows = (t: number) =>
      run(op, [ev(t, t, 'k')])
        .results.map((r) => [r.data.start, r.data.end])
        .sort((a, b) => (a[0] as number) - (b[0] as number));
    expect(windows(0)).toEqual([
      [-4_000, 1_000],
      [-3_000, 2_000],
      [-2_000, 3_000],
      [-1_000, 4_000],
      [0, 5_000],
    ]);
    expect(windows(4_999)).toEqual([
      [0, 5_000],
      [1_000, 6_000],
      [2_000, 7_000],
      [3_000, 8_000],
      [4_000, 9_000],
    ]);
    expect(windows(5_000)[0]).toEqual([1_000, 6_000]);
  });

  test('Flink test case: with offset 500, windows start at ...-500, 500, 1500...', () => {
    const op = sliding({ name: 's', sizeMs: 5_000, slideMs: 1_000, offsetMs: 500, aggregate: agg.count() });
    const got = run(op, [ev(0, 100, 'k')]);
    expect(got.results.map((r) => r.data.start).sort((a, b) => a - b)).toEqual([-4_500, -3_500, -2_500, -1_500, -500]);
  });

  test('slide longer than size leaves gaps: an input in one goes to late with reason no-window', () => {
    const sink = lateSink<number>();
    const op = sliding({ name: 's', sizeMs: 1_000, slideMs: 5_000, aggregate: agg.collect<number>(), late: sink.late });
    const got = run(op, [ev(1, 0, 'k'), ev(2, 999, 'k'), ev(3, 1_000, 'k'), ev(4, 5_000, 'k')]);
    expect(got.results.map((r) => [r.data.start, r.data.end, r.data.value])).toEqual([
      [0, 1_000, [1, 2]],
      [5_000, 6_000, [4]],
    ]);
    expect(sink.got.map((l) => [l.env.data, l.reason])).toEqual([[3, 'no-window']]);
  });

  test('an input late for its older windows but not its newest one goes to the newest only', () => {
    const sink = lateSink<number>();
    const op = sliding({ name: 's', sizeMs: 10, slideMs: 5, aggregate: agg.collect<number>(), late: sink.late });
    // At watermark 10, [0,10) is closed (end - 1 = 9) but [5,15) is open: 7 goes to [5,15) only.
    const got = run(op, [ev(1, 6, 'k'), new Watermark(10), ev(2, 7, 'k')]);
    expect(got.results.map((r) => [r.data.start, r.data.value, r.data.firing])).toEqual([
      [0, [1], 'on-time'],
      [5, [1, 2], 'final'],
    ]);
    expect(sink.got).toEqual([]);
  });
});

describe('session - merging as Flink defines it', () => {
  const op = (gapMs: number, allowedLatenessMs = 0, late?: ReturnType<typeof lateSink<number>>['late']) =>
    session({ name: 'u', gapMs, allowedLatenessMs, aggregate: agg.collect<number>(), late });

  test('an input opens [ts, ts + gap); inputs closer than the gap share a session', () => {
    const got = run(op(5_000), [ev(1, 0, 'k'), ev(2, 4_999, 'k'), ev(3, 20_000, 'k')]);
    expect(got.results.map((r) => [r.data.start, r.data.end, r.data.value])).toEqual([
      [0, 9_999, [1, 2]],
      [20_000, 25_000, [3]],
    ]);
  });

  test('windows that just touch merge too: inputs exactly gap apart share a session (TimeWindow.intersects)', () => {
    expect(run(op(5_000), [ev(1, 0, 'k'), ev(2, 5_000, 'k')]).results.map((r) => r.data.value)).toEqual([[1, 2]]);
    expect(run(op(5_000), [ev(1, 0, 'k'), ev(2, 5_001, 'k')]).results.map((r) => r.data.value)).toEqual([[1], [2]]);
  });

  test('an input that bridges two sessions merges them (contents: earlier session, later one, the input)', () => {
    const got = run(op(10), [ev(1, 0, 'k'), ev(2, 18, 'k'), ev(3, 9, 'k')]);
    expect(got.results.map((r) => [r.data.start, r.data.end, r.data.value])).toEqual([[0, 28, [1, 2, 3]]]);
  });

  test('sessions are per key, and fire in the order they end', () => {
    const got = run(op(10), [ev(1, 0, 'a'), ev(2, 5, 'b'), ev(3, 8, 'a')]);
    expect(got.results.map((r) => [r.data.key, r.data.start, r.data.end, r.data.value])).toEqual([
      ['b', 5, 15, [2]],
      ['a', 0, 18, [1, 3]],
    ]);
  });

  test('a late input that bridges two fired sessions emits one merged update superseding both keys', () => {
    const sink = lateSink<number>();
    const got = run(op(5, 100, sink.late), [
      ev(1, 0, 'k'), // [0, 5)
      ev(2, 8, 'k'), // [8, 13): 8 > 5, apart
      new Watermark(20), // both fire on time
      ev(3, 4, 'k'), // [4, 9) touches both: merged [0, 13), fires at once as late
    ]);
    expect(
      got.results.map((r) => [r.data.start, r.data.end, r.data.firing, r.data.revision, r.data.supersedes]),
    ).toEqual([
      [0, 5, 'on-time', 0, undefined],
      [8, 13, 'on-time', 0, undefined],
      [0, 13, 'late', 2, ['u/k/0-5', 'u/k/8-13']],
    ]);
    expect(got.results[2]?.data).toMatchObject({ value: [1, 2, 3], count: 3, isUpdate: true });
    expect(sink.got).toEqual([]);
  });

  test('a grown session that has not fired since carries its superseded key into a merge', () => {
    const got = run(session({ name: 'u', gapMs: 5, aggregate: agg.count(), early: { everyEvents: 2 } }), [
      ev(0, 0, 'k'), // [0, 5)
      ev(0, 10, 'k'), // [10, 15)
      ev(0, 11, 'k'), // [10, 16), 2 inputs: early result u/k/10-16
      ev(0, 12, 'k'), // [10, 17): 10-16 is superseded, not re-fired yet
      ev(0, 5, 'k'), // [5, 10) touches both: [0, 17), 3 inputs since: early result
    ]);
    expect(got.results.map((r) => [r.data.idempotencyKey, r.data.firing, r.data.value, r.data.supersedes])).toEqual([
      ['u/k/10-16', 'early', 2, undefined],
      ['u/k/0-17', 'early', 5, ['u/k/10-16']],
      ['u/k/0-17', 'final', 5, undefined],
    ]);
    expect(got.results.map((r) => [r.data.revision, r.data.isUpdate])).toEqual([
      [0, false],
      [1, true],
      [2, true],
    ]);
  });

  test('a session that grows past the watermark after firing fires again on time, as an update', () => {
    const sink = lateSink<number>();
    const got = run(op(5, 50, sink.late), [ev(1, 0, 'k'), new Watermark(4), ev(2, 3, 'k'), new Watermark(7)]);
    // [0,5) fires at 4; 3 -> [3,8) grows it to [0,8), past watermark 4: no immediate firing;
    // it fires on time at 7, superseding 0-5.
    expect(got.results.map((r) => [r.data.idempotencyKey, r.data.firing, r.data.isUpdate, r.data.supersedes])).toEqual([
      ['u/k/0-5', 'on-time', false, undefined],
      ['u/k/0-8', 'on-time', true, ['u/k/0-5']],
    ]);
  });

  test('an input whose own window is past the lateness still joins an open session it touches (Flink)', () => {
    const sink = lateSink<number>();
    // Watermark 30; [20, 40) open. An input at 12 has [12, 32) - late on its own - but touches it;
    // one at -10 has [-10, 10), touches nothing, and is late.
    const got = run(op(20, 0, sink.late), [ev(1, 20, 'k'), new Watermark(30), ev(2, 12, 'k'), ev(3, -10, 'k')]);
    expect(sink.got.map((l) => [l.env.data, l.reason])).toEqual([[3, 'beyond-allowed-lateness']]);
    expect(got.results.map((r) => [r.data.start, r.data.end, r.data.value])).toEqual([[12, 40, [1, 2]]]);
  });

  test('session windows need a mergeable aggregate', () => {
    const noMerge = { init: () => 0, add: (a: number) => a + 1, result: (a: number) => a };
    expect(() => session({ name: 'u', gapMs: 10, aggregate: noMerge })).toThrow(
      "invalid option 'session.aggregate': must have a merge function",
    );
    expect(() => session({ name: 'u', gapMs: 0, aggregate: agg.count() })).toThrow("invalid option 'session.gapMs'");
  });
});
