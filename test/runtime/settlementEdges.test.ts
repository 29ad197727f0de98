import { map } from 'rxjs';
import { actor, type Envelope } from 'sluice';
import { agg, eventTime, tumbling, type WindowResult, watermarks } from 'sluice/operators';
import { describe, expect, test } from 'vitest';
import { collect, flush, testRuntime } from './helpers.ts';

describe('settlement - edges', () => {
  test('a culprit the failed pipeline had absorbed into a window is retried, not left unsettled', async () => {
    const { rt, clock } = testRuntime();
    const out = collect<WindowResult<number>>(rt.bus, 'out');
    let thrown = false;
    const ref = rt.spawn(
      actor<{ ts: number }, WindowResult<number>>({
        name: 'w',
        subscribe: 'in',
        output: 'out',
        retry: { maxAttempts: 3, backoff: { initialMs: 10, jitter: 0 } },
        pipeline: (in$, ctx) =>
          in$.pipe(
            eventTime((d: { ts: number }) => d.ts),
            watermarks({ clock: ctx.clock }),
            tumbling({ name: 'w', sizeMs: 10, aggregate: agg.count() }),
            map((r: Envelope<WindowResult<number>>) => {
              if (!thrown) {
                thrown = true;
                throw new Error('sink hiccup');
              }
              return r;
            }),
          ),
      }),
    );
    await rt.bus.publish('in', { ts: 1 });
    // Fires [0, 10) while absorbing itself into [10, 20): the map throws with this input as culprit.
    await rt.bus.publish('in', { ts: 15 });
    await flush();
    await clock.advance(10);
    await flush();
    expect(ref.counters.retried).toBe(1);
    await rt.bus.publish('in', { ts: 25 });
    await flush();
    expect(out.map((o) => [o.data.start, o.data.value])).toEqual([
      [0, 1],
      [10, 1],
    ]);
    const report = await rt.stop();
    expect(report.drained).toBe(true);
    expect(ref.absorbed).toBe(0);
  });

  test('a dead letter refused by its subject fails the input upstream instead of acknowledging it', async () => {
    const { rt } = testRuntime();
    const first = rt.spawn(
      actor<number, number>({
        name: 'a',
        subscribe: 'in',
        output: 'mid',
        handle: (env) => env.data,
        retry: { maxAttempts: 1 },
      }),
    );
    rt.spawn(
      actor<number, number>({
        name: 'b',
        subscribe: 'mid',
        retry: { maxAttempts: 1 },
        handle: () => {
          throw new Error('always');
        },
      }),
    );
    // A dead-letter consumer stuck on its first message, with room for one more, refusing beyond.
    rt.bus.subscribe('$DLQ.b', {
      mailbox: { capacity: 1, overflow: 'fail' },
      callback: () => new Promise<void>(() => {}),
    });
    for (const n of [1, 2, 3]) await rt.bus.publish('in', n);
    await flush();
    // Dead letters 1 and 2 are held by the consumer; the third was refused, so its input failed at
    // 'a', which has no retries left and dead-letters it itself. None of them counts as acknowledged.
    expect(first.counters.deadLettered).toBe(1);
    expect(first.counters.acked).toBe(0);
  });

  test('stopping an actor while its async handler runs dead-letters the input and publishes no result for it', async () => {
    const { rt, clock } = testRuntime();
    const out = collect<number>(rt.bus, 'out');
    const dead = collect(rt.bus, '$DLQ.slow');
    const ref = rt.spawn(
      actor<number, number>({
        name: 'slow',
        subscribe: 'in',
        output: 'out',
        handle: async (env, ctx) => {
          await ctx.clock.sleep(100);
          return env.data * 10;
        },
      }),
    );
    await rt.bus.publish('in', 1);
    await clock.advance(10);
    await ref.stop();
    await clock.advance(200);
    await flush();
    expect(dead).toHaveLength(1);
    expect(out).toHaveLength(0);
  });
});
