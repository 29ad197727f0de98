import { filter, take, takeUntil } from 'rxjs';
import { actor, type Envelope } from 'sluice';
import { describe, expect, test } from 'vitest';
import { batchOf, collect, flush, testRuntime } from './helpers.ts';

const backoff = { initialMs: 100, jitter: 0 };

describe('a pipeline that completes while its input is open', () => {
  test('take(1): the input whose output went out is acked, not dead-lettered; the completion is a counted restart', async () => {
    const { rt, clock, log } = testRuntime();
    const out = collect<string>(rt.bus, 'out');
    const dlq = collect(rt.bus, '$DLQ.firstOnly');
    const ref = rt.spawn(
      actor<string, string>({
        name: 'firstOnly',
        subscribe: 'in',
        output: 'out',
        restart: { maxRestarts: 5, backoff },
        pipeline: (in$) => in$.pipe(take(1)),
      }),
    );
    await rt.bus.publish('in', 'a');
    // Taken while the pipeline is down: it waits for the new one.
    await rt.bus.publish('in', 'b');
    await flush();
    expect(out.map((e) => e.data)).toEqual(['a']);
    expect(ref.state).toBe('restarting');
    expect(ref.counters).toMatchObject({ acked: 1, deadLettered: 0, restarts: 1 });
    expect(ref.restarts).toBe(1);
    expect(log.lines).toContain(
      "warn: actor 'firstOnly' pipeline failed, restarting in 100 ms: actor 'firstOnly' pipeline completed while its input was open",
    );

    await clock.advance(100);
    await flush();
    // The new pipeline takes 'b' and completes in turn: a second restart, after a longer backoff.
    expect(out.map((e) => e.data)).toEqual(['a', 'b']);
    expect(ref.counters).toMatchObject({ acked: 2, deadLettered: 0, restarts: 2 });
    expect(dlq).toEqual([]);
  });

  test('past the restart limit the actor stops, and the input already published stays acked', async () => {
    const escalated: string[] = [];
    const { rt } = testRuntime({ onEscalate: (name) => void escalated.push(name) });
    const out = collect<string>(rt.bus, 'out');
    const dlq = collect<string>(rt.bus, '$DLQ.once');
    const ref = rt.spawn(
      actor<string, string>({
        name: 'once',
        subscribe: 'in',
        output: 'out',
        restart: { maxRestarts: 0, onLimit: 'escalate' },
        pipeline: (in$) => in$.pipe(take(1)),
      }),
    );
    await rt.bus.publish('in', 'a');
    await flush();
    expect(ref.state).toBe('stopped');
    expect(escalated).toEqual(['once']);
    expect(out.map((e) => e.data)).toEqual(['a']);
    expect(dlq).toEqual([]);
    expect(ref.counters).toMatchObject({ acked: 1, deadLettered: 0 });
    expect({ inFlight: ref.inFlight, absorbed: ref.absorbed }).toEqual({ inFlight: 0, absorbed: 0 });
  });

  test('inputs the completed pipeline still held are replayed into the restarted one; the one that ended it is not', async () => {
    const { rt, clock } = testRuntime();
    const out = collect<string[]>(rt.bus, 'out');
    const dlq = collect(rt.bus, '$DLQ.batcher');
    const ref = rt.spawn(
      actor<string, string[]>({
        name: 'batcher',
        subscribe: 'in',
        output: 'out',
        restart: { backoff },
        pipeline: (in$) =>
          in$.pipe(
            filter((env) => env.data !== 'stop'),
            batchOf<string>(3),
            // Ends the output without completing the batch: what it held is not flushed.
            takeUntil(in$.pipe(filter((env: Envelope<string>) => env.data === 'stop'))),
          ),
      }),
    );
    for (const data of ['a', 'b', 'stop']) await rt.bus.publish('in', data);
    await flush();
    expect(out).toEqual([]);
    expect(ref.counters.restarts).toBe(1);

    await clock.advance(100);
    await rt.bus.publish('in', 'c');
    await flush();
    expect(out.map((e) => e.data)).toEqual([['a', 'b', 'c']]);
    // 'stop' produced nothing: it settles as filtered out, as any input that leaves no output.
    expect(ref.counters).toMatchObject({ acked: 3, dropped: 1, deadLettered: 0, restarts: 1 });
    expect(dlq).toEqual([]);
  });
});
