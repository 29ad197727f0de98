/**
 * The scaffolding connector sources share (SourceLifecycle): a sleep under way when the source
 * closes ends then, so the loops awaiting it (reconnects, waiting for a subscriber) end too.
 */
import { describe, expect, test } from 'vitest';
import { SourceLifecycle } from '../../runtime/sources/lifecycle.ts';
import { testRuntime } from './helpers.ts';

const pending = Symbol('pending');

/** What `promise` settled to by the end of this turn's microtasks and one macrotask, else `pending`. */
async function settledSoon(promise: Promise<unknown>): Promise<unknown> {
  return Promise.race([promise.then(() => 'resolved'), new Promise((resolve) => setTimeout(resolve, 20, pending))]);
}

function lifecycle(): SourceLifecycle {
  const { rt, log } = testRuntime();
  const life = new SourceLifecycle({ name: 'src', lag: () => ({ messages: 0, timeMs: 0, ackPending: 0 }) }, () => ({}));
  life.begin(rt, { logger: log });
  return life;
}

describe('SourceLifecycle', () => {
  test('a sleep under way when the source closes resolves then, and a loop awaiting it sees closed and ends', async () => {
    const life = lifecycle();
    let rounds = 0;
    // A reconnect loop, as the sources write it: sleep, then check closed.
    const loop = (async () => {
      while (!life.closed) {
        await life.sleep(60_000);
        if (life.closed) return 'ended';
        rounds++;
      }
      return 'ended';
    })();
    expect(await settledSoon(loop)).toBe(pending);
    life.end();
    expect(await settledSoon(loop)).toBe('resolved');
    expect(await loop).toBe('ended');
    expect(rounds).toBe(0);
  });

  test('a sleep begun after the close resolves at once', async () => {
    const life = lifecycle();
    life.end();
    expect(await settledSoon(life.sleep(60_000))).toBe('resolved');
  });
});
