import { filter, map } from 'rxjs';
import {
  actor,
  DEAD_LETTER_HEADERS,
  type Envelope,
  OptionsError,
  type Runtime,
  replayDeadLetter,
  replayDeadLetters,
  type VirtualClock,
} from 'sluice';
import { describe, expect, test } from 'vitest';
import { collect, flush, testRuntime } from './helpers.ts';

interface Event {
  key: string;
  seq: number;
}

const retry1s = { initialMs: 1000, jitter: 0 };

/** Publishes `events` in order, each accepted before the next. */
async function publishAll(rt: Runtime, events: readonly Event[]): Promise<void> {
  for (const e of events) await rt.bus.publish('events', e);
}

/** Runs the virtual clock up to `ms` from now, step by step, letting handlers run between steps. */
async function runFor(clock: VirtualClock, ms: number): Promise<void> {
  const end = clock.now() + ms;
  for (;;) {
    await flush(1);
    const due = clock.nextDue();
    if (due === undefined || due > end) break;
    await clock.advanceTo(due);
  }
  await clock.advanceTo(end);
  await flush(1);
}

const seqsOf = (done: readonly (Event & { at: number })[], key: string) =>
  done.filter((d) => d.key === key).map((d) => d.seq);

describe('retries that do not block the lane', () => {
  test('a poison key in a partitioned handler does not delay the other keys of its lane', async () => {
    const { rt, clock } = testRuntime();
    const done: (Event & { at: number })[] = [];
    rt.spawn(
      actor<Event, never>({
        name: 'one-lane',
        subscribe: 'events',
        partitionBy: (env) => env.data.key,
        // One lane: every key shares the lane of the poison key.
        lanes: 1,
        retry: { maxAttempts: 2, backoff: retry1s },
        handle: async (env, ctx) => {
          if (env.data.key === 'p' && env.data.seq === 0 && env.attempt === 1) throw new Error('poison');
          await ctx.clock.sleep(10);
          done.push({ ...env.data, at: ctx.clock.now() });
        },
      }),
    );
    const t0 = clock.now();
    const events: Event[] = [{ key: 'p', seq: 0 }];
    for (let seq = 1; seq <= 5; seq++) for (const key of ['a', 'p', 'b', 'c']) events.push({ key, seq });
    await publishAll(rt, events);

    // Before the retry is due, every other key went through, one handler at a time (10 ms each)...
    await runFor(clock, 999);
    for (const key of ['a', 'b', 'c']) expect(seqsOf(done, key)).toEqual([1, 2, 3, 4, 5]);
    expect(done.map((d) => d.at)).toEqual(Array.from({ length: 15 }, (_, i) => t0 + 10 * (i + 1)));
    // ...and nothing of the poison key went past its failed message.
    expect(seqsOf(done, 'p')).toEqual([]);

    await runFor(clock, 1000);
    await rt.idle();
    expect(seqsOf(done, 'p')).toEqual([0, 1, 2, 3, 4, 5]);
    expect(done.find((d) => d.key === 'p')?.at).toBe(t0 + 1000 + 10);
  });

  test('same-key order is kept across several retries, for several failing keys at once', async () => {
    const { rt, clock } = testRuntime();
    const done: (Event & { at: number })[] = [];
    const ref = rt.spawn(
      actor<Event, never>({
        name: 'ordered-retries',
        subscribe: 'events',
        partitionBy: (env) => env.data.key,
        lanes: 2,
        retry: { maxAttempts: 4, backoff: { initialMs: 100, multiplier: 2, jitter: 0 } },
        handle: (env, ctx) => {
          // p fails its seq 0 three times (retried at +100, +200, +400); q fails its seq 2 once.
          if (env.data.key === 'p' && env.data.seq === 0 && env.attempt < 4) throw new Error('p0');
          if (env.data.key === 'q' && env.data.seq === 2 && env.attempt === 1) throw new Error('q2');
          done.push({ ...env.data, at: ctx.clock.now() });
        },
      }),
    );
    const t0 = clock.now();
    const events: Event[] = [];
    for (let seq = 0; seq < 6; seq++) for (const key of ['p', 'q', 'r', 's']) events.push({ key, seq });
    await publishAll(rt, events);
    await runFor(clock, 1000);
    await rt.idle();

    for (const key of ['p', 'q', 'r', 's']) expect(seqsOf(done, key)).toEqual([0, 1, 2, 3, 4, 5]);
    expect(done.filter((d) => d.key === 'p').every((d) => d.at === t0 + 700)).toBe(true);
    expect(done.filter((d) => d.key === 'q').map((d) => d.at)).toEqual([t0, t0, ...Array(4).fill(t0 + 100)]);
    expect(done.filter((d) => d.key === 'r' || d.key === 's').every((d) => d.at === t0)).toBe(true);
    expect(ref.counters).toMatchObject({ retried: 4, acked: 24, deadLettered: 0 });
    expect(ref.parked).toBe(0);
  });

  test('with maxInFlight N and a poison key, the other keys flow as fast as with no failure', async () => {
    // The same input twice, with and without the poison; the other keys must finish at the same times.
    async function run(poison: boolean) {
      const { rt, clock } = testRuntime();
      const done: (Event & { at: number })[] = [];
      let maxInFlight = 0;
      let maxParked = 0;
      const ref = rt.spawn(
        actor<Event, never>({
          name: 'bounded',
          subscribe: 'events',
          partitionBy: (env) => env.data.key,
          lanes: 2,
          maxInFlight: 4,
          retry: { maxAttempts: 2, backoff: retry1s },
          handle: async (env, ctx) => {
            maxInFlight = Math.max(maxInFlight, ref.inFlight);
            maxParked = Math.max(maxParked, ref.parked);
            if (env.data.key === 'p') {
              if (poison && env.data.seq === 0 && env.attempt === 1) throw new Error('poison');
              // The poison key costs its lane nothing, with or without the failure.
            } else await ctx.clock.sleep(10);
            done.push({ ...env.data, at: ctx.clock.now() });
          },
        }),
      );
      const t0 = clock.now();
      // Three inputs of the poison key wait behind its failed one: with 4 slots, counting them
      // in flight would leave none for the other keys until the retry.
      const events: Event[] = [0, 1, 2, 3].map((seq) => ({ key: 'p', seq }));
      for (let seq = 0; seq < 10; seq++) for (const key of ['a', 'b', 'c', 'd']) events.push({ key, seq });
      const publishing = publishAll(rt, events);
      await runFor(clock, 999);
      const others = done.filter((d) => d.key !== 'p').map((d) => ({ ...d, at: d.at - t0 }));
      const early = seqsOf(done, 'p');
      await runFor(clock, 1000);
      await publishing;
      await rt.idle();
      return { others, early, p: seqsOf(done, 'p'), maxInFlight, maxParked };
    }
    const clean = await run(false);
    const poisoned = await run(true);

    expect(clean.others).toHaveLength(40);
    expect(poisoned.others).toEqual(clean.others);
    expect(poisoned.early).toEqual([]);
    expect(poisoned.p).toEqual([0, 1, 2, 3]);
    expect(poisoned.maxParked).toBe(3);
    expect(poisoned.maxInFlight).toBeLessThanOrEqual(4);
  });

  test('parked inputs have a bound of their own: the actor takes no more once maxInFlight of them wait', async () => {
    const { rt, clock } = testRuntime();
    const done: Event[] = [];
    const ref = rt.spawn(
      actor<Event, never>({
        name: 'parked-bound',
        subscribe: 'events',
        partitionBy: (env) => env.data.key,
        lanes: 1,
        maxInFlight: 2,
        retry: { maxAttempts: 2, backoff: retry1s },
        handle: (env) => {
          if (env.data.key === 'p' && env.data.seq === 0 && env.attempt === 1) throw new Error('poison');
          done.push(env.data);
        },
      }),
    );
    const events: Event[] = [];
    for (let seq = 0; seq < 6; seq++) events.push({ key: 'p', seq });
    for (let seq = 0; seq < 3; seq++) events.push({ key: 'a', seq });
    await publishAll(rt, events);
    await runFor(clock, 999);
    // Two of p's inputs are parked; the rest, and a's behind them, wait in the mailbox.
    expect(ref.parked).toBe(2);
    expect(ref.inFlight).toBe(1);
    expect(ref.depth).toBe(6);
    expect(done).toEqual([]);

    await runFor(clock, 1000);
    await rt.idle();
    expect(seqsOf(done as (Event & { at: number })[], 'p')).toEqual([0, 1, 2, 3, 4, 5]);
    expect(seqsOf(done as (Event & { at: number })[], 'a')).toEqual([0, 1, 2]);
    expect(ref.parked).toBe(0);
  });

  test('after the last attempt the message is dead-lettered and its key goes on in order', async () => {
    const { rt, clock } = testRuntime();
    const dlq = collect<Event>(rt.bus, '$DLQ.gives-up');
    const done: (Event & { at: number })[] = [];
    const ref = rt.spawn(
      actor<Event, never>({
        name: 'gives-up',
        subscribe: 'events',
        partitionBy: (env) => env.data.key,
        lanes: 1,
        retry: { maxAttempts: 3, backoff: { initialMs: 100, multiplier: 2, jitter: 0 } },
        handle: (env, ctx) => {
          if (env.data.key === 'p' && env.data.seq === 1) throw new Error('never works');
          done.push({ ...env.data, at: ctx.clock.now() });
        },
      }),
    );
    const t0 = clock.now();
    const events: Event[] = [];
    for (let seq = 0; seq < 4; seq++) for (const key of ['p', 'a']) events.push({ key, seq });
    await publishAll(rt, events);
    await runFor(clock, 299);
    expect(seqsOf(done, 'p')).toEqual([0]);
    expect(seqsOf(done, 'a')).toEqual([0, 1, 2, 3]);
    expect(dlq).toEqual([]);

    await runFor(clock, 1);
    await rt.idle();
    expect(dlq.map((e) => e.data)).toEqual([{ key: 'p', seq: 1 }]);
    expect(dlq[0]?.headers[DEAD_LETTER_HEADERS.attempts]).toBe('3');
    expect(dlq[0]?.headers[DEAD_LETTER_HEADERS.error]).toBe('never works');
    // The key went on without it, in order, once it was given up (the third attempt, at +300).
    expect(done.filter((d) => d.key === 'p')).toEqual([
      { key: 'p', seq: 0, at: t0 },
      { key: 'p', seq: 2, at: t0 + 300 },
      { key: 'p', seq: 3, at: t0 + 300 },
    ]);
    expect(ref.counters).toMatchObject({ retried: 2, deadLettered: 1, acked: 7 });
  });

  test('stopping dead-letters the parked inputs and the one waiting for its retry: nothing is lost', async () => {
    const { rt, clock } = testRuntime();
    const dlq = collect<Event>(rt.bus, '$DLQ.stopped');
    const ref = rt.spawn(
      actor<Event, never>({
        name: 'stopped',
        subscribe: 'events',
        partitionBy: (env) => env.data.key,
        lanes: 1,
        retry: { maxAttempts: 2, backoff: retry1s },
        handle: (env) => {
          if (env.data.seq === 0) throw new Error('poison');
        },
      }),
    );
    await publishAll(
      rt,
      [0, 1, 2].map((seq) => ({ key: 'p', seq })),
    );
    await runFor(clock, 10);
    expect(ref.parked).toBe(2);
    await ref.stop();
    await flush();
    expect(dlq.map((e) => e.data.seq).sort()).toEqual([0, 1, 2]);
    expect(ref.parked).toBe(0);
    expect(ref.inFlight).toBe(0);
    await ref.idle();
  });

  test('a non-retryable failure dead-letters at once and its key never waits', async () => {
    const { rt } = testRuntime();
    const dlq = collect<Event>(rt.bus, '$DLQ.no-retry');
    const done: Event[] = [];
    rt.spawn(
      actor<Event, never>({
        name: 'no-retry',
        subscribe: 'events',
        partitionBy: (env) => env.data.key,
        lanes: 1,
        retry: { maxAttempts: 1 },
        handle: (env) => {
          if (env.data.seq === 0) throw new Error('once');
          done.push(env.data);
        },
      }),
    );
    await publishAll(
      rt,
      [0, 1, 2].map((seq) => ({ key: 'p', seq })),
    );
    await rt.idle();
    await flush();
    expect(done.map((d) => d.seq)).toEqual([1, 2]);
    expect(dlq.map((e) => e.data.seq)).toEqual([0]);
  });

  test('without partitionBy, inputs keep no order across a retry: none waits for a failed one', async () => {
    const { rt, clock } = testRuntime();
    const done: number[] = [];
    rt.spawn(
      actor<number, never>({
        name: 'unordered',
        subscribe: 'numbers',
        retry: { maxAttempts: 2, backoff: retry1s },
        handle: (env) => {
          if (env.data === 0 && env.attempt === 1) throw new Error('first try');
          done.push(env.data);
        },
      }),
    );
    for (let i = 0; i < 4; i++) await rt.bus.publish('numbers', i, { key: 'same' });
    await runFor(clock, 999);
    expect(done).toEqual([1, 2, 3]);
    await runFor(clock, 1000);
    expect(done).toEqual([1, 2, 3, 0]);
  });

  test('a pipeline actor re-dispatches a retried input behind what came since: others go on', async () => {
    const { rt, clock } = testRuntime();
    const out = collect<Event>(rt.bus, 'out');
    rt.spawn(
      actor<Event, Event>({
        name: 'piped',
        subscribe: 'events',
        output: 'out',
        partitionBy: (env) => env.data.key,
        lanes: 1,
        retry: { maxAttempts: 2, backoff: retry1s },
        pipeline: (in$) =>
          in$.pipe(
            map((env) => {
              if (env.data.seq === 0 && env.attempt === 1) throw new Error('first try');
              return env;
            }),
            filter(() => true),
          ),
      }),
    );
    await publishAll(
      rt,
      [0, 1, 2].map((seq) => ({ key: 'p', seq })),
    );
    await runFor(clock, 999);
    // The pipeline was rebuilt at once and took the rest, of the same key too.
    expect(out.map((e) => e.data.seq)).toEqual([1, 2]);
    await runFor(clock, 1000);
    await rt.idle();
    expect(out.map((e) => e.data.seq)).toEqual([1, 2, 0]);
  });
});

describe('replaying dead letters', () => {
  async function deadLettered() {
    const { rt, clock } = testRuntime();
    const dlq = collect<Event>(rt.bus, '$DLQ.orders');
    let broken = true;
    const handled: Envelope<Event>[] = [];
    rt.spawn(
      actor<Event, never>({
        name: 'orders',
        subscribe: 'orders.>',
        retry: { maxAttempts: 1 },
        handle: (env) => {
          if (broken) throw new Error('database down');
          handled.push(env);
        },
      }),
    );
    await rt.bus.publish('orders.eu', { key: 'o-1', seq: 1 }, { key: 'o-1', eventTime: 5, headers: { tenant: 't1' } });
    await rt.bus.publish('orders.us', { key: 'o-2', seq: 2 }, { key: 'o-2', eventTime: 6 });
    await rt.idle();
    await flush();
    broken = false;
    return { rt, clock, dlq, handled };
  }

  test('replayDeadLetter publishes to the original subject with its data, without the dead-letter headers', async () => {
    const { rt, dlq, handled } = await deadLettered();
    expect(dlq).toHaveLength(2);
    const letter = dlq[0] as Envelope<Event>;
    expect(letter.headers[DEAD_LETTER_HEADERS.subject]).toBe('orders.eu');

    await replayDeadLetter(rt.bus, letter);
    await rt.idle();
    expect(handled).toHaveLength(1);
    const replayed = handled[0] as Envelope<Event>;
    expect(replayed.subject).toBe('orders.eu');
    expect(replayed.data).toEqual({ key: 'o-1', seq: 1 });
    expect(replayed).toMatchObject({ key: 'o-1', eventTime: 5, attempt: 1 });
    expect(replayed.headers).toEqual({ tenant: 't1' });
    expect(Object.keys(replayed.headers).filter((h) => h.startsWith('sluice-'))).toEqual([]);
    expect(replayed.id).not.toBe(letter.headers[DEAD_LETTER_HEADERS.messageId]);
  });

  test('replayDeadLetters takes a filter, a limit and another subject', async () => {
    const { rt, dlq, handled } = await deadLettered();
    const elsewhere = collect<Event>(rt.bus, 'orders-replayed');
    const dlqLetters = [...dlq];
    expect(await replayDeadLetters(rt.bus, dlqLetters, { filter: (l) => l.key === 'o-2' })).toBe(1);
    await rt.idle();
    expect(handled.map((e) => e.subject)).toEqual(['orders.us']);

    async function* letters() {
      yield* dlqLetters;
    }
    expect(await replayDeadLetters(rt.bus, letters(), { to: 'orders-replayed', limit: 1 })).toBe(1);
    await flush();
    expect(elsewhere.map((e) => e.data)).toEqual([{ key: 'o-1', seq: 1 }]);
    expect(elsewhere[0]?.headers).toEqual({ tenant: 't1' });
    expect(await replayDeadLetters(rt.bus, dlqLetters, { limit: 0 })).toBe(0);
  });

  test('a message that is not a dead letter, or bad options, are refused with an OptionsError', async () => {
    const { rt } = testRuntime();
    const plain = collect<number>(rt.bus, 'plain');
    await rt.bus.publish('plain', 1);
    await flush();
    await expect(replayDeadLetter(rt.bus, plain[0] as Envelope)).rejects.toThrow(OptionsError);
    await expect(replayDeadLetter(rt.bus, plain[0] as Envelope)).rejects.toThrow(/sluice-original-subject/);
    await expect(replayDeadLetters(rt.bus, [], { limit: -1 })).rejects.toThrow(OptionsError);
    await expect(replayDeadLetters(rt.bus, [], { limt: 1 } as never)).rejects.toThrow(/limt/);
  });
});
