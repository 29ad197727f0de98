import { EMPTY, filter, map, merge, mergeMap, type Observable, type SchedulerLike, tap, throwError, timer } from 'rxjs';
import {
  actor,
  type BackoffOptions,
  backoffDelay,
  DEAD_LETTER_HEADERS,
  DEFAULT_BACKOFF,
  hold,
  OptionsError,
  RestartLimitError,
} from 'sluice';
import { describe, expect, test, vi } from 'vitest';
import { batchOf, collect, flush, gate, seeded, testRuntime } from './helpers.ts';

/** The delays `backoff` gives for attempts 1..n with a PRNG seeded as the runtime's is. */
function expectedDelays(n: number, backoff: BackoffOptions, seed: number): number[] {
  const random = seeded(seed);
  const full = { ...DEFAULT_BACKOFF, ...backoff };
  return Array.from({ length: n }, (_, i) => backoffDelay(i + 1, full, random));
}

/** What backoff delay `n` may be: the exponential base, less up to `jitter` of it. */
function bounds(n: number, backoff: Required<BackoffOptions>): [number, number] {
  const base = Math.min(backoff.maxMs, backoff.initialMs * backoff.multiplier ** (n - 1));
  return [Math.floor(base * (1 - backoff.jitter)), base];
}

/** A stream that fails `afterMs` after it is subscribed, on the actor's clock: no message is to blame. */
function failsAfter(afterMs: number, scheduler: SchedulerLike, message = 'timer failed'): Observable<never> {
  return timer(afterMs, scheduler).pipe(mergeMap(() => throwError(() => new Error(message))));
}

describe('supervision - per-message retry', () => {
  test('retries with exponential backoff on the clock, each attempt numbered, delays within the backoff', async () => {
    const seed = 11;
    const { rt, clock } = testRuntime({ random: seeded(seed) });
    const backoff = { initialMs: 100, maxMs: 10_000, multiplier: 3, jitter: 0.5 };
    const attempts: { attempt: number; at: number }[] = [];
    const ref = rt.spawn(
      actor<string, never>({
        name: 'flaky',
        subscribe: 'jobs',
        retry: { maxAttempts: 4, backoff },
        handle: (env, ctx) => {
          attempts.push({ attempt: env.attempt, at: ctx.clock.now() });
          if (env.attempt < 4) throw new Error(`attempt ${env.attempt} failed`);
        },
      }),
    );
    const t0 = clock.now();
    await rt.bus.publish('jobs', 'x');
    const delays = expectedDelays(3, backoff, seed);
    let at = t0;
    for (let n = 1; n <= 3; n++) {
      const delay = delays[n - 1] as number;
      const [low, high] = bounds(n, { ...backoff });
      expect(delay).toBeGreaterThanOrEqual(low);
      expect(delay).toBeLessThanOrEqual(high);
      // Not a millisecond early...
      await clock.advanceTo(at + delay - 1);
      expect(attempts).toHaveLength(n);
      // ...and on time.
      await clock.advanceTo(at + delay);
      expect(attempts).toHaveLength(n + 1);
      at += delay;
    }
    expect(attempts).toEqual([
      { attempt: 1, at: t0 },
      { attempt: 2, at: t0 + (delays[0] as number) },
      { attempt: 3, at: t0 + (delays[0] as number) + (delays[1] as number) },
      { attempt: 4, at: t0 + delays.reduce((a, b) => a + b, 0) },
    ]);
    // The jitter did spread the delays: equal jitter draws below the exponential base.
    expect(delays).not.toEqual([100, 300, 900]);
    await rt.idle();
    expect(ref.counters).toMatchObject({ retried: 3, acked: 1, deadLettered: 0 });
    expect(rt.telemetry.counters.retried).toBe(3);
  });

  test('after the last attempt the message is dead-lettered with error, actor, attempts and subject headers', async () => {
    const { rt, clock } = testRuntime({ random: seeded(3) });
    const dlq = collect<{ n: number }>(rt.bus, '$DLQ.failing');
    const ref = rt.spawn(
      actor<{ n: number }, never>({
        name: 'failing',
        subscribe: 'jobs.*',
        retry: { maxAttempts: 3, backoff: { initialMs: 10 } },
        handle: (env) => {
          throw new Error(`cannot handle ${env.data.n}`);
        },
      }),
    );
    await rt.bus.publish('jobs.eu', { n: 7 }, { id: 'msg-7', key: 'k7', headers: { tenant: 'acme' } });
    await clock.runAll();
    await rt.idle();
    await flush();

    expect(dlq).toHaveLength(1);
    const letter = dlq[0];
    expect(letter?.subject).toBe('$DLQ.failing');
    expect(letter?.data).toEqual({ n: 7 });
    expect(letter?.key).toBe('k7');
    // A new message for whoever consumes it; the attempts of the failed input are in the headers.
    expect(letter?.attempt).toBe(1);
    expect(letter?.headers).toEqual({
      tenant: 'acme',
      [DEAD_LETTER_HEADERS.error]: 'cannot handle 7',
      [DEAD_LETTER_HEADERS.code]: 'SLUICE_ERR_HANDLER',
      [DEAD_LETTER_HEADERS.actor]: 'failing',
      [DEAD_LETTER_HEADERS.attempts]: '3',
      [DEAD_LETTER_HEADERS.subject]: 'jobs.eu',
      [DEAD_LETTER_HEADERS.messageId]: 'msg-7',
      [DEAD_LETTER_HEADERS.time]: new Date(clock.now()).toISOString(),
    });
    expect(ref.counters).toMatchObject({ retried: 2, deadLettered: 1, acked: 0 });
    expect(rt.telemetry.counters.deadLettered).toBe(1);
    expect(ref.inFlight).toBe(0);
  });

  test('an error that is not retryable is dead-lettered at its first attempt', async () => {
    const { rt } = testRuntime();
    const dlq = collect(rt.bus, '$DLQ.strict');
    const ref = rt.spawn(
      actor<number, never>({
        name: 'strict',
        subscribe: 'in',
        retry: { maxAttempts: 5 },
        handle: () => {
          throw new OptionsError('payload.kind', 'must be known', 'mystery');
        },
      }),
    );
    await rt.bus.publish('in', 1);
    await rt.idle();
    await flush();
    expect(dlq.map((e) => e.headers[DEAD_LETTER_HEADERS.attempts])).toEqual(['1']);
    expect(dlq[0]?.headers[DEAD_LETTER_HEADERS.code]).toBe('SLUICE_ERR_OPTIONS');
    expect(ref.counters.retried).toBe(0);
  });

  test('a failing message in a partitioned handle actor holds back only its own key, not its lane', async () => {
    const { rt, clock } = testRuntime();
    const handled: { key: string; seq: number; lane: number; at: number }[] = [];
    const failedOn: number[] = [];
    rt.spawn(
      actor<{ key: string; seq: number }, never>({
        name: 'lanes',
        subscribe: 'events',
        partitionBy: (env) => env.data.key,
        lanes: 2,
        retry: { maxAttempts: 2, backoff: { initialMs: 1000, jitter: 0 } },
        handle: (env, ctx) => {
          if (env.data.key === 'k0' && env.data.seq === 0 && env.attempt === 1) {
            failedOn.push(ctx.lane);
            throw new Error('first try fails');
          }
          handled.push({ ...env.data, lane: ctx.lane, at: ctx.clock.now() });
        },
      }),
    );
    const keys = Array.from({ length: 10 }, (_, i) => `k${i}`);
    const t0 = clock.now();
    await rt.bus.publish('events', { key: 'k0', seq: 0 });
    for (let seq = 1; seq <= 3; seq++) for (const key of keys) await rt.bus.publish('events', { key, seq });
    await flush();

    const blockedLane = failedOn[0] as number;
    const laneOf = (key: string) => handled.find((h) => h.key === key)?.lane;
    const sameLane = keys.filter((k) => k !== 'k0' && laneOf(k) === blockedLane);
    const otherLane = keys.filter((k) => laneOf(k) !== undefined && laneOf(k) !== blockedLane);
    expect(sameLane.length).toBeGreaterThan(0);
    expect(otherLane.length).toBeGreaterThan(0);
    // Every other key went on while the failed message waited for its retry, in its lane too...
    for (const key of [...sameLane, ...otherLane]) {
      expect(handled.filter((h) => h.key === key).map((h) => h.seq)).toEqual([1, 2, 3]);
    }
    // ...and nothing of its own key went past it.
    expect(handled.filter((h) => h.key === 'k0')).toEqual([]);

    await clock.advance(1000);
    await rt.idle();
    for (const key of keys) {
      const mine = handled.filter((h) => h.key === key);
      expect(mine.map((h) => h.seq)).toEqual(key === 'k0' ? [0, 1, 2, 3] : [1, 2, 3]);
      expect(mine.every((h) => h.at === (key === 'k0' ? t0 + 1000 : t0))).toBe(true);
    }
  });
});

describe('supervision - pipeline restarts', () => {
  test('an error with no culprit (a timer in the pipeline) restarts the pipeline after a backoff', async () => {
    const seed = 5;
    const { rt, clock, log } = testRuntime({ random: seeded(seed) });
    const backoff = { initialMs: 200, maxMs: 5_000, multiplier: 2, jitter: 0.3 };
    const out = collect<number>(rt.bus, 'out');
    let builds = 0;
    const ref = rt.spawn(
      actor<number, number>({
        name: 'ticking',
        subscribe: 'in',
        output: 'out',
        restart: { maxRestarts: 3, windowMs: 60_000, backoff },
        pipeline: (in$, ctx) => {
          builds++;
          return merge(
            in$.pipe(map((env) => ({ ...env, data: env.data * 10 }))),
            builds === 1 ? failsAfter(50, ctx.scheduler) : EMPTY,
          );
        },
      }),
    );
    const t0 = clock.now();
    await rt.bus.publish('in', 1);
    await clock.advanceTo(t0 + 50);
    expect(ref.state).toBe('restarting');
    expect(ref.restarts).toBe(1);
    expect(ref.counters.restarts).toBe(1);
    // Input waits in the mailbox while the pipeline is down.
    await rt.bus.publish('in', 2);
    await rt.bus.publish('in', 3);
    expect(ref.depth).toBe(2);

    const delay = expectedDelays(1, backoff, seed)[0] as number;
    const [low, high] = bounds(1, { ...backoff });
    expect(delay).toBeGreaterThanOrEqual(low);
    expect(delay).toBeLessThanOrEqual(high);
    await clock.advanceTo(t0 + 50 + delay - 1);
    expect(builds).toBe(1);
    await clock.advanceTo(t0 + 50 + delay);
    expect(builds).toBe(2);
    expect(ref.state).toBe('running');
    await rt.idle();
    await flush();
    expect(out.map((e) => e.data)).toEqual([10, 20, 30]);
    expect(log.lines.some((l) => l.includes(`restarting in ${delay} ms: timer failed`))).toBe(true);
    // Out of the window, the restart no longer counts.
    await clock.advance(60_000);
    expect(ref.restarts).toBe(0);
  });

  test('inputs held by the failed pipeline are replayed into the restarted one', async () => {
    const { rt, clock } = testRuntime();
    const out = collect<number[]>(rt.bus, 'batches');
    const seen: [build: number, data: number, id: string][] = [];
    let builds = 0;
    const ref = rt.spawn(
      actor<number, number[]>({
        name: 'batcher',
        subscribe: 'in',
        output: 'batches',
        restart: { backoff: { initialMs: 100, jitter: 0 } },
        pipeline: (in$, ctx) => {
          const build = ++builds;
          return merge(
            in$.pipe(
              tap((env) => seen.push([build, env.data, env.id])),
              batchOf<number>(3),
            ),
            build === 1 ? failsAfter(50, ctx.scheduler) : EMPTY,
          );
        },
      }),
    );
    const t0 = clock.now();
    await rt.bus.publish('in', 1);
    await rt.bus.publish('in', 2);
    expect({ inFlight: ref.inFlight, absorbed: ref.absorbed }).toEqual({ inFlight: 0, absorbed: 2 });
    await clock.advanceTo(t0 + 150);
    expect(builds).toBe(2);
    // The same deliveries, in arrival order, held again by the new pipeline's batch.
    const firstIds = seen.filter(([b]) => b === 1).map(([, d, id]) => [d, id]);
    expect(seen.filter(([b]) => b === 2).map(([, d, id]) => [d, id])).toEqual(firstIds);
    expect({ inFlight: ref.inFlight, absorbed: ref.absorbed }).toEqual({ inFlight: 0, absorbed: 2 });
    expect(out).toEqual([]);

    await rt.bus.publish('in', 3);
    await flush();
    expect(out.map((e) => e.data)).toEqual([[1, 2, 3]]);
    expect(ref.counters).toMatchObject({ acked: 3, restarts: 1, retried: 0, deadLettered: 0 });
    expect({ inFlight: ref.inFlight, absorbed: ref.absorbed }).toEqual({ inFlight: 0, absorbed: 0 });
  });

  test('an input whose output was already accepted downstream is not replayed into the restarted pipeline', async () => {
    const { rt, clock } = testRuntime();
    const downstream = gate();
    const seen: number[] = [];
    rt.bus.subscribe<number>('out', {
      callback: async (env) => {
        seen.push(env.data);
        await downstream.promise;
      },
    });
    let builds = 0;
    const ref = rt.spawn(
      actor<number, number>({
        name: 'relay',
        subscribe: 'in',
        output: 'out',
        restart: { backoff: { initialMs: 10, jitter: 0 } },
        pipeline: (in$, ctx) => {
          builds++;
          return merge(in$, builds === 1 ? failsAfter(50, ctx.scheduler) : EMPTY);
        },
      }),
    );
    await rt.bus.publish('in', 1);
    await flush();
    // The input is settled by downstream only: the pipeline no longer holds it.
    expect({ inFlight: ref.inFlight, absorbed: ref.absorbed }).toEqual({ inFlight: 0, absorbed: 1 });
    await clock.advance(100);
    expect(builds).toBe(2);
    downstream.open();
    await flush();
    expect(seen).toEqual([1]);
    expect(ref.counters).toMatchObject({ acked: 1, restarts: 1 });
    expect({ inFlight: ref.inFlight, absorbed: ref.absorbed }).toEqual({ inFlight: 0, absorbed: 0 });
  });

  test('a synchronous error fails only its culprit: the pipeline is rebuilt at once and replays what it held', async () => {
    const { rt, clock } = testRuntime();
    const out = collect<string[]>(rt.bus, 'batches');
    let builds = 0;
    const ref = rt.spawn(
      actor<string, string[]>({
        name: 'culprit',
        subscribe: 'in',
        output: 'batches',
        retry: { maxAttempts: 2, backoff: { initialMs: 100, jitter: 0 } },
        pipeline: (in$) => {
          builds++;
          return in$.pipe(
            tap((env) => {
              if (env.data === 'poison' && env.attempt === 1) throw new Error('poisoned');
            }),
            batchOf<string>(3),
          );
        },
      }),
    );
    for (const data of ['a', 'b', 'poison']) await rt.bus.publish('in', data);
    await flush();
    expect(builds).toBe(2);
    expect(ref.state).toBe('running');
    await rt.bus.publish('in', 'c');
    await flush();
    // a and b were replayed into the new pipeline; poison waits for its retry.
    expect(out.map((e) => e.data)).toEqual([['a', 'b', 'c']]);
    expect(ref.counters).toMatchObject({ restarts: 0, retried: 1 });

    await clock.advance(100);
    for (const data of ['d', 'e']) await rt.bus.publish('in', data);
    await flush();
    expect(out.map((e) => e.data)).toEqual([
      ['a', 'b', 'c'],
      ['poison', 'd', 'e'],
    ]);
    expect(ref.counters).toMatchObject({ acked: 6, restarts: 0, deadLettered: 0 });
  });
});

describe('supervision - restart limit', () => {
  /** An actor whose pipeline fails 50 ms after every start and holds each input it takes. */
  function fragile(onLimit: 'stop' | 'escalate', options: Parameters<typeof testRuntime>[0] = {}) {
    const { rt, clock, log } = testRuntime(options);
    const seen: [build: number, data: number][] = [];
    let builds = 0;
    const ref = rt.spawn(
      actor<number, never>({
        name: 'fragile',
        subscribe: 'in',
        output: 'out',
        maxInFlight: 1,
        restart: { maxRestarts: 2, windowMs: 60_000, backoff: { initialMs: 100, jitter: 0 }, onLimit },
        pipeline: (in$, ctx) => {
          const build = ++builds;
          return merge(
            in$.pipe(
              tap((env) => {
                seen.push([build, env.data]);
                hold(env.lineage); // never released: the input stays in flight
              }),
              filter(() => false),
              map((env) => ({ ...env, data: undefined as never })),
            ),
            failsAfter(50, ctx.scheduler),
          );
        },
      }),
    );
    return { rt, clock, log, ref, seen, builds: () => builds };
  }

  test("more than maxRestarts within windowMs stops the actor; with onLimit 'stop' what it held is dead-lettered", async () => {
    const { rt, clock, ref, seen, builds } = fragile('stop');
    const dlq = collect<number>(rt.bus, '$DLQ.fragile');
    for (const n of [1, 2, 3]) await rt.bus.publish('in', n);
    expect({ inFlight: ref.inFlight, depth: ref.depth }).toEqual({ inFlight: 1, depth: 2 });
    const t0 = clock.now();
    // Fails at +50, restarts at +150, fails at +200, restarts at +400, fails at +450: the limit.
    await clock.advanceTo(t0 + 449);
    expect(builds()).toBe(3);
    expect(ref.state).not.toBe('stopped');
    await clock.advanceTo(t0 + 450);
    expect(ref.state).toBe('stopped');
    expect(builds()).toBe(3);
    expect(ref.counters.restarts).toBe(2);
    // The held input was replayed into every new pipeline; the queued ones never got in.
    expect(seen).toEqual([
      [1, 1],
      [2, 1],
      [3, 1],
    ]);

    await ref.idle();
    await flush();
    expect(dlq.map((e) => e.data).sort()).toEqual([1, 2, 3]);
    for (const letter of dlq) {
      expect(letter.headers[DEAD_LETTER_HEADERS.code]).toBe('SLUICE_ERR_RESTART_LIMIT');
      expect(letter.headers[DEAD_LETTER_HEADERS.error]).toBe(
        "actor 'fragile' stopped: it failed after 2 restarts within 60000 ms: timer failed",
      );
    }
    expect({ inFlight: ref.inFlight, depth: ref.depth }).toEqual({ inFlight: 0, depth: 0 });
    // A stopped actor takes nothing more; the runtime goes on.
    await rt.bus.publish('in', 4);
    await flush();
    expect(dlq).toHaveLength(3);
    expect(rt.stopped).toBe(false);
  });

  test("with onLimit 'escalate' the runtime's onEscalate is called with a RestartLimitError", async () => {
    const onEscalate = vi.fn();
    const { rt, clock, ref } = fragile('escalate', { onEscalate });
    await rt.bus.publish('in', 1);
    await clock.advance(449);
    expect(onEscalate).not.toHaveBeenCalled();
    await clock.advance(1);
    expect(onEscalate).toHaveBeenCalledTimes(1);
    const [name, error] = onEscalate.mock.calls[0] as [string, RestartLimitError];
    expect(name).toBe('fragile');
    expect(error).toBeInstanceOf(RestartLimitError);
    expect(error).toMatchObject({ actor: 'fragile', restarts: 2, windowMs: 60_000 });
    expect(ref.state).toBe('stopped');
    expect(rt.stopped).toBe(false);
  });

  test('escalation with no onEscalate stops the runtime', async () => {
    const { rt, clock, log } = fragile('escalate');
    await rt.bus.publish('in', 1);
    await clock.advance(450);
    expect(rt.stopped).toBe(true);
    expect(log.lines.some((l) => l.startsWith("error: actor 'fragile' escalated"))).toBe(true);
  });

  test('escalation with no onEscalate stops the runtime even when its logger throws', async () => {
    const throwing = () => {
      throw new Error('logger failed');
    };
    const { rt, clock } = fragile('escalate', {
      logger: { debug: throwing, info: throwing, warn: throwing, error: throwing },
    });
    await rt.bus.publish('in', 1);
    await clock.advance(450);
    expect(rt.stopped).toBe(true);
  });

  test('restarts spread beyond windowMs never reach the limit', async () => {
    const { rt, clock } = testRuntime();
    let builds = 0;
    const ref = rt.spawn(
      actor<number, number>({
        name: 'slow-failer',
        subscribe: 'in',
        output: 'out',
        restart: { maxRestarts: 2, windowMs: 1_000, backoff: { initialMs: 10, jitter: 0, multiplier: 1 } },
        pipeline: (in$, ctx) => {
          builds++;
          return merge(in$, failsAfter(990, ctx.scheduler));
        },
      }),
    );
    // A failure every 1000 ms: never more than one within any 1000 ms window.
    await clock.advance(10_000);
    expect(builds).toBeGreaterThanOrEqual(10);
    expect(ref.state).not.toBe('stopped');
    expect(ref.restarts).toBeLessThanOrEqual(1);
    await rt.bus.publish('in', 1);
  });
});

describe('supervision - poison messages', () => {
  test('poison messages never crash the runtime and every other message keeps flowing', async () => {
    const { rt, clock } = testRuntime();
    const out = collect<number>(rt.bus, 'out');
    const dlq = collect<number | string>(rt.bus, '$DLQ.>');
    const piped = rt.spawn(
      actor<number, number>({
        name: 'piped',
        subscribe: 'numbers',
        output: 'out',
        retry: { maxAttempts: 2, backoff: { initialMs: 5 } },
        pipeline: (in$) =>
          in$.pipe(
            map((env) => {
              if (env.data === 13) throw new Error('unlucky');
              if (env.data === 66) throw undefined; // a failure that carries no error at all
              return { ...env, data: env.data + 1000 };
            }),
          ),
      }),
    );
    const handler = rt.spawn(
      actor<string, never>({
        name: 'handler',
        subscribe: 'words',
        retry: { maxAttempts: 1 },
        handle: (env) => {
          if (env.data === 'null') throw null;
          if (env.data === 'undefined') throw undefined;
          if (env.data === 'reject') return Promise.reject(new Error('rejected'));
          return Promise.resolve();
        },
      }),
    );
    const numbers = Array.from({ length: 100 }, (_, i) => i);
    for (const n of numbers) await rt.bus.publish('numbers', n);
    for (const w of ['ok', 'null', 'undefined', 'reject', 'fine']) await rt.bus.publish('words', w);
    await clock.runAll();
    await rt.idle();
    await flush();

    expect(out.map((e) => e.data)).toEqual(numbers.filter((n) => n !== 13 && n !== 66).map((n) => n + 1000));
    expect(dlq.map((e) => e.data).sort()).toEqual([13, 66, 'null', 'reject', 'undefined'].sort());
    expect(piped.state).toBe('running');
    expect(piped.counters).toMatchObject({ restarts: 0, retried: 2, deadLettered: 2, acked: 98 });
    expect(handler.counters).toMatchObject({ acked: 2, deadLettered: 3 });
    expect(rt.stopped).toBe(false);
  });
});

describe('supervision - dead letters of dead letters', () => {
  const failing = (name: string, subscribe: string, maxAttempts: number) =>
    actor<unknown, never>({
      name,
      subscribe,
      retry: { maxAttempts, backoff: { initialMs: 10, jitter: 0 } },
      handle: () => {
        throw new Error(`${name} always fails`);
      },
    });

  test('a dead letter starts at attempt 1, so an actor consuming $DLQ.a gets its own maxAttempts', async () => {
    const { rt, clock } = testRuntime();
    const attempts: number[] = [];
    rt.spawn(failing('a', 'in', 3));
    rt.spawn(
      actor<unknown, never>({
        name: 'second-chance',
        subscribe: '$DLQ.a',
        retry: { maxAttempts: 4, backoff: { initialMs: 10, jitter: 0 } },
        handle: (env) => {
          attempts.push(env.attempt);
          throw new Error('still failing');
        },
      }),
    );
    const dead = collect(rt.bus, '$DEAD.>');
    await rt.bus.publish('in', 'x');
    await clock.runAll(1_000);
    await rt.idle();
    await flush();
    expect(attempts).toEqual([1, 2, 3, 4]);
    // Its own dead letter keeps the count of the input that failed; a new message again.
    expect(dead).toHaveLength(1);
    expect(dead[0]?.attempt).toBe(1);
    expect(dead[0]?.headers[DEAD_LETTER_HEADERS.attempts]).toBe('4');
  });

  // The loops (a handler on $DLQ.>, actors reading each other's dead letters) are in
  // test/security/deadLetterLoops.test.ts, in a child process: before the fix they froze the process.
});
