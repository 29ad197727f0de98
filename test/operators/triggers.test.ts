import { Subject } from 'rxjs';
import { createEnvelope, type Envelope, VirtualClock } from 'sluice';
import {
  agg,
  LateDataError,
  type Timed,
  tumbling,
  Watermark,
  WINDOW_HEADERS,
  type WindowResult,
} from 'sluice/operators';
import { describe, expect, test } from 'vitest';
import { CountingLineage, ev, lateSink, run } from './helpers.ts';

type Row = [string, string, unknown, number, boolean];
const rows = <R>(results: Envelope<WindowResult<R>>[]): Row[] =>
  results.map((r) => [r.data.idempotencyKey, r.data.firing, r.data.value, r.data.revision, r.data.isUpdate]);

describe('triggers - on the watermark, with allowed lateness', () => {
  test('a late input within the allowed lateness re-emits the window as an update under the same key', () => {
    const sink = lateSink<number>();
    const op = tumbling({ name: 'j', sizeMs: 10, allowedLatenessMs: 5, aggregate: agg.sum(), late: sink.late });
    const got = run(op, [
      ev(1, 2, 'k'),
      ev(2, 8, 'k'),
      new Watermark(9), // end - 1: on time
      ev(3, 5, 'k'), // late, within lateness (cleanup at 9 + 5 = 14)
      ev(4, 1, 'k'), // again
      new Watermark(14), // purged
      ev(5, 3, 'k'), // beyond the allowed lateness
    ]);
    expect(rows(got.results)).toEqual([
      ['j/k/0-10', 'on-time', 3, 0, false],
      ['j/k/0-10', 'late', 6, 1, true],
      ['j/k/0-10', 'late', 10, 2, true],
    ]);
    expect(sink.got).toHaveLength(1);
    const late = sink.got[0] as (typeof sink.got)[0];
    expect(late.reason).toBe('beyond-allowed-lateness');
    expect(late.env.data).toBe(5);
    expect(late.env.headers).toMatchObject({
      [WINDOW_HEADERS.lateReason]: 'beyond-allowed-lateness',
      [WINDOW_HEADERS.lateWatermark]: '14',
      [WINDOW_HEADERS.window]: 'j',
    });
    expect(op.stats()).toMatchObject({ results: 3, late: 1, openWindows: 0 });
  });

  test('a window first opened within its allowed lateness fires at once, late but not an update', () => {
    const op = tumbling({ name: 'j', sizeMs: 10, allowedLatenessMs: 20, aggregate: agg.count() });
    const got = run(op, [new Watermark(15), ev(1, 3, 'k')]);
    expect(rows(got.results)).toEqual([['j/k/0-10', 'late', 1, 0, false]]);
  });

  test('without a late handler, a late input fails with LateDataError (the actor dead-letters it)', () => {
    const lineage = new CountingLineage('m1');
    const op = tumbling({ name: 'hourly', sizeMs: 10, aggregate: agg.count() });
    const late = createEnvelope('in', 1, { id: 'm1', eventTime: 3, key: 'k', lineage });
    run(op, [new Watermark(50), late]);
    expect(lineage.retained).toBe(1);
    expect(lineage.released).toBe(1);
    const error = lineage.errors[0] as LateDataError;
    expect(error).toBeInstanceOf(LateDataError);
    expect(error).toMatchObject({
      code: 'SLUICE_ERR_LATE_DATA',
      retryable: false,
      operator: 'hourly',
      messageId: 'm1',
      reason: 'beyond-allowed-lateness',
      eventTime: 3,
      watermark: 50,
    });
    expect(error.message).toContain("'m1'");
    // Without lineage there is nothing to fail: it is counted.
    run(op, [new Watermark(50), ev(1, 3, 'k')]);
    expect(op.stats().late).toBe(2);
  });

  test('an input without an event time goes to the late output with reason missing-event-time', () => {
    const sink = lateSink<number>();
    const got = run(tumbling({ name: 'j', sizeMs: 10, aggregate: agg.count(), late: sink.late }), [
      ev(1, undefined, 'k'),
      ev(2, Number.NaN, 'k'),
    ]);
    expect(got.results).toEqual([]);
    expect(sink.got.map((l) => [l.env.data, l.reason])).toEqual([
      [1, 'missing-event-time'],
      [2, 'missing-event-time'],
    ]);
  });

  test('watermarks that do not advance are ignored; the end of the input fires what is open', () => {
    const input = new Subject<Timed<number>>();
    const out: Envelope<WindowResult<number>>[] = [];
    let completed = false;
    input.pipe(tumbling({ name: 'j', sizeMs: 10, aggregate: agg.count() })).subscribe({
      next: (r) => out.push(r),
      complete: () => {
        completed = true;
      },
    });
    input.next(ev(1, 5, 'k'));
    input.next(new Watermark(20));
    input.next(new Watermark(3));
    input.next(ev(2, 25, 'k'));
    expect(rows(out)).toEqual([['j/k/0-10', 'on-time', 1, 0, false]]);
    input.complete();
    expect(rows(out)).toEqual([
      ['j/k/0-10', 'on-time', 1, 0, false],
      ['j/k/20-30', 'on-time', 1, 0, false],
    ]);
    expect(completed).toBe(true);
  });
});

describe('triggers - early firings', () => {
  test('every N inputs: early results, then the on-time one, then late updates', () => {
    const op = tumbling({
      name: 'j',
      sizeMs: 100,
      allowedLatenessMs: 50,
      early: { everyEvents: 2 },
      aggregate: agg.count(),
    });
    const got = run(op, [
      ev(0, 1, 'k'),
      ev(0, 2, 'k'), // 2 since the last result: early
      ev(0, 3, 'k'),
      new Watermark(99), // on time, though only 1 input since the early one
      ev(0, 4, 'k'), // late: fires at once
    ]);
    expect(rows(got.results)).toEqual([
      ['j/k/0-100', 'early', 2, 0, false],
      ['j/k/0-100', 'on-time', 3, 1, true],
      ['j/k/0-100', 'late', 4, 2, true],
    ]);
  });

  test('every interval of processing time: only windows with new inputs, aligned to the interval', async () => {
    const clock = new VirtualClock(1_000);
    const input = new Subject<Timed<number>>();
    const out: Envelope<WindowResult<number>>[] = [];
    const op = tumbling({ name: 'j', sizeMs: 100, early: { everyMs: 500 }, clock, aggregate: agg.count() });
    input.pipe(op).subscribe((r) => out.push(r));

    input.next(ev(0, 10, 'a'));
    input.next(ev(0, 20, 'b'));
    expect(clock.pending).toBe(1); // one timer for the operator, not one per window
    await clock.advanceTo(1_499);
    expect(out).toEqual([]);
    await clock.advanceTo(1_500);
    expect(rows(out)).toEqual([
      ['j/a/0-100', 'early', 1, 0, false],
      ['j/b/0-100', 'early', 1, 0, false],
    ]);
    expect(clock.pending).toBe(0); // nothing new: no timer re-armed, runAll terminates

    input.next(ev(0, 30, 'a'));
    await clock.advanceTo(1_900);
    expect(out).toHaveLength(2);
    await clock.advanceTo(2_000);
    expect(rows(out).slice(2)).toEqual([['j/a/0-100', 'early', 2, 1, true]]);

    // Closed windows take no early firing; the on-time one comes from the watermark.
    input.next(ev(0, 40, 'b'));
    input.next(new Watermark(99));
    await clock.runAll();
    expect(rows(out).slice(3)).toEqual([
      ['j/a/0-100', 'on-time', 2, 2, true],
      ['j/b/0-100', 'on-time', 2, 1, true],
    ]);
  });
});

describe('window results - the envelope', () => {
  test('key, bounds, event time end - 1, idempotency key header, subject of the first input or the option', () => {
    const items = [
      createEnvelope('clicks.home', 'a', { eventTime: 61_000, key: 'home' }),
      createEnvelope('clicks.other', 'b', { eventTime: 62_000, key: 'home' }),
    ];
    const [r] = run(tumbling({ name: 'views', sizeMs: 60_000, aggregate: agg.count() }), items).results;
    expect(r).toMatchObject({
      subject: 'clicks.home',
      key: 'home',
      eventTime: 119_999,
      attempt: 1,
      replyTo: undefined,
      lineage: undefined,
      headers: { [WINDOW_HEADERS.idempotencyKey]: 'views/home/60000-120000' },
      data: {
        key: 'home',
        start: 60_000,
        end: 120_000,
        value: 2,
        count: 2,
        firing: 'on-time',
        isUpdate: false,
        revision: 0,
        idempotencyKey: 'views/home/60000-120000',
        supersedes: undefined,
      },
    });
    const [s] = run(
      tumbling({ name: 'views', sizeMs: 60_000, subject: 'views.1m', aggregate: agg.count() }),
      items,
    ).results;
    expect(s?.subject).toBe('views.1m');
    expect(s?.id).not.toBe(r?.id);
  });

  test('the same inputs replayed give the same idempotency keys and values', () => {
    const items = () => [ev(1, 5, 'a'), ev(2, 15, 'a'), ev(3, 7, 'b'), new Watermark(30)];
    const op = () => tumbling({ name: 'j', sizeMs: 10, aggregate: agg.sum() });
    const first = run(op(), items()).results.map((r) => [r.data.idempotencyKey, r.data.value]);
    const again = run(op(), items()).results.map((r) => [r.data.idempotencyKey, r.data.value]);
    expect(again).toEqual(first);
  });

  test('an aggregate that throws fails the stream with its error', () => {
    const boom = new Error('boom');
    const bad = {
      init: () => 0,
      add: () => {
        throw boom;
      },
      merge: (a: number) => a,
      result: (a: number) => a,
    };
    const input = new Subject<Timed<number>>();
    let failed: unknown;
    input.pipe(tumbling({ name: 'j', sizeMs: 10, aggregate: bad })).subscribe({ error: (e) => (failed = e) });
    input.next(ev(1, 1, 'k'));
    expect(failed).toBe(boom);
    expect(input.observed).toBe(false);
  });
});
