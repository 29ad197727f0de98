import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { filter, map, take, toArray } from 'rxjs';
import { Bus, type Envelope, type Lineage, OptionsError, type Subscription } from 'sluice';
import { describe, expect, test } from 'vitest';
import { thrown } from './helpers.ts';

const flush = () => new Promise<void>((resolve) => setImmediate(resolve));

/** A promise with its resolve exposed, to hold a callback open until the test lets it go. */
function deferred(): { promise: Promise<void>; resolve: () => void; reject: (error: unknown) => void } {
  let resolve!: () => void;
  let reject!: (error: unknown) => void;
  const promise = new Promise<void>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

/** Records the errors each reference was given back with. */
class ErrorLineage implements Lineage {
  readonly ids = ['in'];
  readonly errors: unknown[] = [];
  retain(): void {}
  absorb(): void {}
  release(error?: unknown): void {
    this.errors.push(error);
  }
  releaseAbsorbed(error?: unknown): void {
    this.errors.push(error);
  }
}

describe('subscription - callback', () => {
  test('subscription - callback handles one message at a time by default, in order', async () => {
    const bus = new Bus();
    const gates = [deferred(), deferred(), deferred()];
    const started: number[] = [];
    bus.subscribe<number>('a', {
      callback: (env) => {
        started.push(env.data);
        return gates[env.data]?.promise;
      },
    });
    for (let i = 0; i < 3; i++) bus.tryPublish('a', i);
    await flush();
    expect(started).toEqual([0]);
    gates[0]?.resolve();
    await flush();
    expect(started).toEqual([0, 1]);
    gates[1]?.resolve();
    await flush();
    expect(started).toEqual([0, 1, 2]);
  });

  test('subscription - callback concurrency N runs up to N at once and starts the next as one ends', async () => {
    const bus = new Bus();
    const gates = Array.from({ length: 6 }, () => deferred());
    let active = 0;
    let maxActive = 0;
    const started: number[] = [];
    bus.subscribe<number>('a', {
      concurrency: 3,
      callback: async (env) => {
        active++;
        maxActive = Math.max(maxActive, active);
        started.push(env.data);
        await gates[env.data]?.promise;
        active--;
      },
    });
    for (let i = 0; i < 6; i++) bus.tryPublish('a', i);
    await flush();
    expect(started).toEqual([0, 1, 2]);
    gates[1]?.resolve();
    await flush();
    expect(started).toEqual([0, 1, 2, 3]);
    for (const g of gates) g.resolve();
    await flush();
    expect(started).toEqual([0, 1, 2, 3, 4, 5]);
    expect(maxActive).toBe(3);
  });

  test('subscription - an invalid concurrency is refused naming the option', () => {
    const bus = new Bus();
    const error = thrown(() => bus.subscribe('a', { concurrency: 0, callback: () => undefined }));
    expect(error).toBeInstanceOf(OptionsError);
    expect(error).toMatchObject({ option: 'subscription.concurrency' });
    expect(bus.subscriptions).toBe(0);
  });

  test('subscription - a throwing callback reports to onError and the subscription goes on', async () => {
    const bus = new Bus();
    const errors: [unknown, number][] = [];
    const got: number[] = [];
    bus.subscribe<number>('a', {
      callback: (env) => {
        if (env.data === 1) throw new Error('sync boom');
        got.push(env.data);
      },
      onError: (error, env) => void errors.push([error, env.data]),
    });
    for (let i = 0; i < 3; i++) await bus.publish('a', i);
    await flush();
    expect(got).toEqual([0, 2]);
    expect(errors).toHaveLength(1);
    const [error, data] = errors[0] as [unknown, number];
    expect((error as Error).message).toBe('sync boom');
    expect(data).toBe(1);
  });

  test('subscription - a rejected callback promise reports to onError and gives the lineage back with the error', async () => {
    const bus = new Bus();
    const errors: unknown[] = [];
    const got: number[] = [];
    bus.subscribe<number>('a', {
      callback: async (env) => {
        if (env.data === 0) throw new Error('async boom');
        got.push(env.data);
      },
      onError: (error) => void errors.push(error),
    });
    const lineage = new ErrorLineage();
    await bus.publish('a', 0, { lineage });
    await bus.publish('a', 1);
    await flush();
    expect((errors[0] as Error).message).toBe('async boom');
    expect(got).toEqual([1]);
    expect(lineage.errors).toEqual([errors[0]]);
  });

  test('subscription - an onError that throws does not stop delivery', async () => {
    const bus = new Bus();
    const got: number[] = [];
    bus.subscribe<number>('a', {
      callback: (env) => {
        got.push(env.data);
        throw new Error('handler');
      },
      onError: () => {
        throw new Error('error handler');
      },
    });
    for (let i = 0; i < 3; i++) await bus.publish('a', i);
    await flush();
    expect(got).toEqual([0, 1, 2]);
  });

  test('subscription - delivered counts messages handed to the consumer, here and in telemetry', async () => {
    const bus = new Bus();
    const sub = bus.subscribe('a', { callback: () => undefined });
    for (let i = 0; i < 5; i++) await bus.publish('a', i);
    await flush();
    expect(sub.delivered).toBe(5);
    expect(bus.telemetry.counters.delivered).toBe(5);
  });
});

describe('subscription - observable', () => {
  test('subscription - observable delivers into an RxJS pipeline', async () => {
    const bus = new Bus();
    const sub = bus.subscribe<number>('nums');
    const result = sub.observable
      .pipe(
        map((env) => env.data * 10),
        filter((n) => n !== 20),
        take(3),
        toArray(),
      )
      .toPromise();
    for (let i = 0; i < 6; i++) await bus.publish('nums', i);
    expect(await result).toEqual([0, 10, 30]);
    // take(3) unsubscribed from the observable, which ends the subscription.
    expect(sub.isOpen).toBe(false);
    expect(bus.subscriptions).toBe(0);
  });

  test('subscription - observable completes once a drain has handed over everything', async () => {
    const bus = new Bus();
    const sub = bus.subscribe<number>('nums');
    for (let i = 0; i < 3; i++) await bus.publish('nums', i);
    const all = sub.observable.pipe(toArray()).toPromise();
    await sub.drain();
    expect((await all)?.map((e) => e.data)).toEqual([0, 1, 2]);
  });

  test('subscription - a second subscriber to observable gets an error naming the subject', async () => {
    const bus = new Bus();
    const sub = bus.subscribe('orders.*');
    sub.observable.subscribe(() => undefined);
    const error = await new Promise<unknown>((resolve) => sub.observable.subscribe({ error: resolve }));
    expect(error).toBeInstanceOf(OptionsError);
    expect((error as Error).message).toContain("'orders.*' is already consumed by its observable");
  });
});

describe('subscription - async iterator', () => {
  test('subscription - for await yields messages in order and ends after drain', async () => {
    const bus = new Bus();
    const sub = bus.subscribe<string>('words');
    for (const w of ['a', 'b', 'c']) await bus.publish('words', w);
    const got: string[] = [];
    const loop = (async () => {
      for await (const env of sub) got.push(env.data);
    })();
    await flush();
    await bus.publish('words', 'd');
    await flush();
    expect(got).toEqual(['a', 'b', 'c', 'd']);
    await sub.drain();
    await loop;
    expect(sub.isOpen).toBe(false);
  });

  test('subscription - overlapping next() calls each get a message, in call order', async () => {
    const bus = new Bus();
    const sub = bus.subscribe<number>('a');
    const it = sub[Symbol.asyncIterator]();
    const got: (number | undefined)[] = [];
    const first = it.next().then((r) => void got.push(r.value?.data));
    const second = it.next().then((r) => void got.push(r.value?.data));
    bus.tryPublish('a', 1);
    bus.tryPublish('a', 2);
    await flush();
    expect(got).toEqual([1, 2]);
    await Promise.all([first, second]);
    // Each further next() settles one message handed out: both are still held until then.
    const third = it.next();
    const fourth = it.next();
    sub.unsubscribe();
    expect(await third).toEqual({ value: undefined, done: true });
    expect(await fourth).toEqual({ value: undefined, done: true });
    await sub.closed;
  });

  test('subscription - overlapping next() calls all end when the subscription does', async () => {
    const bus = new Bus();
    const sub = bus.subscribe<number>('a');
    const it = sub[Symbol.asyncIterator]();
    const pending = [it.next(), it.next(), it.next()];
    await flush();
    sub.unsubscribe();
    expect(await Promise.all(pending)).toEqual([
      { value: undefined, done: true },
      { value: undefined, done: true },
      { value: undefined, done: true },
    ]);
  });

  test('subscription - breaking out of for await ends the subscription', async () => {
    const bus = new Bus();
    const sub = bus.subscribe<number>('a');
    for (let i = 0; i < 5; i++) await bus.publish('a', i);
    for await (const env of sub) if (env.data === 1) break;
    expect(sub.isOpen).toBe(false);
    expect(bus.hasSubscribers('a')).toBe(false);
    expect(bus.telemetry.counters.dropped).toBe(3); // 2, 3 and 4 were still queued
  });

  test('subscription - unsubscribe ends a for await that waits for messages', async () => {
    const bus = new Bus();
    const sub = bus.subscribe('a');
    let ended = false;
    const loop = (async () => {
      for await (const _ of sub) {
        // nothing arrives
      }
      ended = true;
    })();
    await flush();
    expect(ended).toBe(false);
    sub.unsubscribe();
    await loop;
    expect(ended).toBe(true);
  });
});

describe('subscription - one consumer', () => {
  const modes = {
    callback: (sub: Subscription) => sub, // set at subscribe time
    observable: (sub: Subscription) => sub.observable.subscribe(() => undefined),
    iterator: (sub: Subscription) => sub[Symbol.asyncIterator](),
  };

  test.each([
    ['callback', 'observable'],
    ['callback', 'iterator'],
    ['observable', 'iterator'],
    ['iterator', 'iterator'],
  ] as const)('subscription - consumed by its %s, a second consumer (%s) is refused clearly', (first, second) => {
    const bus = new Bus();
    const sub = bus.subscribe('orders.created', first === 'callback' ? { callback: () => undefined } : {});
    modes[first](sub);
    let error: unknown;
    if (second === 'iterator') error = thrown(() => sub[Symbol.asyncIterator]());
    else
      sub.observable.subscribe({
        error: (e: unknown) => {
          error = e; // RxJS turns the throw at subscribe time into an error notification, synchronously
        },
      });
    expect(error).toBeInstanceOf(OptionsError);
    expect((error as Error).message).toContain(`'orders.created' is already consumed by its ${first}`);
  });
});

describe('subscription - ending', () => {
  test('subscription - unsubscribe drops and counts what was queued, and nothing more arrives', async () => {
    const bus = new Bus();
    const sub = bus.subscribe('a');
    for (let i = 0; i < 3; i++) await bus.publish('a', i);
    expect(sub.pending).toBe(3);
    sub.unsubscribe();
    expect(sub.pending).toBe(0);
    expect(sub.isOpen).toBe(false);
    expect(bus.telemetry.counters.dropped).toBe(3);
    await bus.publish('a', 99);
    expect(sub.pending).toBe(0);
    await expect(sub.closed).resolves.toBeUndefined();
    sub.unsubscribe(); // twice is harmless
    expect(bus.telemetry.counters.dropped).toBe(3);
  });

  test('subscription - unsubscribe lets a publisher waiting for room go, counting its message as dropped', async () => {
    const bus = new Bus();
    const sub = bus.subscribe('a', { mailbox: { capacity: 1 } });
    await bus.publish('a', 1);
    const lineage = new ErrorLineage();
    const waiting = bus.publish('a', 2, { lineage });
    sub.unsubscribe();
    await expect(waiting).resolves.toBeUndefined();
    expect(bus.telemetry.counters.dropped).toBe(2);
    expect(lineage.errors).toEqual([undefined]); // its reference was given back
  });

  test('subscription - drain delivers what was queued, then closes and accepts nothing new', async () => {
    const bus = new Bus();
    const got: number[] = [];
    const gate = deferred();
    const sub = bus.subscribe<number>('a', {
      callback: async (env) => {
        got.push(env.data);
        if (env.data === 0) await gate.promise;
      },
    });
    for (let i = 0; i < 3; i++) await bus.publish('a', i);
    await flush();
    expect(got).toEqual([0]);
    let drained = false;
    const draining = sub.drain().then(() => {
      drained = true;
    });
    expect(sub.isOpen).toBe(false);
    await bus.publish('a', 99); // after drain began: not for this subscription
    await flush();
    expect(drained).toBe(false); // message 0 is still being handled
    gate.resolve();
    await draining;
    expect(got).toEqual([0, 1, 2]);
    expect(bus.telemetry.counters.dropped).toBe(0);
  });

  test('subscription - close resolves once the handler in progress finished', async () => {
    const bus = new Bus();
    const gate = deferred();
    let finished = false;
    const sub = bus.subscribe('a', {
      callback: async () => {
        await gate.promise;
        finished = true;
      },
    });
    await bus.publish('a', 1);
    await bus.publish('a', 2);
    await flush();
    let closed = false;
    const closing = sub.close().then(() => {
      closed = true;
    });
    await flush();
    expect(closed).toBe(false);
    gate.resolve();
    await closing;
    expect(finished).toBe(true);
    expect(bus.telemetry.counters.dropped).toBe(1); // message 2 never started
  });

  test('subscription - drain with nothing queued and no consumer resolves at once', async () => {
    const bus = new Bus();
    const sub = bus.subscribe('a');
    await sub.drain();
    expect(sub.isOpen).toBe(false);
  });
});

describe('subscription - memory', () => {
  test('subscription - an idle subscription holds at most 1 KB, with a callback or without', () => {
    // A full collection before and after each count, so the figure is what the subscriptions hold.
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as () => void;
    const n = 20_000;
    const callback = () => {};
    for (const kind of ['callback', 'plain'] as const) {
      const bus = new Bus();
      const subs: Subscription[] = [];
      gc();
      const before = process.memoryUsage().heapUsed;
      for (let i = 0; i < n; i++)
        subs.push(kind === 'callback' ? bus.subscribe('idle.one', { callback }) : bus.subscribe('idle.one'));
      gc();
      const perSubscription = (process.memoryUsage().heapUsed - before) / n;
      // About 900 bytes with a callback and 550 without (3 KB before the closed promise, drain loop,
      // waiter lists and mailbox ring were made on first use), the bus's share of the route included.
      expect(perSubscription, kind).toBeLessThan(1024);
      expect(bus.subscriptions).toBe(n);
      for (const sub of subs) sub.unsubscribe();
      expect(bus.subscriptions).toBe(0);
    }
  });

  test('subscription - what an idle subscription makes on first use works when first used late', async () => {
    const bus = new Bus();
    const got: number[] = [];
    const sub = bus.subscribe<number>('late.use', { callback: (env) => void got.push(env.data) });
    // Closed before anyone asked: `closed` is already settled.
    const other = bus.subscribe('late.other');
    other.unsubscribe();
    await other.closed;
    await other.close();
    // The first message makes the drain loop; a publish from inside the callback queues and is taken next.
    await bus.publish('late.use', 1);
    expect(got).toEqual([1]);
    const closing = sub.closed;
    await sub.drain();
    await closing;
    expect(sub.isOpen).toBe(false);
  });
});

describe('subscription - types', () => {
  test('subscription - a typed subscription is usable where a Subscription<unknown> is expected', () => {
    const bus = new Bus();
    const typed: Subscription<{ n: number }> = bus.subscribe<{ n: number }>('a', {
      callback: (env: Envelope<{ n: number }>) => void env.data.n,
    });
    const all: readonly Subscription<unknown>[] = [typed];
    for (const s of all) s.unsubscribe();
    expect(typed.isOpen).toBe(false);
  });
});
