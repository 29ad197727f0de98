import { Observable, type OperatorFunction } from 'rxjs';
import { type Actor, actor, actorBaseKeys, type PipelineActor } from '../actors/actor.ts';
import { IDEMPOTENT_SINK } from '../actors/delivery.ts';
import { MessageError } from '../actors/failure.ts';
import { type Clock, systemClock, type Timer } from '../clock.ts';
import type { Envelope } from '../envelope.ts';
import { ClosedError, ConnectorError, OptionsError } from '../errors.ts';
import { hold } from '../lineage.ts';
import { intOption, knownKeys, numberOption, optionKeys } from '../options.ts';
import { type Sink, type SinkRecord, type SinkRecordOptions, sinkRecordOf } from './sink.ts';

/** When a batch is written: whichever comes first. */
export interface SinkBatchOptions {
  /** Records per write. @default 500 */
  maxSize?: number;
  /** How long the first record of a batch waits for more, on the clock. @default 100 */
  maxWaitMs?: number;
}

export interface WriteToOptions<In, T> extends SinkRecordOptions<In, T> {
  batch?: SinkBatchOptions;
  /** Processing time for `batch.maxWaitMs`: pass the actor's `ctx.clock`. @default systemClock */
  clock?: Clock;
  /** Names the operator in errors. @default `writeTo(<sink name>)` */
  name?: string;
}

export const DEFAULT_SINK_BATCH = Object.freeze({ maxSize: 500, maxWaitMs: 100 });

interface Pending<T> {
  readonly env: Envelope<unknown>;
  readonly record: SinkRecord<T>;
  readonly release: (error?: unknown) => void;
  /** A retry of an input whose batch failed: written in a batch of its own. */
  readonly alone: boolean;
}

// Ids of inputs whose batch failed, until their retry arrives; bounded in case none does.
const MAX_SUSPECTS = 10_000;

/**
 * Writes each input to `sink` in batches and emits nothing. Every input stays in flight (held, as
 * in `mapAsync`) until the batch holding it is committed, then it settles as acknowledged; a
 * failed write fails each input of the batch, which the actor retries with backoff and then
 * dead-letters; each such input is written in a batch of its own when it comes back, so one bad
 * record does not take its batchmates to the dead-letter subject. So the actor's `maxInFlight` bounds the records waiting and being written, and a
 * slow sink slows the source. One write runs at a time per subscription (the sink's
 * `writesAtOnce` if it takes more, keeping their order), in input order. An input
 * without an idempotency key is dead-lettered with an `OptionsError`, never given a random key.
 */
export function writeTo<In, T = In>(
  sink: Sink<T>,
  options: WriteToOptions<In, T> = {},
): OperatorFunction<Envelope<In>, Envelope<never>> {
  const where = options.name ?? `writeTo(${sink?.name})`;
  if (sink === null || typeof sink !== 'object' || typeof sink.write !== 'function')
    throw new OptionsError(`${where}.sink`, 'must be a Sink with a write(records) method', sink);
  const maxSize = intOption(`${where}.batch.maxSize`, options.batch?.maxSize, DEFAULT_SINK_BATCH.maxSize, 1);
  const maxWaitMs = numberOption(`${where}.batch.maxWaitMs`, options.batch?.maxWaitMs, DEFAULT_SINK_BATCH.maxWaitMs);
  const maxWrites = intOption(`${where}.sink.writesAtOnce`, sink.writesAtOnce, 1, 1);
  const clock = options.clock ?? systemClock;
  return (source) =>
    new Observable<Envelope<never>>((subscriber) => {
      let batch: Pending<T>[] = [];
      let timer: Timer | undefined;
      // The first waiting record's time is up, but a write was running: flush when it ends.
      let due = false;
      let writing = 0;
      let sourceDone = false;
      let closed = false;
      const suspects = new Set<string>();

      const arm = () => {
        if (timer !== undefined || batch.length === 0) return;
        timer = clock.setTimeout(() => {
          timer = undefined;
          due = true;
          if (writing < maxWrites) flush();
        }, maxWaitMs);
      };
      const flush = () => {
        if (writing >= maxWrites || batch.length === 0) return;
        let n = 1;
        if (!(batch[0] as Pending<T>).alone)
          while (n < batch.length && n < maxSize && !(batch[n] as Pending<T>).alone) n++;
        const taken = n === batch.length ? batch : batch.slice(0, n);
        batch = taken === batch ? [] : batch.slice(n);
        if (batch.length === 0) {
          due = false;
          timer?.cancel();
          timer = undefined;
        }
        writing++;
        let call: Promise<void>;
        try {
          call = sink.write(taken.map((p) => p.record));
        } catch (error) {
          call = Promise.reject(error);
        }
        call.then(
          () => {
            writing--;
            // The next batch, if it is ready, goes to the sink before these inputs settle: their
            // acknowledgements (and the intake they free room for) then run while the sink
            // writes, not between two writes (a batch of 500 settling took about as long as
            // encoding the next one for Kafka). They still settle in order, before any later one.
            if (!closed && ready()) flush();
            // Torn down meanwhile: the pipeline that took these inputs is gone and replays them,
            // so they fail (and are retried) as in mapAsync; writing them again is harmless.
            for (const p of taken) p.release(closed ? cancelled(where) : undefined);
            after();
          },
          (error: unknown) => {
            writing--;
            // A connector that lost its broker (a retryable ConnectorError) blames no record: the
            // batch is retried whole, not one input at a time.
            if (taken.length > 1 && !(error instanceof ConnectorError && error.retryable)) {
              if (suspects.size + taken.length > MAX_SUSPECTS) suspects.clear();
              for (const p of taken) suspects.add(p.env.id);
            }
            // A batch that failed for a record's sake is retried one input at a time even when the
            // error says a retry cannot help: which input it was is found by those retries, and the
            // innocent ones are written. Alone, an input fails as its error says.
            const retryable = taken.length > 1 ? true : undefined;
            for (const p of taken) p.release(new MessageError(p.env, error, retryable));
            after();
          },
        );
      };
      const ready = () =>
        batch.length >= maxSize || due || (sourceDone && batch.length > 0) || batch[0]?.alone === true;
      const after = () => {
        if (closed) return;
        if (ready()) flush();
        else arm();
        if (sourceDone && writing === 0 && batch.length === 0) subscriber.complete();
      };

      const subscription = source.subscribe({
        next: (env) => {
          const release = hold(env.lineage);
          let record: SinkRecord<T>;
          try {
            record = sinkRecordOf(env, options, where);
          } catch (error) {
            // Fails this input only (dead-lettered: OptionsError is not retryable), not the pipeline.
            release(error);
            return;
          }
          // One bad record fails its whole batch; written alone on retry, it fails by itself and
          // its batchmates go through, instead of all of them being dead-lettered together.
          const alone = suspects.size > 0 && suspects.delete(env.id);
          batch.push({ env, record, release, alone });
          if (batch.length >= maxSize || alone) flush();
          else arm();
        },
        error: (error: unknown) => subscriber.error(error),
        complete: () => {
          sourceDone = true;
          after();
        },
      });
      return () => {
        closed = true;
        subscription.unsubscribe();
        timer?.cancel();
        timer = undefined;
        for (const p of batch.splice(0)) p.release(cancelled(where));
      };
    });
}

function cancelled(where: string): ClosedError {
  return new ClosedError(where, 'the pipeline was unsubscribed before the batch was committed');
}

/** A sink actor: an actor that writes what it subscribes to into a sink. */
export interface SinkActorDefinition<In, T = In>
  extends Omit<PipelineActor<In, never>, 'pipeline' | 'output' | 'handle' | 'concurrency' | 'checkpoint'>,
    SinkRecordOptions<In, T> {
  sink: Sink<T>;
  batch?: SinkBatchOptions;
  /**
   * Inputs taken and not yet committed by the sink (per lane): the batches being written (the
   * sink's `writesAtOnce`, 1 for most) and the next one filling. At least `batch.maxSize`.
   * @default `batch.maxSize` times one more than the sink's `writesAtOnce`
   */
  maxInFlight?: number;
}

// A sink actor takes every actor option but `checkpoint` (its sink, not the store, keeps its results).
const { checkpoint: _checkpoint, ...sinkActorBaseKeys } = actorBaseKeys;
const sinkKeys = optionKeys<keyof SinkActorDefinition<unknown, unknown>>({
  ...sinkActorBaseKeys,
  sink: true,
  batch: true,
  key: true,
  revision: true,
  value: true,
});

/**
 * Declares an actor that writes its inputs into `sink` in batches (see {@link writeTo}): an input
 * is acknowledged to its source only once the sink committed it, so the sink holds every input
 * (at-least-once), and with deterministic keys a replay lands on the same results (exactly-once
 * effect).
 *
 * @example
 * const totalsToPg = sinkActor({ name: 'totals-pg', subscribe: 'totals', sink, batch: { maxSize: 500 } });
 */
export function sinkActor<In, T = In>(definition: SinkActorDefinition<In, T>): Actor<In, never> {
  const name = definition?.name;
  knownKeys(`sinkActor '${name}'`, definition, sinkKeys);
  const { sink, batch, key, revision, value, ...rest } = definition;
  const maxSize = intOption(`sinkActor '${name}'.batch.maxSize`, batch?.maxSize, DEFAULT_SINK_BATCH.maxSize, 1);
  const writesAtOnce = typeof sink?.writesAtOnce === 'number' ? sink.writesAtOnce : 1;
  const maxInFlight = definition.maxInFlight ?? (1 + writesAtOnce) * maxSize;
  if (!Number.isSafeInteger(maxInFlight) || maxInFlight < maxSize) {
    throw new OptionsError(
      `sinkActor '${name}'.maxInFlight`,
      `must be an integer >= batch.maxSize (${maxSize}), or no batch ever fills`,
      maxInFlight,
    );
  }
  const records: WriteToOptions<In, T> = { batch, name: `sinkActor '${name}'` };
  if (key !== undefined) records.key = key;
  if (revision !== undefined) records.revision = revision;
  if (value !== undefined) records.value = value;
  // Checked now, so a bad sink or batch option fails at start-up, not at the first message.
  writeTo(sink, records);
  const definitionOut: PipelineActor<In, never> = {
    ...rest,
    maxInFlight,
    pipeline: (input$, ctx) => input$.pipe(writeTo(sink, { ...records, clock: ctx.clock })),
  };
  // Its sink keeps one result per key: 'exactly-once' needs no checkpoint here.
  return actor<In, never>(Object.assign(definitionOut, { [IDEMPOTENT_SINK]: true }));
}
