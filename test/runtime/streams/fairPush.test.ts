import { actor, durable, MemoryStore } from 'sluice';
import { describe, expect, test } from 'vitest';
import { PUSH_BATCH } from '../../../runtime/streams/pushTurns.ts';
import { testRuntime } from '../helpers.ts';
import { eventually } from './wait.ts';

/** Lengths of the runs of equal neighbours: `['A', 'A', 'B']` gives `[2, 1]`. */
function runs(order: readonly string[]): number[] {
  const out: number[] = [];
  for (let i = 0; i < order.length; i++) {
    if (i > 0 && order[i] === order[i - 1]) out[out.length - 1] = (out[out.length - 1] as number) + 1;
    else out.push(1);
  }
  return out;
}

describe('push loops share the runtime', () => {
  test('fairness - two consumers with deep backlogs on one runtime take turns: neither pushes more than PUSH_BATCH messages while the other waits', async () => {
    const { rt } = testRuntime({ store: new MemoryStore() });
    rt.stream({ name: 'A', subjects: ['a.>'] });
    rt.stream({ name: 'B', subjects: ['b.>'] });
    const total = 10 * PUSH_BATCH;
    const sends: Promise<void>[] = [];
    for (let i = 0; i < total; i++) sends.push(rt.bus.publish('a.x', i), rt.bus.publish('b.x', i));
    await Promise.all(sends);
    // The pushes in the order the consumers make them: one subscriber of both delivery subjects,
    // whose mailbox keeps their order (it is large enough never to hold a push loop back).
    const pushed: string[] = [];
    rt.bus.subscribe('$SLUICE.deliver.*.r', {
      mailbox: { capacity: 4 * total },
      callback: (env) => void pushed.push(env.headers['sluice-stream'] as string),
    });
    const handled = { A: 0, B: 0 };
    for (const name of ['A', 'B'] as const) {
      rt.spawn(
        actor<number, never>({
          name: `r${name}`,
          // Nothing but the turns limits either loop: every message may be pending at once.
          subscribe: durable<number>(name, { consumer: 'r', maxAckPending: 2 * total }),
          mailbox: { capacity: 4 * total },
          handle: () => {
            handled[name]++;
          },
        }),
      );
    }
    await eventually(() => expect(handled).toEqual({ A: total, B: total }), 20_000);
    expect(pushed).toHaveLength(2 * total);
    // Before fair turns, the first consumer pushed its whole backlog before the other pushed one.
    const lengths = runs(pushed);
    expect(Math.max(...lengths)).toBeLessThanOrEqual(PUSH_BATCH);
    expect(lengths.length).toBeGreaterThanOrEqual((2 * total) / PUSH_BATCH);
  });
});
