import fc from 'fast-check';
import { actor, isSubsetMatch, PermissionError } from 'sluice';
import { describe, expect, test } from 'vitest';
// Overlap is internal (it decides which deny patterns filter a subscription at delivery).
import { overlaps } from '../../runtime/bus/permissions.ts';
import { testRuntime } from './helpers.ts';

/** NATS matching by regular expression, independent of the code under test. */
function matches(pattern: string, subject: string): boolean {
  const parts = pattern.split('.').map((t) => (t === '*' ? '[^.]+' : t === '>' ? '[^.]+(?:\\.[^.]+)*' : t));
  return new RegExp(`^${parts.join('\\.')}$`).test(subject);
}

// Every literal subject of up to 5 tokens over the patterns' letters plus one they never use:
// enough to tell apart patterns of up to 4 tokens, `>` included.
const universe: string[] = [];
for (let n = 1; n <= 5; n++) {
  const build = (prefix: string[]): void => {
    if (prefix.length === n) {
      universe.push(prefix.join('.'));
      return;
    }
    for (const t of ['a', 'b', 'z']) build([...prefix, t]);
  };
  build([]);
}

const patternArb = fc
  .tuple(fc.array(fc.constantFrom('a', 'b', '*'), { minLength: 1, maxLength: 3 }), fc.boolean())
  .map(([tokens, tail]) => (tail ? [...tokens, '>'] : tokens).join('.'));
const anyPatternArb = fc.oneof(patternArb, fc.constant('>'));

describe('permissions - subject algebra', () => {
  test.each([
    ['orders.eu', 'orders.*', true],
    ['orders.*', 'orders.>', true],
    ['orders.eu.*', 'orders.>', true],
    ['orders.*', 'orders.eu', false],
    ['orders.>', 'orders.*', false],
    ['>', 'orders.>', false],
    ['orders.>', '>', true],
    ['*', '>', true],
  ])('permissions - isSubsetMatch(%j, %j) is %s', (sub, pattern, expected) => {
    expect(isSubsetMatch(sub, pattern)).toBe(expected);
  });

  test('permissions - isSubsetMatch holds exactly when every subject of the first is matched by the second', () => {
    fc.assert(
      fc.property(anyPatternArb, anyPatternArb, (sub, pattern) => {
        const subset = universe.every((s) => !matches(sub, s) || matches(pattern, s));
        expect(isSubsetMatch(sub, pattern)).toBe(subset);
      }),
      { numRuns: 1500 },
    );
  });

  test('permissions - overlaps holds exactly when some subject is matched by both patterns', () => {
    fc.assert(
      fc.property(anyPatternArb, anyPatternArb, (x, y) => {
        const some = universe.some((s) => matches(x, s) && matches(y, s));
        expect(overlaps(x, y)).toBe(some);
        expect(overlaps(y, x)).toBe(some);
      }),
      { numRuns: 1500 },
    );
  });
});

describe('permissions - queue groups', () => {
  test("permissions - an actor's queue group is checked against its subscribe entries with a queue group", () => {
    const { rt } = testRuntime();
    const def = (queue: string) =>
      actor({
        name: `worker-${queue}`,
        subscribe: 'orders.eu',
        queue,
        permissions: { subscribe: { allow: ['orders.> billing'] } },
        handle: () => {},
      });
    expect(() => rt.spawn(def('ui'))).toThrow(
      /queue group 'ui' is not in the queue groups allowed on it, 'orders.> billing'/,
    );
    expect(rt.spawn(def('billing')).name).toBe('worker-billing');
  });

  test('permissions - a client that may read a subject cannot join a queue group its entries leave out, and takes no share', async () => {
    const { rt } = testRuntime();
    const got: number[] = [];
    rt.bus.subscribe<number>('orders.eu', { queue: 'billing', callback: (env) => void got.push(env.data) });
    const reader = rt.bus.client('reader', { subscribe: { allow: ['orders.> audit'] } });
    expect(() => reader.subscribe('orders.eu', { queue: 'billing' })).toThrow(PermissionError);
    for (let i = 0; i < 4; i++) await rt.bus.publish('orders.eu', i);
    expect(got).toEqual([0, 1, 2, 3]);
  });
});
