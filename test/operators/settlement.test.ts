import { Subject } from 'rxjs';
import { actor, createRuntime, type Envelope, type Lineage, VirtualClock } from 'sluice';
import {
  agg,
  session,
  sliding,
  type Timed,
  tumbling,
  Watermark,
  type WindowResult,
  watermarks,
} from 'sluice/operators';
import { describe, expect, onTestFinished, test } from 'vitest';
import { Tracker, type TrackerOwner } from '../../runtime/lineage.ts';
import { CountingLineage, ev } from './helpers.ts';

describe('settlement - a window result carries its inputs', () => {
  test('inputs are held while in a window, still held while the result is emitted, given back after', () => {
    const ls = [new CountingLineage('a'), new CountingLineage('b'), new CountingLineage('c')];
    const input = new Subject<Timed<number>>();
    const seen: { ids: readonly string[]; holding: number[] }[] = [];
    input.pipe(tumbling({ name: 'j', sizeMs: 10, aggregate: agg.count() })).subscribe((r) => {
      seen.push({ ids: r.lineage?.ids ?? [], holding: ls.map((l) => l.holding) });
    });
    input.next(ev(0, 1, 'k', ls[0]));
    input.next(ev(0, 2, 'k', ls[1]));
    input.next(ev(0, 15, 'k', ls[2]));
    expect(ls.map((l) => l.holding)).toEqual([1, 1, 1]);
    input.next(new Watermark(9));
    expect(seen).toEqual([{ ids: ['a', 'b'], holding: [1, 1, 1] }]);
    expect(ls.map((l) => l.holding)).toEqual([0, 0, 1]);
    expect(ls.every((l) => l.errors.length === 0)).toBe(true);
  });

  test('with allowed lateness, inputs stay held until the window is purged, through every update', () => {
    const a = new CountingLineage('a');
    const b = new CountingLineage('b');
    const input = new Subject<Timed<number>>();
    const ids: (readonly string[])[] = [];
    input
      .pipe(tumbling({ name: 'j', sizeMs: 10, allowedLatenessMs: 10, aggregate: agg.count() }))
      .subscribe((r) => ids.push(r.lineage?.ids ?? []));
    input.next(ev(0, 1, 'k', a));
    input.next(new Watermark(9));
    expect(a.holding).toBe(1);
    input.next(ev(0, 2, 'k', b)); // late update: its result carries both inputs
    expect(ids).toEqual([['a'], ['a', 'b']]);
    input.next(new Watermark(18));
    expect([a.holding, b.holding]).toEqual([1, 1]);
    input.next(new Watermark(19)); // end - 1 + lateness: purged
    expect([a.holding, b.holding]).toEqual([0, 0]);
  });

  test('an input in several sliding windows is held once per window and given back as each closes', () => {
    const a = new CountingLineage('a');
    const input = new Subject<Timed<number>>();
    input.pipe(sliding({ name: 'j', sizeMs: 10, slideMs: 5, aggregate: agg.count() })).subscribe();
    input.next(ev(0, 7, 'k', a)); // in [0,10) and [5,15)
    expect(a.holding).toBe(2);
    input.next(new Watermark(9));
    expect(a.holding).toBe(1);
    input.next(new Watermark(14));
    expect(a.holding).toBe(0);
  });

  test('merged sessions keep every input of both', () => {
    const ls = ['a', 'b', 'c'].map((id) => new CountingLineage(id));
    const input = new Subject<Timed<number>>();
    const ids: string[][] = [];
    input
      .pipe(session({ name: 's', gapMs: 5, aggregate: agg.count() }))
      .subscribe((r) => ids.push([...(r.lineage?.ids ?? [])].sort()));
    input.next(ev(0, 0, 'k', ls[0]));
    input.next(ev(0, 8, 'k', ls[1]));
    input.next(ev(0, 4, 'k', ls[2]));
    input.complete();
    expect(ids).toEqual([['a', 'b', 'c']]);
    expect(ls.map((l) => l.holding)).toEqual([0, 0, 0]);
  });

  test('with real trackers: inputs settle only once downstream settles the result', () => {
    const settled: string[] = [];
    const owner: TrackerOwner = { leftFlight: () => {}, settled: (t) => void settled.push(t.id) };
    const trackers = ['a', 'b'].map((id) => new Tracker(id, owner, undefined, 0));
    const input = new Subject<Timed<number>>();
    const downstream: Lineage[] = [];
    input.pipe(tumbling({ name: 'j', sizeMs: 10, aggregate: agg.count() })).subscribe((r) => {
      // As a mailbox downstream does: it takes its own reference while `next` runs.
      r.lineage?.absorb();
      downstream.push(r.lineage as Lineage);
    });
    for (const [i, t] of trackers.entries()) {
      input.next(ev(0, i, 'k', t));
      t.release(); // the actor's synchronous reference, given back when `next` returns
    }
    expect(settled).toEqual([]);
    input.next(new Watermark(9));
    expect(settled).toEqual([]); // the window let go; the downstream reference keeps them
    downstream[0]?.releaseAbsorbed();
    expect(settled.sort()).toEqual(['a', 'b']);
  });
});

describe('memory - state is bounded by what is open', () => {
  test('a long keyed run: open windows and keys stay bounded, and drop to zero at the end', () => {
    const input = new Subject<Timed<number>>();
    const op = tumbling({ name: 'j', sizeMs: 1_000, aggregate: agg.count() });
    const lineageOf = (i: number) => (i % 10 === 0 ? new CountingLineage(`m${i}`) : undefined);
    let results = 0;
    input.pipe(watermarks({ maxOutOfOrdernessMs: 200 }), op).subscribe(() => results++);
    let maxOpen = 0;
    let maxKeys = 0;
    let maxAbsorbed = 0;
    let seed = 1;
    const random = () => ((seed = (seed * 16807) % 2147483647) - 1) / 2147483646;
    const n = 200_000;
    const held: CountingLineage[] = [];
    for (let i = 0; i < n; i++) {
      // 1 ms of event time per event, up to 200 ms of disorder; 1,000 keys.
      const t = i - Math.floor(random() * 200);
      const lineage = lineageOf(i);
      if (lineage !== undefined) held.push(lineage);
      input.next(ev(1, t, `k${Math.floor(random() * 1_000)}`, lineage));
      if (i % 1_000 === 0) {
        const s = op.stats();
        maxOpen = Math.max(maxOpen, s.openWindows);
        maxKeys = Math.max(maxKeys, s.keys);
        maxAbsorbed = Math.max(maxAbsorbed, s.absorbed);
      }
    }
    // At most two windows per key are open at once (the current one and the one the disorder
    // keeps open), and each holds at most ~1,200 ms of inputs.
    expect(maxKeys).toBeLessThanOrEqual(1_000);
    expect(maxOpen).toBeLessThanOrEqual(2_000);
    expect(maxAbsorbed).toBeLessThanOrEqual(150);
    const before = op.stats();
    expect(before.openWindows).toBeGreaterThan(0);
    input.complete();
    expect(op.stats()).toMatchObject({ keys: 0, openWindows: 0, absorbed: 0 });
    expect(held.every((l) => l.holding === 0)).toBe(true);
    expect(results).toBe(op.stats().results);
  });

  test('keys that stop appearing are forgotten once their windows close (sessions)', () => {
    const input = new Subject<Timed<number>>();
    const op = session({ name: 's', gapMs: 100, aggregate: agg.count() });
    input.pipe(op).subscribe();
    for (let k = 0; k < 500; k++) input.next(ev(1, k, `user${k}`));
    expect(op.stats()).toMatchObject({ keys: 500, openWindows: 500 });
    input.next(new Watermark(1_000));
    expect(op.stats()).toMatchObject({ keys: 0, openWindows: 0, idleKeys: 500 });
    // Remembered for a while (a key usually comes back), forgotten within two sweep periods
    // (gap + lateness each) of event time.
    input.next(new Watermark(1_100));
    input.next(new Watermark(1_200));
    expect(op.stats()).toMatchObject({ keys: 0, idleKeys: 0 });
  });

  test('a key that comes back after its window closed reuses its bookkeeping and is not forgotten', () => {
    const input = new Subject<Timed<number>>();
    const op = tumbling({ name: 't', sizeMs: 100, aggregate: agg.count() });
    input.pipe(op).subscribe();
    for (let t = 0; t < 2_000; t += 10) {
      input.next(ev(1, t, 'steady'));
      input.next(new Watermark(t - 1));
    }
    input.next(ev(1, 0, 'once'));
    expect(op.stats()).toMatchObject({ keys: 1, idleKeys: 0, late: 1 });
  });
});

describe('settlement - in an actor on the runtime', () => {
  test('window results are published, late data goes to its subject, inputs ack after the results settle', async () => {
    const clock = new VirtualClock(1_000_000);
    const rt = createRuntime({ clock, logger: { debug() {}, info() {}, warn() {}, error() {} } });
    onTestFinished(async () => {
      const stopping = rt.stop({ deadlineMs: 0 });
      await clock.advance(0);
      await stopping;
    });
    const views: Envelope<WindowResult<number>>[] = [];
    const late: Envelope<unknown>[] = [];
    let releaseViews: (() => void) | undefined;
    const viewsHeld = new Promise<void>((resolve) => {
      releaseViews = resolve;
    });
    rt.bus.subscribe<WindowResult<number>>('views', {
      concurrency: 10,
      callback: (env) => {
        views.push(env);
        return viewsHeld; // the sink holds the results until the test lets go
      },
    });
    rt.bus.subscribe('clicks.late', { callback: (env) => void late.push(env) });
    const ref = rt.spawn(
      actor<{ page: string; ts: number }, WindowResult<number>>({
        name: 'page-views',
        subscribe: 'clicks',
        output: 'views',
        pipeline: (in$, ctx) =>
          in$.pipe(
            watermarks({ maxOutOfOrdernessMs: 0 }),
            tumbling({
              name: ctx.name,
              sizeMs: 10,
              aggregate: agg.count(),
              late: (env) => ctx.bus.forward({ ...env, subject: 'clicks.late' }),
            }),
          ),
      }),
    );
    const click = (page: string, ts: number) => rt.bus.publish('clicks', { page, ts }, { key: page, eventTime: ts });
    await click('home', 1);
    await click('home', 5);
    await click('about', 7);
    await rt.idle();
    expect({ absorbed: ref.absorbed, acked: ref.counters.acked }).toEqual({ absorbed: 3, acked: 0 });
    await click('home', 12); // watermark 11: [0, 10) fires for both keys
    await click('home', 2); // late
    await clock.advance(0);
    expect(views.map((v) => [v.data.idempotencyKey, v.data.value])).toEqual([
      ['page-views/home/0-10', 2],
      ['page-views/about/0-10', 1],
    ]);
    expect(late.map((l) => [l.data, l.headers['sluice-late-reason']])).toEqual([
      [{ page: 'home', ts: 2 }, 'beyond-allowed-lateness'],
    ]);
    // The three inputs of the fired windows wait for the sink; the late one settled with its forward.
    expect(ref.counters.acked).toBe(1);
    releaseViews?.();
    await clock.advance(0);
    expect(ref.counters.acked).toBe(4);
    expect(ref.counters.deadLettered).toBe(0);
  });
});
