import { from, type Observable, Subject } from 'rxjs';
import { type Envelope, OptionsError } from 'sluice';
import { agg, countWindow, type Timed, tumbling, Watermark, type WindowResult, watermarks } from 'sluice/operators';
import { describe, expect, expectTypeOf, test } from 'vitest';
import { CountingLineage, ev, run } from './helpers.ts';

describe('countWindow - tumbling', () => {
  test('fires every size inputs per key, indexes as bounds; the end of input flushes partial windows', () => {
    const got = run(countWindow({ name: 'c', size: 2, aggregate: agg.collect<number>() }), [
      ev(1, 10, 'a'),
      ev(2, 5, 'b'),
      ev(3, 30, 'a'), // a: [0, 2) full
      new Watermark(1_000), // ignored: count windows follow arrival, not event time
      ev(4, 1, 'a'),
      ev(5, 2, 'b'), // b: [0, 2) full
      ev(6, 3, 'a'), // a: [2, 4) full
      ev(7, 4, 'a'),
    ]);
    expect(got.results.map((r) => [r.data.idempotencyKey, r.data.value, r.data.firing, r.eventTime])).toEqual([
      ['c/a/0-2', [1, 3], 'on-time', 30],
      ['c/b/0-2', [2, 5], 'on-time', 5],
      ['c/a/2-4', [4, 6], 'on-time', 3],
      ['c/a/4-5', [7], 'partial', 4],
    ]);
  });

  test('global with keyed: false', () => {
    const got = run(countWindow({ name: 'c', size: 3, keyed: false, aggregate: agg.count() }), [
      ev(1, 1, 'a'),
      ev(2, 2, 'b'),
      ev(3, 3, 'c'),
    ]);
    expect(got.results.map((r) => [r.data.idempotencyKey, r.data.value])).toEqual([['c//0-3', 3]]);
  });
});

describe('countWindow - sliding', () => {
  test('countWindow(3, 2) as Flink: every 2 inputs, over the last 3', () => {
    const got = run(countWindow({ name: 'c', size: 3, slide: 2, aggregate: agg.collect<number>() }), [
      ev(1, 1, 'k'),
      ev(2, 2, 'k'),
      ev(3, 3, 'k'),
      ev(4, 4, 'k'),
      ev(5, 5, 'k'),
      ev(6, 6, 'k'),
      ev(7, 7, 'k'),
    ]);
    expect(got.results.map((r) => [r.data.start, r.data.end, r.data.value, r.data.firing])).toEqual([
      [0, 2, [1, 2], 'on-time'],
      [1, 4, [2, 3, 4], 'on-time'],
      [3, 6, [4, 5, 6], 'on-time'],
      [4, 7, [5, 6, 7], 'partial'],
    ]);
  });

  test('each input is given back once it left the last window that includes it', () => {
    const lineages = Array.from({ length: 5 }, (_, i) => new CountingLineage(`m${i}`));
    const input = new Subject<Timed<number>>();
    input.pipe(countWindow({ name: 'c', size: 3, slide: 1, aggregate: agg.count() })).subscribe();
    const holding = () => lineages.map((l) => l.holding);
    for (const [i, l] of lineages.entries()) input.next(ev(i, i, 'k', l));
    // The last 3 are still in the ring; the first 2 left it as the 4th and 5th arrived.
    expect(holding()).toEqual([0, 0, 1, 1, 1]);
    input.complete();
    expect(holding()).toEqual([0, 0, 0, 0, 0]);
  });
});

describe('countWindow - settlement and options', () => {
  test('a result carries the lineage of its inputs, given back after it is emitted', () => {
    const lineages = [new CountingLineage('a'), new CountingLineage('b')];
    const seen: number[] = [];
    const op = countWindow({ name: 'c', size: 2, aggregate: agg.count() });
    run(
      op,
      lineages.map((l, i) => ev(i, i, 'k', l)),
    ).results.forEach((r) => {
      expect(r.lineage?.ids).toEqual(['a', 'b']);
    });
    for (const l of lineages) {
      seen.push(l.absorbed, l.releasedAbsorbed);
    }
    expect(seen).toEqual([1, 1, 1, 1]);
    expect(op.stats()).toMatchObject({ openWindows: 0, absorbed: 0, results: 1 });
  });

  test('options are checked', () => {
    expect(() => countWindow({ name: 'c', size: 0, aggregate: agg.count() })).toThrow(OptionsError);
    expect(() => countWindow({ name: 'c', size: 2, slide: 3, aggregate: agg.count() })).toThrow(
      "invalid option 'countWindow.slide'",
    );
  });
});

describe('windows - types', () => {
  test('plain envelope streams and timed streams both pipe into windows; results are typed by the aggregate', () => {
    type Req = { ms: number; path: string };
    const reqs = from([ev<Req>({ ms: 3, path: '/' }, 1, '/')]);
    const counted = reqs.pipe(countWindow({ name: 'c', size: 1, aggregate: agg.mean((r: Req) => r.ms) }));
    expectTypeOf(counted).toEqualTypeOf<Observable<Envelope<WindowResult<number>>>>();
    const timed = reqs.pipe(watermarks());
    const latency = timed.pipe(
      tumbling({
        name: 't',
        sizeMs: 10,
        aggregate: agg.combine({ n: agg.count(), p: agg.quantiles((r: Req) => r.ms) }),
      }),
    );
    expectTypeOf(latency).toEqualTypeOf<
      Observable<Envelope<WindowResult<{ n: number; p: Readonly<Record<string, number>> }>>>
    >();
    let value: { n: number } | undefined;
    latency.subscribe((r) => {
      value = r.data.value;
    });
    expect(value).toMatchObject({ n: 1 });
  });
});
