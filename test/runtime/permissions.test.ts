import fc from 'fast-check';
import { isSubsetMatch } from 'sluice';
import { describe, expect, test } from 'vitest';
// Overlap is internal (it decides which deny patterns filter a subscription at delivery).
import { overlaps } from '../../runtime/bus/permissions.ts';

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
