import fc from 'fast-check';
import {
  Bus,
  type BusClient,
  createEnvelope,
  DEFAULT_BUS_OPTIONS,
  type Envelope,
  type Lineage,
  MailboxFullError,
  MaxPayloadError,
  NoRespondersError,
  nextId,
  OptionsError,
  PermissionError,
  SubjectError,
  type Subscription,
  subject,
  TimeoutError,
  VirtualClock,
} from 'sluice';
import { describe, expect, test } from 'vitest';

/** Lets queued microtasks and one macrotask turn run, so subscription pumps deliver. */
const flush = () => new Promise<void>((resolve) => setImmediate(resolve));

/** A subscription whose callback records each message's data. */
function recorder<T = unknown>(client: BusClient, pattern: string, queue?: string): { sub: Subscription<T>; got: T[] } {
  const got: T[] = [];
  const sub = client.subscribe<T>(pattern, { queue, callback: (env) => void got.push(env.data) });
  return { sub, got };
}

/** Counts the references taken on a message and given back. */
class HeldLineage implements Lineage {
  readonly ids = ['in'];
  held = 0;
  retain(): void {
    this.held++;
  }
  absorb(): void {
    this.held++;
  }
  release(): void {
    this.held--;
  }
  releaseAbsorbed(): void {
    this.held--;
  }
}

/** Tracks whether a promise has settled, without awaiting it. */
function track(promise: Promise<unknown>): { readonly settled: boolean; readonly error: unknown } {
  const state = { settled: false, error: undefined as unknown };
  promise.then(
    () => {
      state.settled = true;
    },
    (error: unknown) => {
      state.settled = true;
      state.error = error;
    },
  );
  return state;
}

describe('bus - publish/subscribe', () => {
  test('bus - every plain subscriber gets its own copy', async () => {
    const bus = new Bus();
    const a = recorder(bus, 'orders.created');
    const b = recorder(bus, 'orders.created');
    const c = recorder(bus, 'orders.created');
    await bus.publish('orders.created', 1);
    await bus.publish('orders.created', 2);
    await flush();
    expect(a.got).toEqual([1, 2]);
    expect(b.got).toEqual([1, 2]);
    expect(c.got).toEqual([1, 2]);
    expect(bus.telemetry.counters.published).toBe(2);
    expect(bus.telemetry.counters.delivered).toBe(6);
  });

  test('bus - wildcard subscriptions receive what their pattern matches, once each', async () => {
    const bus = new Bus();
    const star = recorder(bus, 'orders.*');
    const tail = recorder(bus, 'orders.>');
    const all = recorder(bus, '>');
    const exact = recorder(bus, 'orders.eu');
    const middle = recorder(bus, '*.eu.*');
    for (const s of ['orders.eu', 'orders.eu.created', 'orders', 'users.eu.x', 'orders.us']) await bus.publish(s, s);
    await flush();
    expect(star.got).toEqual(['orders.eu', 'orders.us']);
    expect(tail.got).toEqual(['orders.eu', 'orders.eu.created', 'orders.us']);
    expect(all.got).toEqual(['orders.eu', 'orders.eu.created', 'orders', 'users.eu.x', 'orders.us']);
    expect(exact.got).toEqual(['orders.eu']);
    expect(middle.got).toEqual(['orders.eu.created', 'users.eu.x']);
  });

  test('bus - a message with no subscriber is accepted and counted as published', async () => {
    const bus = new Bus();
    await expect(bus.publish('nobody.listens', 1)).resolves.toBeUndefined();
    expect(bus.tryPublish('nobody.listens', 2)).toBe(true);
    expect(bus.telemetry.counters.published).toBe(2);
    expect(bus.hasSubscribers('nobody.listens')).toBe(false);
  });

  test('bus - a publisher reaches subscribers added and removed between its publishes to one subject', async () => {
    // A client keeps what its last subject reached: a subscribe or unsubscribe must not be missed.
    const bus = new Bus();
    const client = bus.client('producer');
    client.tryPublish('orders.new', 0);
    const first = recorder<number>(bus, 'orders.new');
    client.tryPublish('orders.new', 1);
    const second = recorder<number>(bus, 'orders.*');
    client.tryPublish('orders.new', 2);
    first.sub.unsubscribe();
    client.tryPublish('orders.new', 3);
    await flush();
    expect(first.got).toEqual([1, 2]);
    expect(second.got).toEqual([2, 3]);
  });

  test('bus - id, key, event time, headers and replyTo reach the subscriber', async () => {
    const clock = new VirtualClock(1_000);
    const bus = new Bus({ clock });
    const got: Envelope[] = [];
    bus.subscribe('orders.created', { callback: (env) => void got.push(env) });
    await bus.publish(
      'orders.created',
      { id: 7 },
      { key: 'user-1', headers: { traceparent: '00-abc-def-01', 'x-tenant': 'eu' }, replyTo: 'replies.orders' },
    );
    await bus.publish('orders.created', 2, { eventTime: 42, id: 'upstream-id-1' });
    await flush();
    expect(got[0]).toMatchObject({
      subject: 'orders.created',
      data: { id: 7 },
      key: 'user-1',
      eventTime: 1_000, // no event time given: when it was published, on the bus clock
      headers: { traceparent: '00-abc-def-01', 'x-tenant': 'eu' },
      replyTo: 'replies.orders',
      attempt: 1,
    });
    expect(Object.isFrozen(got[0]?.headers)).toBe(true);
    expect(got[1]).toMatchObject({ eventTime: 42, id: 'upstream-id-1', attempt: 1, key: undefined });
  });

  test('bus - headers are copied at publish: changing the caller object later changes nothing', async () => {
    const bus = new Bus();
    const got: Envelope[] = [];
    bus.subscribe('a', { callback: (env) => void got.push(env) });
    const headers: Record<string, string> = { h: '1' };
    const done = bus.publish('a', 1, { headers });
    headers.h = 'changed';
    await done;
    await flush();
    expect(got[0]?.headers).toEqual({ h: '1' });
  });

  test('bus - message ids are unique (100,000 ids)', async () => {
    const ids = new Set<string>();
    for (let i = 0; i < 100_000; i++) ids.add(nextId());
    expect(ids.size).toBe(100_000);

    const bus = new Bus();
    const seen = new Set<string>();
    bus.subscribe('x', { callback: (env) => void seen.add(env.id) });
    for (let i = 0; i < 1_000; i++) bus.tryPublish('x', i);
    await flush();
    expect(seen.size).toBe(1_000);
    for (const id of seen) expect(ids.has(id)).toBe(false);
  });

  test('bus - a typed subject publishes and subscribes under its name', async () => {
    const bus = new Bus();
    const orders = subject<{ n: number }>('orders.created');
    const got: number[] = [];
    bus.subscribe(orders, { callback: (env) => void got.push(env.data.n) });
    await bus.publish(orders, { n: 1 });
    await flush();
    expect(got).toEqual([1]);
    const wildcard = subject<number>('orders.*');
    const error = await bus.publish(wildcard, 1).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(SubjectError);
    expect(error).toMatchObject({ rule: 'wildcard-in-publish', subject: 'orders.*' });
  });

  test('bus - an invalid replyTo is refused by name', async () => {
    const bus = new Bus();
    const error = await bus.publish('a', 1, { replyTo: 'replies.*' }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(SubjectError);
    expect(error).toMatchObject({ subject: 'replies.*', rule: 'wildcard-in-publish' });
    expect(() => bus.tryPublish('a', 1, { replyTo: 'bad subject' })).toThrow(SubjectError);
  });

  test('bus - invalid options are refused naming the option and the value', () => {
    const cases: [() => unknown, string][] = [
      [() => new Bus({ maxPayloadBytes: 0 }), 'bus.maxPayloadBytes'],
      [() => new Bus({ maxPayloadBytes: 1.5 }), 'bus.maxPayloadBytes'],
      [() => new Bus({ requestTimeoutMs: -1 }), 'bus.requestTimeoutMs'],
      [() => new Bus({ measure: 'bytes' as 'binary' }), 'bus.measure'],
    ];
    for (const [make, option] of cases) {
      let error: unknown;
      try {
        make();
      } catch (e) {
        error = e;
      }
      expect(error).toBeInstanceOf(OptionsError);
      expect(error).toMatchObject({ code: 'SLUICE_ERR_OPTIONS', option });
      expect((error as Error).message).toContain(`'${option}'`);
    }
  });

  test('bus - a queue group name with white space is refused', () => {
    const bus = new Bus();
    expect(() => bus.subscribe('a', { queue: 'my group' })).toThrow(OptionsError);
    expect(() => bus.subscribe('a', { queue: '' })).toThrow(/queue group name/);
  });
});

describe('bus - queue groups', () => {
  test('bus - exactly one member of a group gets each message', async () => {
    const bus = new Bus();
    const members = [recorder<number>(bus, 'jobs', 'workers'), recorder<number>(bus, 'jobs', 'workers')];
    for (let i = 0; i < 10; i++) await bus.publish('jobs', i);
    await flush();
    const all = [...(members[0]?.got ?? []), ...(members[1]?.got ?? [])].sort((a, b) => a - b);
    expect(all).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
  });

  test('bus - members of one group under different patterns still split each message', async () => {
    const bus = new Bus();
    const a = recorder<number>(bus, 'jobs.*', 'workers');
    const b = recorder<number>(bus, 'jobs.>', 'workers');
    for (let i = 0; i < 6; i++) await bus.publish('jobs.x', i);
    await flush();
    expect([...a.got, ...b.got].sort((x, y) => x - y)).toEqual([0, 1, 2, 3, 4, 5]);
  });

  test('bus - two queue groups each get one copy', async () => {
    const bus = new Bus();
    const g1 = [recorder<number>(bus, 'jobs', 'g1'), recorder<number>(bus, 'jobs', 'g1')];
    const g2 = [
      recorder<number>(bus, 'jobs', 'g2'),
      recorder<number>(bus, 'jobs', 'g2'),
      recorder<number>(bus, 'jobs', 'g2'),
    ];
    for (let i = 0; i < 30; i++) await bus.publish('jobs', i);
    await flush();
    const range = Array.from({ length: 30 }, (_, i) => i);
    expect(g1.flatMap((m) => m.got).sort((x, y) => x - y)).toEqual(range);
    expect(g2.flatMap((m) => m.got).sort((x, y) => x - y)).toEqual(range);
  });

  test('bus - plain subscribers and a queue group together: each plain one gets all, the group one copy', async () => {
    const bus = new Bus();
    const plain1 = recorder<number>(bus, 'jobs');
    const plain2 = recorder<number>(bus, 'jobs');
    const group = [recorder<number>(bus, 'jobs', 'g'), recorder<number>(bus, 'jobs', 'g')];
    for (let i = 0; i < 8; i++) await bus.publish('jobs', i);
    await flush();
    const range = [0, 1, 2, 3, 4, 5, 6, 7];
    expect(plain1.got).toEqual(range);
    expect(plain2.got).toEqual(range);
    expect(group.flatMap((m) => m.got).sort((x, y) => x - y)).toEqual(range);
  });

  test('bus - round-robin spreads messages evenly: 400 over 4 members is 100 each, in turn', () => {
    const bus = new Bus();
    // No consumer: messages stay in the mailboxes, where we count them.
    const members = [0, 1, 2, 3].map(() => bus.subscribe('jobs', { queue: 'workers' }));
    for (let i = 0; i < 400; i++) expect(bus.tryPublish('jobs', i)).toBe(true);
    expect(members.map((m) => m.pending)).toEqual([100, 100, 100, 100]);
  });

  test('bus - round-robin hands consecutive messages to different members in a fixed rotation', async () => {
    const bus = new Bus();
    const members = [0, 1, 2].map(() => bus.subscribe<number>('jobs', { queue: 'workers' }));
    for (let i = 0; i < 9; i++) bus.tryPublish('jobs', i);
    const got: number[][] = [];
    for (const m of members) {
      const it = m[Symbol.asyncIterator]();
      const mine: number[] = [];
      for (let k = 0; k < 3; k++) mine.push(((await it.next()).value as Envelope<number>).data);
      got.push(mine);
    }
    // Each member sees every third message; which member starts is the bus's choice.
    for (const mine of got) {
      expect(mine[1]! - mine[0]!).toBe(3);
      expect(mine[2]! - mine[1]!).toBe(3);
    }
    expect(got.flat().sort((x, y) => x - y)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8]);
  });

  test('bus - round-robin skips a full member while another has room', () => {
    const bus = new Bus();
    const small = bus.subscribe('jobs', { queue: 'w', mailbox: { capacity: 1 } });
    const large = bus.subscribe('jobs', { queue: 'w', mailbox: { capacity: 100 } });
    for (let i = 0; i < 10; i++) expect(bus.tryPublish('jobs', i)).toBe(true);
    expect(small.pending).toBe(1);
    expect(large.pending).toBe(9);
  });

  test('bus - least-loaded gives each message to the member with the shortest mailbox', async () => {
    const bus = new Bus();
    const opts = { queue: 'w', queueStrategy: 'least-loaded' as const };
    const [a, b, c] = [0, 1, 2].map(() => bus.subscribe('jobs', opts)) as [Subscription, Subscription, Subscription];
    for (let i = 0; i < 6; i++) bus.tryPublish('jobs', i);
    expect([a.pending, b.pending, c.pending]).toEqual([2, 2, 2]);
    // Empty b's mailbox: now it is the shortest by two.
    const it = b[Symbol.asyncIterator]();
    await it.next();
    await it.next();
    expect([a.pending, b.pending, c.pending]).toEqual([2, 0, 2]);
    bus.tryPublish('jobs', 6);
    expect([a.pending, b.pending, c.pending]).toEqual([2, 1, 2]);
    bus.tryPublish('jobs', 7);
    expect([a.pending, b.pending, c.pending]).toEqual([2, 2, 2]);
    // Take one from c: c is the shortest.
    const itc = c[Symbol.asyncIterator]();
    await itc.next();
    bus.tryPublish('jobs', 8);
    expect([a.pending, b.pending, c.pending]).toEqual([2, 2, 2]);
  });

  test('bus - a refused tryPublish does not move the round-robin turn', () => {
    const bus = new Bus();
    const members = [0, 1, 2].map(() => bus.subscribe('jobs', { queue: 'w', mailbox: { capacity: 5 } }));
    const blocker = bus.subscribe('jobs', { mailbox: { capacity: 1 } });
    expect(bus.tryPublish('jobs', 0)).toBe(true);
    const first = members.findIndex((m) => m.pending === 1);
    // The plain subscriber is full: nothing is delivered, and the group's turn must not advance.
    expect(bus.tryPublish('jobs', 1)).toBe(false);
    blocker.unsubscribe();
    expect(bus.tryPublish('jobs', 2)).toBe(true);
    const expected = [0, 0, 0];
    expected[first] = 1;
    expected[(first + 1) % 3] = 1;
    expect(members.map((m) => m.pending)).toEqual(expected);
  });

  test('bus - round-robin starves no member when subjects reach different members of the group', () => {
    const bus = new Bus();
    const got = { m1: 0, m2: 0, m3: 0 };
    bus.subscribe('a.*', { queue: 'w', callback: () => void got.m1++ });
    bus.subscribe('a.*', { queue: 'w', callback: () => void got.m2++ });
    bus.subscribe('a.x', { queue: 'w', callback: () => void got.m3++ });
    // a.x reaches all three members, a.y only the two on a.*: each subject turns over its own.
    for (let i = 0; i < 60; i++) {
      bus.tryPublish('a.x', i);
      bus.tryPublish('a.y', i);
    }
    expect(got).toEqual({ m1: 50, m2: 50, m3: 20 });
  });

  test('bus - a member leaving resets the turn of a subject reaching part of the group, and none is starved', () => {
    const bus = new Bus();
    const got = { m1: 0, m2: 0, m3: 0 };
    bus.subscribe('a.*', { queue: 'w', callback: () => void got.m1++ });
    bus.subscribe('a.*', { queue: 'w', callback: () => void got.m2++ });
    const m3 = bus.subscribe('a.x', { queue: 'w', callback: () => void got.m3++ });
    const m4 = bus.subscribe('a.x', { queue: 'w', callback: () => {} });
    for (let i = 0; i < 8; i++) bus.tryPublish('a.y', i);
    m4.unsubscribe();
    for (let i = 0; i < 60; i++) {
      bus.tryPublish('a.x', i);
      bus.tryPublish('a.y', i);
    }
    m3.unsubscribe();
    expect(got).toEqual({ m1: 4 + 50, m2: 4 + 50, m3: 20 });
    expect(bus.queueGroups).toBe(1);
  });
});

describe('bus - request/reply', () => {
  test('bus - a request resolves with the reply', async () => {
    const clock = new VirtualClock();
    const bus = new Bus({ clock });
    bus.subscribe<number>('math.double', {
      callback: (env) => bus.respond(env, env.data * 2, { headers: { 'x-by': 'doubler' } }),
    });
    const reply = await bus.request<number, number>('math.double', 21);
    expect(reply.data).toBe(42);
    expect(reply.headers).toEqual({ 'x-by': 'doubler' });
    // The timeout timer was cancelled by the reply.
    expect(clock.pending).toBe(0);
  });

  test('bus - the request carries its headers and a reply subject to the responder', async () => {
    const bus = new Bus({ clock: new VirtualClock() });
    const seen: Envelope[] = [];
    bus.subscribe('svc', {
      callback: (env) => {
        seen.push(env);
        return bus.respond(env, 'ok');
      },
    });
    await bus.request('svc', 1, { headers: { traceparent: 't' }, key: 'k' });
    expect(seen[0]?.headers).toEqual({ traceparent: 't' });
    expect(seen[0]?.key).toBe('k');
    expect(typeof seen[0]?.replyTo).toBe('string');
  });

  test('bus - concurrent requests each get their own reply', async () => {
    const bus = new Bus({ clock: new VirtualClock() });
    bus.subscribe<number>('echo', { concurrency: 10, callback: (env) => bus.respond(env, env.data) });
    const replies = await Promise.all([1, 2, 3, 4, 5].map((n) => bus.request<number, number>('echo', n)));
    expect(replies.map((r) => r.data)).toEqual([1, 2, 3, 4, 5]);
  });

  test('bus - a request without a reply rejects with TimeoutError once its timeout passes on the clock', async () => {
    const clock = new VirtualClock();
    const bus = new Bus({ clock });
    bus.subscribe('slow'); // never consumed: nobody replies
    const pending = bus.request('slow', 1, { timeoutMs: 100 });
    const state = track(pending);
    await clock.advance(99);
    expect(state.settled).toBe(false);
    await clock.advance(1);
    expect(state.settled).toBe(true);
    expect(state.error).toBeInstanceOf(TimeoutError);
    expect(state.error).toMatchObject({
      code: 'SLUICE_ERR_TIMEOUT',
      subject: 'slow',
      timeoutMs: 100,
      retryable: true,
    });
    expect((state.error as Error).message).toBe("request on 'slow' timed out after 100 ms");
  });

  test('bus - a request without timeoutMs uses the bus requestTimeoutMs', async () => {
    const clock = new VirtualClock();
    const bus = new Bus({ clock, requestTimeoutMs: 250 });
    bus.subscribe('slow');
    const state = track(bus.request('slow', 1));
    await clock.advance(249);
    expect(state.settled).toBe(false);
    await clock.advance(1);
    expect(state.error).toMatchObject({ timeoutMs: 250 });
    expect(new Bus().requestTimeoutMs).toBe(DEFAULT_BUS_OPTIONS.requestTimeoutMs);
  });

  test('bus - a reply after the timeout is ignored', async () => {
    const clock = new VirtualClock();
    const bus = new Bus({ clock });
    const requests: Envelope[] = [];
    bus.subscribe('late', { callback: (env) => void requests.push(env) });
    const state = track(bus.request('late', 1, { timeoutMs: 10 }));
    await clock.advance(10);
    expect(state.error).toBeInstanceOf(TimeoutError);
    await expect(bus.respond(requests[0] as Envelope, 'too late')).resolves.toBeUndefined();
  });

  test('bus - a request to a subject nobody subscribes to rejects with NoRespondersError at once', async () => {
    const clock = new VirtualClock();
    const bus = new Bus({ clock });
    const error = await bus.request('nobody.home', 1).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(NoRespondersError);
    expect(error).toMatchObject({ code: 'SLUICE_ERR_NO_RESPONDERS', subject: 'nobody.home' });
    expect((error as Error).message).toContain("'nobody.home'");
    // Without advancing the clock, and no timer left behind.
    expect(clock.pending).toBe(0);
  });

  test('bus - an invalid request timeout is refused by name', async () => {
    const bus = new Bus({ clock: new VirtualClock() });
    bus.subscribe('svc');
    const error = await bus.request('svc', 1, { timeoutMs: 0 }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(OptionsError);
    expect(error).toMatchObject({ option: 'request.timeoutMs' });
  });

  test('bus - respond to a message that has no replyTo is a clear error', async () => {
    const bus = new Bus();
    const got: Envelope[] = [];
    bus.subscribe('events', { callback: (env) => void got.push(env) });
    await bus.publish('events', 1);
    await flush();
    const env = got[0] as Envelope;
    const error = await bus.respond(env, 'reply').catch((e: unknown) => e);
    expect(error).toBeInstanceOf(OptionsError);
    expect((error as Error).message).toContain('no replyTo');
    expect((error as Error).message).toContain(`'${env.id}'`);
    expect((error as Error).message).toContain("'events'");
  });

  test('bus - respond to a replyTo that was set by the publisher delivers there', async () => {
    const bus = new Bus();
    const replies = recorder(bus, 'my.replies');
    bus.subscribe('svc', { callback: (env) => bus.respond(env, 'pong') });
    await bus.publish('svc', 'ping', { replyTo: 'my.replies' });
    await flush();
    await flush();
    expect(replies.got).toEqual(['pong']);
  });
});

describe('bus - backpressure', () => {
  test('bus - publish resolves only once every mailbox accepted the message', async () => {
    const bus = new Bus();
    const roomy = bus.subscribe('a', { mailbox: { capacity: 10 } });
    const tight = bus.subscribe<number>('a', { mailbox: { capacity: 1 } });
    await bus.publish('a', 1); // fills `tight`
    const second = track(bus.publish('a', 2));
    await flush();
    expect(second.settled).toBe(false);
    expect(roomy.pending).toBe(2); // delivered where there was room
    expect(tight.pending).toBe(1);
    // Consume one: the waiting message moves in and the publish resolves.
    const it = tight[Symbol.asyncIterator]();
    expect(((await it.next()).value as Envelope<number>).data).toBe(1);
    await flush();
    expect(second.settled).toBe(true);
    expect(second.error).toBeUndefined();
    expect(((await it.next()).value as Envelope<number>).data).toBe(2);
  });

  test('bus - waiting publishers are let in in the order they waited', async () => {
    const bus = new Bus();
    const sub = bus.subscribe<number>('a', { mailbox: { capacity: 1 } });
    const order: number[] = [];
    for (let i = 0; i < 4; i++) void bus.publish('a', i).then(() => order.push(i));
    const got: number[] = [];
    const it = sub[Symbol.asyncIterator]();
    for (let i = 0; i < 4; i++) got.push(((await it.next()).value as Envelope<number>).data);
    await flush();
    expect(got).toEqual([0, 1, 2, 3]);
    expect(order).toEqual([0, 1, 2, 3]);
  });

  test('bus - tryPublish returns false and delivers to none when any target is full', () => {
    const bus = new Bus();
    const roomy = bus.subscribe('a', { mailbox: { capacity: 10 } });
    const group = bus.subscribe('a', { queue: 'g', mailbox: { capacity: 10 } });
    const tight = bus.subscribe('a', { mailbox: { capacity: 1 } });
    expect(bus.tryPublish('a', 1)).toBe(true);
    expect(bus.tryPublish('a', 2)).toBe(false);
    expect(bus.tryPublish('a', 3)).toBe(false);
    expect([roomy.pending, group.pending, tight.pending]).toEqual([1, 1, 1]);
    expect(bus.telemetry.counters.refused).toBe(2);
    expect(bus.telemetry.counters.published).toBe(1);
  });

  test('bus - tryPublish returns false when every member of a queue group is full, delivering to none', () => {
    const bus = new Bus();
    const plain = bus.subscribe('a', { mailbox: { capacity: 10 } });
    const members = [0, 1].map(() => bus.subscribe('a', { queue: 'g', mailbox: { capacity: 1 } }));
    expect(bus.tryPublish('a', 1)).toBe(true);
    expect(bus.tryPublish('a', 2)).toBe(true);
    expect(bus.tryPublish('a', 3)).toBe(false);
    expect(plain.pending).toBe(2);
    expect(members.map((m) => m.pending)).toEqual([1, 1]);
  });

  test('bus - a full mailbox under fail: publish rejects with MailboxFullError and delivers to none', async () => {
    const bus = new Bus();
    const other = bus.subscribe('a', { mailbox: { capacity: 10 } });
    const strict = bus.subscribe('a', { mailbox: { capacity: 1, overflow: 'fail' } });
    await bus.publish('a', 1);
    const error = await bus.publish('a', 2).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(MailboxFullError);
    expect(error).toMatchObject({ code: 'SLUICE_ERR_MAILBOX_FULL', mailbox: 'a', capacity: 1, retryable: true });
    expect([other.pending, strict.pending]).toEqual([1, 1]);
    // tryPublish does not throw for it: it reports the refusal.
    expect(bus.tryPublish('a', 3)).toBe(false);
    expect([other.pending, strict.pending]).toEqual([1, 1]);
  });

  test('bus - routing to a full fail mailbox rejects the returned promise rather than throwing', async () => {
    const bus = new Bus();
    bus.subscribe('dead.letters', { mailbox: { capacity: 1, overflow: 'fail' } });
    await bus.publish('dead.letters', 1);
    let result: Promise<void> | undefined;
    expect(() => {
      result = bus.route(createEnvelope('dead.letters', 2), true);
    }).not.toThrow();
    await expect(result).rejects.toBeInstanceOf(MailboxFullError);
  });

  test('bus - drop policies never hold a publish back', async () => {
    const bus = new Bus();
    const oldest = bus.subscribe('a', { mailbox: { capacity: 1, overflow: 'drop-oldest' } });
    const newest = bus.subscribe('a', { mailbox: { capacity: 1, overflow: 'drop-newest' } });
    await bus.publish('a', 1);
    await bus.publish('a', 2);
    expect(bus.tryPublish('a', 3)).toBe(true);
    expect([oldest.pending, newest.pending]).toEqual([1, 1]);
    expect(bus.telemetry.counters.dropped).toBe(4);
  });

  test('bus - onDrop tells the subscription which messages its mailbox let go of, and why', async () => {
    const bus = new Bus();
    const drops: [unknown, string][] = [];
    const onDrop = (env: Envelope, reason: string) => drops.push([env.data, reason]);
    const oldest = bus.subscribe('a', { mailbox: { capacity: 1, overflow: 'drop-oldest' }, onDrop });
    bus.subscribe('a', { mailbox: { capacity: 1, overflow: 'drop-newest' }, onDrop });
    await bus.publish('a', 1);
    await bus.publish('a', 2);
    expect(drops).toEqual([
      [1, 'drop-oldest'],
      [2, 'drop-newest'],
    ]);
    oldest.unsubscribe();
    expect(drops.at(-1)).toEqual([2, 'closed']);
    // Counted by the bus as every drop is.
    expect(bus.telemetry.counters.dropped).toBe(3);
    expect(() => bus.subscribe('a', { onDrop: 'log' as never })).toThrow(/subscription\.onDrop/);
  });
});

describe('bus - max payload', () => {
  test('bus - a string over the limit is refused, measured in UTF-8 bytes', async () => {
    const bus = new Bus({ maxPayloadBytes: 8 });
    await expect(bus.publish('a', 'abcdefgh')).resolves.toBeUndefined(); // 8 bytes: at the limit
    const cases: [string, number][] = [
      ['abcdefghi', 9],
      ['ééééé', 10], // 5 characters, 2 bytes each
      ['€€€', 9], // 3 characters, 3 bytes each
      ['😀😀😀', 12], // 3 characters of 4 bytes, 6 UTF-16 units
    ];
    for (const [data, size] of cases) {
      const error = await bus.publish('payload.test', data).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(MaxPayloadError);
      expect(error).toMatchObject({ code: 'SLUICE_ERR_MAX_PAYLOAD', subject: 'payload.test', size, limit: 8 });
      expect((error as Error).message).toBe(
        `invalid message on 'payload.test': its size ${size} bytes exceeds the limit of 8 bytes`,
      );
    }
    await expect(bus.publish('a', 'éééé')).resolves.toBeUndefined(); // 8 bytes
  });

  test('bus - a byte array is measured by its length', async () => {
    const bus = new Bus({ maxPayloadBytes: 16 });
    await expect(bus.publish('a', new Uint8Array(16))).resolves.toBeUndefined();
    expect(() => bus.tryPublish('a', new Uint8Array(17))).toThrow(MaxPayloadError);
    const view = new Uint8Array(new ArrayBuffer(64), 8, 20);
    const error = await bus.publish('a', view).catch((e: unknown) => e);
    expect(error).toMatchObject({ size: 20, limit: 16 });
  });

  test('bus - objects pass unmeasured by default and are measured encoded with measure: encoded', async () => {
    const big = { s: 'x'.repeat(20) };
    await expect(new Bus({ maxPayloadBytes: 16 }).publish('a', big)).resolves.toBeUndefined();
    const bus = new Bus({ maxPayloadBytes: 16, measure: 'encoded' });
    const error = await bus.publish('a', big).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(MaxPayloadError);
    // MessagePack as msgpackr writes it with variableMapSize: fixmap header (1), key "s" (1 + 1),
    // string header (1) and 20 bytes.
    expect(error).toMatchObject({ size: 24, limit: 16 });
    await expect(bus.publish('a', { s: 'x' })).resolves.toBeUndefined();
  });

  test('bus - a refused payload reaches no subscriber', async () => {
    const bus = new Bus({ maxPayloadBytes: 4 });
    const sub = bus.subscribe('a');
    await bus.publish('a', 'toolong').catch(() => undefined);
    expect(sub.pending).toBe(0);
    expect(bus.telemetry.counters.published).toBe(0);
  });

  test('bus - a reply over the limit is refused too', async () => {
    const bus = new Bus({ maxPayloadBytes: 4, clock: new VirtualClock() });
    const errors: unknown[] = [];
    bus.subscribe('svc', {
      callback: async (env) => {
        await bus.respond(env, 'far too long').catch((e: unknown) => void errors.push(e));
      },
    });
    void bus.request('svc', 'ok', { timeoutMs: 10 }).catch(() => undefined);
    await flush();
    expect(errors[0]).toBeInstanceOf(MaxPayloadError);
  });
});

describe('bus - permissions', () => {
  function expectDenied(
    error: unknown,
    fields: { operation: 'publish' | 'subscribe'; subject: string; client: string },
  ): void {
    expect(error).toBeInstanceOf(PermissionError);
    expect(error).toMatchObject({ code: 'SLUICE_ERR_PERMISSION', ...fields });
    const message = (error as Error).message;
    expect(message).toContain(`'${fields.client}'`);
    expect(message).toContain(`'${fields.subject}'`);
    expect(message).toContain(fields.operation);
  }

  test('bus - publish allow list: only matching subjects may be published', async () => {
    const bus = new Bus();
    const alice = bus.client('alice', { publish: { allow: ['orders.>', 'audit'] } });
    await expect(alice.publish('orders.eu.created', 1)).resolves.toBeUndefined();
    await expect(alice.publish('audit', 1)).resolves.toBeUndefined();
    expectDenied(await alice.publish('users.created', 1).catch((e: unknown) => e), {
      operation: 'publish',
      subject: 'users.created',
      client: 'alice',
    });
    expectDenied(await alice.publish('orders', 1).catch((e: unknown) => e), {
      operation: 'publish',
      subject: 'orders',
      client: 'alice',
    });
    expect(bus.telemetry.counters.permissionDenied).toBe(2);
  });

  test('bus - publish deny list: matching subjects are refused, the rest allowed', async () => {
    const bus = new Bus();
    const bob = bus.client('bob', { publish: { deny: ['admin.>'] } });
    await expect(bob.publish('orders', 1)).resolves.toBeUndefined();
    const error = await bob.publish('admin.shutdown', 1).catch((e: unknown) => e);
    expectDenied(error, { operation: 'publish', subject: 'admin.shutdown', client: 'bob' });
    expect((error as Error).message).toContain("denied by 'admin.>'");
    expect(() => bob.tryPublish('admin.x', 1)).toThrow(PermissionError);
    expect(bus.telemetry.counters.permissionDenied).toBe(2);
  });

  test('bus - deny wins over allow', async () => {
    const bus = new Bus();
    const c = bus.client('carol', {
      publish: { allow: ['orders.>'], deny: ['orders.secret'] },
      subscribe: { allow: ['orders.>'], deny: ['orders.secret'] },
    });
    await expect(c.publish('orders.public', 1)).resolves.toBeUndefined();
    expectDenied(await c.publish('orders.secret', 1).catch((e: unknown) => e), {
      operation: 'publish',
      subject: 'orders.secret',
      client: 'carol',
    });
    let error: unknown;
    try {
      c.subscribe('orders.secret');
    } catch (e) {
      error = e;
    }
    expectDenied(error, { operation: 'subscribe', subject: 'orders.secret', client: 'carol' });
    expect(bus.telemetry.counters.permissionDenied).toBe(2);
  });

  test('bus - subscribe allow and deny lists, wildcards checked as sets of subjects', () => {
    const bus = new Bus();
    const d = bus.client('dave', { subscribe: { allow: ['orders.>'], deny: ['orders.internal.>'] } });
    expect(d.subscribe('orders.eu').subject).toBe('orders.eu');
    expect(d.subscribe('orders.*').subject).toBe('orders.*');
    expect(d.subscribe('orders.>').subject).toBe('orders.>');
    const denied: [string][] = [['users.x'], ['>'], ['*.eu'], ['orders.internal.x'], ['orders.internal.>']];
    for (const [pattern] of denied) {
      let error: unknown;
      try {
        d.subscribe(pattern);
      } catch (e) {
        error = e;
      }
      expectDenied(error, { operation: 'subscribe', subject: pattern, client: 'dave' });
    }
    expect(bus.telemetry.counters.permissionDenied).toBe(denied.length);
    expect(bus.subscriptions).toBe(3);
  });

  test('bus - a wildcard subscription overlapping a deny is allowed, and denied subjects are filtered at delivery', async () => {
    const bus = new Bus();
    const eve = bus.client('eve', { subscribe: { deny: ['orders.secret', 'orders.internal.>'] } });
    const filtered = recorder<string>(eve, 'orders.>');
    const star = recorder<string>(eve, 'orders.*');
    const everything = recorder<string>(bus, 'orders.>');
    for (const s of ['orders.public', 'orders.secret', 'orders.internal.x', 'orders.eu.x']) await bus.publish(s, s);
    await flush();
    expect(filtered.got).toEqual(['orders.public', 'orders.eu.x']);
    expect(star.got).toEqual(['orders.public']);
    expect(everything.got).toEqual(['orders.public', 'orders.secret', 'orders.internal.x', 'orders.eu.x']);
    // Filtering at delivery is not a violation by the subscriber.
    expect(bus.telemetry.counters.permissionDenied).toBe(0);
  });

  test('bus - a queue member that may not receive a subject leaves it to a member that may', async () => {
    const bus = new Bus();
    const restricted = bus.client('restricted', { subscribe: { deny: ['jobs.secret'] } });
    const r = recorder<string>(restricted, 'jobs.*', 'workers');
    const open = recorder<string>(bus, 'jobs.*', 'workers');
    for (let i = 0; i < 4; i++) await bus.publish('jobs.secret', `s${i}`);
    await flush();
    expect(r.got).toEqual([]);
    expect(open.got).toEqual(['s0', 's1', 's2', 's3']);
  });

  test('bus - delivery filters are compiled per subject: a plan made for one subject never lets another through', async () => {
    const bus = new Bus();
    const eve = bus.client('eve', { subscribe: { deny: ['orders.secret'] } });
    const filtered = recorder<string>(eve, 'orders.*');
    const workers = recorder<string>(eve, 'orders.*', 'workers');
    // Cached plans of both subjects, used over and over, in either order.
    for (let i = 0; i < 3; i++) {
      for (const s of ['orders.public', 'orders.secret']) expect(bus.tryPublish(s, `${s}${i}`)).toBe(true);
    }
    // A match looked up for one subject and routed with an envelope of another (as a consumer that
    // keeps a lookup does): the filters run for the envelope's subject.
    await bus.route(createEnvelope('orders.secret', 'crafted'), true, bus.lookup('orders.public'));
    expect(bus.route(createEnvelope('orders.public', 'kept'), false, bus.lookup('orders.secret'))).toBe(true);
    await flush();
    expect(filtered.got).toEqual(['orders.public0', 'orders.public1', 'orders.public2', 'kept']);
    expect(workers.got).toEqual(['orders.public0', 'orders.public1', 'orders.public2', 'kept']);
    expect(bus.telemetry.counters.published).toBe(8);
  });

  test('bus - requests are checked as publishes', async () => {
    const bus = new Bus({ clock: new VirtualClock() });
    bus.subscribe('admin.x');
    const f = bus.client('frank', { publish: { deny: ['admin.>'] } });
    expectDenied(await f.request('admin.x', 1).catch((e: unknown) => e), {
      operation: 'publish',
      subject: 'admin.x',
      client: 'frank',
    });
    expect(bus.telemetry.counters.permissionDenied).toBe(1);
  });

  test('bus - a responder may reply to a request inbox it may not publish to otherwise', async () => {
    const bus = new Bus({ clock: new VirtualClock() });
    const responder = bus.client('svc', { publish: { allow: ['nothing.at.all'] } });
    responder.subscribe('svc.ping', { callback: (env) => responder.respond(env, 'pong') });
    const reply = await bus.request('svc.ping', 'ping');
    expect(reply.data).toBe('pong');
  });

  test('bus - respond cannot be used to get around publish permissions with a crafted replyTo', async () => {
    const bus = new Bus();
    const target = recorder(bus, 'admin.shutdown');
    const mallory = bus.client('mallory', { publish: { deny: ['admin.>'] } });
    const crafted = { id: 'x', subject: 'innocent', replyTo: 'admin.shutdown' } as Envelope;
    expectDenied(await mallory.respond(crafted, 'now').catch((e: unknown) => e), {
      operation: 'publish',
      subject: 'admin.shutdown',
      client: 'mallory',
    });
    const wildcard = { id: 'y', subject: 'innocent', replyTo: 'admin.*' } as Envelope;
    expect(await mallory.respond(wildcard, 'now').catch((e: unknown) => e)).toBeInstanceOf(SubjectError);
    await flush();
    expect(target.got).toEqual([]);
    expect(bus.telemetry.counters.permissionDenied).toBe(1);
  });

  test('bus - a permission pattern that is not a valid subject is refused when the client is made', () => {
    const bus = new Bus();
    expect(() => bus.client('x', { publish: { allow: ['orders..eu'] } })).toThrow(SubjectError);
    expect(() => bus.client('x', { subscribe: { deny: ['a.>.b'] } })).toThrow(/'a\.>\.b'/);
  });
});

describe('bus - changes while publishing', () => {
  test('bus - a callback that unsubscribes itself and subscribes anew mid-stream', async () => {
    const bus = new Bus();
    const first: number[] = [];
    const second: number[] = [];
    const sub = bus.subscribe<number>('x', {
      callback: (env) => {
        first.push(env.data);
        if (env.data === 0) {
          sub.unsubscribe();
          bus.subscribe<number>('x', { callback: (e) => void second.push(e.data) });
        }
      },
    });
    // Delivery runs inside the publish: message 0 swaps the subscriptions before 1 is published.
    for (let i = 0; i < 3; i++) bus.tryPublish('x', i);
    await flush();
    for (let i = 3; i < 5; i++) bus.tryPublish('x', i);
    await flush();
    expect(first).toEqual([0]);
    expect(second).toEqual([1, 2, 3, 4]);
    expect(bus.telemetry.counters.dropped).toBe(0);
    expect(bus.subscriptions).toBe(1);
  });

  test('bus - subscriptions added by callbacks only see later messages', async () => {
    const bus = new Bus();
    const logs: number[][] = [];
    bus.subscribe<number>('x', {
      callback: async (env) => {
        const log: number[] = [];
        logs.push(log);
        bus.subscribe<number>('x', { callback: (e) => void log.push(e.data) });
        if (env.data < 3) await bus.publish('x', env.data + 1);
      },
    });
    await bus.publish('x', 0);
    for (let i = 0; i < 5; i++) await flush();
    // The subscription added while handling message n sees n+1.. (those published after it).
    expect(logs.slice(0, 4)).toEqual([[1, 2, 3], [2, 3], [3], []]);
  });

  test('bus - a copy for a subscription unsubscribed by an earlier copy during the same publish counts as dropped', () => {
    const bus = new Bus();
    let victim: Subscription<number> | undefined;
    const got: number[] = [];
    bus.subscribe<number>('x', { callback: () => victim?.unsubscribe() });
    victim = bus.subscribe<number>('x', { callback: (env) => void got.push(env.data) });
    const lineage = new HeldLineage();
    void bus.forward(createEnvelope('x', 1, { lineage }));
    expect(got).toEqual([]);
    expect(bus.telemetry.counters.dropped).toBe(1);
    // Both copies gave their references back: the dropped one as well as the delivered one.
    expect(lineage.held).toBe(0);
  });

  test('bus - unsubscribing another subscriber from a callback drops what it had queued', async () => {
    const bus = new Bus();
    const victim: number[] = [];
    const victimSub = bus.subscribe<number>('x', {
      callback: async (env) => {
        victim.push(env.data);
        await new Promise<void>(() => undefined); // hold the only slot forever
      },
    });
    bus.subscribe<number>('x', {
      callback: (env) => {
        if (env.data === 2) victimSub.unsubscribe();
      },
    });
    for (let i = 0; i < 4; i++) bus.tryPublish('x', i);
    await flush();
    for (let i = 4; i < 6; i++) bus.tryPublish('x', i);
    await flush();
    expect(victim).toEqual([0]);
    expect(victimSub.isOpen).toBe(false);
    // 1 and 2 were queued behind message 0 when 2 reached the other subscriber; 3 came after.
    expect(bus.telemetry.counters.dropped).toBe(2);
  });
});

describe('bus - routing plans', () => {
  // A reference written here: NATS matching by regular expression, and the delivery rule (each plain
  // subscription a copy, each queue group one copy to a member that may receive the subject).
  const matches = (pattern: string, subject: string) => {
    const parts = pattern
      .split('.')
      .map((t) => (t === '*' ? '[^.]+' : t === '>' ? '[^.]+(?:\\.[^.]+)*' : t.replace(/[*>]/g, '\\$&')));
    return new RegExp(`^${parts.join('\\.')}$`).test(subject);
  };
  const token = fc.constantFrom('a', 'b', 'c');
  const subjectArb = fc.array(token, { minLength: 1, maxLength: 3 }).map((t) => t.join('.'));
  const patternArb = fc
    .tuple(fc.array(fc.oneof(token, fc.constant('*')), { minLength: 1, maxLength: 3 }), fc.boolean())
    .map(([tokens, tail]) => (tail ? [...tokens, '>'] : tokens).join('.'));
  type Op =
    | { kind: 'subscribe'; pattern: string; queue: string | undefined; restricted: boolean }
    | { kind: 'unsubscribe'; pick: number }
    | { kind: 'publish'; subject: string };
  const opArb: fc.Arbitrary<Op> = fc.oneof(
    {
      weight: 3,
      arbitrary: fc.record({
        kind: fc.constant('subscribe' as const),
        pattern: patternArb,
        queue: fc.constantFrom(undefined, undefined, 'q'),
        restricted: fc.boolean(),
      }),
    },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant('unsubscribe' as const), pick: fc.nat() }) },
    { weight: 5, arbitrary: fc.record({ kind: fc.constant('publish' as const), subject: subjectArb }) },
  );

  test('bus - cached plans (shared by the subjects that reach one route alone) stay right as routes come and go', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(opArb, { maxLength: 80 }), async (ops) => {
        const bus = new Bus();
        // Subscriptions of this client get a delivery filter where their pattern overlaps `a.b`.
        const restricted = bus.client('restricted', { subscribe: { deny: ['a.b'] } });
        interface Live {
          readonly sub: Subscription<number>;
          readonly pattern: string;
          readonly queue: string | undefined;
          readonly restricted: boolean;
          readonly got: number[];
        }
        let live: Live[] = [];
        const all: Live[] = [];
        const want = new Map<Live, number[]>();
        const groupCopies: number[] = [];
        let published = 0;
        for (const op of ops) {
          if (op.kind === 'subscribe') {
            if (op.restricted && matches(op.pattern, 'a.b') && !op.pattern.includes('*') && !op.pattern.includes('>')) {
              continue; // the literal denied subject itself: refused at subscribe
            }
            const got: number[] = [];
            const client = op.restricted ? restricted : bus;
            const sub = client.subscribe<number>(op.pattern, {
              queue: op.queue,
              callback: (env) => void got.push(env.data),
            });
            const entry = { sub, pattern: op.pattern, queue: op.queue, restricted: op.restricted, got };
            live.push(entry);
            all.push(entry);
            want.set(entry, []);
          } else if (op.kind === 'unsubscribe') {
            const entry = live[op.pick % Math.max(live.length, 1)];
            if (entry === undefined) continue;
            entry.sub.unsubscribe();
            live = live.filter((e) => e !== entry);
          } else {
            const n = published++;
            const takes = (e: Live) => matches(e.pattern, op.subject) && !(e.restricted && op.subject === 'a.b');
            for (const e of live) if (e.queue === undefined && takes(e)) want.get(e)?.push(n);
            groupCopies[n] = live.some((e) => e.queue !== undefined && takes(e)) ? 1 : 0;
            expect(bus.tryPublish(op.subject, n)).toBe(true);
          }
        }
        await flush();
        for (const e of all) if (e.queue === undefined) expect(e.got).toEqual(want.get(e));
        // The group: one copy of each message some member may receive, to a member that may.
        const grouped = all.filter((e) => e.queue !== undefined).flatMap((e) => e.got.map((n) => [n, e] as const));
        expect(grouped.map(([n]) => n).sort((x, y) => x - y)).toEqual(
          groupCopies.flatMap((c, n) => (c === 1 ? [n] : [])),
        );
        expect(bus.telemetry.counters.published).toBe(published);
      }),
      { numRuns: 300 },
    );
  });
});
