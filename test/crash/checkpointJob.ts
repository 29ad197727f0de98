import { join } from 'node:path';
import { filter, map } from 'rxjs';
import { actor, createRuntime, durable, LmdbStore, sinkActor } from 'sluice';
import type { StoreBatch } from '../../runtime/store/types.ts';
import { POSITIONS_NAMESPACE, type StoredPosition } from '../../runtime/streams/index.ts';
import { type CrashEvent, expectedWindows, transform } from './input.ts';
import { dir, openSinks, type Result, reached, say, seed, type Totals, total, totals, windowTotals } from './jobKit.ts';

/**
 * The store with the checkpoint fault points: a batch is a checkpoint's when it writes operator
 * state (windows) or appends to XFORM (transform's outputs: nothing else appends there).
 */
class FaultyStore extends LmdbStore {
  override batch<R>(build: (batch: StoreBatch) => R): Promise<R> {
    let owner: 'windows' | 'transform' | undefined;
    let writes = 0;
    const spy = (b: StoreBatch): StoreBatch => ({
      append: (stream, values) => {
        if (stream === 'XFORM') owner = 'transform';
        return b.append(stream, values);
      },
      put: (namespace, key, value) => {
        if (namespace.startsWith('sluice.windows/')) owner = 'windows';
        // The third of a window checkpoint's writes: accumulators collected, outputs and positions not.
        if (owner === 'windows' && ++writes === 3) reached('mid-batch:checkpoint');
        b.put(namespace, key, value);
      },
      delete: (namespace, key) => b.delete(namespace, key),
      deleteThrough: (stream, seq) => b.deleteThrough(stream, seq),
      get bytes() {
        return b.bytes;
      },
    });
    return super
      .batch((b) => build(spy(b)))
      .then((result) => {
        // Committed and synced; the checkpoint's outputs are appended for its consumers only
        // after this promise settles.
        if (owner !== undefined) reached(`after-commit:${owner}`);
        return result;
      });
  }
}

const store = new FaultyStore({ path: join(dir, 'store') });
const runtime = createRuntime({
  store,
  streams: [
    { name: 'EVENTS', subjects: ['events.>'] },
    { name: 'AGG', subjects: ['agg.>'] },
    { name: 'XFORM', subjects: ['xform.>'] },
  ],
  shutdownDeadlineMs: 60_000,
});

const { aggPg, aggFile, eventsPg, eventsFile, end } = await openSinks();

runtime.spawn(
  actor<CrashEvent, Result>({
    name: 'windows',
    subscribe: durable<CrashEvent>('EVENTS', { consumer: 'windows', maxAckPending: 10_000 }),
    output: 'agg.results',
    checkpoint: { intervalMs: 200, everyInputs: 5_000 },
    pipeline: windowTotals,
  }),
);
runtime.spawn(
  actor<CrashEvent, unknown>({
    name: 'transform',
    subscribe: durable<CrashEvent>('EVENTS', { consumer: 'transform', maxAckPending: 4_000 }),
    output: 'xform.results',
    checkpoint: { intervalMs: 100, everyInputs: 2_000 },
    pipeline: (in$) =>
      in$.pipe(
        filter((e) => e.data.id >= 0),
        map((e) => ({ ...e, data: transform(e.data) })),
      ),
  }),
);
const fromStream = <T>(stream: string, consumer: string) => durable<T>(stream, { consumer, maxAckPending: 4_000 });
runtime.spawn(
  sinkActor<Result, Totals>({
    name: 'agg-pg',
    subscribe: fromStream<Result>('AGG', 'agg-pg'),
    sink: aggPg,
    value: totals,
    batch: { maxSize: 200, maxWaitMs: 50 },
  }),
);
runtime.spawn(
  sinkActor<Result, Totals>({
    name: 'agg-file',
    subscribe: fromStream<Result>('AGG', 'agg-file'),
    sink: aggFile,
    value: totals,
    batch: { maxSize: 200, maxWaitMs: 50 },
  }),
);
runtime.spawn(
  sinkActor({
    name: 'events-pg',
    subscribe: fromStream<unknown>('XFORM', 'events-pg'),
    sink: eventsPg,
    batch: { maxSize: 1000 },
  }),
);
runtime.spawn(
  sinkActor({
    name: 'events-file',
    subscribe: fromStream<unknown>('XFORM', 'events-file'),
    sink: eventsFile,
    batch: { maxSize: 1000 },
  }),
);
say('running');

// Done once both actors settled all of EVENTS (their checkpoints committed), their outputs are in
// AGG and XFORM, and the sinks' consumers settled those. A doubled output would make the streams
// longer than expected: the harness finds it.
const windowCount = expectedWindows(seed, total).size;
const streams = { EVENTS: runtime.stream('EVENTS'), AGG: runtime.stream('AGG'), XFORM: runtime.stream('XFORM') };
const consumers: [keyof typeof streams, string][] = [
  ['EVENTS', 'windows'],
  ['EVENTS', 'transform'],
  ['AGG', 'agg-pg'],
  ['AGG', 'agg-file'],
  ['XFORM', 'events-pg'],
  ['XFORM', 'events-file'],
];
let lastDebug = 0;
for (;;) {
  if (process.env.CRASH_DEBUG !== undefined && Date.now() - lastDebug > 500) {
    lastDebug = Date.now();
    const info = Object.fromEntries(consumers.map(([s, c]) => [c, streams[s].consumer(c).info()]));
    process.stderr.write(`${JSON.stringify(info)}\n`);
  }
  if (
    streams.AGG.info().last >= windowCount &&
    streams.XFORM.info().last >= total &&
    consumers.every(([s, c]) => streams[s].consumer(c).lag().messages === 0)
  )
    break;
  await new Promise((resolve) => setTimeout(resolve, 50));
}
const report = await runtime.stop();
await Promise.all([aggPg.close?.(), eventsPg.close?.(), aggFile.close?.(), eventsFile.close?.()]);
await end();
const positions = consumers.map(
  ([s, c]) => [s, store.getKey(POSITIONS_NAMESPACE, `${s}/${c}`) as StoredPosition | undefined] as const,
);
const ends = { EVENTS: store.bounds('EVENTS').last, AGG: store.bounds('AGG').last, XFORM: store.bounds('XFORM').last };
await store.close();
if (!report.drained || positions.some(([s, p]) => p?.floor !== ends[s] + 1 || (p.acked?.length ?? 0) > 0)) {
  process.stderr.write(`not complete after stop: ${JSON.stringify({ report, positions, ends })}\n`);
  process.exit(3);
}
say('done');
process.exit(0);
