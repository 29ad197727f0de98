/**
 * What both crash jobs (job.ts, checkpointJob.ts) share: their settings from the environment, the
 * fault points, and the four sinks (PostgreSQL and JSON Lines, for window totals and for events)
 * with the sink fault points built in.
 */
import { writeSync } from 'node:fs';
import { join } from 'node:path';
import pg from 'pg';
import { type Observable, tap } from 'rxjs';
import type { Envelope, Sink, SinkRecord } from 'sluice';
import { type FileSink, fileSink } from 'sluice/connectors/file';
import { postgresSink } from 'sluice/connectors/postgres';
import { agg, eventTime, keyBy, tumbling, type WindowResult, watermarks } from 'sluice/operators';
import { POSTGRES } from '../services/postgres.ts';
import { type CrashEvent, OUT_OF_ORDERNESS_MS, WINDOW_MS } from './input.ts';
import { tornWrite } from './tornWrite.ts';

const env = process.env;
export const dir = env.CRASH_DIR as string;
export const schema = env.CRASH_SCHEMA as string;
export const seed = Number(env.CRASH_SEED);
export const total = Number(env.CRASH_EVENTS);
export const mode = env.CRASH_MODE;
const fault = env.CRASH_FAULT;
const faultAt = Number(env.CRASH_FAULT_AT ?? 1);
let faultCount = 0;

export function say(line: string): void {
  // Synchronous, so the line is out before a SIGKILL that follows it.
  writeSync(1, `${line}\n`);
}

/** Counts an occurrence of fault point `name`; the CRASH_FAULT_AT-th of CRASH_FAULT kills the process. */
export function reached(name: string, before?: () => void): boolean {
  if (name !== fault || ++faultCount !== faultAt) return false;
  before?.();
  say(`fault ${name}`);
  process.kill(process.pid, 'SIGKILL');
  return true;
}

/**
 * Counts an occurrence of fault point `name` and says whether it is the one that kills: the caller
 * does what the fault leaves behind, then calls {@link die}.
 */
export function faultDue(name: string): boolean {
  return name === fault && ++faultCount === faultAt;
}

/** Dies at fault point `name` (see {@link faultDue}). */
export function die(name: string): never {
  say(`fault ${name}`);
  process.kill(process.pid, 'SIGKILL');
  throw new Error('unreachable: killed');
}

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

export interface Totals {
  key: string | undefined;
  start: number;
  end: number;
  count: number;
  sum: number;
}

export type Result = WindowResult<{ count: number; sum: number }>;

export const totals = (e: Envelope<Result>): Totals => ({
  key: e.data.key,
  start: e.data.start,
  end: e.data.end,
  count: e.data.value.count,
  sum: e.data.value.sum,
});

/** Both jobs' window: a keyed tumbling count and sum on event time, with the `window-fired` fault point. */
export const windowTotals = (in$: Observable<Envelope<CrashEvent>>): Observable<Envelope<Result>> =>
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
  );

/** The four sinks, each behind its fault points; `end()` closes the pools. */
export async function openSinks(): Promise<{
  aggPg: Sink<Totals>;
  aggFile: Sink<Totals>;
  eventsPg: Sink<unknown>;
  eventsFile: Sink<unknown>;
  end: () => Promise<void>;
}> {
  const aggPool = faultyPool('agg-pg');
  const eventsPool = faultyPool('events-pg');
  const aggPg = await postgresSink<Totals>({ table: `${schema}.agg`, pool: aggPool, createTable: true });
  const eventsPg = await postgresSink<unknown>({ table: `${schema}.events`, pool: eventsPool, createTable: true });
  const aggFile = await fileSink<Totals>({ path: join(dir, 'agg.jsonl') });
  const eventsFile = await fileSink<unknown>({ path: join(dir, 'events.jsonl') });
  return {
    aggPg: faulty('agg-pg', aggPg),
    aggFile: faulty('agg-file', aggFile, aggFile),
    eventsPg: faulty('events-pg', eventsPg),
    eventsFile: faulty('events-file', eventsFile),
    end: async () => {
      await Promise.all([aggPool.end(), eventsPool.end()]);
    },
  };
}
