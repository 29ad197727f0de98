import type { StandardSchemaV1 } from '@standard-schema/spec';
import { finalize, mergeMap, NEVER } from 'rxjs';
import { absorb, actor, describeReport, type Runtime, type ShutdownReport, type SignalOptions, subject } from 'sluice';
import { describe, expect, onTestFinished, test, vi } from 'vitest';
import { collect, flush, gate, testRuntime } from './helpers.ts';

describe('shutdown - subscriptions are part of idle and drain', () => {
  test('runtime.idle() waits for a subscription callback still handling its messages', async () => {
    const { rt, clock } = testRuntime();
    const written: number[] = [];
    rt.bus.subscribe<number>('sink', {
      callback: async (env) => {
        await clock.sleep(100);
        written.push(env.data);
      },
    });
    for (let i = 0; i < 3; i++) await rt.bus.publish('sink', i);
    let idle = false;
    void rt.idle().then(() => {
      idle = true;
    });
    await clock.advance(299);
    await flush();
    expect(written).toEqual([0, 1]);
    expect(idle).toBe(false);
    await clock.advance(1);
    await flush();
    expect(written).toEqual([0, 1, 2]);
    expect(idle).toBe(true);
  });

  test('stop() drains an actor into a slow sink: every message is written before the report, which is clean', async () => {
    const { rt, clock } = testRuntime();
    const written: number[] = [];
    rt.bus.subscribe<number>('written', {
      callback: async (env) => {
        await clock.sleep(100);
        written.push(env.data);
      },
    });
    rt.spawn(
      actor<number, number>({ name: 'orders', subscribe: 'orders', output: 'written', handle: (env) => env.data }),
    );
    for (let i = 0; i < 10; i++) await rt.bus.publish('orders', i);

    const stopping = rt.stop({ deadlineMs: 5_000 });
    await clock.runAll();
    const report = await stopping;
    expect(written).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    expect(report).toEqual({ drained: true, durationMs: 1_000, deadlineMs: 5_000, left: {}, subscriptions: {} });
  });

  test('stop() waits for a for-await consumer in the middle of its loop body', async () => {
    const { rt, clock } = testRuntime();
    const written: number[] = [];
    const sub = rt.bus.subscribe<number>('sink');
    void (async () => {
      for await (const env of sub) {
        await clock.sleep(100);
        written.push(env.data);
      }
    })();
    for (let i = 0; i < 3; i++) await rt.bus.publish('sink', i);
    const stopping = rt.stop({ deadlineMs: 5_000 });
    await clock.runAll();
    const report = await stopping;
    expect(written).toEqual([0, 1, 2]);
    expect(report.drained).toBe(true);
    expect(report.durationMs).toBe(300);
  });

  test('a subscription nobody consumes does not hold idle() up; what it holds is listed and not drained', async () => {
    const { rt } = testRuntime();
    rt.bus.subscribe('unread');
    await rt.bus.publish('unread', 1);
    await rt.idle();
    const report = await rt.stop();
    expect(report.drained).toBe(false);
    expect(report.left).toEqual({});
    expect(report.subscriptions).toEqual({ unread: { depth: 1, inFlight: 0 } });
  });

  test('a sink stuck at the deadline is named in the report, and the actor upstream of it is not blamed', async () => {
    const { rt, clock } = testRuntime();
    const stuck = gate();
    rt.bus.subscribe('sink', { queue: 'writers', callback: () => stuck.promise });
    rt.spawn(actor<number, number>({ name: 'relay', subscribe: 'in', output: 'sink', pipeline: (in$) => in$ }));
    for (let i = 0; i < 3; i++) await rt.bus.publish('in', i);

    const stopping = rt.stop({ deadlineMs: 1_000 });
    await clock.advance(1_000);
    const report = await stopping;
    expect(report).toEqual({
      drained: false,
      durationMs: 1_000,
      deadlineMs: 1_000,
      left: {},
      subscriptions: { 'sink [writers]': { depth: 2, inFlight: 1 } },
    });
    expect(describeReport(report)).toBe(
      "sluice: shutdown deadline of 1000 ms passed; left: subscription 'sink [writers]': 2 queued, 1 in flight",
    );
  });
});

describe('shutdown - stopped means stopped', () => {
  test('at the deadline, running handlers and queued messages are dead-lettered with ShutdownError; late results are dropped', async () => {
    const { rt, clock } = testRuntime();
    const release = gate();
    const out = collect<number>(rt.bus, 'out');
    const dlq = collect<number>(rt.bus, '$DLQ.slow');
    const ref = rt.spawn(
      actor<number, number>({
        name: 'slow',
        subscribe: 'in',
        output: 'out',
        maxInFlight: 2,
        handle: async (env) => {
          await release.promise;
          return env.data * 10;
        },
      }),
    );
    for (let i = 0; i < 5; i++) await rt.bus.publish('in', i);

    const stopping = rt.stop({ deadlineMs: 1_000 });
    await clock.advance(1_000);
    const report = await stopping;
    expect(report.drained).toBe(false);
    // How many it took before the deadline depends on its concurrency; all five are accounted for.
    const slow = report.left.slow;
    expect(slow).toMatchObject({ absorbed: 0, deadLettered: 5, lost: 0 });
    expect((slow?.depth ?? 0) + (slow?.inFlight ?? 0)).toBe(5);
    expect(dlq.map((e) => e.data).sort()).toEqual([0, 1, 2, 3, 4]);
    for (const letter of dlq) {
      expect(letter.headers['sluice-error-code']).toBe('SLUICE_ERR_SHUTDOWN');
      expect(letter.headers['sluice-error']).toBe('shutdown deadline of 1000 ms passed with 5 messages in flight');
    }

    // The handlers finish after stop() returned: nothing more happens in the actor's name.
    const counters = { ...ref.counters };
    release.open();
    await flush();
    expect(out).toEqual([]);
    expect(ref.counters).toEqual(counters);
    expect(ref.counters).toMatchObject({ published: 0, acked: 0, deadLettered: 5 });
  });

  test('with no subscriber on the dead-letter subject, what was left is counted as lost and each message logged', async () => {
    const { rt, clock, log } = testRuntime();
    rt.spawn(
      actor<number, never>({
        name: 'nodlq',
        subscribe: 'in',
        maxInFlight: 1,
        handle: () => new Promise<never>(() => {}),
      }),
    );
    for (let i = 0; i < 3; i++) await rt.bus.publish('in', i);
    const stopping = rt.stop({ deadlineMs: 10 });
    await clock.advance(10);
    const report = await stopping;
    expect(report.left).toEqual({ nodlq: { depth: 2, inFlight: 1, absorbed: 0, deadLettered: 3, lost: 3 } });
    const logged = log.lines.filter((l) => l.includes("to '$DLQ.nodlq', which has no subscriber"));
    expect(logged).toHaveLength(3);
    expect(describeReport(report)).toContain(
      'nodlq: 2 queued, 1 in flight, 0 absorbed, 3 dead-lettered (3 lost: received by no one, each logged)',
    );
  });

  test('lost counts where each dead letter went: a dead letter held at the deadline goes to $DEAD.<actor>, not to its dead-letter subject', async () => {
    const { rt, clock } = testRuntime();
    // A listener on $DLQ.> (not on $DEAD.>): the dead letters of dead letters reach no one.
    const dlq = collect<number>(rt.bus, '$DLQ.>');
    rt.spawn(
      actor<number, never>({
        name: 'replayer',
        subscribe: '$DLQ.source',
        maxInFlight: 1,
        handle: () => new Promise<never>(() => {}),
      }),
    );
    const headers = { 'sluice-error': 'failed before' };
    for (let i = 0; i < 3; i++) await rt.bus.publish('$DLQ.source', i, { headers });
    const stopping = rt.stop({ deadlineMs: 10 });
    await clock.advance(10);
    const report = await stopping;
    expect(dlq.map((e) => e.subject)).toEqual(['$DLQ.source', '$DLQ.source', '$DLQ.source']);
    expect(report.left.replayer).toEqual({ depth: 2, inFlight: 1, absorbed: 0, deadLettered: 3, lost: 3 });

    // And the other way round: a listener on $DEAD.> only receives them, so none is lost.
    const second = testRuntime();
    const dead = collect<number>(second.rt.bus, '$DEAD.>');
    second.rt.spawn(
      actor<number, never>({
        name: 'replayer',
        subscribe: '$DLQ.source',
        maxInFlight: 1,
        handle: () => new Promise<never>(() => {}),
      }),
    );
    for (let i = 0; i < 3; i++) await second.rt.bus.publish('$DLQ.source', i, { headers });
    const stopping2 = second.rt.stop({ deadlineMs: 10 });
    await second.clock.advance(10);
    const report2 = await stopping2;
    expect(dead.map((e) => e.subject)).toEqual(['$DEAD.replayer', '$DEAD.replayer', '$DEAD.replayer']);
    expect(report2.left.replayer).toEqual({ depth: 2, inFlight: 1, absorbed: 0, deadLettered: 3, lost: 0 });
  });

  test('what an actor on $DEAD.> still has at the deadline goes nowhere: counted as lost, and each logged by id', async () => {
    const { rt, clock, log } = testRuntime();
    rt.spawn(
      actor<number, never>({
        name: 'last-stop',
        subscribe: '$DEAD.>',
        maxInFlight: 1,
        handle: () => new Promise<never>(() => {}),
      }),
    );
    for (let i = 0; i < 3; i++) await rt.bus.publish('$DEAD.someone', i);
    const stopping = rt.stop({ deadlineMs: 10 });
    await clock.advance(10);
    const report = await stopping;
    // Not sent again (the chain of dead letters ends there), so not dead-lettered: lost.
    expect(report.left).toEqual({ 'last-stop': { depth: 2, inFlight: 1, absorbed: 0, deadLettered: 0, lost: 3 } });
    expect(log.lines.filter((l) => l.includes("failed on dead letter '"))).toHaveLength(3);
    expect(describeReport(report)).toContain('last-stop: 2 queued, 1 in flight, 0 absorbed (3 lost:');
  });

  test('an input whose async schema is still running at the deadline is dead-lettered then, and counted; nothing after', async () => {
    const { rt, clock } = testRuntime();
    const release = gate();
    const schema: StandardSchemaV1<unknown, number> = {
      '~standard': {
        version: 1,
        vendor: 'test',
        validate: async (value) => {
          await release.promise;
          return { value: value as number };
        },
      },
    };
    const dlq = collect<number>(rt.bus, '$DLQ.validating');
    const seen: number[] = [];
    const ref = rt.spawn(
      actor<number, never>({
        name: 'validating',
        subscribe: subject<number>('nums', { schema }),
        handle: (env) => void seen.push(env.data),
      }),
    );
    await rt.bus.publish('nums', 1);
    const stopping = rt.stop({ deadlineMs: 10 });
    await clock.advance(10);
    const report = await stopping;
    expect(report.left).toEqual({ validating: { depth: 0, inFlight: 1, absorbed: 0, deadLettered: 1, lost: 0 } });
    expect(dlq.map((e) => e.headers['sluice-error-code'])).toEqual(['SLUICE_ERR_SHUTDOWN']);

    // The schema finishes after stop() returned: nothing more happens in the actor's name.
    const counters = { ...ref.counters };
    release.open();
    await flush();
    expect(seen).toEqual([]);
    expect(dlq).toHaveLength(1);
    expect(ref.counters).toEqual(counters);
  });

  test('inputs kept by operator state past the end of input are dead-lettered, and the report is not clean', async () => {
    const { rt } = testRuntime();
    const dlq = collect<number>(rt.bus, '$DLQ.hoarder');
    rt.spawn(
      actor<number, number>({
        name: 'hoarder',
        subscribe: 'in',
        output: 'out',
        // Keeps every input, and never finishes: end of input flushes nothing.
        pipeline: (in$) =>
          in$.pipe(
            mergeMap((env) => {
              absorb(env.lineage);
              return NEVER;
            }),
          ),
      }),
    );
    await rt.bus.publish('in', 1);
    const report = await rt.stop({ deadlineMs: 1_000 });
    expect(report.drained).toBe(false);
    expect(report.durationMs).toBe(0);
    expect(report.left).toEqual({ hoarder: { depth: 0, inFlight: 0, absorbed: 1, deadLettered: 1, lost: 0 } });
    expect(dlq.map((e) => e.headers['sluice-error'])).toEqual([
      'shutdown ended with 1 messages kept by operator state after end of input',
    ]);
  });
});

describe('shutdown - one actor failing to stop', () => {
  test('a throw from one actor ending its input or stopping is logged; the others stop, and stop() resolves', async () => {
    const { rt, log } = testRuntime();
    const out = collect<number>(rt.bus, 'out');
    const broken = rt.spawn(
      actor<number, number>({ name: 'broken', subscribe: 'a', output: 'out', pipeline: (in$) => in$ }),
    );
    const fine = rt.spawn(
      actor<number, number>({ name: 'fine', subscribe: 'b', output: 'out', pipeline: (in$) => in$ }),
    );
    // Whatever an actor's own shutdown step throws (here forced from outside), the runtime goes on.
    const steps = broken as unknown as { completeInputs(): number; close(reason: unknown): void };
    steps.completeInputs = () => {
      throw new Error('cannot end input');
    };
    steps.close = () => {
      throw new Error('cannot stop');
    };
    await rt.bus.publish('b', 1);
    const report = await rt.stop();
    expect(report.drained).toBe(true);
    expect(fine.state).toBe('stopped');
    expect(out.map((e) => e.data)).toEqual([1]);
    expect(log.lines).toContain(
      "error: sluice: actor 'broken' failed to end its input during shutdown: cannot end input",
    );
    expect(log.lines).toContain("error: sluice: actor 'broken' failed to stop during shutdown: cannot stop");
  });
});

describe('shutdown - signals', () => {
  /** Installs `handleSignals` and returns its listener, to be called as the process would: no real signal. */
  function signals(rt: Runtime, options: SignalOptions): (signal?: NodeJS.Signals) => void {
    const before = new Set(process.listeners('SIGTERM'));
    const remove = rt.handleSignals(options);
    onTestFinished(remove);
    const listener = process.listeners('SIGTERM').find((l) => !before.has(l));
    if (listener === undefined) throw new Error('handleSignals added no SIGTERM listener');
    expect(process.listeners('SIGINT')).toContain(listener);
    return (signal = 'SIGTERM') => (listener as (s: NodeJS.Signals) => void)(signal);
  }

  /** process.exit must never run inside the test process. */
  function noRealExit() {
    const exit = vi.spyOn(process, 'exit').mockImplementation((() => undefined) as never);
    onTestFinished(() => exit.mockRestore());
    return exit;
  }

  test('a signal drains, logs the report, runs onShutdown with it, then exits 0', async () => {
    const realExit = noRealExit();
    const { rt, clock, log } = testRuntime({ shutdownDeadlineMs: 5_000 });
    const steps: string[] = [];
    rt.spawn(
      actor<number, never>({
        name: 'worker',
        subscribe: 'in',
        handle: async (env, ctx) => {
          await ctx.clock.sleep(50);
          steps.push(`handled ${env.data}`);
        },
      }),
    );
    await rt.bus.publish('in', 1);
    const signal = signals(rt, {
      onShutdown: async (report) => {
        await Promise.resolve();
        steps.push(`onShutdown drained=${report.drained}`);
      },
      exit: (code) => void steps.push(`exit ${code}`),
    });
    signal();
    await clock.runAll();
    await flush();
    expect(steps).toEqual(['handled 1', 'onShutdown drained=true', 'exit 0']);
    expect(log.lines).toContain('info: sluice: SIGTERM received, draining (deadline 5000 ms)');
    expect(log.lines).toContain('info: sluice: stopped cleanly in 50 ms');
    expect(realExit).not.toHaveBeenCalled();
  });

  test('a second signal during the drain stops at once: what was left is dead-lettered, the report printed, exit 1', async () => {
    const realExit = noRealExit();
    const { rt, log } = testRuntime({ shutdownDeadlineMs: 60_000 });
    const dlq = collect<number>(rt.bus, '$DLQ.stuck');
    rt.spawn(actor<number, never>({ name: 'stuck', subscribe: 'in', handle: () => new Promise<never>(() => {}) }));
    await rt.bus.publish('in', 1);
    const codes: number[] = [];
    let seen: ShutdownReport | undefined;
    const signal = signals(rt, {
      onShutdown: (report) => {
        seen = report;
      },
      exit: (code) => void codes.push(code),
    });
    signal('SIGINT');
    await flush();
    expect(codes).toEqual([]);
    // The clock never moves: only the second signal can end the drain.
    signal('SIGTERM');
    await flush();
    expect(codes).toEqual([1]);
    expect(seen?.drained).toBe(false);
    expect(seen?.left).toEqual({ stuck: { depth: 0, inFlight: 1, absorbed: 0, deadLettered: 1, lost: 0 } });
    expect(dlq[0]?.headers['sluice-error']).toBe('shutdown forced after 0 ms with 1 messages in flight');
    expect(log.lines).toContain('warn: sluice: SIGTERM received again, stopping now');
    expect(log.lines).toContain(
      'info: sluice: stopped after 0 ms without draining; left: stuck: 0 queued, 1 in flight, 0 absorbed, 1 dead-lettered',
    );
    expect(realExit).not.toHaveBeenCalled();
  });

  test('an onShutdown that throws is logged and makes the exit code 1; a signal while it runs exits at once', async () => {
    noRealExit();
    const { rt, log } = testRuntime();
    const hook = gate();
    const codes: number[] = [];
    const signal = signals(rt, {
      onShutdown: async () => {
        await hook.promise;
        throw new Error('flush failed');
      },
      exit: (code) => void codes.push(code),
    });
    signal();
    await flush();
    expect(codes).toEqual([]);
    signal();
    expect(codes).toEqual([1]);
    expect(log.lines).toContain('warn: sluice: SIGTERM received again, exiting now');
    hook.open();
    await flush();
    expect(codes).toEqual([1, 1]);
    expect(log.lines).toContain('error: sluice: onShutdown failed: flush failed');
  });

  test('exit: false leaves the process alone; the returned function removes the listeners', async () => {
    const realExit = noRealExit();
    const { rt } = testRuntime();
    let report: ShutdownReport | undefined;
    const before = process.listeners('SIGTERM').length;
    const remove = rt.handleSignals({
      exit: false,
      onShutdown: (r) => {
        report = r;
      },
    });
    const listener = process.listeners('SIGTERM').at(-1) as (s: NodeJS.Signals) => void;
    listener('SIGTERM');
    await flush();
    expect(report?.drained).toBe(true);
    expect(realExit).not.toHaveBeenCalled();
    remove();
    expect(process.listeners('SIGTERM')).toHaveLength(before);
    expect(process.listeners('SIGINT')).not.toContain(listener);
  });

  test('a pipeline teardown that throws at shutdown still gives a report and an exit', async () => {
    noRealExit();
    const { rt, log } = testRuntime();
    rt.spawn(
      actor<number, number>({
        name: 'messy',
        subscribe: 'in',
        output: 'out',
        pipeline: (in$) =>
          in$.pipe(
            finalize(() => {
              throw new Error('teardown failed');
            }),
          ),
      }),
    );
    const codes: number[] = [];
    const signal = signals(rt, { exit: (code) => void codes.push(code) });
    signal();
    await flush();
    expect(codes).toEqual([0]);
    expect(log.lines).toContain('info: sluice: stopped cleanly in 0 ms');
  });
});

describe('shutdown - options', () => {
  test('a typo in stop() or handleSignals() options is an OptionsError naming it, not a silent default', async () => {
    const { rt } = testRuntime();
    // stop() returns a promise: bad options reject it rather than throw past a .catch().
    const typo = rt.stop({ deadline: 5 } as never);
    await expect(typo).rejects.toMatchObject({
      code: 'SLUICE_ERR_OPTIONS',
      message: expect.stringContaining("'stop.deadline': 'deadline' is not an option; did you mean 'deadlineMs'?"),
    });
    await expect(rt.stop({ deadlineMs: -1 })).rejects.toMatchObject({ code: 'SLUICE_ERR_OPTIONS' });
    // Refused options start no shutdown.
    expect(rt.stopped).toBe(false);
    expect(() => rt.handleSignals({ exitt: false } as never)).toThrow(
      "'handleSignals.exitt': 'exitt' is not an option; did you mean 'exit'?",
    );
    expect(process.listenerCount('SIGTERM')).toBe(0);
    expect((await rt.stop({ deadlineMs: 0 })).drained).toBe(true);
  });
});
