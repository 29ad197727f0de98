import fc from 'fast-check';
import type { ActorContext, Envelope } from 'sluice';
import {
  agg,
  type LateReason,
  session as sessionOp,
  sliding as slidingOp,
  tumbling as tumblingOp,
  type WindowOperator,
  type WindowResult,
  watermarks,
} from 'sluice/operators';
import { type PipelineHarness, testPipeline } from 'sluice/testing';
import { describe, expect, test } from 'vitest';
import { type Item, type RefAssigner, type RefFiring, type RefOutput, reference } from './reference.ts';

// Random streams: a few keys, event times with arbitrary disorder (including far-late ones) and
// negative times, watermarks at arbitrary points; every window type with random parameters.

const keyArb = fc.constantFrom('a', 'b', 'c');
const eventArb = fc.record({
  kind: fc.constant('event' as const),
  key: keyArb,
  ts: fc.integer({ min: -40, max: 200 }),
});
const wmArb = fc.record({ kind: fc.constant('wm' as const), t: fc.integer({ min: -50, max: 220 }) });
const uniformArb = fc
  .array(fc.oneof({ weight: 4, arbitrary: eventArb }, { weight: 1, arbitrary: wmArb }), { maxLength: 120 })
  .map((xs) => xs.map((x, id): Item => (x.kind === 'event' ? { ...x, id } : x)));
// A stream as it happens: time moves on, events lag it by a random disorder (now and then by a
// lot), watermarks trail it. Reaches the states uniform noise rarely does: late updates within
// the allowed lateness, sessions bridged or grown after firing.
const steppedArb = fc
  .array(
    fc.record({
      step: fc.integer({ min: 0, max: 4 }),
      key: keyArb,
      lag: fc.oneof({ weight: 5, arbitrary: fc.integer({ min: -3, max: 8 }) }, fc.integer({ min: 9, max: 40 })),
      watermark: fc.boolean(),
    }),
    { maxLength: 120 },
  )
  .map((steps) => {
    const items: Item[] = [];
    let now = -20;
    steps.forEach((s, id) => {
      now += s.step;
      if (s.watermark) items.push({ kind: 'wm', t: now - s.lag });
      else items.push({ kind: 'event', id, key: s.key, ts: now - s.lag });
    });
    return items;
  });
// Short streams on one key over a narrow range: sessions that fire, then get bridged or grown
// by a late input within the allowed lateness, show up here far more often than in long ones.
const smallArb = fc
  .array(
    fc.oneof(
      {
        weight: 2,
        arbitrary: fc.record({
          kind: fc.constant('event' as const),
          key: fc.constant('a'),
          ts: fc.integer({ min: 0, max: 40 }),
        }),
      },
      fc.record({ kind: fc.constant('wm' as const), t: fc.integer({ min: 0, max: 45 }) }),
    ),
    { maxLength: 16 },
  )
  .map((xs) => xs.map((x, id): Item => (x.kind === 'event' ? { ...x, id } : x)));
const itemsArb = fc.oneof(uniformArb, steppedArb, smallArb);

const latenessArb = fc.constantFrom(0, 0, 3, 15, 30);
const earlyArb = fc.constantFrom(0, 0, 2, 3);

const tumblingArb = fc
  .integer({ min: 1, max: 25 })
  .chain((size) => fc.record({ size: fc.constant(size), offset: fc.integer({ min: -(size - 1), max: size - 1 }) }))
  .map(({ size, offset }): RefAssigner => ({ kind: 'aligned', size, slide: size, offset }));

const slidingArb = fc
  .record({ size: fc.integer({ min: 1, max: 30 }), slide: fc.integer({ min: 1, max: 12 }) })
  .chain(({ size, slide }) =>
    fc.record({
      size: fc.constant(size),
      slide: fc.constant(slide),
      offset: fc.integer({ min: -(slide - 1), max: slide - 1 }),
    }),
  )
  .map(({ size, slide, offset }): RefAssigner => ({ kind: 'aligned', size, slide, offset }));

const sessionArb = fc.integer({ min: 1, max: 15 }).map((gap): RefAssigner => ({ kind: 'session', gap }));

function operatorFor(
  a: RefAssigner,
  lateness: number,
  earlyEvents: number,
  late?: (env: Envelope<number>, reason: LateReason) => Promise<void>,
): WindowOperator<number, number[]> {
  const common = {
    name: 'job',
    aggregate: agg.collect<number>(),
    allowedLatenessMs: lateness,
    ...(late === undefined ? {} : { late }),
    ...(earlyEvents > 0 ? { early: { everyEvents: earlyEvents } } : {}),
  };
  if (a.kind === 'session') return sessionOp({ ...common, gapMs: a.gap });
  if (a.size === a.slide) return tumblingOp({ ...common, sizeMs: a.size, offsetMs: a.offset });
  return slidingOp({ ...common, sizeMs: a.size, slideMs: a.slide, offsetMs: a.offset });
}

const LATE = 'job.late';

/** Late data goes out as an actor sends it: published on the bus, where the harness reads it. */
function publishLate(ctx: ActorContext): (env: Envelope<number>) => Promise<void> {
  return (env) => ctx.bus.forward({ ...env, subject: LATE });
}

type Harness = PipelineHarness<number, WindowResult<number[]>>;

/** The operator under test in a pipeline harness, its late data published; `op` for its stats. */
function harness(
  a: RefAssigner,
  lateness: number,
  earlyEvents: number,
  generated?: { bound: number },
): { h: Harness; op: () => WindowOperator<number, number[]> } {
  let op: WindowOperator<number, number[]> | undefined;
  const h = testPipeline<number, WindowResult<number[]>>((in$, ctx) => {
    op = operatorFor(a, lateness, earlyEvents, publishLate(ctx));
    // Through the real generator, not hand-placed watermarks.
    return generated === undefined
      ? in$.pipe(op)
      : in$.pipe(watermarks<number>({ maxOutOfOrdernessMs: generated.bound }), op);
  });
  return { h, op: () => op as WindowOperator<number, number[]> };
}

/** Sends each event (its id as data) and pushes each watermark, in order. */
function feed(h: Harness, items: readonly Item[]): void {
  for (const i of items) {
    if (i.kind === 'wm') h.watermark(i.t);
    else h.send(i.id, { eventTime: i.ts, key: i.key });
  }
}

function observed(h: Harness): RefOutput {
  const windows = new Map<string, RefFiring[]>();
  for (const r of h.outputs) {
    const d = r.data;
    expect(r.headers['sluice-idempotency-key']).toBe(d.idempotencyKey);
    expect(d.idempotencyKey).toBe(`job/${d.key}/${d.start}-${d.end}`);
    expect(r.key).toBe(d.key);
    expect(r.eventTime).toBe(d.end - 1);
    expect(d.count).toBe(d.value.length);
    // The result references exactly the inputs it absorbed.
    expect([...(r.lineage?.ids ?? [])].sort()).toEqual(
      h.inputs
        .filter((i) => d.value.includes(i.env.data))
        .map((i) => i.env.id)
        .sort(),
    );
    const list = windows.get(d.idempotencyKey) ?? [];
    list.push({
      firing: d.firing as RefFiring['firing'],
      watermark: d.watermark,
      ids: [...d.value].sort((x, y) => x - y),
      revision: d.revision,
      isUpdate: d.isUpdate,
      supersedes: d.supersedes === undefined ? undefined : [...d.supersedes].sort(),
    });
    windows.set(d.idempotencyKey, list);
  }
  const late = h.lateData<number>(LATE).map((l) => ({ id: l.env.data, reason: l.reason }));
  return { windows, late };
}

function check(items: Item[], a: RefAssigner, lateness: number, earlyEvents: number): void {
  const { h, op } = harness(a, lateness, earlyEvents);
  feed(h, items);
  h.complete();
  expect(h.completed).toBe(true);
  const expected = reference(items, { name: 'job', assigner: a, lateness, earlyEvents });
  const actual = observed(h);
  expect(actual.late).toEqual(expected.late);
  expect(Object.fromEntries(actual.windows)).toEqual(Object.fromEntries(expected.windows));
  // Every input settled once its windows were done with it (late ones once published); none failed.
  expect(h.inputs.filter((i) => i.outcome !== 'acked')).toEqual([]);
  expect(op().stats()).toMatchObject({
    openWindows: 0,
    keys: 0,
    absorbed: 0,
    results: h.outputs.length,
    late: actual.late.length,
  });
}

describe('windows - against a brute-force reference (random disorder, lateness, watermarks)', () => {
  const params = { numRuns: 600 };

  test('tumbling', () => {
    fc.assert(
      fc.property(itemsArb, tumblingArb, latenessArb, earlyArb, (items, a, lateness, early) =>
        check(items, a, lateness, early),
      ),
      params,
    );
  });

  test('sliding (overlapping, gapped and offset windows)', () => {
    fc.assert(
      fc.property(itemsArb, slidingArb, latenessArb, earlyArb, (items, a, lateness, early) =>
        check(items, a, lateness, early),
      ),
      params,
    );
  });

  test('session (merging, growing past the watermark, superseded keys)', () => {
    fc.assert(
      fc.property(itemsArb, sessionArb, latenessArb, earlyArb, (items, a, lateness, early) =>
        check(items, a, lateness, early),
      ),
      params,
    );
  });

  test('with generated watermarks: bounded out-of-orderness as the reference computes it', () => {
    const eventsArb = fc.array(eventArb, { maxLength: 120 }).map((xs) => xs.map((x, id): Item => ({ ...x, id })));
    fc.assert(
      fc.property(
        eventsArb,
        fc.oneof(tumblingArb, slidingArb, sessionArb),
        latenessArb,
        fc.integer({ min: 0, max: 30 }),
        (events, a, lateness, bound) => {
          const { h } = harness(a, lateness, 0, { bound });
          feed(h, events);
          h.complete();
          // The reference sees each event followed by max(ts) - bound - 1.
          const items: Item[] = [];
          let max = Number.NEGATIVE_INFINITY;
          for (const e of events) {
            items.push(e);
            if (e.kind === 'event' && e.ts > max) max = e.ts;
            items.push({ kind: 'wm', t: max - bound - 1 });
          }
          const expected = reference(items, { name: 'job', assigner: a, lateness, earlyEvents: 0 });
          const actual = observed(h);
          expect(actual.late).toEqual(expected.late);
          expect(Object.fromEntries(actual.windows)).toEqual(Object.fromEntries(expected.windows));
        },
      ),
      { numRuns: 200 },
    );
  });

  test('tumbling: the last result of each window is the batch aggregate of its non-late inputs', () => {
    // Computed from the whole data set at once: group every input that did not go to the late
    // output by key and window, whatever the order it arrived in.
    fc.assert(
      fc.property(itemsArb, tumblingArb, latenessArb, (items, a, lateness) => {
        if (a.kind !== 'aligned') return;
        const { h } = harness(a, lateness, 0);
        feed(h, items);
        h.complete();
        const lateIds = new Set(h.lateData<number>(LATE).map((l) => l.env.data));
        const final = new Map<string, number[]>();
        for (const r of h.outputs)
          final.set(
            r.data.idempotencyKey,
            [...r.data.value].sort((x, y) => x - y),
          );
        const batch = new Map<string, number[]>();
        for (const i of items) {
          if (i.kind !== 'event' || lateIds.has(i.id)) continue;
          const start = i.ts - ((((i.ts - a.offset) % a.size) + a.size) % a.size);
          const k = `job/${i.key}/${start}-${start + a.size}`;
          batch.set(
            k,
            [...(batch.get(k) ?? []), i.id].sort((x, y) => x - y),
          );
        }
        expect(final).toEqual(batch);
      }),
      { numRuns: 300 },
    );
  });

  test('sessions without watermarks until the end equal the batch sessions of the whole data set', () => {
    fc.assert(
      fc.property(fc.array(eventArb, { maxLength: 80 }), fc.integer({ min: 1, max: 15 }), (events, gap) => {
        const items = events.map((x, id): Item => ({ ...x, id }));
        const h = testPipeline<number, WindowResult<number[]>>((in$) =>
          in$.pipe(sessionOp({ name: 'job', gapMs: gap, aggregate: agg.collect<number>() })),
        );
        feed(h, items);
        h.complete();
        // Batch: per key, sort by time and cut where two neighbours are more than `gap` apart.
        const batch = new Map<string, number[]>();
        for (const key of ['a', 'b', 'c']) {
          const mine = items.filter((i) => i.kind === 'event' && i.key === key) as Extract<Item, { kind: 'event' }>[];
          mine.sort((x, y) => x.ts - y.ts);
          let group: typeof mine = [];
          const flush = () => {
            if (group.length === 0) return;
            const start = (group[0] as (typeof mine)[0]).ts;
            const end = (group[group.length - 1] as (typeof mine)[0]).ts + gap;
            batch.set(
              `job/${key}/${start}-${end}`,
              group.map((g) => g.id).sort((x, y) => x - y),
            );
            group = [];
          };
          for (const e of mine) {
            const prev = group[group.length - 1];
            if (prev !== undefined && e.ts - prev.ts > gap) flush();
            group.push(e);
          }
          flush();
        }
        const final = new Map<string, number[]>();
        for (const r of h.outputs) {
          expect(r.data.firing).toBe('final');
          expect(r.data.watermark).toBe(Number.POSITIVE_INFINITY);
          final.set(
            r.data.idempotencyKey,
            [...r.data.value].sort((x, y) => x - y),
          );
        }
        expect(final).toEqual(batch);
      }),
      { numRuns: 300 },
    );
  });
});
