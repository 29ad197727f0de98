import { finalize, map, merge, type Observable, timer } from 'rxjs';
import { actor, type Envelope } from 'sluice';
import { describe, expect, onTestFinished, test } from 'vitest';
import { collect, flush, testRuntime } from '../runtime/helpers.ts';

/**
 * Keeps every uncaught exception and unhandled rejection while the test runs. RxJS rethrows what
 * it cannot deliver on a timer, which would kill a process: here it is kept, and asserted away.
 */
function watchCrashes(): unknown[] {
  const crashes: unknown[] = [];
  const keep = (error: unknown) => void crashes.push(error);
  process.on('uncaughtException', keep);
  process.on('unhandledRejection', keep);
  onTestFinished(() => {
    process.off('uncaughtException', keep);
    process.off('unhandledRejection', keep);
  });
  return crashes;
}

/** Lets RxJS's rethrow timers fire (real timers, not the virtual clock: that is where a crash would come from). */
function crashWindow(): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, 20));
}

/** A pipeline that emits what `emit` makes of each input, past the types, as untyped code would. */
function emitting(emit: (env: Envelope<number>) => unknown) {
  return (in$: Observable<Envelope<number>>) => in$.pipe(map(emit)) as unknown as Observable<Envelope<number>>;
}

describe('a pipeline that emits something other than an envelope', () => {
  test.each([
    ['null', () => null, 'null'],
    ['undefined', () => undefined, 'undefined'],
    ['a plain value', (env: Envelope<number>) => env.data * 10, 'number 10'],
    ['an object without subject', (env: Envelope<number>) => ({ data: env.data }), 'an object with keys data'],
  ])(
    '%s fails its input with an error naming the actor and what was emitted; the process lives',
    async (_, emit, shown) => {
      const crashes = watchCrashes();
      const { rt, log } = testRuntime();
      const out = collect(rt.bus, 'out');
      const dlq = collect<number>(rt.bus, '$DLQ.tenfold');
      const ref = rt.spawn(
        actor<number, number>({ name: 'tenfold', subscribe: 'in', output: 'out', pipeline: emitting(emit) }),
      );
      await rt.bus.publish('in', 1);
      await flush();
      await crashWindow();

      expect(crashes).toEqual([]);
      // Nothing went out in its name, and it was not counted as filtered: it is a failure, dead-lettered.
      expect(out).toEqual([]);
      expect(dlq.map((e) => e.data)).toEqual([1]);
      const reason = dlq[0]?.headers['sluice-error'];
      expect(reason).toContain(`actor 'tenfold' pipeline emitted ${shown}, not an envelope`);
      expect(dlq[0]?.headers['sluice-error-code']).toBe('SLUICE_ERR_HANDLER');
      expect(ref.counters).toMatchObject({ published: 0, acked: 0, dropped: 0, retried: 0, deadLettered: 1 });
      expect(log.lines.some((l) => l.startsWith('warn: ') && l.includes(`pipeline emitted ${shown}`))).toBe(true);

      // The pipeline itself is fine: it goes on with the next input.
      await rt.bus.publish('in', 2);
      await flush();
      expect(ref.counters.deadLettered).toBe(2);
      expect(ref.state).toBe('running');
    },
  );

  test('a non-envelope emitted later, with no input to blame, fails the pipeline, which restarts', async () => {
    const crashes = watchCrashes();
    const { rt, clock } = testRuntime();
    const out = collect(rt.bus, 'out');
    let builds = 0;
    const ref = rt.spawn(
      actor<number, number>({
        name: 'ticker',
        subscribe: 'in',
        output: 'out',
        restart: { backoff: { initialMs: 10, jitter: 0 } },
        pipeline: (in$, ctx) => {
          builds++;
          const tick = timer(100, ctx.scheduler).pipe(map(() => 42)) as unknown as Observable<Envelope<number>>;
          return merge(in$, builds === 1 ? tick : (in$ as Observable<never>).pipe(map(() => never())));
        },
      }),
    );
    await clock.advance(100);
    await crashWindow();
    expect(crashes).toEqual([]);
    expect(out).toEqual([]);
    expect(ref.counters.restarts).toBe(1);
    await clock.advance(10);
    expect(builds).toBe(2);
    await rt.bus.publish('in', 7);
    await flush();
    expect(out.map((e) => e.data)).toEqual([7]);
  });
});

function never(): never {
  throw new Error('unreachable');
}

describe('a pipeline teardown that throws', () => {
  const throwingTeardown = (in$: Observable<Envelope<number>>) =>
    in$.pipe(
      map((env) => {
        if (env.data < 0) throw new Error(`negative: ${env.data}`);
        return env;
      }),
      finalize(() => {
        throw new Error('teardown failed');
      }),
    );

  test('with a failing message, it is contained, counted and logged; the message is retried and dead-lettered', async () => {
    const crashes = watchCrashes();
    const { rt, clock, log } = testRuntime();
    const out = collect<number>(rt.bus, 'out');
    const dlq = collect<number>(rt.bus, '$DLQ.guarded');
    const ref = rt.spawn(
      actor<number, number>({
        name: 'guarded',
        subscribe: 'in',
        output: 'out',
        retry: { maxAttempts: 2, backoff: { initialMs: 10, jitter: 0 } },
        pipeline: throwingTeardown,
      }),
    );
    await rt.bus.publish('in', 1);
    await rt.bus.publish('in', -1);
    await clock.advance(10);
    await flush();
    await crashWindow();

    expect(crashes).toEqual([]);
    expect(dlq.map((e) => e.data)).toEqual([-1]);
    expect(dlq[0]?.headers['sluice-error']).toContain('negative: -1');
    // One teardown per failed pipeline (the first attempt and the retry).
    expect(ref.counters).toMatchObject({ acked: 1, retried: 1, deadLettered: 1, teardownErrors: 2 });
    expect(rt.telemetry.counters.teardownErrors).toBe(2);
    expect(log.lines.filter((l) => l.includes("actor 'guarded' lane 0: a pipeline teardown threw"))).toHaveLength(2);
    // It still works.
    await rt.bus.publish('in', 2);
    await flush();
    expect(out.map((e) => e.data)).toEqual([1, 2]);
  });

  test('at stop(), it does not make stop() reject: the report comes, and every actor is stopped', async () => {
    const crashes = watchCrashes();
    const { rt, log } = testRuntime();
    const totals = collect<number>(rt.bus, 'out');
    const throwing = rt.spawn(
      actor<number, number>({ name: 'throwing', subscribe: 'in', output: 'out', pipeline: throwingTeardown }),
    );
    // Spawned after it: a shutdown that stopped at the first throw would leave this one running.
    const other = rt.spawn(
      actor<number, number>({ name: 'other', subscribe: 'more', output: 'out', pipeline: (in$) => in$ }),
    );
    await rt.bus.publish('in', 1);
    await rt.bus.publish('more', 2);

    const report = await rt.stop();
    await crashWindow();
    expect(crashes).toEqual([]);
    expect(report.drained).toBe(true);
    expect(totals.map((e) => e.data)).toEqual([1, 2]);
    expect(throwing.state).toBe('stopped');
    expect(other.state).toBe('stopped');
    expect(throwing.counters.teardownErrors).toBe(1);
    expect(log.lines.some((l) => l.includes("actor 'throwing' lane 0: a pipeline teardown threw"))).toBe(true);
  });
});

describe('a pipeline builder that throws at spawn', () => {
  test('with no restart allowed, spawn returns a stopped actor that takes no input, and the limit is escalated', async () => {
    const escalated: string[] = [];
    const { rt, log } = testRuntime({ onEscalate: (name, error) => void escalated.push(`${name}: ${error.message}`) });
    let ref: ReturnType<typeof rt.spawn> | undefined;
    expect(() => {
      ref = rt.spawn(
        actor<number, number>({
          name: 'broken',
          subscribe: 'in',
          output: 'out',
          restart: { maxRestarts: 0, onLimit: 'escalate' },
          pipeline: () => {
            throw new Error('cannot build');
          },
        }),
      );
    }).not.toThrow();
    expect(ref?.state).toBe('stopped');
    expect(rt.actor('broken')).toBe(ref);
    // No route was added for an actor that will never take input.
    expect(rt.bus.hasSubscribers('in')).toBe(false);
    expect(escalated).toEqual([
      "broken: actor 'broken' stopped: it failed after 0 restarts within 60000 ms: cannot build",
    ]);
    expect(log.lines).toContain(
      "error: actor 'broken' stopped: it failed after 0 restarts within 60000 ms: cannot build",
    );
    const report = await rt.stop();
    expect(report.drained).toBe(true);
  });
});
