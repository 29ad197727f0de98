/**
 * Attacks through what a message carries: an envelope's lineage as a way into the actor that
 * emitted it, forged attempt, event time and id, and headers of any type or size.
 */
import { map } from 'rxjs';
import {
  actor,
  Bus,
  createEnvelope,
  DEAD_LETTER_HEADERS,
  type Envelope,
  MaxPayloadError,
  OptionsError,
  VirtualClock,
  withHeaders,
} from 'sluice';
import { describe, expect, test } from 'vitest';
import { collect, flush, rejection, testRuntime, thrown } from '../runtime/helpers.ts';

/**
 * Every object and function reachable from `root` through own properties (values and getters) and
 * prototypes, stopping at the built-in prototypes.
 */
function reachable(root: unknown): Set<unknown> {
  const builtins = new Set<unknown>([Object.prototype, Function.prototype, Array.prototype, String.prototype]);
  const seen = new Set<unknown>();
  const queue: unknown[] = [root];
  while (queue.length > 0) {
    const value = queue.shift();
    if ((typeof value !== 'object' && typeof value !== 'function') || value === null) continue;
    if (seen.has(value) || builtins.has(value)) continue;
    seen.add(value);
    queue.push(Object.getPrototypeOf(value));
    for (const key of Reflect.ownKeys(value)) {
      try {
        queue.push((value as Record<PropertyKey, unknown>)[key]);
      } catch {
        // A getter that throws on a foreign receiver (Function.prototype.caller) leads nowhere.
      }
    }
  }
  return seen;
}

describe('security - lineage leaks no capability', () => {
  const secret = { card: '4111 1111 1111 1111' };

  for (const mode of ['pipeline', 'handler'] as const) {
    test(`a subscriber of what a ${mode} actor emits cannot reach the actor, its input or its tracker through env.lineage`, async () => {
      const { rt } = testRuntime();
      const admin = collect(rt.bus, 'admin.>');
      const definition =
        mode === 'pipeline'
          ? actor<typeof secret, string>({
              name: 'summarize',
              subscribe: 'payments.in',
              output: 'payments.summary',
              permissions: { publish: { allow: ['payments.summary', 'admin.>'] } },
              pipeline: (in$) => in$.pipe(map((env) => ({ ...env, data: 'one payment' }))),
            })
          : actor<typeof secret, string>({
              name: 'summarize',
              subscribe: 'payments.in',
              output: 'payments.summary',
              permissions: { publish: { allow: ['payments.summary', 'admin.>'] } },
              handle: () => 'one payment',
            });
      rt.spawn(definition);
      // Mallory may publish nowhere and sees only the summaries.
      const mallory = rt.bus.client('mallory', { publish: { allow: [] }, subscribe: { allow: ['payments.summary'] } });
      const got: Envelope[] = [];
      mallory.subscribe('payments.summary', {
        callback: (env) => {
          got.push(env);
          // The attack from the report: publish with the actor's rights through its tracker's owner.
          const lineage = env.lineage as unknown as Record<string, { publish?: (e: Envelope) => unknown } | undefined>;
          void lineage.owner?.publish?.(createEnvelope('admin.shutdown', 'now'));
        },
      });
      await rt.bus.publish('payments.in', secret);
      await rt.idle();
      await flush();

      expect(got).toHaveLength(1);
      const lineage = got[0]?.lineage;
      expect(lineage).toBeDefined();
      expect(lineage?.ids).toHaveLength(1);
      expect(Object.keys(lineage as object)).toEqual([]);
      for (const name of ['owner', 'upstream', 'env', 'span', 'prev', 'next', 'inFlight']) {
        expect((lineage as unknown as Record<string, unknown>)[name], name).toBeUndefined();
      }
      // Nothing reachable from it publishes, holds the input's data, or is the actor's state.
      for (const value of reachable(lineage)) {
        expect(value).not.toBe(secret);
        if (typeof value === 'object') {
          expect(value as object).not.toHaveProperty('publish');
          expect(value as object).not.toHaveProperty('settled');
        }
      }
      expect(admin).toEqual([]);
    });
  }
});

describe('security - forged attempt, event time and id', () => {
  test('attempt is not a publish option: publish, tryPublish and request refuse anything but 1', async () => {
    const bus = new Bus({ clock: new VirtualClock() });
    const got = collect(bus, 'jobs');
    for (const attempt of [-1_000_000, 0, 99, Number.NaN, 1.5, '3']) {
      const options = { attempt } as never;
      const error = await rejection(bus.publish('jobs', 1, options));
      expect(error, String(attempt)).toBeInstanceOf(OptionsError);
      expect(error).toMatchObject({ option: 'publish.attempt' });
      expect(thrown(() => bus.tryPublish('jobs', 1, options))).toMatchObject({ option: 'tryPublish.attempt' });
      expect(await rejection(bus.request('jobs', 1, options))).toMatchObject({ option: 'request.attempt' });
    }
    await flush();
    expect(got).toEqual([]);
  });

  test('a forwarded envelope starts at attempt 1: a forged attempt neither escapes the dead-letter subject nor skips retries', async () => {
    const { rt, clock } = testRuntime();
    const dlq = collect(rt.bus, '$DLQ.fails');
    const attempts: number[] = [];
    rt.spawn(
      actor<number, never>({
        name: 'fails',
        subscribe: 'jobs',
        retry: { maxAttempts: 3, backoff: { initialMs: 10, jitter: 0 } },
        handle: (env) => {
          attempts.push(env.attempt);
          throw new Error('always');
        },
      }),
    );
    for (const attempt of [-1_000_000, 99, Number.NaN]) {
      await rt.bus.forward({ ...createEnvelope('jobs', attempt), attempt });
    }
    await clock.advance(10_000);
    await rt.idle();
    await flush();
    expect(attempts).toEqual([1, 1, 1, 2, 2, 2, 3, 3, 3]);
    expect(dlq).toHaveLength(3);
    expect(dlq.map((e) => e.headers[DEAD_LETTER_HEADERS.attempts])).toEqual(['3', '3', '3']);
  });

  test('an output of a retried input reaches the next actor at attempt 1', async () => {
    const { rt, clock } = testRuntime();
    let failures = 0;
    rt.spawn(
      actor<number, number>({
        name: 'flaky',
        subscribe: 'in',
        output: 'mid',
        retry: { maxAttempts: 3, backoff: { initialMs: 10, jitter: 0 } },
        pipeline: (in$) =>
          in$.pipe(
            map((env) => {
              if (env.attempt < 3 && failures++ < 2) throw new Error('not yet');
              return env;
            }),
          ),
      }),
    );
    const mid = collect(rt.bus, 'mid');
    await rt.bus.publish('in', 1);
    await clock.advance(10_000);
    await rt.idle();
    await flush();
    expect(mid.map((e) => e.attempt)).toEqual([1]);
  });

  test('event time, id, key and lineage are checked: an OptionsError names the option and the rule', async () => {
    const bus = new Bus();
    const got = collect(bus, 'a');
    const cases: [object, string, string][] = [
      [{ eventTime: Number.NaN }, 'publish.eventTime', 'finite number'],
      [{ eventTime: Number.POSITIVE_INFINITY }, 'publish.eventTime', 'finite number'],
      [{ eventTime: '1700000000000' }, 'publish.eventTime', 'finite number'],
      [{ id: '' }, 'publish.id', 'non-empty string of at most 256 characters'],
      [{ id: 'x'.repeat(257) }, 'publish.id', 'at most 256'],
      [{ id: 42 }, 'publish.id', 'non-empty string'],
      [{ key: 7 }, 'publish.key', 'a key is a string'],
      [{ lineage: 5 }, 'publish.lineage', 'retain, absorb, release and releaseAbsorbed methods'],
      [{ lineage: { retain: 1 } }, 'publish.lineage', 'retain, absorb, release and releaseAbsorbed methods'],
    ];
    for (const [options, option, rule] of cases) {
      const error = await rejection(bus.publish('a', 1, options as never));
      expect(error, option).toBeInstanceOf(OptionsError);
      expect(error).toMatchObject({ option });
      expect((error as Error).message).toContain(rule);
    }
    const forwarded = { ...createEnvelope('a', 1), eventTime: 'soon' as unknown as number };
    expect(await rejection(bus.forward(forwarded))).toMatchObject({ option: 'forward.eventTime' });
    expect(await rejection(bus.forward({ ...createEnvelope('a', 1), id: '' }))).toMatchObject({ option: 'forward.id' });
    const badLineage = { ...createEnvelope('a', 1), lineage: 5 as never };
    expect(await rejection(bus.forward(badLineage))).toMatchObject({ option: 'forward.lineage' });
    await flush();
    expect(got).toEqual([]);
    // What is valid still passes.
    await bus.publish('a', 1, { eventTime: 0, id: 'x'.repeat(256), key: 'k' });
    await flush();
    expect(got).toHaveLength(1);
  });
});

describe('security - headers', () => {
  test('headers that are not an object of string names to string values are an OptionsError naming the header', async () => {
    const bus = new Bus();
    const got = collect(bus, 'a');
    const sym = Symbol('h');
    const cases: [unknown, string][] = [
      ['abc', 'publish.headers'],
      [['x'], 'publish.headers'],
      [42, 'publish.headers'],
      [null, 'publish.headers'],
      [{ n: 5 }, "publish.headers['n']"],
      [{ o: {} }, "publish.headers['o']"],
      [{ s: sym }, "publish.headers['s']"],
      [{ '': 'x' }, "publish.headers['']"],
      [{ 'a:b': 'x' }, "publish.headers['a:b']"],
      [{ 'a b': 'x' }, "publish.headers['a b']"],
      [{ 'a\r\nb': 'x' }, "publish.headers['a\r\nb']"],
      [{ é: 'x' }, "publish.headers['é']"],
    ];
    for (const [headers, option] of cases) {
      const error = await rejection(bus.publish('a', 1, { headers } as never));
      expect(error, option).toBeInstanceOf(OptionsError);
      expect(error).toMatchObject({ option });
      expect(thrown(() => bus.tryPublish('a', 1, { headers } as never))).toBeInstanceOf(OptionsError);
    }
    // A symbol-keyed property is no header (as for JSON): it is not copied.
    await bus.publish('a', 0, { headers: { [sym]: 'x', ok: 'y' } as never });
    await flush();
    expect(got.map((e) => [Object.getOwnPropertySymbols(e.headers).length, e.headers])).toEqual([[0, { ok: 'y' }]]);
    got.length = 0;
    const forwarded = { ...createEnvelope('a', 1), headers: { n: 5 } as never };
    expect(await rejection(bus.forward(forwarded))).toMatchObject({ option: "forward.headers['n']" });
    expect(thrown(() => withHeaders(createEnvelope('a', 1), { n: 5 } as never))).toBeInstanceOf(OptionsError);
    await flush();
    expect(got).toEqual([]);
  });

  test('headers made to look checked (the prototype of checked headers, without its constructor) are checked again', async () => {
    const bus = new Bus();
    const got = collect(bus, 'a');
    await bus.publish('a', 1, { headers: { ok: 'y' } });
    await flush();
    const proto = Object.getPrototypeOf(got[0]?.headers) as object;
    const forged = Object.assign(Object.create(proto), { n: 5 }) as Record<string, string>;
    expect(await rejection(bus.forward({ ...createEnvelope('a', 2), headers: forged }))).toBeInstanceOf(OptionsError);
    expect(await rejection(bus.publish('a', 3, { headers: forged }))).toBeInstanceOf(OptionsError);
    await flush();
    expect(got.map((e) => e.data)).toEqual([1]);
  });

  test('header bytes count against maxPayloadBytes, with the payload', async () => {
    const bus = new Bus({ maxPayloadBytes: 1024, clock: new VirtualClock() });
    const got = collect(bus, 'a');
    const requests = collect(bus, 'svc');
    const huge = { big: 'x'.repeat(10 * 1024 * 1024) };
    const error = await rejection(bus.publish('a', 'tiny', { headers: huge }));
    expect(error).toBeInstanceOf(MaxPayloadError);
    expect(error).toMatchObject({ subject: 'a', limit: 1024 });
    expect((error as MaxPayloadError).size).toBeGreaterThan(10 * 1024 * 1024);
    // Each under the limit alone, over it together: `h: ` + 600 + CRLF = 605 header bytes, 500 payload bytes.
    const half = { h: 'y'.repeat(600) };
    expect(thrown(() => bus.tryPublish('a', 'z'.repeat(500), { headers: half }))).toMatchObject({ size: 1105 });
    // Objects are not measured under 'binary', but their headers are.
    expect(await rejection(bus.publish('a', { n: 1 }, { headers: { h: 'y'.repeat(1_100) } }))).toBeInstanceOf(
      MaxPayloadError,
    );
    expect(await rejection(bus.forward({ ...createEnvelope('a', 1), headers: huge }))).toBeInstanceOf(MaxPayloadError);
    // A reply is a publish too: its headers are counted.
    void bus.request('svc', 1).catch(() => undefined);
    await flush();
    const reply = bus.respond(requests[0] as Envelope, 'ok', { headers: { big: 'x'.repeat(2_000) } });
    expect(await rejection(reply)).toBeInstanceOf(MaxPayloadError);
    await flush();
    expect(got).toEqual([]);
    await bus.publish('a', 'z'.repeat(400), { headers: half });
    await flush();
    expect(got).toHaveLength(1);
  });

  test('headers are checked once as they are delivered: a getter cannot show one value to the check and another to subscribers', async () => {
    const bus = new Bus();
    const got = collect(bus, 'a');
    let reads = 0;
    const headers = {
      get h(): string {
        reads++;
        return reads === 1 ? 'fine' : ({} as string);
      },
    };
    await bus.publish('a', 1, { headers });
    await flush();
    expect(got[0]?.headers).toEqual({ h: 'fine' });
    expect(Object.isFrozen(got[0]?.headers)).toBe(true);
  });
});
