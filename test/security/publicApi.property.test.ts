import fc from 'fast-check';
import {
  Bus,
  type BusClient,
  jsonCodec,
  msgpackCodec,
  type Permissions,
  SluiceError,
  type Subscription,
  VirtualClock,
} from 'sluice';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';

/**
 * Hostile input through the public API: whatever a caller passes (subjects, payloads, headers,
 * options, bytes to decode), the only failures are Sluice errors, nothing hangs, and no promise
 * rejects unobserved.
 */

const SEED = Number(process.env.FUZZ_SEED ?? 20261130);
const RUNS = Number(process.env.FUZZ_RUNS ?? 1000);

/** Characters that stress subject rules: separators, wildcards, every kind of white space, NUL, lone surrogates. */
const nastyChar = fc.constantFrom(
  '.',
  '*',
  '>',
  'a',
  'b',
  '_INBOX',
  '$DLQ',
  ' ',
  '\t',
  '\n',
  '\r',
  '\f',
  '\v',
  '\0',
  '\u00a0',
  '\u2028',
  '\u3000',
  '\ufeff',
  '\ud800',
  '\udfff',
  '😀',
);

const subjectArb: fc.Arbitrary<unknown> = fc.oneof(
  { weight: 4, arbitrary: fc.constantFrom('a', 'a.b', 'a.*', 'a.>', '>', '*', 'x.y.z', '_INBOX.x', '$DLQ.a') },
  { weight: 4, arbitrary: fc.array(nastyChar, { maxLength: 12 }).map((cs) => cs.join('')) },
  { weight: 2, arbitrary: fc.string({ unit: 'binary', maxLength: 40 }) },
  { weight: 1, arbitrary: fc.integer({ min: 1, max: 70_000 }).map((n) => 'a.'.repeat(n) + 'b') },
  { weight: 1, arbitrary: fc.integer({ min: 1, max: 200_000 }).map((n) => 'x'.repeat(n)) },
  { weight: 1, arbitrary: fc.anything() },
);

const payloadArb: fc.Arbitrary<unknown> = fc.oneof(
  {
    weight: 3,
    arbitrary: fc.anything({ withBigInt: true, withDate: true, withMap: true, withSet: true, withTypedArray: true }),
  },
  { weight: 1, arbitrary: fc.string({ unit: 'binary', maxLength: 2000 }) },
  { weight: 1, arbitrary: fc.uint8Array({ maxLength: 4000 }) },
  { weight: 1, arbitrary: fc.bigInt() },
  {
    weight: 1,
    arbitrary: fc.integer({ min: 1, max: 20_000 }).map((depth) => {
      let v: unknown = 1;
      for (let i = 0; i < depth; i++) v = [v];
      return v;
    }),
  },
  {
    weight: 1,
    arbitrary: fc.constant(null).map(() => {
      const o: Record<string, unknown> = { a: 1 };
      o.self = o;
      return o;
    }),
  },
  { weight: 1, arbitrary: fc.constant(Symbol('s')) },
);

const headersArb: fc.Arbitrary<unknown> = fc.oneof(
  fc.constant(undefined),
  fc.dictionary(fc.string({ maxLength: 10 }), fc.string({ maxLength: 20 })),
  fc.dictionary(fc.string({ unit: 'binary', maxLength: 10 }), fc.anything()),
  fc.anything(),
  fc.integer({ min: 1, max: 3_000_000 }).map((n) => ({ big: 'h'.repeat(n) })),
);

const optionsArb: fc.Arbitrary<unknown> = fc.oneof(
  { weight: 1, arbitrary: fc.constant(undefined) },
  { weight: 1, arbitrary: fc.anything() },
  {
    weight: 4,
    arbitrary: fc.record(
      {
        key: fc.oneof(fc.string(), fc.anything()),
        eventTime: fc.oneof(fc.double(), fc.string(), fc.anything()),
        headers: headersArb,
        replyTo: subjectArb,
        id: fc.oneof(fc.string({ maxLength: 300 }), fc.anything()),
        attempt: fc.oneof(fc.integer(), fc.double(), fc.anything()),
        timeoutMs: fc.oneof(fc.integer({ min: -10, max: 2 ** 33 }), fc.double(), fc.anything()),
        lineage: fc.anything(),
      },
      { requiredKeys: [] },
    ),
  },
);

const patternListArb = fc.oneof(
  fc.constant(undefined),
  fc.array(fc.constantFrom('a', 'a.*', 'a.>', '>', '_INBOX.>', 'x.*.z'), { maxLength: 3 }),
  fc.anything(),
);
const permissionsArb: fc.Arbitrary<unknown> = fc.oneof(
  fc.constant(undefined),
  fc.record(
    {
      publish: fc.oneof(
        fc.record({ allow: patternListArb, deny: patternListArb }, { requiredKeys: [] }),
        fc.anything(),
      ),
      subscribe: fc.oneof(
        fc.record({ allow: patternListArb, deny: patternListArb }, { requiredKeys: [] }),
        fc.anything(),
      ),
    },
    { requiredKeys: [] },
  ),
  fc.anything(),
);

const subscribeOptionsArb: fc.Arbitrary<unknown> = fc.oneof(
  fc.constant(undefined),
  fc.anything(),
  fc.record(
    {
      queue: fc.oneof(fc.constantFrom('q', 'workers'), fc.string({ unit: 'binary', maxLength: 8 }), fc.anything()),
      queueStrategy: fc.oneof(fc.constantFrom('round-robin', 'least-loaded'), fc.anything()),
      mailbox: fc.oneof(
        fc.record(
          {
            capacity: fc.oneof(fc.integer({ min: -2, max: 64 }), fc.anything()),
            overflow: fc.oneof(fc.constantFrom('block', 'drop-oldest', 'drop-newest', 'fail'), fc.anything()),
          },
          { requiredKeys: [] },
        ),
        fc.anything(),
      ),
      concurrency: fc.oneof(fc.integer({ min: -1, max: 4 }), fc.anything()),
    },
    { requiredKeys: [] },
  ),
);

type Op =
  | { kind: 'publish'; subject: unknown; data: unknown; options: unknown }
  | { kind: 'tryPublish'; subject: unknown; data: unknown; options: unknown }
  | {
      kind: 'subscribe';
      subject: unknown;
      options: unknown;
      consumer: 'callback' | 'observable' | 'iterator' | 'none';
      throws: boolean;
    }
  | { kind: 'request'; subject: unknown; data: unknown; options: unknown }
  | { kind: 'respond'; data: unknown; options: unknown; replyTo: unknown };

const opArb: fc.Arbitrary<Op> = fc.oneof(
  fc.record({ kind: fc.constant('publish' as const), subject: subjectArb, data: payloadArb, options: optionsArb }),
  fc.record({ kind: fc.constant('tryPublish' as const), subject: subjectArb, data: payloadArb, options: optionsArb }),
  fc.record({
    kind: fc.constant('subscribe' as const),
    subject: subjectArb,
    options: subscribeOptionsArb,
    consumer: fc.constantFrom('callback' as const, 'observable' as const, 'iterator' as const, 'none' as const),
    throws: fc.boolean(),
  }),
  fc.record({ kind: fc.constant('request' as const), subject: subjectArb, data: payloadArb, options: optionsArb }),
  fc.record({ kind: fc.constant('respond' as const), data: payloadArb, options: optionsArb, replyTo: subjectArb }),
);

const busOptionsArb = fc.record(
  {
    maxPayloadBytes: fc.oneof(fc.constant(undefined), fc.integer({ min: 1, max: 4096 })),
    measure: fc.constantFrom(undefined, 'binary' as const, 'encoded' as const),
  },
  { requiredKeys: [] },
);

/** Runs a property and fails with a short report: counterexamples here can be megabytes of subject. */
async function check<Ts extends [unknown, ...unknown[]]>(
  property: fc.IAsyncPropertyWithHooks<Ts> | fc.IPropertyWithHooks<Ts>,
  numRuns: number,
): Promise<void> {
  const details = await fc.check(property as fc.IAsyncPropertyWithHooks<Ts>, {
    seed: SEED,
    numRuns,
    endOnFailure: true,
  });
  if (!details.failed) return;
  let example: string;
  try {
    example = fc.stringify(details.counterexample).slice(0, 1500);
  } catch {
    example = '(too deep to print)';
  }
  const cause = details.errorInstance instanceof Error ? details.errorInstance.message : String(details.errorInstance);
  throw new Error(
    `property failed (seed ${SEED}, path ${details.counterexamplePath}):\n${cause.slice(0, 3000)}\ncounterexample (first 1500 chars): ${example}`,
  );
}

/** Not a Sluice error: what the property must never see. */
function foreign(error: unknown): string | undefined {
  if (error instanceof SluiceError) return undefined;
  const e = error as { name?: string; message?: string; stack?: string } | undefined;
  return `${e?.name ?? typeof error}: ${e?.message ?? String(error)}\n${e?.stack ?? ''}`;
}

describe('the public API under hostile input', () => {
  let unhandled: unknown[];
  const onUnhandled = (reason: unknown) => void unhandled.push(reason);
  const onUncaught = (error: unknown) => void unhandled.push(error);
  beforeEach(() => {
    unhandled = [];
    process.on('unhandledRejection', onUnhandled);
    process.on('uncaughtException', onUncaught);
  });
  afterEach(() => {
    process.off('unhandledRejection', onUnhandled);
    process.off('uncaughtException', onUncaught);
  });

  it('fails only with Sluice errors, never hangs, and leaves no unhandled rejection', async () => {
    await check(
      fc.asyncProperty(
        busOptionsArb,
        permissionsArb,
        fc.array(opArb, { minLength: 1, maxLength: 12 }),
        async (busOptions, permissions, ops) => {
          const clock = new VirtualClock(0);
          const problems: string[] = [];
          const note = (where: string, error: unknown) => {
            const f = foreign(error);
            if (f !== undefined) problems.push(`${where}: ${f}`);
          };
          const bus = new Bus({ ...busOptions, clock, requestTimeoutMs: 50 });
          let client: BusClient = bus;
          try {
            client = bus.client('fuzz', permissions as Permissions);
          } catch (error) {
            note('client', error);
          }
          const subscriptions: Subscription[] = [];
          const pending: Promise<unknown>[] = [];
          const received: { replyTo: string | undefined }[] = [];
          for (const op of ops) {
            try {
              switch (op.kind) {
                case 'publish':
                  pending.push(
                    client.publish(op.subject as string, op.data, op.options as never).catch((e) => note('publish', e)),
                  );
                  break;
                case 'tryPublish':
                  client.tryPublish(op.subject as string, op.data, op.options as never);
                  break;
                case 'request':
                  pending.push(
                    client.request(op.subject as string, op.data, op.options as never).catch((e) => note('request', e)),
                  );
                  break;
                case 'respond': {
                  const target = received.find((r) => r.replyTo !== undefined);
                  const request = {
                    id: 'x',
                    subject: 'a',
                    data: undefined,
                    key: undefined,
                    eventTime: undefined,
                    headers: {},
                    attempt: 1,
                    replyTo: (target?.replyTo ?? op.replyTo) as string,
                    lineage: undefined,
                  };
                  pending.push(client.respond(request, op.data, op.options as never).catch((e) => note('respond', e)));
                  break;
                }
                case 'subscribe': {
                  const opts = (op.options ?? {}) as Record<string, unknown>;
                  const quiet = typeof opts === 'object' && opts !== null && !Array.isArray(opts);
                  const withCallback =
                    quiet && op.consumer === 'observable'
                      ? { ...opts, onError: () => {} }
                      : op.consumer === 'callback' && quiet
                        ? {
                            ...opts,
                            onError: () => {},
                            callback: (env: { replyTo: string | undefined }) => {
                              received.push(env);
                              if (op.throws) throw new Error('consumer fails');
                            },
                          }
                        : op.options;
                  const sub = client.subscribe(op.subject as string, withCallback as never);
                  subscriptions.push(sub);
                  if (op.consumer === 'observable') {
                    sub.observable.subscribe({
                      next: (env) => {
                        received.push(env);
                        if (op.throws) throw new Error('observer fails');
                      },
                      error: (e) => note('observable', e),
                    });
                  } else if (op.consumer === 'iterator') {
                    const it = sub[Symbol.asyncIterator]();
                    pending.push(
                      (async () => {
                        for (let i = 0; i < 3; i++) {
                          const r = await it.next();
                          if (r.done) return;
                          received.push(r.value);
                        }
                        await it.return?.();
                      })().catch((e) => note('iterator', e)),
                    );
                  }
                  break;
                }
              }
            } catch (error) {
              note(op.kind, error);
            }
          }
          // Let requests time out on the virtual clock, then close everything: all pending work must end.
          await clock.advance(1000);
          for (const sub of subscriptions) sub.unsubscribe();
          await clock.advance(1000);
          const settled = await Promise.race([
            Promise.all(pending).then(() => true),
            new Promise<false>((resolve) => setTimeout(() => resolve(false), 5000)),
          ]);
          if (!settled) problems.push('a publish, request or iterator did not settle within 5 s');
          if (problems.length > 0) throw new Error(problems.join('\n'));
        },
      ),
      RUNS,
    );
    // Rejections surface a turn later: give them one.
    await new Promise((resolve) => setImmediate(resolve));
    expect(unhandled.map(foreign).filter((f) => f !== undefined)).toEqual([]);
    expect(unhandled).toEqual([]);
  }, 120_000);

  it('decodes arbitrary bytes to a value or a DecodeError that names the subject', async () => {
    const deep = (n: number, open: number) => {
      const bytes = new Uint8Array(n + 1);
      bytes.fill(open, 0, n);
      bytes[n] = 0x01;
      return bytes;
    };
    const bytesArb = fc.oneof(
      fc.uint8Array({ maxLength: 512 }),
      fc.integer({ min: 1, max: 20_000 }).map((n) => deep(n, 0x91)), // fixarray of one, nested
      fc.integer({ min: 1, max: 20_000 }).map((n) => deep(n, 0x81)), // fixmap of one, nested
      fc.string({ unit: 'binary', maxLength: 256 }).map((s) => new TextEncoder().encode(s)),
      fc.integer({ min: 1, max: 20_000 }).map((n) => new TextEncoder().encode('['.repeat(n) + ']'.repeat(n))),
    );
    await check(
      fc.property(bytesArb, fc.constantFrom(msgpackCodec, jsonCodec), (bytes, codec) => {
        try {
          codec.decode(bytes, 'fuzz.subject');
        } catch (error) {
          const f = foreign(error);
          if (f !== undefined) throw new Error(`decode threw ${f}`);
          expect((error as Error).message).toContain('fuzz.subject');
        }
      }),
      RUNS * 3,
    );
  });

  it('encodes arbitrary values to bytes or a Sluice error', async () => {
    await check(
      fc.property(payloadArb, fc.constantFrom(msgpackCodec, jsonCodec), (value, codec) => {
        try {
          codec.encode(value);
        } catch (error) {
          const f = foreign(error);
          if (f !== undefined) throw new Error(`encode threw ${f}`);
        }
      }),
      RUNS,
    );
  });
});
