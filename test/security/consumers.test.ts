/**
 * A subscription's consumer that throws must not kill the process. RxJS reports an observer's
 * throw, and an error that reaches an observer without an error callback, by rethrowing it from
 * a timer: an uncaught exception. These tests listen for one and fail if it comes.
 */
import { map } from 'rxjs';
import { Bus, type Envelope } from 'sluice';
import { afterEach, beforeEach, describe, expect, test } from 'vitest';

const uncaught: unknown[] = [];
const onUncaught = (error: unknown) => void uncaught.push(error);

beforeEach(() => {
  uncaught.length = 0;
  process.on('uncaughtException', onUncaught);
});
afterEach(() => {
  process.off('uncaughtException', onUncaught);
});

/** Two timer turns: RxJS's report of an unhandled error (a setTimeout of 0) has run by then. */
async function afterRxReports(): Promise<void> {
  for (let i = 0; i < 2; i++) await new Promise<void>((resolve) => setTimeout(resolve, 0));
}

function recordingBus() {
  const bus = new Bus();
  const reported: [string, number][] = [];
  const sub = bus.subscribe<number>('a', {
    onError: (error, env: Envelope<number>) => void reported.push([(error as Error).message, env.data]),
  });
  return { bus, sub, reported };
}

describe('consumers - an observable consumer that throws', () => {
  test('consumers - an observer that throws is contained, counted and reported; delivery goes on', async () => {
    const { bus, sub, reported } = recordingBus();
    const seen: number[] = [];
    sub.observable.subscribe((env) => {
      seen.push(env.data);
      if (env.data === 1) throw new Error('observer failed');
    });
    for (let i = 0; i < 3; i++) bus.tryPublish('a', i);
    await afterRxReports();
    expect(uncaught).toEqual([]);
    expect(seen).toEqual([0, 1, 2]);
    expect(reported).toEqual([['observer failed', 1]]);
    expect(sub.errors).toBe(1);
    expect(sub.isOpen).toBe(true);
  });

  test('consumers - the observer at the end of a pipe that throws is contained the same way', async () => {
    const { bus, sub, reported } = recordingBus();
    const seen: number[] = [];
    sub.observable.pipe(map((env) => env.data * 10)).subscribe((n) => {
      seen.push(n);
      if (n === 10) throw new Error('observer failed');
    });
    for (let i = 0; i < 3; i++) bus.tryPublish('a', i);
    await afterRxReports();
    expect(uncaught).toEqual([]);
    expect(seen).toEqual([0, 10, 20]);
    expect(reported).toEqual([['observer failed', 1]]);
    expect(sub.errors).toBe(1);
  });

  test('consumers - an operator that throws ends the pipe and the subscription, reported, with no crash', async () => {
    const { bus, sub, reported } = recordingBus();
    const seen: number[] = [];
    sub.observable
      .pipe(
        map((env) => {
          if (env.data === 1) throw new Error('operator failed');
          return env.data;
        }),
      )
      .subscribe((n) => void seen.push(n));
    for (let i = 0; i < 3; i++) bus.tryPublish('a', i);
    await afterRxReports();
    expect(uncaught).toEqual([]);
    // An error notification ends an RxJS pipe: the subscription ends with it.
    expect(seen).toEqual([0]);
    expect(reported).toEqual([['operator failed', 1]]);
    expect(sub.errors).toBe(1);
    expect(sub.isOpen).toBe(false);
  });

  test('consumers - an error callback that throws is contained too', async () => {
    const { bus, sub, reported } = recordingBus();
    sub.observable
      .pipe(
        map(() => {
          throw new Error('operator failed');
        }),
      )
      .subscribe({
        error: () => {
          throw new Error('error callback failed');
        },
      });
    bus.tryPublish('a', 0);
    await afterRxReports();
    expect(uncaught).toEqual([]);
    expect(reported).toEqual([['error callback failed', 0]]);
  });
});
