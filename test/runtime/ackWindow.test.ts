import { afterEach, describe, expect, test, vi } from 'vitest';
import { AckWindow } from '../../runtime/sinks/ackWindow.ts';

/** A window whose sends are recorded and answered by the test, as a broker client's callbacks would be. */
function harness(size: number, bound: number, deferSends = false) {
  const sent: number[] = [];
  const settled: [number, unknown][] = [];
  let maxInFlight = 0;
  let answered = 0;
  const window: AckWindow = new AckWindow({
    size,
    bound,
    deferSends,
    send: (i) => {
      sent.push(i);
      maxInFlight = Math.max(maxInFlight, sent.length - answered);
    },
    settled: (i, error) => settled.push([i, error]),
  });
  const answer = (i: number, error?: unknown) => {
    answered++;
    window.answer(i, error);
  };
  return { window, sent, settled, answer, maxInFlight: () => maxInFlight };
}

afterEach(() => {
  vi.useRealTimers();
});

describe('AckWindow', () => {
  test('keeps at most `bound` publishes unanswered and sends the next as answers come', async () => {
    const h = harness(10, 3);
    const done = h.window.run(60_000, () => new Error('timeout'));
    expect(h.sent).toEqual([0, 1, 2]);
    h.answer(1);
    expect(h.sent).toEqual([0, 1, 2, 3]);
    h.answer(0);
    h.answer(2);
    expect(h.sent).toEqual([0, 1, 2, 3, 4, 5]);
    for (let i = 3; i < 10; i++) {
      h.answer(i);
    }
    await done;
    expect(h.sent).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    expect(h.maxInFlight()).toBe(3);
    expect(h.settled.map(([i]) => i).sort((a, b) => a - b)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    expect(h.settled.every(([, e]) => e === undefined)).toBe(true);
  });

  test('with deferred sends, what answers free goes out together from a microtask', async () => {
    const h = harness(6, 2, true);
    const done = h.window.run(60_000, () => new Error('timeout'));
    expect(h.sent).toEqual([0, 1]);
    h.answer(0);
    h.answer(1);
    // Not sent in the answering calls: the freed room is filled once they are done.
    expect(h.sent).toEqual([0, 1]);
    await Promise.resolve();
    expect(h.sent).toEqual([0, 1, 2, 3]);
    h.answer(2);
    h.answer(3);
    await Promise.resolve();
    h.answer(4);
    h.answer(5);
    await done;
    expect(h.maxInFlight()).toBe(2);
  });

  test('a refusal and a publish that fails at once settle with their errors, and the rest still go', async () => {
    const sent: number[] = [];
    const settled = new Map<number, unknown>();
    const window: AckWindow = new AckWindow({
      size: 4,
      bound: 1,
      // Publish 1 cannot be sent (its record cannot be encoded): it is answered in the send.
      send: (i) => {
        sent.push(i);
        if (i === 1) window.answer(i, new Error('cannot encode'));
      },
      settled: (i, error) => settled.set(i, error),
    });
    const done = window.run(60_000, () => new Error('timeout'));
    window.answer(0, null);
    window.answer(2, new Error('refused'));
    window.answer(3, undefined);
    await done;
    expect(sent).toEqual([0, 1, 2, 3]);
    expect(settled.get(0)).toBeUndefined();
    expect((settled.get(1) as Error).message).toBe('cannot encode');
    expect((settled.get(2) as Error).message).toBe('refused');
    expect(settled.get(3)).toBeUndefined();
  });

  test('failPending fails the unanswered and the unsent, sends nothing more, and ignores late answers', async () => {
    const h = harness(5, 2);
    const done = h.window.run(60_000, () => new Error('timeout'));
    h.answer(0);
    expect(h.sent).toEqual([0, 1, 2]);
    h.window.failPending(new Error('channel closed'));
    await done;
    expect(h.sent).toEqual([0, 1, 2]);
    expect(h.settled).toHaveLength(5);
    const failed = h.settled.filter(([, e]) => e instanceof Error).map(([i]) => i);
    expect(failed.sort()).toEqual([1, 2, 3, 4]);
    // A confirm arriving after the channel closed changes nothing.
    h.answer(1);
    expect(h.settled).toHaveLength(5);
  });

  test('a timeout past what Node timers take (2^31-1 ms) waits that long, not 1 ms', async () => {
    vi.useFakeTimers();
    const h = harness(2, 2);
    const long = 3 * 2 ** 31;
    const done = h.window.run(long, () => new Error('no confirm'));
    await vi.advanceTimersByTimeAsync(10);
    expect(h.settled).toEqual([]);
    h.answer(0);
    await vi.advanceTimersByTimeAsync(long);
    await done;
    expect(h.settled.map(([i, e]) => [i, (e as Error | undefined)?.message])).toEqual([
      [0, undefined],
      [1, 'no confirm'],
    ]);
  });

  test('what is not answered when the time is up fails with the timeout error', async () => {
    vi.useFakeTimers();
    const h = harness(3, 3);
    const done = h.window.run(1_000, () => new Error('no confirm within 1000 ms'));
    h.answer(0);
    await vi.advanceTimersByTimeAsync(1_000);
    await done;
    expect(h.settled[0]).toEqual([0, undefined]);
    expect(h.settled.slice(1).map(([i, e]) => [i, (e as Error).message])).toEqual([
      [1, 'no confirm within 1000 ms'],
      [2, 'no confirm within 1000 ms'],
    ]);
  });

  test('an empty batch is done at once', async () => {
    const h = harness(0, 4);
    await h.window.run(60_000, () => new Error('timeout'));
    expect(h.sent).toEqual([]);
  });
});
