import { type Observable, type OperatorFunction, Observable as RxObservable } from 'rxjs';
import {
  absorb,
  type Bus,
  createRuntime,
  type Envelope,
  type Logger,
  mergeLineage,
  type Runtime,
  type RuntimeOptions,
  VirtualClock,
} from 'sluice';
import { seededRandom } from 'sluice/testing';
import { onTestFinished } from 'vitest';

/** Lets queued microtasks and one macrotask turn run: enough for in-process delivery to happen. */
export async function flush(turns = 3): Promise<void> {
  for (let i = 0; i < turns; i++) {
    for (let j = 0; j < 10; j++) await Promise.resolve();
    await new Promise<void>((resolve) => setImmediate(resolve));
  }
}

/** A deterministic PRNG in [0, 1), for seeded jitter and delays. */
export const seeded = seededRandom;

/** A logger that keeps what it is told, so expected warnings do not clutter the test output. */
export function quietLogger(): Logger & { readonly lines: string[] } {
  const lines: string[] = [];
  const keep = (level: string) => (message: string) => void lines.push(`${level}: ${message}`);
  return { lines, debug: keep('debug'), info: keep('info'), warn: keep('warn'), error: keep('error') };
}

/**
 * A runtime on a virtual clock with a quiet logger, stopped when the test ends (a deadline of 0 and
 * one clock step, so a test that left a handler hanging still cleans up).
 */
export function testRuntime(options: RuntimeOptions = {}): {
  rt: Runtime;
  clock: VirtualClock;
  log: ReturnType<typeof quietLogger>;
} {
  const clock = options.clock instanceof VirtualClock ? options.clock : new VirtualClock(1_000_000);
  const log = quietLogger();
  const rt = createRuntime({ logger: log, ...options, clock });
  onTestFinished(async () => {
    const stopping = rt.stop({ deadlineMs: 0 });
    await clock.advance(0);
    await stopping;
  });
  return { rt, clock, log };
}

/** Subscribes to `subject` and keeps every envelope that arrives, in order. */
export function collect<T = unknown>(bus: Bus, subject: string): Envelope<T>[] {
  const got: Envelope<T>[] = [];
  bus.subscribe<T>(subject, { callback: (env) => void got.push(env) });
  return got;
}

/** A promise resolved by hand, for handlers whose slowness the test controls. */
export interface Gate {
  readonly promise: Promise<void>;
  open(): void;
}

export function gate(): Gate {
  let open!: () => void;
  const promise = new Promise<void>((resolve) => {
    open = resolve;
  });
  return { promise, open };
}

/**
 * A buffering operator written by the settlement rules: each input is absorbed (kept in state,
 * not in flight) and given back once the batch that contains it was emitted. Emits every `size`
 * inputs and what is left when its input completes.
 */
export function batchOf<T>(size: number): OperatorFunction<Envelope<T>, Envelope<T[]>> {
  return (source: Observable<Envelope<T>>) =>
    new RxObservable<Envelope<T[]>>((subscriber) => {
      let held: { env: Envelope<T>; release: () => void }[] = [];
      const emit = () => {
        const batch = held;
        held = [];
        const first = batch[0];
        if (first === undefined) return;
        subscriber.next({
          ...first.env,
          data: batch.map((b) => b.env.data),
          lineage: mergeLineage(batch.map((b) => b.env.lineage)),
        });
        for (const b of batch) b.release();
      };
      return source.subscribe({
        next: (env) => {
          held.push({ env, release: absorb(env.lineage) });
          if (held.length >= size) emit();
        },
        error: (error: unknown) => subscriber.error(error),
        complete: () => {
          emit();
          subscriber.complete();
        },
      });
    });
}

/** The error `fn` throws; fails the test when it does not throw. */
export function thrown(fn: () => unknown): unknown {
  try {
    fn();
  } catch (error) {
    return error;
  }
  throw new Error('expected a throw');
}

/** The error a promise rejects with; fails the test when it resolves. */
export async function rejection(promise: Promise<unknown>): Promise<unknown> {
  return promise.then(
    () => {
      throw new Error('expected a rejection');
    },
    (error: unknown) => error,
  );
}
