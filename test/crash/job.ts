import { join } from 'node:path';
import { map } from 'rxjs';
import { actor, createRuntime, durable, LmdbStore, sinkActor } from 'sluice';
import { POSITIONS_NAMESPACE, type StoredPosition } from '../../runtime/streams/index.ts';
import { type CrashEvent, events, SENTINEL, transform } from './input.ts';
import { dir, mode, openSinks, type Result, say, seed, type Totals, total, totals, windowTotals } from './jobKit.ts';

const store = new LmdbStore({ path: join(dir, 'store') });
const runtime = createRuntime({
  store,
  streams: [{ name: 'EVENTS', subjects: ['events.>'] }],
  shutdownDeadlineMs: 60_000,
});
const stream = runtime.stream('EVENTS');

if (mode === 'feed') {
  let at = stream.info().last;
  const pending: Promise<void>[] = [];
  let i = 0;
  for (const e of events(seed, total)) {
    if (i++ < at) continue;
    pending.push(runtime.bus.publish('events.in', e));
    if (pending.length === 2_000) {
      await Promise.all(pending.splice(0));
      at += 2_000;
    }
  }
  await Promise.all(pending);
  // The checkpointed job's windows do not fire at a stop: an event far past the input's last
  // window moves the watermark past every window, so each fires. Its own window never does.
  const sentinel = process.env.CRASH_SENTINEL === '1';
  if (sentinel && stream.info().last === total) await runtime.bus.publish('events.in', SENTINEL);
  const last = stream.info().last - (sentinel ? 1 : 0);
  await runtime.stop();
  await store.close();
  if (last !== total) {
    process.stderr.write(`fed ${last} events, expected ${total}\n`);
    process.exit(3);
  }
  say('fed');
  process.exit(0);
}

// ---- the job ----

const { aggPg, aggFile, eventsPg, eventsFile, end } = await openSinks();

runtime.spawn(
  actor<CrashEvent, Result>({
    name: 'windows',
    // Inputs absorbed in open windows stay unsettled until their window's result is written.
    subscribe: durable<CrashEvent>('EVENTS', { consumer: 'windows', maxAckPending: 60_000 }),
    output: 'agg.results',
    pipeline: windowTotals,
  }),
);
runtime.spawn(
  actor<CrashEvent, unknown>({
    name: 'transform',
    subscribe: durable<CrashEvent>('EVENTS', { consumer: 'transform', maxAckPending: 4_000 }),
    output: 'xform.results',
    pipeline: (in$) => in$.pipe(map((e) => ({ ...e, data: transform(e.data) }))),
  }),
);
runtime.spawn(
  sinkActor<Result, Totals>({
    name: 'agg-pg',
    subscribe: 'agg.results',
    sink: aggPg,
    value: totals,
    batch: { maxSize: 200, maxWaitMs: 50 },
  }),
);
runtime.spawn(
  sinkActor<Result, Totals>({
    name: 'agg-file',
    subscribe: 'agg.results',
    sink: aggFile,
    value: totals,
    batch: { maxSize: 200, maxWaitMs: 50 },
  }),
);
runtime.spawn(
  sinkActor({
    name: 'events-pg',
    subscribe: 'xform.results',
    sink: eventsPg,
    batch: { maxSize: 1000 },
  }),
);
runtime.spawn(
  sinkActor({
    name: 'events-file',
    subscribe: 'xform.results',
    sink: eventsFile,
    batch: { maxSize: 1000 },
  }),
);
say('running');

// Every event was taken in: what the windows consumer has not settled is all delivered (held in
// open windows), and the transform consumer settled everything.
const windows = stream.consumer('windows');
const transformed = stream.consumer('transform');
let lastDebug = 0;
for (;;) {
  const w = windows.lag();
  if (process.env.CRASH_DEBUG !== undefined && Date.now() - lastDebug > 500) {
    lastDebug = Date.now();
    process.stderr.write(`${JSON.stringify({ windows: windows.info(), transform: transformed.info() })}\n`);
  }
  if (stream.info().last === total && w.messages === w.ackPending && transformed.lag().messages === 0) break;
  await new Promise((resolve) => setTimeout(resolve, 50));
}
// The drain flushes the open windows; their results are written and their inputs acknowledged.
const report = await runtime.stop();
await Promise.all([aggPg.close?.(), eventsPg.close?.(), aggFile.close?.(), eventsFile.close?.()]);
await end();
const positions = ['windows', 'transform'].map(
  (c) => store.getKey(POSITIONS_NAMESPACE, `EVENTS/${c}`) as StoredPosition | undefined,
);
await store.close();
if (!report.drained || positions.some((p) => p?.floor !== total + 1 || (p.acked?.length ?? 0) > 0)) {
  process.stderr.write(`not complete after stop: ${JSON.stringify({ report, positions })}\n`);
  process.exit(3);
}
say('done');
process.exit(0);
