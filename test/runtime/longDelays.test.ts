import { actor, Bus, createRuntime, SystemClock, TimeoutError, VirtualClock } from 'sluice';
import { afterEach, beforeEach, describe, expect, test, vi } from 'vitest';
import { flush, quietLogger } from './helpers.ts';

// Node runs a timer of more than 2^31-1 ms after 1 ms. Vitest's fake timers do the same, so these
// tests fail on a clock that hands such a delay to setTimeout as it is.
const LONG = 2 ** 31 + 5_000;

describe('long delays - the clocks', () => {
  beforeEach(() => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'Date'] });
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  test('long delays - SystemClock runs a timer past 2^31-1 ms when it is due, not at once', () => {
    const clock = new SystemClock();
    let fired = 0;
    clock.setTimeout(() => fired++, LONG);
    vi.advanceTimersByTime(1_000);
    expect(fired).toBe(0);
    vi.advanceTimersByTime(LONG - 1_001);
    expect(fired).toBe(0);
    vi.advanceTimersByTime(1);
    expect(fired).toBe(1);
    vi.advanceTimersByTime(LONG * 2);
    expect(fired).toBe(1);
  });

  test('long delays - a long SystemClock timer cancelled after its first step never runs', () => {
    const clock = new SystemClock();
    let fired = 0;
    const timer = clock.setTimeout(() => fired++, LONG);
    vi.advanceTimersByTime(2 ** 31);
    timer.cancel();
    vi.advanceTimersByTime(LONG);
    expect(fired).toBe(0);
    expect(vi.getTimerCount()).toBe(0);
  });

  test('long delays - Infinity means never on both clocks', async () => {
    const system = new SystemClock();
    const virtual = new VirtualClock();
    let fired = 0;
    system.setTimeout(() => fired++, Number.POSITIVE_INFINITY);
    virtual.setTimeout(() => fired++, Number.POSITIVE_INFINITY);
    vi.advanceTimersByTime(LONG * 4);
    await virtual.advance(LONG * 4);
    await virtual.runAll();
    expect(fired).toBe(0);
    expect(virtual.pending).toBe(0);
  });

  test('long delays - a request timeout past 2^31-1 ms does not time out at once', async () => {
    const bus = new Bus();
    bus.subscribe('slow.service', { callback: () => {} });
    let outcome: unknown;
    bus.request('slow.service', 1, { timeoutMs: LONG }).then(
      () => {
        outcome = 'replied';
      },
      (error: unknown) => {
        outcome = error;
      },
    );
    vi.advanceTimersByTime(1_000);
    await flush();
    expect(outcome).toBeUndefined();
    vi.advanceTimersByTime(LONG);
    await flush();
    expect(outcome).toBeInstanceOf(TimeoutError);
  });

  test('long delays - retry and restart backoffs past 2^31-1 ms wait, on the system clock', async () => {
    const rt = createRuntime({ logger: quietLogger() });
    let calls = 0;
    const ref = rt.spawn(
      actor<number, never>({
        name: 'patient',
        subscribe: 'in',
        retry: { maxAttempts: 2, backoff: { initialMs: LONG, maxMs: LONG, jitter: 0 } },
        handle: () => {
          calls++;
          throw new Error('not yet');
        },
      }),
    );
    await rt.bus.publish('in', 1);
    await flush();
    expect(calls).toBe(1);
    vi.advanceTimersByTime(1_000);
    await flush();
    // Before the fix the retry ran after 1 ms.
    expect(calls).toBe(1);
    expect(ref.counters.retried).toBe(1);
    vi.advanceTimersByTime(LONG);
    await flush();
    expect(calls).toBe(2);
    expect(ref.counters.deadLettered).toBe(1);
    await rt.stop({ deadlineMs: 0 });
  });

  test('long delays - a shutdown deadline past 2^31-1 ms does not pass at once', async () => {
    const rt = createRuntime({ logger: quietLogger() });
    rt.spawn(actor<number, never>({ name: 'stuck', subscribe: 'in', handle: () => new Promise<never>(() => {}) }));
    await rt.bus.publish('in', 1);
    let report: unknown;
    void rt.stop({ deadlineMs: LONG }).then((r) => {
      report = r;
    });
    vi.advanceTimersByTime(1_000);
    await flush();
    expect(report).toBeUndefined();
    vi.advanceTimersByTime(LONG);
    await flush();
    expect(report).toMatchObject({ drained: false, deadlineMs: LONG });
  });
});
