/**
 * `max` (auto-unsubscribe after N messages) and `requestMany` (scatter-gather) on the in-memory bus,
 * on the VirtualClock. test/connectors/natsTransport.test.ts runs the same behaviours over NATS.
 */
import { Bus, type Envelope, NoRespondersError, OptionsError, VirtualClock } from 'sluice';
import { describe, expect, test } from 'vitest';

const flush = () => new Promise<void>((resolve) => setImmediate(resolve));

describe('bus - subscription max', () => {
  test('a callback subscription takes max messages, then is closed and takes no more', async () => {
    const bus = new Bus({ clock: new VirtualClock() });
    const got: number[] = [];
    const sub = bus.subscribe<number>('ticks', { max: 3, callback: (env) => void got.push(env.data) });
    for (let i = 0; i < 6; i++) await bus.publish('ticks', i);
    await sub.closed;
    expect(got).toEqual([0, 1, 2]);
    expect(sub.isOpen).toBe(false);
    expect(sub.delivered).toBe(3);
    expect(bus.subscriptions).toBe(0);
  });

  test('a slow consumer still gets exactly max: what the mailbox holds is drained, nothing past max is taken', async () => {
    const bus = new Bus({ clock: new VirtualClock() });
    const sub = bus.subscribe<number>('jobs', { max: 4, mailbox: { capacity: 2 } });
    const publishes = [0, 1, 2, 3, 4, 5].map((i) => bus.publish('jobs', i));
    const seen: number[] = [];
    for await (const env of sub) seen.push(env.data);
    await Promise.all(publishes);
    expect(seen).toEqual([0, 1, 2, 3]);
  });

  test('max counts per member in a queue group: the other member takes the rest', async () => {
    const bus = new Bus({ clock: new VirtualClock() });
    const a: number[] = [];
    const b: number[] = [];
    bus.subscribe<number>('work', { queue: 'w', max: 2, callback: (env) => void a.push(env.data) });
    bus.subscribe<number>('work', { queue: 'w', callback: (env) => void b.push(env.data) });
    for (let i = 0; i < 10; i++) await bus.publish('work', i);
    expect(a).toHaveLength(2);
    expect(a.length + b.length).toBe(10);
  });

  test('max must be a positive integer', () => {
    const bus = new Bus();
    expect(() => bus.subscribe('x', { max: 0 })).toThrow(OptionsError);
    expect(() => bus.subscribe('x', { max: 1.5 })).toThrow(/subscription\.max/);
  });
});

describe('bus - requestMany', () => {
  function responders(bus: Bus, n: number, delayMs: (i: number) => number, clock: VirtualClock): void {
    for (let i = 0; i < n; i++) {
      bus.subscribe<string>('census', {
        callback: async (env) => {
          await clock.sleep(delayMs(i));
          await bus.respond(env, `r${i}`);
        },
      });
    }
  }

  test('stops at maxReplies', async () => {
    const clock = new VirtualClock();
    const bus = new Bus({ clock });
    responders(bus, 5, (i) => 10 * (i + 1), clock);
    const pending = bus.requestMany<string, string>('census', 'who', { maxReplies: 3, timeoutMs: 1_000 });
    await clock.advance(30);
    const replies = await pending;
    expect(replies.map((r) => r.data)).toEqual(['r0', 'r1', 'r2']);
  });

  test('stops when its time is up, with what came by then (none is no error)', async () => {
    const clock = new VirtualClock();
    const bus = new Bus({ clock });
    responders(bus, 3, (i) => [5, 50, 500][i] as number, clock);
    let done: Envelope<string>[] | undefined;
    void bus.requestMany<string, string>('census', 'who', { timeoutMs: 100 }).then((r) => {
      done = r;
    });
    await clock.advance(99);
    expect(done).toBeUndefined();
    await clock.advance(1);
    await flush();
    expect(done?.map((r) => r.data)).toEqual(['r0', 'r1']);

    const silent = new Bus({ clock });
    silent.subscribe('quiet', { callback: () => undefined });
    const none = silent.requestMany('quiet', 1, { timeoutMs: 10 });
    await clock.advance(10);
    await expect(none).resolves.toEqual([]);
  });

  test('stops at a sentinel reply, which is not collected', async () => {
    const clock = new VirtualClock();
    const bus = new Bus({ clock });
    bus.subscribe<string>('pages', {
      callback: async (env) => {
        for (const page of ['p1', 'p2', '']) await bus.respond(env, page);
        await bus.respond(env, 'after the end');
      },
    });
    const replies = await bus.requestMany<string, string>('pages', 'all', { sentinel: (r) => r.data === '' });
    expect(replies.map((r) => r.data)).toEqual(['p1', 'p2']);
  });

  test('stops when replies stall', async () => {
    const clock = new VirtualClock();
    const bus = new Bus({ clock });
    responders(bus, 3, (i) => [10, 20, 200][i] as number, clock);
    let done: Envelope<string>[] | undefined;
    void bus.requestMany<string, string>('census', 'who', { stallMs: 50, timeoutMs: 1_000 }).then((r) => {
      done = r;
    });
    await clock.advance(69);
    expect(done).toBeUndefined();
    await clock.advance(1);
    await flush();
    expect(done?.map((r) => r.data)).toEqual(['r0', 'r1']);
  });

  test('rejects with NoRespondersError when nothing listens, and checks its options', async () => {
    const bus = new Bus({ clock: new VirtualClock() });
    await expect(bus.requestMany('nobody', 1)).rejects.toBeInstanceOf(NoRespondersError);
    bus.subscribe('x', { callback: () => undefined });
    await expect(bus.requestMany('x', 1, { maxReplies: 0 })).rejects.toThrow(/requestMany\.maxReplies/);
    await expect(bus.requestMany('x', 1, { maxReplys: 2 } as never)).rejects.toThrow(/requestMany/);
    await expect(bus.requestMany('x', 1, { sentinel: 'end' } as never)).rejects.toThrow(/requestMany\.sentinel/);
  });
});
