import { from, type Observable, Subject } from 'rxjs';
import { type Envelope, OptionsError } from 'sluice';
import { agg, countWindow, type Timed, tumbling, Watermark, type WindowResult, watermarks } from 'sluice/operators';
import { testPipeline } from 'sluice/testing';
import { describe, expect, expectTypeOf, test } from 'vitest';
import { CountingLineage, ev, run } from './helpers.ts';

describe('countWindow - tumbling', () => {
  test('fires every size inputs per key, indexes as bounds; the end of input flushes partial windows', () => {
    const e = [
      ev(1, 10, 'a'),
      ev(2, 5, 'b'),
      ev(3, 30, 'a'),
      ev(4, 1, 'a'),
      ev(5, 2, 'b'),
      ev(6, 3, 'a'),
      ev(7, 4, 'a'),
    ];
    const id = (i: number) => (e[i] as { id: string }).id;
    const got = run(countWindow({ name: 'c', size: 2, aggregate: agg.collect<number>() }), [
      e[0],
      e[1],
      e[2], // a: [0, 2) full
      new Watermark(1_000), // ignored: count windows follow arrival, not event time
      e[3],
      e[4], // b: [0, 2) full
      e[5], // a: [2, 4) full
      e[6],
    ] as Timed<number>[]);
    expect(got.results.map((r) => [r.data.start, r.data.end, r.data.value, r.data.firing, r.eventTime])).toEqual([
      [0, 2, [1, 3], 'on-time', 30],
      [0, 2, [2, 5], 'on-time', 5],
      [2, 4, [4, 6], 'on-time', 3],
      [4, 5, [7], 'partial', 4],
    ]);
    // Named by the first input and the size: indexes restart with a pipeline, ids do not.
    expect(got.results.map((r) => r.data.idempotencyKey)).toEqual([
      `c/a/${id(0)}+2`,
      `c/b/${id(1)}+2`,
      `c/a/${id(3)}+2`,
      `c/a/${id(6)}+1`,
    ]);
  });

  test('global with keyed: false', () => {
    const first = ev(1, 1, 'a');
    const got = run(countWindow({ name: 'c', size: 3, keyed: false, aggregate: agg.count() }), [
      first,
      ev(2, 2, 'b'),
      ev(3, 3, 'c'),
    ]);
    expect(got.results.map((r) => [r.data.idempotencyKey, r.data.start, r.data.end, r.data.value])).toEqual([
      [`c//${first.id}+3`, 0, 3, 3],
    ]);
  });

  test('a restart between two windows keeps idempotency keys distinct and reproduces them on replay', () => {
    const h = testPipeline<string, WindowResult<string[]>>((in$) =>
      in$.pipe(countWindow({ name: 'c', size: 2, aggregate: agg.collect<string>() })),
    );
    for (const d of ['a', 'b', 'c']) h.send(d, { key: 'k' });
    h.restart(); // 'c' was open: it is replayed into the new pipeline
    h.send('d', { key: 'k' });
    const keys = h.outputs.map((o) => o.data.idempotencyKey);
    expect(h.values.map((v) => v.value)).toEqual([
      ['a', 'b'],
      ['c', 'd'],
    ]);
    expect(new Set(keys).size).toBe(2);
    expect(keys[1]).toBe(`c/k/${h.inputs[2]?.env.id}+2`);
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
