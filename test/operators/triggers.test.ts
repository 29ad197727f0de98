import type { ActorContext, Envelope } from 'sluice';
import {
  agg,
  countWindow,
  type EarlyFiring,
  LateDataError,
  session,
  tumbling,
  Watermark,
  WINDOW_HEADERS,
  type WindowOperator,
  type WindowResult,
  WindowResultError,
} from 'sluice/operators';
import { testPipeline } from 'sluice/testing';
import { describe, expect, test } from 'vitest';
import { ev, run } from './helpers.ts';

type Row = [string, string, unknown, number, boolean];
const rows = <R>(results: Envelope<WindowResult<R>>[]): Row[] =>
  results.map((r) => [r.data.idempotencyKey, r.data.firing, r.data.value, r.data.revision, r.data.isUpdate]);

/** Late data as an actor sends it: published on the bus, where the harness collects it. */
const publishLate = (ctx: ActorContext) => (env: Envelope<number>) => ctx.bus.forward({ ...env, subject: 'j.late' });

describe('triggers - on the watermark, with allowed lateness', () => {
  test('a late input within the allowed lateness re-emits the window as an update under the same key', () => {
    let op: WindowOperator<number, number> | undefined;
    const h = testPipeline<number, WindowResult<number>>((in$, ctx) =>
      in$.pipe(
        (op = tumbling({ name: 'j', sizeMs: 10, allowedLatenessMs: 5, aggregate: agg.sum(), late: publishLate(ctx) })),
      ),
    );
    h.sendAll([
      [1, 2, 'k'],
      [2, 8, 'k'],
    ]);
    h.watermark(9); // end - 1: on time
    h.sendAll([
      [3, 5, 'k'], // late, within lateness (cleanup at 9 + 5 = 14)
      [4, 1, 'k'], // again
    ]);
    h.watermark(14); // purged
    const beyond = h.send(5, { eventTime: 3, key: 'k' }); // beyond the allowed lateness
    expect(rows(h.outputs)).toEqual([
      ['j/k/0-10', 'on-time', 3, 0, false],
      ['j/k/0-10', 'late', 6, 1, true],
      ['j/k/0-10', 'late', 10, 2, true],
    ]);
    const late = h.lateData('j.late');
    expect(late.map((l) => [l.env.data, l.reason])).toEqual([[5, 'beyond-allowed-lateness']]);
    expect(late[0]?.env.headers).toMatchObject({
      [WINDOW_HEADERS.lateReason]: 'beyond-allowed-lateness',
      [WINDOW_HEADERS.lateWatermark]: '14',
      [WINDOW_HEADERS.window]: 'j',
    });
    expect(late[0]?.env.id).toBe(beyond.env.id);
    // Every input settled: the window's once it was purged, the late one once it was published.
    expect(h.inputs.map((i) => i.outcome)).toEqual(['acked', 'acked', 'acked', 'acked', 'acked']);
    expect(op?.stats()).toMatchObject({ results: 3, late: 1, openWindows: 0 });
  });

  test('a window first opened within its allowed lateness fires at once, late but not an update', () => {
    const h = testPipeline<number, WindowResult<number>>((in$) =>
      in$.pipe(tumbling({ name: 'j', sizeMs: 10, allowedLatenessMs: 20, aggregate: agg.count() })),
    );
    h.watermark(15);
    h.send(1, { eventTime: 3, key: 'k' });
    expect(rows(h.outputs)).toEqual([['j/k/0-10', 'late', 1, 0, false]]);
  });

  test('without a late handler, a late input fails with LateDataError (the actor dead-letters it)', () => {
    const h = testPipeline<number, WindowResult<number>>((in$) =>
      in$.pipe(tumbling({ name: 'hourly', sizeMs: 10, aggregate: agg.count() })),
    );
    h.watermark(50);
    const late = h.send(1, { eventTime: 3, key: 'k' });
    expect(late.outcome).toBe('failed');
    const error = late.error as LateDataError;
    expect(error).toBeInstanceOf(LateDataError);
    expect(error).toMatchObject({
      name: 'LateDataError',
      code: 'SLUICE_ERR_LATE_DATA',
      retryable: false,
      operator: 'hourly',
      messageId: late.env.id,
      reason: 'beyond-allowed-lateness',
      eventTime: 3,
      watermark: 50,
    });
    expect(error.message).toContain(`'${late.env.id}'`);
    // The pipeline goes on: one bad input is not the pipeline's failure.
    expect(h.error).toBeUndefined();
    expect(h.published()).toEqual([]);
  });

  test('without a late handler or a lineage, a late input is counted', () => {
    // Outside an actor nothing tracks the input, so there is nothing to fail.
    const op = tumbling({ name: 'hourly', sizeMs: 10, aggregate: agg.count() });
    run(op, [new Watermark(50), ev(1, 3, 'k')]);
    expect(op.stats().late).toBe(1);
  });

  test('an input without an event time goes to the late output with reason missing-event-time', () => {
    const h = testPipeline<number, WindowResult<number>>((in$, ctx) =>
      in$.pipe(tumbling({ name: 'j', sizeMs: 10, aggregate: agg.count(), late: publishLate(ctx) })),
    );
    h.send(1, { key: 'k' });
    h.send(2, { eventTime: Number.NaN, key: 'k' });
    h.complete();
    expect(h.outputs).toEqual([]);
    expect(h.lateData('j.late').map((l) => [l.env.data, l.reason])).toEqual([
      [1, 'missing-event-time'],
      [2, 'missing-event-time'],
    ]);
  });

  test('watermarks that do not advance are ignored; the end of the input fires what is open', () => {
    const h = testPipeline<number, WindowResult<number>>((in$) =>
      in$.pipe(tumbling({ name: 'j', sizeMs: 10, aggregate: agg.count() })),
    );
    h.send(1, { eventTime: 5, key: 'k' });
    h.watermark(20);
    h.watermark(3);
    h.send(2, { eventTime: 25, key: 'k' });
    expect(rows(h.outputs)).toEqual([['j/k/0-10', 'on-time', 1, 0, false]]);
    h.complete();
    expect(rows(h.outputs)).toEqual([
      ['j/k/0-10', 'on-time', 1, 0, false],
      ['j/k/20-30', 'final', 1, 0, false],
    ]);
    // Each result carries the watermark it fired at: the end of the input is an infinite one.
    expect(h.values.map((r) => r.watermark)).toEqual([20, Number.POSITIVE_INFINITY]);
    expect(h.completed).toBe(true);
    expect(h.open).toBe(0);
  });
});

describe('triggers - early firings', () => {
  test('every N inputs: early results, then the on-time one, then late updates', () => {
    const h = testPipeline<number, WindowResult<number>>((in$) =>
      in$.pipe(
        tumbling({ name: 'j', sizeMs: 100, allowedLatenessMs: 50, early: { everyEvents: 2 }, aggregate: agg.count() }),
      ),
    );
    h.sendAll(
      [
        [0, 1],
        [0, 2], // 2 since the last result: early
        [0, 3],
      ],
      { key: 'k' },
    );
    h.watermark(99); // on time, though only 1 input since the early one
    h.send(0, { eventTime: 4, key: 'k' }); // late: fires at once
    expect(rows(h.outputs)).toEqual([
      ['j/k/0-100', 'early', 2, 0, false],
      ['j/k/0-100', 'on-time', 3, 1, true],
      ['j/k/0-100', 'late', 4, 2, true],
    ]);
  });

  /** A tumbling count with early firings on the harness's virtual clock, which starts at 1 s. */
  function earlyOnClock(early: EarlyFiring, sizeMs = 100) {
    return testPipeline<number, WindowResult<number>>(
      (in$, ctx) => in$.pipe(tumbling({ name: 'j', sizeMs, early, clock: ctx.clock, aggregate: agg.count() })),
      { startMs: 1_000 },
    );
  }

  test('every interval of processing time: only windows with new inputs, aligned to the interval', async () => {
    const h = earlyOnClock({ everyMs: 500 });
    h.send(0, { eventTime: 10, key: 'a' });
    h.send(0, { eventTime: 20, key: 'b' });
    expect(h.clock.pending).toBe(1); // one timer for the operator, not one per window
    await h.advance(499);
    expect(h.outputs).toEqual([]);
    await h.advance(1); // 1,500: the next multiple of 500
    expect(rows(h.outputs)).toEqual([
      ['j/a/0-100', 'early', 1, 0, false],
      ['j/b/0-100', 'early', 1, 0, false],
    ]);
    expect(h.clock.pending).toBe(0); // nothing new: no timer re-armed

    h.send(0, { eventTime: 30, key: 'a' });
    await h.clock.advanceTo(1_900);
    expect(h.outputs).toHaveLength(2);
    await h.clock.advanceTo(2_000);
    expect(rows(h.outputs).slice(2)).toEqual([['j/a/0-100', 'early', 2, 1, true]]);

    // Closed windows take no early firing; the on-time one comes from the watermark.
    h.send(0, { eventTime: 40, key: 'b' });
    h.watermark(99);
    await h.clock.runAll();
    expect(rows(h.outputs).slice(3)).toEqual([
      ['j/a/0-100', 'on-time', 2, 2, true],
      ['j/b/0-100', 'on-time', 2, 1, true],
    ]);
    expect(h.open).toBe(0);
  });

  test('every interval, with every N inputs as well: whichever comes first, counted from the last result', async () => {
    const h = earlyOnClock({ everyMs: 1_000, everyEvents: 3 }, 60_000);
    h.sendAll(
      [
        [0, 1],
        [0, 2],
        [0, 3], // third: early now
        [0, 4],
      ],
      { key: 'k' },
    );
    expect(rows(h.outputs)).toEqual([['j/k/0-60000', 'early', 3, 0, false]]);
    await h.advance(1_000); // 2,000: one new input since
    expect(rows(h.outputs).slice(1)).toEqual([['j/k/0-60000', 'early', 4, 1, true]]);
    await h.advance(5_000); // nothing new: nothing fires, no timer kept
    expect(h.outputs).toHaveLength(2);
    expect(h.clock.pending).toBe(0);
    h.complete(); // the end of event time: final
    expect(rows(h.outputs).slice(2)).toEqual([['j/k/0-60000', 'final', 4, 2, true]]);
    expect(h.values.map((r) => r.watermark)).toEqual([
      Number.NEGATIVE_INFINITY,
      Number.NEGATIVE_INFINITY,
      Number.POSITIVE_INFINITY,
    ]);
  });

  test('a restart drops the early timer with the state; the replayed inputs arm it again', async () => {
    const h = earlyOnClock({ everyMs: 500 });
    h.send(0, { eventTime: 10, key: 'a' });
    h.restart();
    expect(h.clock.pending).toBe(1); // the old pipeline's timer was cancelled, the new one armed
    await h.advance(500);
    expect(rows(h.outputs)).toEqual([['j/a/0-100', 'early', 1, 0, false]]);
  });
});

describe('window results - the envelope', () => {
  test('key, bounds, event time end - 1, idempotency key header, lineage of its inputs, subject of the first input', () => {
    const h = testPipeline<string, WindowResult<number>>((in$) =>
      in$.pipe(tumbling({ name: 'views', sizeMs: 60_000, aggregate: agg.count() })),
    );
    const a = h.send('a', { eventTime: 61_000, key: 'home', subject: 'clicks.home' });
    const b = h.send('b', { eventTime: 62_000, key: 'home', subject: 'clicks.other' });
    h.complete();
    const [r] = h.outputs;
    expect(r).toMatchObject({
      subject: 'clicks.home',
      key: 'home',
      eventTime: 119_999,
      attempt: 1,
      replyTo: undefined,
      headers: { [WINDOW_HEADERS.idempotencyKey]: 'views/home/60000-120000' },
      data: {
        key: 'home',
        start: 60_000,
        end: 120_000,
        value: 2,
        count: 2,
        firing: 'final',
        watermark: Number.POSITIVE_INFINITY,
        isUpdate: false,
        revision: 0,
        idempotencyKey: 'views/home/60000-120000',
        supersedes: undefined,
      },
    });
    expect(r?.lineage?.ids).toEqual([a.env.id, b.env.id]);
    expect([a.outcome, b.outcome]).toEqual(['acked', 'acked']);
  });

  test('the subject option names the results; each result has an id of its own', () => {
    const h = testPipeline<string, WindowResult<number>>((in$) =>
      in$.pipe(tumbling({ name: 'views', sizeMs: 60_000, subject: 'views.1m', aggregate: agg.count() })),
    );
    h.sendAll([
      ['a', 1_000, 'home'],
      ['b', 2_000, 'about'],
    ]);
    h.complete();
    expect(h.outputs.map((o) => o.subject)).toEqual(['views.1m', 'views.1m']);
    expect(new Set(h.outputs.map((o) => o.id)).size).toBe(2);
  });

  test('the same inputs replayed give the same idempotency keys and values', () => {
    const once = () => {
      const h = testPipeline<number, WindowResult<number>>((in$) =>
        in$.pipe(tumbling({ name: 'j', sizeMs: 10, aggregate: agg.sum() })),
      );
      h.sendAll([
        [1, 5, 'a'],
        [2, 15, 'a'],
        [3, 7, 'b'],
      ]);
      h.watermark(30);
      return h.values.map((r) => [r.idempotencyKey, r.value]);
    };
    expect(once()).toEqual(once());
  });

  test('an aggregate that throws fails the pipeline with its error', () => {
    const boom = new Error('boom');
    const bad = {
      init: () => 0,
      add: () => {
        throw boom;
      },
      merge: (a: number) => a,
      result: (a: number) => a,
    };
    const h = testPipeline<number, WindowResult<number>>((in$) =>
      in$.pipe(tumbling({ name: 'j', sizeMs: 10, aggregate: bad })),
    );
    const culprit = h.send(1, { eventTime: 1, key: 'k' });
    expect(h.error).toBe(boom);
    expect(culprit).toMatchObject({ outcome: 'failed', error: boom });
    expect(() => h.send(2, { eventTime: 2 })).toThrow(boom); // raised until restart()
  });
});

describe('window results - a result that fails', () => {
  /** Counts, but cannot make the result of a window holding the value 13. */
  const unlucky = {
    init: (): number[] => [],
    add: (acc: number[], x: number) => [...acc, x],
    merge: (a: number[], b: number[]) => [...a, ...b],
    result: (acc: number[]) => {
      if (acc.includes(13)) throw new Error('unlucky window');
      return acc.length;
    },
  };

  test("fails the window's own inputs, not the input that moved the watermark; later windows still fire", () => {
    const h = testPipeline<number, WindowResult<number>>((in$) =>
      in$.pipe(tumbling({ name: 'j', sizeMs: 10, aggregate: unlucky })),
    );
    const a = h.send(13, { eventTime: 1, key: 'k' });
    const b = h.send(2, { eventTime: 2, key: 'k' });
    const mover = h.send(3, { eventTime: 15, key: 'k' });
    h.watermark(9);
    expect(h.error).toBeUndefined();
    expect(h.outputs).toHaveLength(0);
    expect([a.outcome, b.outcome]).toEqual(['failed', 'failed']);
    expect(a.error).toBeInstanceOf(WindowResultError);
    expect(a.error).toMatchObject({ operator: 'j', key: 'k', start: 0, end: 10, retryable: false });
    expect((a.error as Error).message).toContain('unlucky window');
    expect(mover.outcome).toBeUndefined(); // still in its open window
    const later = h.send(4, { eventTime: 16, key: 'k' });
    h.watermark(19);
    expect(h.values.map((r) => [r.start, r.value])).toEqual([[10, 2]]);
    expect([mover.outcome, later.outcome]).toEqual(['acked', 'acked']);
    expect(h.open).toBe(0);
  });

  test('a late firing that fails fails every input of the window, the late one included', () => {
    const h = testPipeline<number, WindowResult<number>>((in$) =>
      in$.pipe(tumbling({ name: 'j', sizeMs: 10, allowedLatenessMs: 100, aggregate: unlucky })),
    );
    const a = h.send(1, { eventTime: 1, key: 'k' });
    h.watermark(9);
    expect(h.values.map((r) => r.value)).toEqual([1]);
    const late = h.send(13, { eventTime: 2, key: 'k' });
    expect(h.error).toBeUndefined();
    expect([a.outcome, late.outcome]).toEqual(['failed', 'failed']);
    // The window is gone: another input for it opens a fresh one (still within the lateness).
    h.send(5, { eventTime: 3, key: 'k' });
    expect(h.values.map((r) => [r.value, r.firing, r.revision])).toEqual([
      [1, 'on-time', 0],
      [1, 'late', 0],
    ]);
  });

  test('sessions: a merged session whose result fails fails the inputs of every session merged into it', () => {
    const h = testPipeline<number, WindowResult<number>>((in$) =>
      in$.pipe(session({ name: 's', gapMs: 5, aggregate: unlucky })),
    );
    const a = h.send(1, { eventTime: 0, key: 'k' }); // [0, 5)
    const b = h.send(13, { eventTime: 10, key: 'k' }); // [10, 15)
    const bridge = h.send(2, { eventTime: 5, key: 'k' }); // merges both: [0, 15)
    const other = h.send(4, { eventTime: 0, key: 'j' });
    h.watermark(20);
    expect(h.error).toBeUndefined();
    expect([a.outcome, b.outcome, bridge.outcome]).toEqual(['failed', 'failed', 'failed']);
    expect(a.error).toMatchObject({ operator: 's', key: 'k', start: 0, end: 15 });
    expect(other.outcome).toBe('acked');
    expect(h.values.map((r) => [r.key, r.value])).toEqual([['j', 1]]);
  });

  test('count windows: a tumbling count window whose result fails fails its own inputs only', () => {
    const h = testPipeline<number, WindowResult<number>>((in$) =>
      in$.pipe(countWindow({ name: 'c', size: 2, aggregate: unlucky })),
    );
    const a = h.send(13, { key: 'k' });
    const b = h.send(2, { key: 'k' });
    const c = h.send(3, { key: 'k' });
    const d = h.send(4, { key: 'k' });
    expect(h.error).toBeUndefined();
    expect([a.outcome, b.outcome]).toEqual(['failed', 'failed']);
    expect(a.error).toBeInstanceOf(WindowResultError);
    expect([c.outcome, d.outcome]).toEqual(['acked', 'acked']);
    expect(h.values.map((r) => r.value)).toEqual([2]);
  });
});
