/**
 * Attacks on the permission checks: answering someone else's request (inbox spoofing), making a
 * service publish where the attacker may not (confused deputy through replyTo), and permissions
 * given in a shape that would not be enforced.
 */
import { map } from 'rxjs';
import {
  actor,
  Bus,
  DEAD_LETTER_HEADERS,
  type Envelope,
  nextId,
  OptionsError,
  PermissionError,
  TimeoutError,
  VirtualClock,
} from 'sluice';
import { describe, expect, test } from 'vitest';
import { collect, flush, rejection, testRuntime, thrown } from '../runtime/helpers.ts';

/** The inbox prefix of a bus, as anyone who saw one reply subject knows it: all but the last token. */
function prefixOf(inbox: string): string {
  return inbox.slice(0, inbox.lastIndexOf('.'));
}

describe('security - inbox spoofing (allow_responses)', () => {
  test('a client that may publish nowhere cannot publish under the inbox prefix, to a guessed or a real reply subject', async () => {
    const bus = new Bus({ clock: new VirtualClock() });
    const seenBySpy = collect(bus, '>');
    const requests: Envelope[] = [];
    // The service holds the request without answering, so the request is waiting.
    bus.subscribe('price.quote', { callback: (env) => void requests.push(env) });
    const pending = bus.request<string, { price: number }>('price.quote', 'widget', { timeoutMs: 1_000 });
    await flush();
    const inbox = requests[0]?.replyTo as string;
    expect(typeof inbox).toBe('string');

    const mallory = bus.client('mallory', { publish: { allow: [] } });
    const guessed = `${prefixOf(inbox)}.${nextId()}`;
    const error = await rejection(mallory.publish(guessed, { price: 0 }));
    expect(error).toBeInstanceOf(PermissionError);
    expect(error).toMatchObject({ operation: 'publish', subject: guessed, client: 'mallory' });
    expect((error as Error).message).toContain('no reply subject of a request waiting for its reply');
    expect((error as Error).message).toContain('the allowed subjects are none (allow is empty), and it is');
    expect(() => mallory.tryPublish(`${prefixOf(inbox)}.x`, { price: 0 })).toThrow(PermissionError);
    await flush();
    // Nothing under _INBOX reached the '>' subscriber but the request itself.
    expect(seenBySpy.map((e) => e.subject)).toEqual(['price.quote']);

    // The real service answers; the requester gets its answer.
    await bus.respond(requests[0] as Envelope, { price: 42 });
    expect((await pending).data).toEqual({ price: 42 });
  });

  test('a reply subject takes one reply: a second one from a restricted client is refused, and so is one after the timeout', async () => {
    const clock = new VirtualClock();
    const bus = new Bus({ clock });
    const svc = bus.client('svc', { publish: { allow: ['svc.events'] } });
    const requests: Envelope[] = [];
    svc.subscribe('svc.ask', { callback: (env) => void requests.push(env) });

    const first = bus.request<number, number>('svc.ask', 1, { timeoutMs: 100 });
    await flush();
    await svc.respond(requests[0] as Envelope, 10);
    expect((await first).data).toBe(10);
    const again = await rejection(svc.respond(requests[0] as Envelope, 666));
    expect(again).toBeInstanceOf(PermissionError);
    expect(again).toMatchObject({ subject: requests[0]?.replyTo, client: 'svc' });

    const late = bus.request<number, number>('svc.ask', 2, { timeoutMs: 100 });
    const lateError = rejection(late);
    await flush();
    await clock.advance(100);
    expect(await lateError).toBeInstanceOf(TimeoutError);
    expect(await rejection(svc.respond(requests[1] as Envelope, 20))).toBeInstanceOf(PermissionError);
  });

  test('a reply from an actor whose permissions list no inbox reaches the requester: ctx.respond, and a pipeline output sent to replyTo', async () => {
    const { rt } = testRuntime();
    const permissions = { publish: { allow: ['results.>'] } };
    rt.spawn(
      actor<number, never>({
        name: 'tripler',
        subscribe: 'math.triple',
        permissions,
        handle: async (env, ctx) => {
          await ctx.respond(env.data * 3);
        },
      }),
    );
    rt.spawn(
      actor<number, number>({
        name: 'negator',
        subscribe: 'math.negate',
        permissions,
        pipeline: (in$) => in$.pipe(map((env) => ({ ...env, subject: env.replyTo as string, data: -env.data }))),
      }),
    );
    expect((await rt.bus.request<number, number>('math.triple', 5)).data).toBe(15);
    expect((await rt.bus.request<number, number>('math.negate', 5)).data).toBe(-5);
  });

  test('inbox tokens and message ids cannot be guessed from one another', async () => {
    const bus = new Bus({ clock: new VirtualClock() });
    const seen: Envelope[] = [];
    bus.subscribe('svc', { callback: (env) => void seen.push(env) });
    void bus.request('svc', 1).catch(() => undefined);
    void bus.request('svc', 2).catch(() => undefined);
    await flush();
    const token = (s: string) => s.slice(s.lastIndexOf('.') + 1);
    const [a, b] = seen.map((e) => token(e.replyTo as string)) as [string, string];
    // 24 base64url characters: 144 random bits each.
    expect(a).toMatch(/^[A-Za-z0-9_-]{24}$/);
    expect(a).not.toBe(b);
    // Each id ends in 11 random characters (66 bits): over 2,000 consecutive ids, every one of those
    // places takes most of the 64 values, where a counter would keep its high digits fixed.
    const ids = [...seen.map((e) => e.id), ...Array.from({ length: 2_000 }, () => nextId())];
    expect(new Set(ids).size).toBe(ids.length);
    for (let place = 1; place <= 11; place++) {
      const values = new Set(ids.map((id) => id[id.length - place]));
      expect(values.size, `place ${place} from the end`).toBeGreaterThan(56);
    }
    // No id shares a run of 8 characters with an inbox token.
    for (const id of ids) {
      for (let i = 0; i + 8 <= id.length; i++) {
        expect(a).not.toContain(id.slice(i, i + 8));
        expect(b).not.toContain(id.slice(i, i + 8));
      }
    }
  });
});

describe('security - confused deputy through replyTo', () => {
  function setup() {
    const bus = new Bus({ clock: new VirtualClock() });
    const admin = collect(bus, 'admin.commands');
    const echoed: Envelope[] = [];
    // An unrestricted service that echoes to whatever reply subject it is given.
    bus.subscribe('svc.echo', {
      callback: (env) => {
        echoed.push(env);
        return bus.respond(env, env.data);
      },
    });
    const mallory = bus.client('mallory', { publish: { allow: ['svc.>', 'mallory.>'] } });
    return { bus, admin, echoed, mallory };
  }

  test('the requester side: a replyTo the publisher may not publish to itself is refused, on publish, tryPublish and forward', async () => {
    const { bus, admin, echoed, mallory } = setup();
    const error = await rejection(mallory.publish('svc.echo', 'shutdown', { replyTo: 'admin.commands' }));
    expect(error).toBeInstanceOf(PermissionError);
    expect(error).toMatchObject({ operation: 'publish', subject: 'admin.commands', client: 'mallory' });
    expect((error as Error).message).toContain('a replyTo must be a subject the publisher may publish to itself');
    expect(() => mallory.tryPublish('svc.echo', 'shutdown', { replyTo: 'admin.commands' })).toThrow(PermissionError);
    const crafted: Envelope = {
      id: 'x1',
      subject: 'svc.echo',
      data: 'shutdown',
      key: undefined,
      eventTime: undefined,
      headers: {},
      attempt: 1,
      replyTo: 'admin.commands',
      lineage: undefined,
    };
    expect(await rejection(mallory.forward(crafted))).toBeInstanceOf(PermissionError);
    await flush();
    expect(echoed).toEqual([]);
    expect(admin).toEqual([]);
    expect(bus.telemetry.counters.permissionDenied).toBe(3);

    // Her own reply subject is hers to name.
    const mine = collect(bus, 'mallory.replies');
    await mallory.publish('svc.echo', 'hello', { replyTo: 'mallory.replies' });
    await flush();
    expect(mine.map((e) => e.data)).toEqual(['hello']);
  });

  test('the responder side: a restricted service and an actor cannot be made to publish where they may not, whoever set replyTo', async () => {
    const { rt } = testRuntime();
    const admin = collect(rt.bus, 'admin.commands');
    const dlq = collect(rt.bus, '$DLQ.echo');
    const svc = rt.bus.client('svc', { publish: { allow: ['svc.>'] } });
    const errors: unknown[] = [];
    svc.subscribe('svc.plain', {
      callback: (env) => svc.respond(env, env.data).catch((e: unknown) => void errors.push(e)),
    });
    rt.spawn(
      actor<string, never>({
        name: 'echo',
        subscribe: 'svc.actor',
        permissions: { publish: { allow: ['svc.>'] } },
        retry: { maxAttempts: 1 },
        handle: async (env, ctx) => {
          await ctx.respond(env.data);
        },
      }),
    );
    // The unrestricted bus may name admin.commands as a reply subject; the services still may not publish there.
    await rt.bus.publish('svc.plain', 'stop', { replyTo: 'admin.commands' });
    await rt.bus.publish('svc.actor', 'stop', { replyTo: 'admin.commands' });
    await rt.idle();
    await flush();
    expect(errors[0]).toBeInstanceOf(PermissionError);
    expect(errors[0]).toMatchObject({ subject: 'admin.commands', client: 'svc' });
    expect(dlq).toHaveLength(1);
    expect(dlq[0]?.headers[DEAD_LETTER_HEADERS.code]).toBe('SLUICE_ERR_PERMISSION');
    expect(admin).toEqual([]);
  });

  test('an actor that passes a request on keeps its reply subject, and a restricted one cannot swap in its own', async () => {
    const { rt } = testRuntime();
    // A pipeline that forwards requests to a backend, replyTo untouched: the backend answers the requester.
    rt.spawn(
      actor<number, number>({
        name: 'router',
        subscribe: 'front.ask',
        permissions: { publish: { allow: ['back.ask'] } },
        pipeline: (in$) => in$.pipe(map((env) => ({ ...env, subject: 'back.ask' }))),
      }),
    );
    rt.bus.subscribe<number>('back.ask', { callback: (env) => rt.bus.respond(env, env.data + 1) });
    expect((await rt.bus.request<number, number>('front.ask', 1)).data).toBe(2);

    const dlq = collect(rt.bus, '$DLQ.swapper');
    const admin = collect(rt.bus, 'admin.commands');
    rt.spawn(
      actor<number, number>({
        name: 'swapper',
        subscribe: 'swap.in',
        permissions: { publish: { allow: ['back.ask'] } },
        retry: { maxAttempts: 1 },
        pipeline: (in$) => in$.pipe(map((env) => ({ ...env, subject: 'back.ask', replyTo: 'admin.commands' }))),
      }),
    );
    await rt.bus.publish('swap.in', 1);
    await rt.idle();
    await flush();
    expect(dlq[0]?.headers[DEAD_LETTER_HEADERS.code]).toBe('SLUICE_ERR_PERMISSION');
    expect(admin).toEqual([]);
  });
});

describe('security - forged dead letters', () => {
  test('a restricted client cannot set the dead-letter headers a replay trusts, on publish, tryPublish and forward', async () => {
    // A replay publishes a letter to its 'sluice-original-subject' with the runtime's rights: a
    // letter a restricted client made up would carry its publish to a subject it may not reach.
    const { rt } = testRuntime();
    const admin = collect(rt.bus, 'admin.>');
    const letters = collect(rt.bus, '$DLQ.>');
    const mallory = rt.bus.client('mallory', { publish: { allow: ['>'], deny: ['admin.>'] } });
    const forged = { [DEAD_LETTER_HEADERS.subject]: 'admin.shutdown', [DEAD_LETTER_HEADERS.error]: 'boom' };
    expect(await rejection(mallory.publish('admin.shutdown', 'now'))).toBeInstanceOf(PermissionError);
    const error = await rejection(mallory.publish('$DLQ.orders', 'now', { headers: forged }));
    expect(error).toBeInstanceOf(PermissionError);
    expect((error as Error).message).toContain(
      `header '${DEAD_LETTER_HEADERS.error}' is set by the runtime on dead letters only`,
    );
    expect(() => mallory.tryPublish('$DLQ.orders', 'now', { headers: forged })).toThrow(PermissionError);
    const crafted: Envelope = {
      id: 'x2',
      subject: '$DLQ.orders',
      data: 'now',
      key: undefined,
      eventTime: undefined,
      headers: { [DEAD_LETTER_HEADERS.subject]: 'admin.shutdown' },
      attempt: 1,
      replyTo: undefined,
      lineage: undefined,
    };
    expect(await rejection(mallory.forward(crafted))).toBeInstanceOf(PermissionError);
    await flush();
    expect(letters).toEqual([]);
    // Nothing reached the dead-letter subjects for an operator to replay, nor admin.
    expect(admin).toEqual([]);
    // Other headers are hers to set.
    await mallory.publish('$DLQ.orders', 'note', { headers: { trace: 'abc' } });
    await flush();
    expect(letters.map((e) => e.data)).toEqual(['note']);
  });
});

describe('security - permissions in a shape that would not be enforced', () => {
  test('a permission list given as a string is an OptionsError at bus.client(), naming the list', () => {
    const bus = new Bus();
    const cases: [unknown, string][] = [
      [{ publish: { allow: 'orders' } }, "client 'c'.permissions.publish.allow"],
      [{ subscribe: { deny: 'admin.>' } }, "client 'c'.permissions.subscribe.deny"],
      [{ publish: 'orders' }, "client 'c'.permissions.publish"],
      [{ publish: ['orders'] }, "client 'c'.permissions.publish"],
      ['orders', "client 'c'.permissions"],
      [{ publish: { allow: { 0: 'orders' } } }, "client 'c'.permissions.publish.allow"],
    ];
    for (const [permissions, option] of cases) {
      const error = thrown(() => bus.client('c', permissions as never));
      expect(error, option).toBeInstanceOf(OptionsError);
      expect(error).toMatchObject({ option });
    }
  });

  test('a permission list given as a string is an OptionsError at spawn, naming the actor', () => {
    const { rt } = testRuntime();
    const error = thrown(() =>
      rt.spawn(
        actor<number, never>({
          name: 'loose',
          subscribe: 'in',
          permissions: { publish: { allow: 'orders' as never } },
          handle: () => undefined,
        }),
      ),
    );
    expect(error).toBeInstanceOf(OptionsError);
    expect(error).toMatchObject({ option: "actor 'loose'.permissions.publish.allow" });
  });

  test('a client keeps the permissions it was given: changing the caller array later changes nothing', async () => {
    const bus = new Bus();
    const allow = ['orders'];
    const c = bus.client('c', { publish: { allow } });
    allow.push('admin.>');
    expect(await rejection(c.publish('admin.x', 1))).toBeInstanceOf(PermissionError);
  });
});

describe('security - a publish permission checked once per subject', () => {
  test('a client turning from an allowed subject to a denied one and back is refused each time it is denied, routes changing or not', () => {
    const bus = new Bus({ clock: new VirtualClock() });
    const got = collect(bus, 'orders.>');
    const shop = bus.client('shop', { publish: { allow: ['orders.>'], deny: ['orders.us.>'] } });
    expect(shop.tryPublish('orders.eu.created', 1)).toBe(true);
    expect(shop.tryPublish('orders.eu.created', 2)).toBe(true);
    expect(thrown(() => shop.tryPublish('orders.us.created', 3))).toBeInstanceOf(PermissionError);
    expect(thrown(() => shop.tryPublish('orders.us.created', 4))).toBeInstanceOf(PermissionError);
    // A new route changes the bus's routes while the client's last subject stays the denied one.
    bus.subscribe('orders.us.>', { callback: () => undefined });
    expect(thrown(() => shop.tryPublish('orders.us.created', 5))).toBeInstanceOf(PermissionError);
    expect(shop.tryPublish('orders.eu.created', 6)).toBe(true);
    expect(thrown(() => shop.tryPublish('orders.us.created', 7))).toBeInstanceOf(PermissionError);
    expect(got.map((e) => e.data)).toEqual([1, 2, 6]);
  });
});
