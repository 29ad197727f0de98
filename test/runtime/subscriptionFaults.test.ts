/**
 * Subscriptions whose mailbox refuses a message, or whose own callbacks throw: no message may be
 * lost uncounted, no publisher left hanging, and `max` counts only what the subscription took.
 */
import { Bus, MailboxFullError, VirtualClock } from 'sluice';
import { describe, expect, test } from 'vitest';

const flush = () => new Promise<void>((resolve) => setImmediate(resolve));

describe('subscription - faults', () => {
  test('a message a full fail mailbox refused does not count against max: the next one is taken, then it closes', async () => {
    const bus = new Bus({ clock: new VirtualClock() });
    const sub = bus.subscribe<number>('jobs', { max: 2, mailbox: { capacity: 1, overflow: 'fail' } });
    await bus.publish('jobs', 0);
    await expect(bus.publish('jobs', 1)).rejects.toBeInstanceOf(MailboxFullError);
    const it = sub[Symbol.asyncIterator]();
    expect((await it.next()).value?.data).toBe(0);
    await bus.publish('jobs', 2);
    expect((await it.next()).value?.data).toBe(2);
    expect((await it.next()).done).toBe(true);
    await sub.closed;
    expect(sub.delivered).toBe(2);
    expect(bus.subscriptions).toBe(0);
  });

  test('an onDrop that throws on unsubscribe still lets every waiting publisher go and releases every message', async () => {
    const bus = new Bus({ clock: new VirtualClock() });
    const dropped: number[] = [];
    const errors: unknown[] = [];
    const sub = bus.subscribe<number>('a', {
      mailbox: { capacity: 1 },
      onDrop: (env) => {
        dropped.push(env.data);
        throw new Error('onDrop failed');
      },
      onError: (error) => void errors.push(error),
    });
    await bus.publish('a', 0);
    let settled = 0;
    const waiting = [1, 2].map((i) => bus.publish('a', i).then(() => void settled++));
    expect(sub.pending).toBe(1);
    expect(() => sub.unsubscribe()).not.toThrow();
    await Promise.all(waiting);
    await flush();
    expect(settled).toBe(2);
    expect(dropped.sort()).toEqual([0, 1, 2]);
    expect(bus.telemetry.counters.dropped).toBe(3);
    expect(errors).toHaveLength(3);
    expect(sub.isOpen).toBe(false);
    await sub.closed;
  });

  test('an onDrop that throws under drop-newest does not fail the publish to the other subscribers', async () => {
    const bus = new Bus({ clock: new VirtualClock() });
    const got: number[] = [];
    bus.subscribe<number>('a', {
      mailbox: { capacity: 1, overflow: 'drop-newest' },
      onDrop: () => {
        throw new Error('onDrop failed');
      },
      onError: () => {},
    });
    bus.subscribe<number>('a', { callback: (env) => void got.push(env.data) });
    await bus.publish('a', 0);
    await expect(bus.publish('a', 1)).resolves.toBeUndefined();
    expect(got).toEqual([0, 1]);
    expect(bus.telemetry.counters.dropped).toBe(1);
  });
});

describe('bus - requestMany faults', () => {
  test("a sentinel that throws rejects the request with its error; the responder's reply is still accepted", async () => {
    const clock = new VirtualClock();
    const bus = new Bus({ clock });
    const failure = new Error('sentinel failed');
    const responded: unknown[] = [];
    bus.subscribe('pages', {
      callback: (env) => {
        bus.respond(env, 'page').then(
          () => void responded.push('ok'),
          (error: unknown) => void responded.push(error),
        );
      },
    });
    const pending = bus.requestMany('pages', 'all', {
      timeoutMs: 1_000,
      sentinel: () => {
        throw failure;
      },
    });
    const outcome = await Promise.race([
      pending.then(
        () => 'resolved',
        (error: unknown) => error,
      ),
      flush().then(() => 'stuck'),
    ]);
    expect(outcome).toBe(failure);
    await flush();
    expect(responded).toEqual(['ok']);
    expect(clock.pending).toBe(0);
  });
});
