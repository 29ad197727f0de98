/**
 * The checkpointed job the crash test kills (see harness.ts, variant `checkpointed`): the same
 * seeded input as job.ts (fed by job.ts with CRASH_SENTINEL=1), processed exactly once inside the
 * store. Run as a child process with the same environment as job.ts, CRASH_MODE=run:
 *
 * - `windows` reads EVENTS durably and counts and sums per key per 10 s tumbling window, with a
 *   `checkpoint`: its accumulators, its position in EVENTS and its window results (into the stream
 *   AGG) commit in one store transaction. Inputs settle by checkpoint, not by window.
 * - `transform` reads EVENTS durably, maps every event into the stream XFORM, with a checkpoint:
 *   its outputs and its position commit together, so XFORM holds each event once with no
 *   de-duplication.
 * - Sink actors read AGG and XFORM durably (at-least-once) into PostgreSQL and JSON Lines, which
 *   keep one result per idempotency key.
 *
 * Fault points (CRASH_FAULT, CRASH_FAULT_AT as in job.ts): `after-commit:windows` and
 * `after-commit:transform` (that actor's checkpoint is committed and synced, its outputs have not
 * reached the stream's consumers yet: between a state commit and an output), `mid-batch:checkpoint`
 * (inside a checkpoint's store batch, half its writes collected, nothing committed),
 * `window-fired` (a result emitted, staged for the next checkpoint), and the sinks' own:
 * `after-write:agg-pg`, `mid-batch:agg-file`, `after-write:events-file`, `mid-batch:events-pg`.
 */
import { writeSync } from 'node:fs';
import { join } from 'node:path';
import pg from 'pg';
import { filter, map, tap } from 'rxjs';
import { actor, createRuntime, durable, type Envelope, LmdbStore, type Sink, type SinkRecord, sinkActor } from 'sluice';
import { type FileSink, fileSink } from 'sluice/connectors/file';
import { postgresSink } from 'sluice/connectors/postgres';
import { agg, eventTime, keyBy, tumbling, type WindowResult, watermarks } from 'sluice/operators';
import type { StoreBatch } from '../../runtime/store/types.ts';
import { POSITIONS_NAMESPACE, type StoredPosition } from '../../runtime/streams/index.ts';
import { POSTGRES } from '../services/postgres.ts';
import { type CrashEvent, expectedWindows, OUT_OF_ORDERNESS_MS, transform, WINDOW_MS } from './input.ts';
import { tornWrite } from './tornWrite.ts';

const env = process.env;
const dir = env.CRASH_DIR as string;
const schema = env.CRASH_SCHEMA as string;
const seed = Number(env.CRASH_SEED);
const total = Number(env.CRASH_EVENTS);
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
    subscribe: durable<CrashEvent>('EVENTS', { consumer: 'windows', maxAckPending: 10_000 }),
    output: 'agg.results',
    checkpoint: { intervalMs: 200, everyInputs: 5_000 },
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
    sink: faulty('agg-pg', aggPg),
    value: totals,
    batch: { maxSize: 200, maxWaitMs: 50 },
  }),
);
runtime.spawn(
  sinkActor<Result, Totals>({
    name: 'agg-file',
    subscribe: fromStream<Result>('AGG', 'agg-file'),
    sink: faulty('agg-file', aggFile, aggFile),
    value: totals,
    batch: { maxSize: 200, maxWaitMs: 50 },
  }),
);
runtime.spawn(
  sinkActor({
    name: 'events-pg',
    subscribe: fromStream<unknown>('XFORM', 'events-pg'),
    sink: faulty('events-pg', eventsPg),
    batch: { maxSize: 1000 },
  }),
);
runtime.spawn(
  sinkActor({
    name: 'events-file',
    subscribe: fromStream<unknown>('XFORM', 'events-file'),
    sink: faulty('events-file', eventsFile),
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
  if (env.CRASH_DEBUG !== undefined && Date.now() - lastDebug > 500) {
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
await Promise.all([aggPg.close(), eventsPg.close(), aggFile.close(), eventsFile.close()]);
await Promise.all([aggPool.end(), eventsPool.end()]);
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
