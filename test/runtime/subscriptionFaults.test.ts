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
});
