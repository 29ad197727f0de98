import { finalize, from, map, mergeMap } from 'rxjs';
import { actor, hold, type Lineage, MailboxFullError, type OverflowPolicy } from 'sluice';
import { describe, expect, test } from 'vitest';
import { flush, type Gate, gate, testRuntime } from './helpers.ts';

/**
 * A lineage shared by every message a test publishes: it counts the references the runtime holds
 * on them. A mailbox (or a publisher waiting for room in one) absorbs a message; the actor gives
 * it back once the message is settled. So `live` is the number of messages the runtime holds.
 */
function countingLineage(): Lineage & { live: number; maxLive: number; settled: number } {
  return {
    ids: ['source'],
    live: 0,
    maxLive: 0,
    settled: 0,
    retain() {
      throw new Error('the source reference is absorbed by mailboxes, never retained');
    },
    absorb() {
      this.live++;
      if (this.live > this.maxLive) this.maxLive = this.live;
    },
    release() {
      throw new Error('the source reference is released as absorbed');
    },
    releaseAbsorbed() {
      this.live--;
      this.settled++;
    },
  };
}

/** A gate that the test swaps for a new one each time it opens it: one "tick" of a slow consumer. */
function ticker(): { current: Gate; tick(): void } {
  const t = {
    current: gate(),
    tick() {
      const open = t.current;
      t.current = gate();
      open.open();
    },
  };
  return t;
}

const immediate = () => new Promise<void>((resolve) => setImmediate(resolve));

describe('backpressure - block', () => {
  test('1,000,000 messages into a slow actor never hold more than mailbox capacity + maxInFlight', async () => {
    const { rt } = testRuntime();
    const N = 1_000_000;
    const capacity = 256;
    const maxInFlight = 64;
    const slow = ticker();
    const source = countingLineage();
    let maxHeld = 0;
    let running = 0;
    let maxRunning = 0;
    let expected = 0;
    let outOfOrder = 0;
    const ref = rt.spawn(
      actor<number, never>({
        name: 'slow',
        subscribe: 'work',
        mailbox: { capacity, overflow: 'block' },
        maxInFlight,
        concurrency: maxInFlight,
        handle: async (env) => {
          // Held by the actor: queued in its mailbox, or taken and not yet settled.
          maxHeld = Math.max(maxHeld, ref.depth + ref.inFlight);
          running++;
          maxRunning = Math.max(maxRunning, running);
          if (env.data !== expected++) outOfOrder++;
          await slow.current.promise;
          running--;
        },
      }),
    );

    let published = 0;
    const producer = (async () => {
      for (let i = 0; i < N; i++) {
        await rt.bus.publish('work', i, { lineage: source });
        published++;
        maxHeld = Math.max(maxHeld, ref.depth + ref.inFlight);
      }
    })();
    // The consumer's pace: each tick finishes what the actor is running, then the producer refills.
    let ticks = 0;
    while (source.settled < N) {
      slow.tick();
      ticks++;
      await immediate();
    }
    await producer;

    expect(published).toBe(N);
    expect(ref.counters.acked).toBe(N);
    expect(outOfOrder).toBe(0);
    // The actor held at most what its mailbox and its in-flight limit allow, and it did fill both.
    expect(maxHeld).toBe(capacity + maxInFlight);
    expect(maxRunning).toBe(maxInFlight);
    // Counted independently through the messages' lineage: the one extra is the producer's own
    // next message, waiting at the mailbox for room (the producer awaits each publish).
    expect(source.maxLive).toBeLessThanOrEqual(capacity + maxInFlight + 1);
    expect(source.maxLive).toBeGreaterThanOrEqual(capacity + maxInFlight);
    expect(source.live).toBe(0);
    // Slow for real: at most maxInFlight messages were finished per tick.
    expect(ticks).toBeGreaterThanOrEqual(N / maxInFlight);
  }, 30_000);

  test('in pipeline mode an async step that holds its input keeps the same bound', async () => {
    const { rt } = testRuntime();
    const N = 20_000;
    const capacity = 100;
    const maxInFlight = 10;
    const slow = ticker();
    const source = countingLineage();
    let maxHeld = 0;
    const outputs: number[] = [];
    rt.bus.subscribe<number>('done', { callback: (env) => void outputs.push(env.data) });
    const ref = rt.spawn(
      actor<number, number>({
        name: 'slow-pipeline',
        subscribe: 'work',
        output: 'done',
        mailbox: { capacity },
        maxInFlight,
        pipeline: (in$) =>
          in$.pipe(
            mergeMap((env) => {
              maxHeld = Math.max(maxHeld, ref.depth + ref.inFlight);
              const release = hold(env.lineage);
              return from(slow.current.promise).pipe(
                map(() => ({ ...env, data: env.data + 1 })),
                finalize(release),
              );
            }),
          ),
      }),
    );
    const producer = (async () => {
      for (let i = 0; i < N; i++) {
        await rt.bus.publish('work', i, { lineage: source });
        maxHeld = Math.max(maxHeld, ref.depth + ref.inFlight);
      }
    })();
    while (source.settled < N) {
      slow.tick();
      await immediate();
    }
    await producer;

    expect(outputs).toHaveLength(N);
    expect(ref.counters).toMatchObject({ acked: N, dropped: 0, settlementErrors: 0 });
    expect(maxHeld).toBe(capacity + maxInFlight);
    expect(source.maxLive).toBeLessThanOrEqual(capacity + maxInFlight + 1);
  });

  test('in a chain A → B with a slow B, A stays within its in-flight limit and the source waits', async () => {
    const { rt } = testRuntime();
    const waiting: (() => void)[] = [];
    const handled: number[] = [];
    let maxAInFlight = 0;
    const a = rt.spawn(
      actor<number, number>({
        name: 'a',
        subscribe: 'a.in',
        output: 'b.in',
        mailbox: { capacity: 4 },
        maxInFlight: 4,
        pipeline: (in$) =>
          in$.pipe(
            map((env) => {
              maxAInFlight = Math.max(maxAInFlight, a.inFlight);
              return { ...env, data: env.data * 2 };
            }),
          ),
      }),
    );
    const b = rt.spawn(
      actor<number, never>({
        name: 'b',
        subscribe: 'b.in',
        mailbox: { capacity: 2 },
        maxInFlight: 1,
        handle: async (env) => {
          await new Promise<void>((resolve) => waiting.push(resolve));
          handled.push(env.data);
        },
      }),
    );

    const N = 40;
    let accepted = 0;
    const source = (async () => {
      for (let i = 0; i < N; i++) {
        await rt.bus.publish('a.in', i);
        accepted++;
      }
    })();
    await flush();

    // B: one handled, two queued. A: four inputs whose outputs wait for room in B's mailbox, four
    // queued. The source got eleven messages in; the twelfth publish waits.
    expect({ depth: b.depth, inFlight: b.inFlight }).toEqual({ depth: 2, inFlight: 1 });
    expect({ depth: a.depth, inFlight: a.inFlight, absorbed: a.absorbed }).toEqual({
      depth: 4,
      inFlight: 4,
      absorbed: 3,
    });
    expect(accepted).toBe(11);
    await flush();
    expect(accepted).toBe(11);

    // Each message B finishes lets exactly one more in at the source.
    for (let step = 1; step <= 5; step++) {
      waiting.shift()?.();
      await flush();
      expect(accepted).toBe(11 + step);
      expect(a.inFlight).toBe(4);
    }

    while (handled.length < N) {
      waiting.shift()?.();
      await flush(1);
    }
    await source;
    await rt.idle();
    expect(handled).toEqual(Array.from({ length: N }, (_, i) => i * 2));
    expect(maxAInFlight).toBeLessThanOrEqual(4);
    expect(a.counters.acked).toBe(N);
    expect({ a: a.inFlight + a.absorbed, b: b.inFlight }).toEqual({ a: 0, b: 0 });
  });
});

describe('backpressure - overflow policies', () => {
  /** A slow actor (one at a time, held until `release`) with a mailbox of 2 under `overflow`. */
  function slowActor(overflow: OverflowPolicy) {
    const { rt } = testRuntime();
    const blocker = gate();
    const handled: number[] = [];
    const ref = rt.spawn(
      actor<number, never>({
        name: `slow-${overflow}`,
        subscribe: 'in',
        mailbox: { capacity: 2, overflow },
        maxInFlight: 1,
        handle: async (env) => {
          await blocker.promise;
          handled.push(env.data);
        },
      }),
    );
    return { rt, ref, handled, release: blocker.open };
  }

  test('drop-oldest makes room by dropping the oldest queued message, counted and settled', async () => {
    const { rt, ref, handled, release } = slowActor('drop-oldest');
    const source = countingLineage();
    for (let i = 1; i <= 5; i++) await rt.bus.publish('in', i, { lineage: source });
    // 1 is being handled; 2 and 3 were dropped for 4 and 5.
    expect(ref.counters.dropped).toBe(2);
    expect(rt.telemetry.counters.dropped).toBe(2);
    expect(source).toMatchObject({ settled: 2, live: 3 });
    release();
    await rt.idle();
    expect(handled).toEqual([1, 4, 5]);
    expect(source).toMatchObject({ settled: 5, live: 0 });
  });

  test('drop-newest drops the message that finds the mailbox full, counted and settled', async () => {
    const { rt, ref, handled, release } = slowActor('drop-newest');
    const source = countingLineage();
    for (let i = 1; i <= 5; i++) await rt.bus.publish('in', i, { lineage: source });
    expect(ref.counters.dropped).toBe(2);
    expect(rt.telemetry.counters.dropped).toBe(2);
    expect(source).toMatchObject({ settled: 2, live: 3 });
    release();
    await rt.idle();
    expect(handled).toEqual([1, 2, 3]);
  });

  test('fail rejects the publish with MailboxFullError and delivers the message to no one', async () => {
    const { rt, ref, handled, release } = slowActor('fail');
    const other: number[] = [];
    rt.bus.subscribe<number>('in', { callback: (env) => void other.push(env.data) });
    for (let i = 1; i <= 3; i++) await rt.bus.publish('in', i);
    const error = await rt.bus.publish('in', 4).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(MailboxFullError);
    expect(error).toMatchObject({ code: 'SLUICE_ERR_MAILBOX_FULL', mailbox: 'slow-fail', capacity: 2 });
    expect((error as Error).message).toContain("'slow-fail'");
    expect(rt.bus.tryPublish('in', 5)).toBe(false);
    expect(rt.telemetry.counters.refused).toBe(1);
    expect(ref.counters.dropped).toBe(0);
    release();
    await rt.idle();
    await flush();
    expect(handled).toEqual([1, 2, 3]);
    // All or nothing: the other subscriber did not get the refused messages either.
    expect(other).toEqual([1, 2, 3]);
  });

  test('block makes publish wait for room, and tryPublish refuses instead of waiting', async () => {
    const { rt, handled, release } = slowActor('block');
    for (let i = 1; i <= 3; i++) await rt.bus.publish('in', i);
    let fourth = false;
    const waiting = rt.bus.publish('in', 4).then(() => {
      fourth = true;
    });
    expect(rt.bus.tryPublish('in', 5)).toBe(false);
    await flush();
    expect(fourth).toBe(false);
    release();
    await waiting;
    await rt.idle();
    expect(handled).toEqual([1, 2, 3, 4]);
  });
});
