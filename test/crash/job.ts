/**
 * The job the crash test kills (see harness.ts). Run as a child process:
 *
 *   node --import tsx --conditions=sluice-source test/crash/job.ts
 *
 * with CRASH_DIR (its LMDB store and JSON Lines files), CRASH_SCHEMA (PostgreSQL schema, made by
 * the parent), CRASH_SEED, CRASH_EVENTS and CRASH_MODE:
 * - `feed`: publishes the seeded events into the durable subject EVENTS (resuming after what is
 *   stored), and with CRASH_SENTINEL=1 the {@link SENTINEL} after them, then exits: the input is
 *   fixed before any kill.
 * - `run`: the job. A `windows` actor reads EVENTS durably and computes count and sum per key per
 *   10 s tumbling window; a `transform` actor reads it durably too and maps every event. Sink
 *   actors write both into PostgreSQL and into JSON Lines files. Once every event was taken in, it
 *   stops the runtime (which flushes the open windows), checks that both consumers settled every
 *   event, prints `done` and exits 0.
 *
 * CRASH_FAULT names a fault point and CRASH_FAULT_AT its occurrence: there the job prints
 * `fault <name>` and kills itself with SIGKILL. Fault points: `after-write:<sink>` (the sink
 * committed the batch, its inputs are not acknowledged yet), `mid-batch:events-pg` (inside the
 * batch's transaction, before COMMIT), `mid-batch:agg-file` (half the batch's bytes appended, a
 * torn line), `window-fired` (a window result emitted, not written anywhere yet). CRASH_DEBUG=1
 * prints both consumers' progress to stderr twice a second.
 */
import { writeSync } from 'node:fs';
import { join } from 'node:path';
import pg from 'pg';
import { map, tap } from 'rxjs';
import { actor, createRuntime, durable, type Envelope, LmdbStore, type Sink, type SinkRecord, sinkActor } from 'sluice';
import { type FileSink, fileSink } from 'sluice/connectors/file';
import { postgresSink } from 'sluice/connectors/postgres';
import { agg, eventTime, keyBy, tumbling, type WindowResult, watermarks } from 'sluice/operators';
import { POSITIONS_NAMESPACE, type StoredPosition } from '../../runtime/streams/index.ts';
import { POSTGRES } from '../services/postgres.ts';
import { type CrashEvent, events, OUT_OF_ORDERNESS_MS, SENTINEL, transform, WINDOW_MS } from './input.ts';
import { tornWrite } from './tornWrite.ts';

const env = process.env;
const dir = env.CRASH_DIR as string;
const schema = env.CRASH_SCHEMA as string;
const seed = Number(env.CRASH_SEED);
const total = Number(env.CRASH_EVENTS);
const mode = env.CRASH_MODE;
const fault = env.CRASH_FAULT;
const faultAt = Number(env.CRASH_FAULT_AT ?? 1);
let faultCount = 0;

function say(line: string): void {
  // Synchronous, so the line is out before a SIGKILL that follows it.
  writeSync(1, `${line}\n`);
}

/** Counts an occurrence of fault point `name`; the CRASH_FAULT_AT-th of CRASH_FAULT kills the process. */
function reached(name: string, before?: () => void): boolean {
  if (name !== fault || ++faultCount !== faultAt) return false;
  before?.();
  say(`fault ${name}`);
  process.kill(process.pid, 'SIGKILL');
  return true;
}

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
  const sentinel = env.CRASH_SENTINEL === '1';
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

/** A pg client whose COMMIT is the `mid-batch` fault point of its sink. */
function faultyPool(sink: string): pg.Pool {
  class FaultyClient extends pg.Client {
    // biome-ignore lint/suspicious/noExplicitAny: pg's query has a dozen overloads; this passes them all on.
    override query(...args: any[]): any {
      if (args[0] === 'COMMIT') reached(`mid-batch:${sink}`);
      return (super.query as (...a: unknown[]) => unknown)(...args);
    }
  }
  const pool = new pg.Pool({ ...POSTGRES, max: 2, Client: FaultyClient });
  pool.on('error', () => undefined);
  return pool;
}

/** A sink with the `after-write` fault point, and for files the torn `mid-batch` one. */
function faulty<T>(name: string, sink: Sink<T>, file?: FileSink<T>): Sink<T> {
  return {
    name: sink.name,
    write: async (records: readonly SinkRecord<T>[]) => {
      if (file !== undefined) reached(`mid-batch:${name}`, () => tornWrite(file, records));
      await sink.write(records);
      reached(`after-write:${name}`);
    },
    close: async () => sink.close?.(),
  };
}

interface Totals {
  key: string | undefined;
  start: number;
  end: number;
  count: number;
  sum: number;
}

const aggPool = faultyPool('agg-pg');
const eventsPool = faultyPool('events-pg');
const aggPg = await postgresSink<Totals>({ table: `${schema}.agg`, pool: aggPool, createTable: true });
const eventsPg = await postgresSink<unknown>({ table: `${schema}.events`, pool: eventsPool, createTable: true });
const aggFile = await fileSink<Totals>({ path: join(dir, 'agg.jsonl') });
const eventsFile = await fileSink<unknown>({ path: join(dir, 'events.jsonl') });

type Result = WindowResult<{ count: number; sum: number }>;
const totals = (e: Envelope<Result>): Totals => ({
  key: e.data.key,
  start: e.data.start,
  end: e.data.end,
  count: e.data.value.count,
  sum: e.data.value.sum,
});

runtime.spawn(
  actor<CrashEvent, Result>({
    name: 'windows',
    // Inputs absorbed in open windows stay unsettled until their window's result is written.
    subscribe: durable<CrashEvent>('EVENTS', { consumer: 'windows', maxAckPending: 60_000 }),
    output: 'agg.results',
    pipeline: (in$) =>
      in$.pipe(
        eventTime((e) => e.t),
        keyBy((e) => e.key),
        watermarks({ maxOutOfOrdernessMs: OUT_OF_ORDERNESS_MS }),
        tumbling({
          name: 'agg',
          sizeMs: WINDOW_MS,
          aggregate: agg.combine({ count: agg.count(), sum: agg.sum((e: CrashEvent) => e.value) }),
        }),
        tap(() => reached('window-fired')),
      ),
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
    sink: faulty('agg-pg', aggPg),
    value: totals,
    batch: { maxSize: 200, maxWaitMs: 50 },
  }),
);
runtime.spawn(
  sinkActor<Result, Totals>({
    name: 'agg-file',
    subscribe: 'agg.results',
    sink: faulty('agg-file', aggFile, aggFile),
    value: totals,
    batch: { maxSize: 200, maxWaitMs: 50 },
  }),
);
runtime.spawn(
  sinkActor({
    name: 'events-pg',
    subscribe: 'xform.results',
    sink: faulty('events-pg', eventsPg),
    batch: { maxSize: 1000 },
  }),
);
runtime.spawn(
  sinkActor({
    name: 'events-file',
    subscribe: 'xform.results',
    sink: faulty('events-file', eventsFile),
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
  if (env.CRASH_DEBUG !== undefined && Date.now() - lastDebug > 500) {
    lastDebug = Date.now();
    process.stderr.write(`${JSON.stringify({ windows: windows.info(), transform: transformed.info() })}\n`);
  }
  if (stream.info().last === total && w.messages === w.ackPending && transformed.lag().messages === 0) break;
  await new Promise((resolve) => setTimeout(resolve, 50));
}
// The drain flushes the open windows; their results are written and their inputs acknowledged.
const report = await runtime.stop();
await Promise.all([aggPg.close(), eventsPg.close(), aggFile.close(), eventsFile.close()]);
await Promise.all([aggPool.end(), eventsPool.end()]);
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
