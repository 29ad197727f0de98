/**
 * Actors whose surroundings fail: a dead-letter subject whose subscriber refuses a letter at once,
 * a logger that throws. Every input must still end retried, dead-lettered or settled, the actor
 * must go on with the next one, and its idle() must resolve.
 */
import { concat, EMPTY, map, Observable, tap, throwError } from 'rxjs';
import { actor, DEAD_LETTER_HEADERS, type Envelope, hold, type Logger, SluiceError } from 'sluice';
import { mapAsync } from 'sluice/operators';
import { describe, expect, test } from 'vitest';
import { batchOf, collect, flush, gate, testRuntime } from './helpers.ts';

/** Which comes first: `promise`, or a few turns of the event loop (it is stuck). */
async function settlesSoon(promise: Promise<unknown>): Promise<boolean> {
  return Promise.race([promise.then(() => true), flush(5).then(() => false)]);
}

describe('actor - faults around it', () => {
  test('a dead letter its subscriber refuses at once is given back as failed; the input was accepted and the actor goes idle', async () => {
    const { rt, log } = testRuntime();
    // Takes one letter, then refuses: its `fail` mailbox of one is full and nobody reads it.
    rt.bus.subscribe('$DLQ.picky', { max: 2, mailbox: { capacity: 1, overflow: 'fail' } });
    const ref = rt.spawn(
      actor<number, never>({
        name: 'picky',
        subscribe: 'jobs',
        handle: () => {
          throw new SluiceError('SLUICE_ERR_HANDLER', 'bad input', { retryable: false });
        },
      }),
    );
    await rt.bus.publish('jobs', 1);
    // The actor took the second message: its publish succeeds, whatever becomes of its dead letter.
    await expect(rt.bus.publish('jobs', 2)).resolves.toBeUndefined();
    expect(await settlesSoon(ref.idle())).toBe(true);
    expect(log.lines.some((l) => l.startsWith('error:') && l.includes('could not dead-letter'))).toBe(true);
    expect(ref.counters).toMatchObject({ delivered: 2, deadLettered: 2 });
  });

  test('a logger that throws does not stop a pipeline from restarting after a message failed in it', async () => {
    const throwing: Logger = {
      debug: () => {},
      info: () => {},
      warn: () => {
        throw new Error('logger failed');
      },
      error: () => {
        throw new Error('logger failed');
      },
    };
    const { rt } = testRuntime({ logger: throwing });
    const out = collect<number>(rt.bus, 'out');
    const dlq: Envelope[] = [];
    rt.bus.subscribe('$DLQ.doubler', { callback: (env) => void dlq.push(env) });
    const ref = rt.spawn(
      actor<number, number>({
        name: 'doubler',
        subscribe: 'in',
        output: 'out',
        retry: { maxAttempts: 1 },
        pipeline: (in$) =>
          in$.pipe(
            map((env) => {
              if (env.data === 0) throw new Error('zero');
              return { ...env, data: env.data * 2 };
            }),
          ),
      }),
    );
    await rt.bus.publish('in', 0);
    await rt.bus.publish('in', 1);
    expect(await settlesSoon(ref.idle())).toBe(true);
    expect(dlq.map((env) => env.data)).toEqual([0]);
    expect(out.map((env) => env.data)).toEqual([2]);
  });
});

describe('actor - a pipeline that fails while an async step holds inputs', () => {
  test('inputs queued in mapAsync behind a running call are replayed into the new pipeline, not dead-lettered', async () => {
    const { rt } = testRuntime();
    const out = collect<number>(rt.bus, 'out');
    const dlq = collect<number>(rt.bus, '$DLQ.quoter');
    const open = gate();
    const calls: number[] = [];
    const ref = rt.spawn(
      actor<number, number>({
        name: 'quoter',
        subscribe: 'in',
        output: 'out',
        retry: { maxAttempts: 1 },
        pipeline: (in$) =>
          in$.pipe(
            tap((env) => {
              if (env.data === 0) throw new Error('zero');
            }),
            mapAsync(
              async (n: number) => {
                calls.push(n);
                await open.promise;
                return n * 10;
              },
              { concurrency: 1 },
            ),
          ),
      }),
    );
    // 1 runs in mapAsync, 2 waits behind it; 0 then fails the pipeline synchronously.
    for (const n of [1, 2, 0]) await rt.bus.publish('in', n);
    await flush();
    open.open();
    await ref.idle();
    await flush();
    expect(dlq.map((env) => env.data)).toEqual([0]);
    expect(out.map((env) => env.data).sort()).toEqual([10, 20]);
    expect(ref.counters).toMatchObject({ deadLettered: 1 });
  });
});

describe('actor - stop while a pipeline holds inputs', () => {
  test('an input its pipeline gives back failed as it is torn down is dead-lettered once, and no retry timer outlives the stop', async () => {
    const { rt, clock } = testRuntime();
    const dlq = collect<number>(rt.bus, '$DLQ.keeper');
    // Holds every input until unsubscribed, then gives it back failed (retryable), as an async
    // step that cancels its work would.
    const keepUntilTornDown = (in$: Observable<Envelope<number>>) =>
      new Observable<Envelope<number>>(() => {
        const releases: ((error?: unknown) => void)[] = [];
        const sub = in$.subscribe((env) => void releases.push(hold(env.lineage)));
        return () => {
          sub.unsubscribe();
          for (const release of releases) release(new Error('cancelled'));
        };
      });
    const ref = rt.spawn(
      actor<number, number>({
        name: 'keeper',
        subscribe: 'in',
        output: 'out',
        retry: { maxAttempts: 3, backoff: { initialMs: 60_000, jitter: 0 } },
        pipeline: keepUntilTornDown,
      }),
    );
    await rt.bus.publish('in', 1);
    await ref.stop();
    await flush();
    expect(ref.state).toBe('stopped');
    expect(dlq.map((env) => env.data)).toEqual([1]);
    expect(clock.pending).toBe(0);
  });
});

describe('actor - a pipeline that fails while shutdown ends its input', () => {
  test('the pipeline rebuilt after the failure is ended too, so what it holds is flushed, not dead-lettered', async () => {
    const { rt, clock } = testRuntime();
    const out = collect<number[]>(rt.bus, 'batches');
    const dlq = collect(rt.bus, '$DLQ.batcher');
    let builds = 0;
    rt.spawn(
      actor<number, number[]>({
        name: 'batcher',
        subscribe: 'in',
        output: 'batches',
        restart: { backoff: { initialMs: 10, jitter: 0 } },
        pipeline: (in$) => {
          const build = ++builds;
          // The first pipeline fails when its input ends, before its batch could be flushed.
          return concat(in$, build === 1 ? throwError(() => new Error('flush failed')) : EMPTY).pipe(
            batchOf<number>(10),
          );
        },
      }),
    );
    await rt.bus.publish('in', 1);
    await rt.bus.publish('in', 2);
    const stopping = rt.stop({ deadlineMs: 1_000 });
    await clock.advance(1_000);
    const report = await stopping;
    expect(builds).toBe(2);
    expect(out.map((env) => env.data)).toEqual([[1, 2]]);
    expect(dlq).toEqual([]);
    expect(report.drained).toBe(true);
  });
});

describe('actor - shutdown while an async step holds inputs', () => {
  test('inputs queued in mapAsync when the deadline passes are dead-lettered with the ShutdownError, as the running one is', async () => {
    const { rt, clock } = testRuntime();
    const dlq = collect<number>(rt.bus, '$DLQ.slow');
    const never = gate();
    rt.spawn(
      actor<number, number>({
        name: 'slow',
        subscribe: 'in',
        output: 'out',
        pipeline: (in$) =>
          in$.pipe(
            mapAsync(
              async (n: number) => {
                await never.promise;
                return n;
              },
              { concurrency: 1 },
            ),
          ),
      }),
    );
    for (const n of [1, 2, 3]) await rt.bus.publish('in', n);
    const stopping = rt.stop({ deadlineMs: 100 });
    await clock.advance(100);
    const report = await stopping;
    expect(report.drained).toBe(false);
    expect(dlq.map((env) => env.data).sort()).toEqual([1, 2, 3]);
    expect(dlq.map((env) => env.headers[DEAD_LETTER_HEADERS.code])).toEqual([
      'SLUICE_ERR_SHUTDOWN',
      'SLUICE_ERR_SHUTDOWN',
      'SLUICE_ERR_SHUTDOWN',
    ]);
  });
});
