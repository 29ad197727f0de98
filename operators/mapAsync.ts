import { Observable, type OperatorFunction } from 'rxjs';
import { MessageError } from '../runtime/actors/failure.ts';
import type { Envelope } from '../runtime/envelope.ts';
import { ClosedError } from '../runtime/errors.ts';
import { hold } from '../runtime/lineage.ts';
import { intOption } from '../runtime/options.ts';

export interface MapAsyncOptions {
  /** Calls running at once. @default 16 */
  concurrency?: number;
  /** Emit results in input order (a slow call holds back later results). @default false */
  ordered?: boolean;
}

/**
 * Maps each envelope's data through an async function, keeping the input in flight until its
 * result is emitted, so backpressure and settlement see the async step (a plain `mergeMap` would
 * let the actor settle the input before the result exists).
 *
 * A rejected call does not fail the pipeline: the input is settled as failed, so the actor retries
 * it with backoff or dead-letters it, while other inputs go on and operator state is kept.
 * Id, key, headers and lineage pass through to the result.
 *
 *     in:   --a-----b-----|
 *     fn:     ~~~A    ~~B
 *     out:  -----A-----B--|
 *
 * @example order$.pipe(mapAsync((order) => pricing.quote(order), { concurrency: 8 }))
 */
export function mapAsync<T, U>(
  fn: (data: T, env: Envelope<T>) => Promise<U>,
  options: MapAsyncOptions = {},
): OperatorFunction<Envelope<T>, Envelope<U>> {
  const concurrency = intOption('mapAsync.concurrency', options.concurrency, 16, 1);
  const ordered = options.ordered ?? false;
  return (source) =>
    new Observable<Envelope<U>>((subscriber) => {
      const waiting: [Envelope<T>, (error?: unknown) => void][] = [];
      // Ordered mode: results wait here, in input order, until every earlier one is out.
      const slots: { result: Envelope<U> | undefined; done: boolean; release: (e?: unknown) => void }[] = [];
      let active = 0;
      let sourceDone = false;
      let closed = false;

      const finish = () => {
        if (sourceDone && active === 0 && waiting.length === 0 && slots.length === 0) subscriber.complete();
      };
      const flushOrdered = () => {
        while (slots.length > 0 && (slots[0] as (typeof slots)[number]).done) {
          const slot = slots.shift() as (typeof slots)[number];
          if (slot.result !== undefined) subscriber.next(slot.result);
          slot.release();
        }
      };
      const start = (env: Envelope<T>, release: (error?: unknown) => void) => {
        active++;
        const slot = ordered ? { result: undefined as Envelope<U> | undefined, done: false, release } : undefined;
        if (slot !== undefined) slots.push(slot);
        let call: Promise<U>;
        try {
          // A plain value (untyped code) would fail at `then` out of the source's callback, where
          // nothing catches it, and leave the input held for good.
          call = Promise.resolve(fn(env.data, env));
        } catch (error) {
          call = Promise.reject(error);
        }
        call.then(
          (data) => {
            active--;
            // Unsubscribed meanwhile: the result goes nowhere, so the input did not succeed.
            if (closed) return release(cancelled());
            const result: Envelope<U> = { ...env, data };
            if (slot !== undefined) {
              slot.result = result;
              slot.done = true;
              flushOrdered();
            } else {
              subscriber.next(result);
              // Released after `next`: the actor has retained the result's lineage by then.
              release();
            }
            next();
          },
          (error: unknown) => {
            active--;
            const failure = new MessageError(env, error);
            // After an unsubscribe the slot is no longer in the queue that would release it.
            if (slot !== undefined && !closed) {
              slot.done = true;
              slot.release = () => release(failure);
              flushOrdered();
            } else release(failure);
            if (!closed) next();
          },
        );
      };
      const next = () => {
        while (active < concurrency && waiting.length > 0) {
          const [env, release] = waiting.shift() as [Envelope<T>, (error?: unknown) => void];
          start(env, release);
        }
        finish();
      };
      const subscription = source.subscribe({
        next: (env) => {
          // Held from arrival, not from start: a waiting input is still in flight.
          waiting.push([env, hold(env.lineage)]);
          next();
        },
        error: (error: unknown) => subscriber.error(error),
        complete: () => {
          sourceDone = true;
          finish();
        },
      });
      return () => {
        closed = true;
        subscription.unsubscribe();
        // What was taken and will never be emitted fails, so it is retried rather than acknowledged.
        for (const [, release] of waiting.splice(0)) release(cancelled());
        for (const slot of slots.splice(0)) if (slot.done) slot.release(cancelled());
      };
    });
}

function cancelled(): ClosedError {
  return new ClosedError('mapAsync', 'the pipeline was unsubscribed before the result was emitted');
}
