import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { EMPTY, finalize, map, mergeMap, of, reduce } from 'rxjs';
import { absorb, actor, describeReport, type Envelope, mergeLineage } from 'sluice';
import { describe, expect, test } from 'vitest';
import { batchOf, collect, flush, gate, testRuntime } from './helpers.ts';

describe('shutdown - drain', () => {
  test('stop() finishes what is in flight and queued within the deadline and reports drained', async () => {
    const { rt, clock } = testRuntime();
    const handled: number[] = [];
    const ref = rt.spawn(
      actor<number, never>({
        name: 'worker',
        subscribe: 'in',
        maxInFlight: 2,
        concurrency: 2,
        handle: async (env, ctx) => {
          await ctx.clock.sleep(100);
          handled.push(env.data);
        },
      }),
    );
    for (let i = 0; i < 10; i++) await rt.bus.publish('in', i);
    expect({ depth: ref.depth, inFlight: ref.inFlight }).toEqual({ depth: 8, inFlight: 2 });

    const stopping = rt.stop({ deadlineMs: 10_000 });
    expect(rt.stopped).toBe(true);
    await clock.runAll();
    const report = await stopping;

    expect(report).toEqual({ drained: true, durationMs: 500, deadlineMs: 10_000, left: {}, subscriptions: {} });
    expect(describeReport(report)).toBe('sluice: stopped cleanly in 500 ms');
    expect(handled).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    expect(ref.state).toBe('stopped');
    // The deadline timer was cancelled once the drain finished.
    expect(clock.pending).toBe(0);
  });

  test('with a handler that never finishes, the deadline passes and the report lists what was left per actor', async () => {
    const { rt, clock } = testRuntime();
    rt.spawn(
      actor<number, never>({
        name: 'stuck',
        subscribe: 'in',
        maxInFlight: 2,
        handle: () => new Promise<never>(() => {}),
      }),
    );
    const fine: number[] = [];
    rt.spawn(actor<number, never>({ name: 'fine', subscribe: 'other', handle: (env) => void fine.push(env.data) }));
    for (let i = 0; i < 5; i++) await rt.bus.publish('in', i);
    for (let i = 0; i < 3; i++) await rt.bus.publish('other', i);

    let done = false;
    const stopping = rt.stop({ deadlineMs: 1_000 });
    void stopping.then(() => {
      done = true;
    });
    await clock.advance(999);
    expect(done).toBe(false);
    await clock.advance(1);
    const report = await stopping;

    expect(report).toEqual({
      drained: false,
      durationMs: 1_000,
      deadlineMs: 1_000,
      // What it had left went to its dead-letter subject, which nobody listens to.
      left: { stuck: { depth: 3, inFlight: 2, absorbed: 0, deadLettered: 5, lost: 5 } },
      subscriptions: {},
    });
    expect(describeReport(report)).toBe(
      'sluice: shutdown deadline of 1000 ms passed; left: stuck: 3 queued, 2 in flight, 0 absorbed, 5 dead-lettered (5 lost: received by no one, each logged)',
    );
    expect(fine).toEqual([0, 1, 2]);
    expect(rt.actor('stuck')?.state).toBe('stopped');
  });

  test('a second stop() returns the same report; spawning after stop is refused', async () => {
    const { rt, clock } = testRuntime();
    const first = rt.stop();
    await clock.advance(0);
    expect(rt.stop()).toBe(first);
    await first;
    expect(() => rt.spawn(actor({ name: 'late', subscribe: 'in', handle: () => {} }))).toThrow(
      /the runtime is stopping/,
    );
  });
});

describe('shutdown - stopping one actor', () => {
  test('ref.stop() dead-letters what is queued or being handled, not what was handled and waits downstream', async () => {
    const { rt } = testRuntime();
    const downstream = gate();
    const out: number[] = [];
    // Room for one message, handled slowly: outputs 1 and 2 are accepted, 3, 5 and 6 wait to be published.
    rt.bus.subscribe<number>('out', {
      mailbox: { capacity: 1 },
      callback: async (env) => {
        out.push(env.data);
        await downstream.promise;
      },
    });
    const dlq = collect<number>(rt.bus, '$DLQ.worker');
    const ref = rt.spawn(
      actor<number, number>({
        name: 'worker',
        subscribe: 'in',
        output: 'out',
        maxInFlight: 4,
        concurrency: 4,
        handle: async (env) => {
          if (env.data === 4) await new Promise<never>(() => {});
          return env.data;
        },
      }),
    );
    for (let i = 1; i <= 8; i++) await rt.bus.publish('in', i);
    await flush();
    // In flight: 3, 5 and 6 (publishing) and 4 (being handled); 7 and 8 queued.
    expect({ depth: ref.depth, inFlight: ref.inFlight, absorbed: ref.absorbed }).toEqual({
      depth: 2,
      inFlight: 4,
      absorbed: 2,
    });

    await ref.stop();
    expect(ref.state).toBe('stopped');
    downstream.open();
    await flush();
    // 4 was still being handled, 7 and 8 were queued: dead-lettered. The others were handled, and
    // their outputs still reach the consumer.
    expect(dlq.map((e) => e.data).sort()).toEqual([4, 7, 8]);
    expect(dlq.every((e) => e.headers['sluice-error-code'] === 'SLUICE_ERR_CLOSED')).toBe(true);
    expect(out).toEqual([1, 2, 3, 5, 6]);
    expect(ref.counters).toMatchObject({ acked: 5, deadLettered: 3 });
    expect({ inFlight: ref.inFlight, absorbed: ref.absorbed }).toEqual({ inFlight: 0, absorbed: 0 });
  });
});

describe('shutdown - end of stream', () => {
  test('stop() completes pipeline inputs, so a reduce flushes its result before the report', async () => {
    const { rt } = testRuntime();
    const totals = collect<number>(rt.bus, 'totals');
    const ref = rt.spawn(
      actor<number, number>({
        name: 'summer',
        subscribe: 'amounts',
        output: 'totals',
        pipeline: (in$) =>
          in$.pipe(
            // Each input is kept (absorbed) until the total it goes into is published.
            map((env) => ({ env, release: absorb(env.lineage) })),
            reduce((held, item) => [...held, item], [] as { env: Envelope<number>; release: () => void }[]),
            mergeMap((held) => {
              const first = held[0];
              if (first === undefined) return EMPTY;
              const total: Envelope<number> = {
                ...first.env,
                data: held.reduce((sum, h) => sum + h.env.data, 0),
                lineage: mergeLineage(held.map((h) => h.env.lineage)),
              };
              return of(total).pipe(
                finalize(() => {
                  for (const h of held) h.release();
                }),
              );
            }),
          ),
      }),
    );
    for (const amount of [5, 10, 20, 40]) await rt.bus.publish('amounts', amount);
    await rt.idle();
    await flush();
    // Kept by the reduce: not in flight, so the runtime is idle, but not settled either.
    expect(totals).toEqual([]);
    expect({ inFlight: ref.inFlight, absorbed: ref.absorbed, acked: ref.counters.acked }).toEqual({
      inFlight: 0,
      absorbed: 4,
      acked: 0,
    });

    const report = await rt.stop();
    await flush();
    expect(report.drained).toBe(true);
    expect(totals.map((e) => e.data)).toEqual([75]);
    expect(ref.counters).toMatchObject({ acked: 4, dropped: 0, settlementErrors: 0 });
  });

  test('a buffer flushed at end of stream reaches a downstream actor whose own pipeline already ended', async () => {
    const { rt } = testRuntime();
    const out = collect<number[][]>(rt.bus, 'out');
    // Spawned first, so its pipeline is completed first: the upstream flush reaches it afterwards.
    const b = rt.spawn(
      actor<number[], number[][]>({
        name: 'b',
        subscribe: 'mid',
        output: 'out',
        pipeline: (in$) => in$.pipe(batchOf<number[]>(100)),
      }),
    );
    const a = rt.spawn(
      actor<number, number[]>({
        name: 'a',
        subscribe: 'in',
        output: 'mid',
        pipeline: (in$) => in$.pipe(batchOf<number>(100)),
      }),
    );
    for (let i = 0; i < 3; i++) await rt.bus.publish('in', i);
    await rt.idle();

    const report = await rt.stop();
    await flush();
    expect(report.drained).toBe(true);
    expect(out.map((e) => e.data)).toEqual([[[0, 1, 2]]]);
    expect(a.counters).toMatchObject({ acked: 3, dropped: 0 });
    expect(b.counters).toMatchObject({ acked: 1, dropped: 0 });
  });
});

describe('shutdown - signals', () => {
  const fixture = fileURLToPath(new URL('./fixtures/signalChild.ts', import.meta.url));
  const tsx = fileURLToPath(new URL('../../node_modules/.bin/tsx', import.meta.url));

  /** Runs the fixture, sends SIGTERM once it is ready, and resolves with how it ended. */
  function runAndTerminate(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
    return new Promise((resolve, reject) => {
      const child = spawn(tsx, ['--conditions=sluice-source', fixture, ...args], {
        cwd: fileURLToPath(new URL('../..', import.meta.url)),
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let stdout = '';
      let stderr = '';
      let signalled = false;
      const killer = setTimeout(() => child.kill('SIGKILL'), 20_000);
      child.stdout.on('data', (chunk: Buffer) => {
        stdout += chunk.toString();
        if (!signalled && stdout.includes('ready\n')) {
          signalled = true;
          child.kill('SIGTERM');
        }
      });
      child.stderr.on('data', (chunk: Buffer) => {
        stderr += chunk.toString();
      });
      child.on('error', reject);
      child.on('close', (code) => {
        clearTimeout(killer);
        resolve({ code, stdout, stderr });
      });
    });
  }

  test('on SIGTERM a runtime with handleSignals() drains, prints its report and exits 0', async () => {
    const { code, stdout, stderr } = await runAndTerminate([]);
    expect(stderr).toBe('');
    expect(stdout).toContain('sluice: SIGTERM received, draining (deadline 5000 ms)');
    // The messages in flight and queued when the signal came were handled before the exit.
    const handled = stdout.split('\n').filter((l) => l.startsWith('handled '));
    expect(handled).toEqual(['handled 0', 'handled 1', 'handled 2', 'handled 3']);
    expect(stdout).toMatch(/sluice: stopped cleanly in \d+ ms\n$/);
    expect(code).toBe(0);
  }, 30_000);

  test('on SIGTERM with a handler that never finishes, it exits 1 after the deadline with what was left', async () => {
    const { code, stdout } = await runAndTerminate(['stuck']);
    expect(stdout).toContain(
      'sluice: shutdown deadline of 100 ms passed; left: echo: 2 queued, 2 in flight, 0 absorbed',
    );
    expect(code).toBe(1);
  }, 30_000);
});
