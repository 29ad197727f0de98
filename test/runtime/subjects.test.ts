import fc from 'fast-check';
import { Bus, isLiteral, SubjectError, type SubjectRule, subjectMatches, validateSubject } from 'sluice';
import { describe, expect, test } from 'vitest';
// The trie is internal (the bus is its only user), so it is imported from its file.
import { type Match, SubjectTrie } from '../../runtime/subjects.ts';
import { thrown } from './helpers.ts';

function expectSubjectError(error: unknown, subject: string, rule: SubjectRule): void {
  expect(error).toBeInstanceOf(SubjectError);
  expect(error).toMatchObject({ name: 'SubjectError', code: 'SLUICE_ERR_SUBJECT', rule, subject });
  expect((error as Error).message).toContain(`'${subject}'`);
}

// Each case: subject, and the rule it breaks for publish and for subscribe (undefined: valid).
const cases: [subject: string, publish: SubjectRule | undefined, subscribe: SubjectRule | undefined][] = [
  ['orders', undefined, undefined],
  ['orders.eu.created', undefined, undefined],
  ['', 'empty', 'empty'],
  ['.', 'empty-token', 'empty-token'],
  ['.orders', 'empty-token', 'empty-token'],
  ['orders.', 'empty-token', 'empty-token'],
  ['orders..eu', 'empty-token', 'empty-token'],
  ['orders eu', 'whitespace', 'whitespace'],
  [' orders', 'whitespace', 'whitespace'],
  ['orders\t.eu', 'whitespace', 'whitespace'],
  ['orders.eu\n', 'whitespace', 'whitespace'],
  ['orders\r\n', 'whitespace', 'whitespace'],
  ['*', 'wildcard-in-publish', undefined],
  ['>', 'wildcard-in-publish', undefined],
  ['orders.*', 'wildcard-in-publish', undefined],
  ['*.eu', 'wildcard-in-publish', undefined],
  ['orders.>', 'wildcard-in-publish', undefined],
  ['*.>', 'wildcard-in-publish', undefined],
  ['orders.*.created', 'wildcard-in-publish', undefined],
  ['orders.>.eu', 'wildcard-in-publish', 'full-wildcard-not-last'],
  ['>.orders', 'wildcard-in-publish', 'full-wildcard-not-last'],
  ['>.>', 'wildcard-in-publish', 'full-wildcard-not-last'],
  // As in NATS, `*` and `>` are wildcards only as whole tokens: inside a token they are literal.
  ['a*', undefined, undefined],
  ['a>b', undefined, undefined],
  ['orders.eu*.x', undefined, undefined],
  ['**', undefined, undefined],
  ['>>', undefined, undefined],
  // An empty token is reported before the wildcard that follows it.
  ['orders..*', 'empty-token', 'empty-token'],
];

describe('subjects - validation', () => {
  test.each(cases)('validateSubject %j: publish %s, subscribe %s', (subject, publishRule, subscribeRule) => {
    for (const [use, rule] of [
      ['publish', publishRule],
      ['subscribe', subscribeRule],
    ] as const) {
      if (rule === undefined) expect(validateSubject(subject, use)).toEqual(subject.split('.'));
      else
        expectSubjectError(
          thrown(() => validateSubject(subject, use)),
          subject,
          rule,
        );
    }
  });

  test.each(cases)(
    'bus publish and subscribe %j give the same verdicts',
    async (subject, publishRule, subscribeRule) => {
      const bus = new Bus();
      if (publishRule === undefined) await expect(bus.publish(subject, 1)).resolves.toBeUndefined();
      else {
        expectSubjectError(await bus.publish(subject, 1).catch((e: unknown) => e), subject, publishRule);
        expectSubjectError(
          thrown(() => bus.tryPublish(subject, 1)),
          subject,
          publishRule,
        );
      }
      if (subscribeRule === undefined) expect(bus.subscribe(subject).subject).toBe(subject);
      else
        expectSubjectError(
          thrown(() => bus.subscribe(subject)),
          subject,
          subscribeRule,
        );
    },
  );

  test('subjects - the message names the broken rule in words', () => {
    expect((thrown(() => validateSubject('a..b', 'publish')) as Error).message).toBe(
      "invalid subject 'a..b': token 2 is empty; tokens are separated by one dot",
    );
    expect((thrown(() => validateSubject('a.*', 'publish')) as Error).message).toContain('not publishing');
    expect((thrown(() => validateSubject('a.>.b', 'subscribe')) as Error).message).toContain(
      "'>' must be the last token",
    );
    expect((thrown(() => validateSubject('a\tb', 'publish')) as Error).message).toContain('position 1');
  });

  test('subjects - a subject that is not a string is refused by name', () => {
    const error = thrown(() => validateSubject(undefined as unknown as string, 'publish'));
    expect(error).toBeInstanceOf(SubjectError);
    expect(error).toMatchObject({ rule: 'not-a-string', subject: 'undefined' });
    expect((error as Error).message).toContain('got undefined');
  });

  test('subjects - publishing to an undefined subject from untyped code is a SubjectError, not a TypeError', async () => {
    const bus = new Bus();
    const error = await bus.publish(undefined as unknown as string, 1).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(SubjectError);
    expect(error).toMatchObject({ rule: 'not-a-string' });
  });

  test('subjects - isLiteral is true only without whole-token wildcards', () => {
    expect(isLiteral('a.b')).toBe(true);
    expect(isLiteral('a*.b>')).toBe(true);
    expect(isLiteral('a.*')).toBe(false);
    expect(isLiteral('>')).toBe(false);
  });
});

describe('subjects - matching', () => {
  test.each([
    ['a.b', 'a.b', true],
    ['a.b', 'a.c', false],
    ['a.b', 'a.b.c', false],
    ['a.*', 'a.b', true],
    ['a.*', 'a', false],
    ['a.*', 'a.b.c', false],
    ['*', 'a', true],
    ['*', 'a.b', false],
    ['a.>', 'a.b', true],
    ['a.>', 'a.b.c.d', true],
    ['a.>', 'a', false],
    ['>', 'a', true],
    ['>', 'a.b.c', true],
    ['*.>', 'a', false],
    ['*.>', 'a.b', true],
    ['a.*.c', 'a.b.c', true],
    ['a.*.c', 'a.b.d', false],
    ['a*', 'a*', true],
    ['a*', 'ab', false],
    ['a>b', 'a>b', true],
    ['a>b', 'a.x', false],
  ])('subjectMatches(%j, %j) is %s', (pattern, subject, expected) => {
    expect(subjectMatches(pattern, subject)).toBe(expected);
  });
});

// ---- property tests: the trie against references written here, independent of the code under test ----

/** NATS matching by regular expression: a different algorithm from both the trie and subjectMatches. */
function referenceMatches(pattern: string, subject: string): boolean {
  const parts = pattern.split('.').map((t) => {
    if (t === '*') return '[^.]+';
    if (t === '>') return '[^.]+(?:\\.[^.]+)*';
    return t.replace(/[\\^$.*+?()[\]{}|]/g, '\\$&');
  });
  return new RegExp(`^${parts.join('\\.')}$`).test(subject);
}

// A small alphabet makes collisions (several patterns matching one subject) common.
const literalToken = fc.constantFrom('a', 'b', 'c', 'a*', 'b>');
const subjectArb = fc.array(literalToken, { minLength: 1, maxLength: 4 }).map((t) => t.join('.'));
const patternArb = fc
  .tuple(fc.array(fc.oneof(literalToken, fc.constant('*')), { minLength: 1, maxLength: 4 }), fc.boolean())
  .map(([tokens, tail]) => (tail ? [...tokens, '>'] : tokens).join('.'));
const queueArb = fc.constantFrom(undefined, undefined, 'q1', 'q2');

interface Item {
  readonly id: number;
  readonly pattern: string;
  readonly queue: string | undefined;
}

/** A match as sorted ids: plain ones, and each group's members keyed by its queue name. */
function shape(m: Match<Item>): { plain: number[]; groups: Record<string, number[]> } {
  const groups: Record<string, number[]> = {};
  for (const members of m.groups) {
    const queue = members[0]?.queue as string;
    expect(groups[queue]).toBeUndefined(); // one entry per queue name
    groups[queue] = members.map((i) => i.id).sort((x, y) => x - y);
  }
  return { plain: m.plain.map((i) => i.id).sort((x, y) => x - y), groups };
}

function expected(items: readonly Item[], subject: string): { plain: number[]; groups: Record<string, number[]> } {
  const plain: number[] = [];
  const groups: Record<string, number[]> = {};
  for (const item of items) {
    if (!referenceMatches(item.pattern, subject)) continue;
    if (item.queue === undefined) plain.push(item.id);
    else (groups[item.queue] ??= []).push(item.id);
  }
  for (const ids of Object.values(groups)) ids.sort((x, y) => x - y);
  return { plain: plain.sort((x, y) => x - y), groups };
}

type Op =
  | { kind: 'insert'; pattern: string; queue: string | undefined }
  | { kind: 'remove'; pick: number }
  | { kind: 'match'; subject: string };

const opArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 3, arbitrary: fc.record({ kind: fc.constant('insert' as const), pattern: patternArb, queue: queueArb }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('remove' as const), pick: fc.nat() }) },
  { weight: 3, arbitrary: fc.record({ kind: fc.constant('match' as const), subject: subjectArb }) },
);

describe('subjects - trie properties', () => {
  test('subjectMatches agrees with a reference matcher', () => {
    fc.assert(
      fc.property(patternArb, subjectArb, (pattern, subject) => {
        expect(subjectMatches(pattern, subject)).toBe(referenceMatches(pattern, subject));
      }),
      { numRuns: 2000 },
    );
  });

  test('SubjectTrie.match equals a brute-force scan for random patterns and subjects', () => {
    fc.assert(
      fc.property(
        fc.array(fc.tuple(patternArb, queueArb), { maxLength: 30 }),
        fc.array(subjectArb, { minLength: 1, maxLength: 20 }),
        (patterns, subjects) => {
          const trie = new SubjectTrie<Item>();
          const items = patterns.map(([pattern, queue], id) => ({ id, pattern, queue }));
          for (const item of items) trie.insert(item.pattern, item);
          expect(trie.size).toBe(items.length);
          for (const subject of subjects) {
            expect(shape(trie.match(subject))).toEqual(expected(items, subject));
            // Brute force with subjectMatches too: the trie and the scan the bus could have used agree.
            const scanned = items.filter((i) => subjectMatches(i.pattern, subject)).map((i) => i.id);
            const m = trie.match(subject);
            expect([...m.plain, ...m.groups.flat()].map((i) => i.id).sort((x, y) => x - y)).toEqual(scanned);
          }
        },
      ),
      { numRuns: 500 },
    );
  });

  test('SubjectTrie.match stays right under random interleavings of insert, remove and cached matches', () => {
    fc.assert(
      fc.property(
        fc.array(opArb, { maxLength: 60 }),
        fc.array(subjectArb, { minLength: 1, maxLength: 8 }),
        (ops, probes) => {
          const trie = new SubjectTrie<Item>(4); // a tiny cache, so eviction runs too
          let live: Item[] = [];
          let nextId = 0;
          const check = (subject: string) => {
            const first = trie.match(subject);
            // Asking again without a change may come from the cache: it must be the same answer.
            const second = trie.match(subject);
            expect(shape(first)).toEqual(expected(live, subject));
            expect(shape(second)).toEqual(expected(live, subject));
          };
          for (const op of ops) {
            if (op.kind === 'insert') {
              const item = { id: nextId++, pattern: op.pattern, queue: op.queue };
              trie.insert(item.pattern, item);
              live.push(item);
            } else if (op.kind === 'remove') {
              if (live.length === 0) {
                expect(trie.remove('a', { id: -1, pattern: 'a', queue: undefined })).toBe(false);
                continue;
              }
              const item = live[op.pick % live.length] as Item;
              expect(trie.remove(item.pattern, item)).toBe(true);
              expect(trie.remove(item.pattern, item)).toBe(false); // already gone
              live = live.filter((i) => i !== item);
            } else check(op.subject);
            expect(trie.size).toBe(live.length);
            for (const subject of probes) check(subject);
          }
          // Removing everything prunes the trie back to matching nothing.
          for (const item of live) trie.remove(item.pattern, item);
          for (const subject of probes) expect(shape(trie.match(subject))).toEqual({ plain: [], groups: {} });
          expect(trie.size).toBe(0);
        },
      ),
      { numRuns: 300 },
    );
  });

  test('SubjectTrie - a match obtained before a remove or insert is not changed by it', () => {
    fc.assert(
      fc.property(
        fc.array(fc.tuple(patternArb, queueArb), { minLength: 1, maxLength: 20 }),
        subjectArb,
        fc.nat(),
        (patterns, subject, pick) => {
          const trie = new SubjectTrie<Item>();
          const items = patterns.map(([pattern, queue], id) => ({ id, pattern, queue }));
          for (const item of items) trie.insert(item.pattern, item);
          const before = trie.match(subject);
          const snapshot = shape(before);
          const removed = items[pick % items.length] as Item;
          trie.remove(removed.pattern, removed);
          trie.insert('>', { id: 999, pattern: '>', queue: undefined });
          trie.insert('>', { id: 1000, pattern: '>', queue: 'q1' });
          expect(shape(before)).toEqual(snapshot);
          expect(Object.isFrozen(before.plain)).toBe(true);
          expect(before.groups.every((g) => Object.isFrozen(g))).toBe(true);
          // And the next match sees the change.
          const after = shape(trie.match(subject));
          expect(after.plain).toContain(999);
          expect([...after.plain, ...Object.values(after.groups).flat()]).not.toContain(removed.id);
        },
      ),
      { numRuns: 200 },
    );
  });

  test('SubjectTrie - inserting the same item twice under one pattern holds and counts it once', () => {
    const trie = new SubjectTrie<Item>();
    const item: Item = { id: 1, pattern: 'a.*', queue: undefined };
    trie.insert('a.*', item);
    trie.insert('a.*', item);
    expect(trie.size).toBe(1);
    expect(trie.match('a.b').plain).toEqual([item]);
    expect(trie.remove('a.*', item)).toBe(true);
    expect(trie.size).toBe(0);
    expect(trie.match('a.b').plain).toEqual([]);
  });

  test('SubjectTrie - removing under the wrong pattern removes nothing', () => {
    const trie = new SubjectTrie<Item>();
    const item: Item = { id: 1, pattern: 'a.>', queue: undefined };
    trie.insert('a.>', item);
    expect(trie.remove('a.*', item)).toBe(false);
    expect(trie.remove('a.b', item)).toBe(false);
    expect(trie.remove('>', item)).toBe(false);
    expect(trie.size).toBe(1);
    expect(trie.match('a.b.c').plain).toEqual([item]);
  });
});
