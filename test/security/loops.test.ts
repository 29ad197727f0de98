/**
 * Message loops must not freeze the process: delivery, the drain loops and awaited publishes give
 * the event loop back after a bounded burst, so a timer (and so signals and `stop()`) still runs.
 * Real timers and the system clock on purpose: what is attacked is the event loop itself.
 *
 * Each loop counts its own rounds and ends itself past RUNAWAY: without the burst budget it never
 * gives a timer a chance, so it would run until then (synchronously or in microtasks), and the
 * test fails on `runaway` instead of hanging the worker.
 */
import { actor, Bus, createRuntime } from 'sluice';
import { describe, expect, test } from 'vitest';

const RUNAWAY = 2_000_000;
const turn = () => new Promise<void>((resolve) => setImmediate(resolve));

/** A 10 ms timer that runs `stop`, and resolves once it fired. */
function timer(stop: () => unknown): Promise<void> {
  return new Promise((resolve) => {
    setTimeout(() => {
      stop();
      resolve();
    }, 10);
  });
}

describe('loops - the event loop always gets a turn', () => {
  test('loops - a callback publishing to its own subject lets a 10 ms timer fire and unsubscribe it', async () => {
    const bus = new Bus();
    let rounds = 0;
    let runaway = false;
    const sub = bus.subscribe<number>('loop', {
      callback: (env) => {
        if (++rounds > RUNAWAY) {
          runaway = true;
          return;
        }
        void bus.publish('loop', env.data + 1);
      },
    });
    const fired = timer(() => sub.unsubscribe());
    bus.tryPublish('loop', 0);
    await fired;
    expect(runaway).toBe(false);
    const atStop = rounds;
    await turn();
    await turn();
    expect(rounds).toBe(atStop);
    // What was queued or waiting for room when it stopped counts as dropped, not lost.
    expect(bus.telemetry.counters.dropped).toBeGreaterThan(0);
  });

  test('loops - an async callback awaiting a publish to its own subject lets the timer fire', async () => {
    const bus = new Bus();
    let rounds = 0;
    let runaway = false;
    const sub = bus.subscribe<number>('loop', {
      callback: async (env) => {
        if (++rounds > RUNAWAY) {
          runaway = true;
          return;
        }
        await bus.publish('loop', env.data + 1);
      },
    });
    const fired = timer(() => sub.unsubscribe());
    await bus.publish('loop', 0);
    await fired;
    expect(runaway).toBe(false);
    const atStop = rounds;
    await turn();
    expect(rounds).toBe(atStop);
  });

  test('loops - a callback that hands each message to an async function publishing it back lets the timer fire', async () => {
    // Each round is a fresh publish from a microtask to an idle consumer (no drain is running):
    // only the budget shared across microtasks stops it.
    const bus = new Bus();
    let rounds = 0;
    let runaway = false;
    let stopped = false;
    const relay = async (n: number): Promise<void> => {
      await null;
      if (!stopped) await bus.publish('loop', n + 1);
    };
    bus.subscribe<number>('loop', {
      callback: (env) => {
        if (++rounds > RUNAWAY) {
          runaway = true;
          return;
        }
        void relay(env.data);
      },
    });
    const fired = timer(() => {
      stopped = true;
    });
    bus.tryPublish('loop', 0);
    await fired;
    expect(runaway).toBe(false);
  });

  test('loops - two handler actors publishing to each other let the timer fire, and stop() ends them', async () => {
    const rt = createRuntime();
    let rounds = 0;
    let runaway = false;
    const hop = (to: string) =>
      actor<number, number>({
        name: `to-${to}`,
        subscribe: to === 'ping' ? 'pong' : 'ping',
        handle: (env, ctx) => {
          if (++rounds > RUNAWAY) {
            runaway = true;
            return;
          }
          return ctx.publish(to, env.data + 1);
        },
      });
    rt.spawn(hop('ping'));
    rt.spawn(hop('pong'));
    let stopping: Promise<unknown> | undefined;
    const fired = timer(() => {
      stopping = rt.stop({ deadlineMs: 50 });
    });
    await rt.bus.publish('ping', 0);
    await fired;
    expect(runaway).toBe(false);
    await stopping;
    const atStop = rounds;
    await turn();
    expect(rounds).toBe(atStop);
  });

  test('loops - a for await loop publishing back into its own subscription lets the timer fire', async () => {
    const bus = new Bus();
    const sub = bus.subscribe<number>('loop');
    let rounds = 0;
    const fired = timer(() => sub.unsubscribe());
    bus.tryPublish('loop', 0);
    for await (const env of sub) {
      if (++rounds > RUNAWAY) break;
      bus.tryPublish('loop', env.data + 1);
    }
    await fired;
    expect(rounds).toBeLessThanOrEqual(RUNAWAY);
  });

  test.each([
    ['with a subscriber', true],
    ['with no subscriber', false],
  ])('loops - 300k awaited publishes (%s) let a 10 ms timer fire and stop the loop', async (_, subscribed) => {
    const bus = new Bus();
    let received = 0;
    if (subscribed)
      bus.subscribe('telemetry.x', {
        callback: () => {
          received++;
        },
      });
    let stop = false;
    const fired = timer(() => {
      stop = true;
    });
    let published = 0;
    for (; published < 300_000 && !stop; published++) await bus.publish('telemetry.x', published);
    // Without turns, the loop ends by its count first and the timer fires only afterwards.
    expect(stop).toBe(true);
    expect(published).toBeLessThan(300_000);
    await fired;
    if (subscribed) expect(received).toBe(published);
  });

  test('loops - 200,000 publishers blocked on a full mailbox are let in, in order, without a quadratic drain', async () => {
    // The structural check is in mailbox.test.ts; this one runs it through the bus, with the
    // test's timeout as the hang guard (the quadratic drain took 17 s).
    const bus = new Bus();
    const got: number[] = [];
    const sub = bus.subscribe<number>('jobs', { mailbox: { capacity: 16 } });
    const n = 200_000;
    const accepted = Array.from({ length: n }, (_, i) => bus.publish('jobs', i));
    for await (const env of sub) {
      got.push(env.data);
      if (got.length === n) break;
    }
    await Promise.all(accepted);
    expect(got.every((v, i) => v === i)).toBe(true);
  }, 10_000);

  test('loops - an idle process does not keep spinning: no turn is scheduled once the work is done', async () => {
    // The burst budget's turn is scheduled by work only: after one publish, one turn, then nothing.
    const bus = new Bus();
    bus.subscribe('a', { callback: () => {} });
    await bus.publish('a', 1);
    await turn();
    expect(process.getActiveResourcesInfo().filter((r) => r === 'Immediate')).toEqual([]);
  });
});
