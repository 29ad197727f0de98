import fc from 'fast-check';
import {
  Bus,
  isLiteral,
  MAX_SUBJECT_BYTES,
  OptionsError,
  SubjectError,
  type SubjectRule,
  subjectMatches,
  validateSubject,
} from 'sluice';
import { describe, expect, test } from 'vitest';
// The trie is internal (the bus is its only user), so it is imported from its file.
import { type Match, publishTokens, SubjectTrie } from '../../runtime/bus/subjects.ts';
import { thrown } from './helpers.ts';

function expectSubjectError(error: unknown, subject: string, rule: SubjectRule): void {
  expect(error).toBeInstanceOf(SubjectError);
  expect(error).toMatchObject({ name: 'SubjectError', code: 'SLUICE_ERR_SUBJECT', rule, subject });
  expect((error as Error).message).toContain(`'${subject.slice(0, 200)}`);
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
  // White space is what nats-server's protocol splits lines on, no more: JavaScript's \s is wider.
  ['a\fb', undefined, undefined],
  ['a\vb', undefined, undefined],
  ['a\u00a0b.\u3000.\u2028.\ufeff', undefined, undefined],
  ['a\u0000b', undefined, undefined],
  ['ключ.😀', undefined, undefined],
  // A lone surrogate is not Unicode text: as UTF-8 it becomes U+FFFD, another subject.
  ['a\ud800b', 'invalid-unicode', 'invalid-unicode'],
  ['a.\udc00', 'invalid-unicode', 'invalid-unicode'],
  ['a\ud83d', 'invalid-unicode', 'invalid-unicode'],
  ['\ude00\ud83d', 'invalid-unicode', 'invalid-unicode'],
];

// At most 4000 bytes in UTF-8. Labelled: the subjects are too long for a test name.
const longCases: [
  label: string,
  subject: string,
  publish: SubjectRule | undefined,
  subscribe: SubjectRule | undefined,
][] = [
  ['4000 ASCII characters', 'a'.repeat(4000), undefined, undefined],
  ['4001 ASCII characters', 'a'.repeat(4001), 'too-long', 'too-long'],
  ['2000 two-byte characters', 'é'.repeat(2000), undefined, undefined],
  ['2001 two-byte characters', 'é'.repeat(2001), 'too-long', 'too-long'],
  ['1334 three-byte characters', '€'.repeat(1334), 'too-long', 'too-long'],
  ['1000 four-byte characters', '😀'.repeat(1000), undefined, undefined],
  ['1001 four-byte characters', '😀'.repeat(1001), 'too-long', 'too-long'],
  ['2000 tokens', `${'*.'.repeat(1999)}>`, 'wildcard-in-publish', undefined],
  ['2001 tokens', `${'*.'.repeat(2000)}>`, 'too-long', 'too-long'],
  ['50,000 tokens', `${'*.'.repeat(49_999)}>`, 'too-long', 'too-long'],
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

  test.each(longCases)('validateSubject, %s: publish %s, subscribe %s', (_, subject, publishRule, subscribeRule) => {
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

  test('publishTokens, the check on a match-cache miss, agrees with validateSubject for publishing', () => {
    // The same tokens, or the same error: class, rule, subject and message.
    const outcome = (check: () => string[]) => {
      try {
        return check();
      } catch (error) {
        expect(error).toBeInstanceOf(SubjectError);
        const { rule, subject, message } = error as SubjectError;
        return { rule, subject, message };
      }
    };
    const agree = (subject: string) => {
      expect(outcome(() => publishTokens(subject))).toEqual(outcome(() => validateSubject(subject, 'publish')));
    };
    for (const [subject] of cases) agree(subject);
    for (const [, subject] of longCases) agree(subject);
    for (const subject of ['a'.repeat(3999), `${'a.'.repeat(1999)}ab`, `${'a.'.repeat(2000)}a`, 'a.\x7f', 'a.~']) {
      agree(subject);
    }
    // Characters on both sides of each rule: the dot, the wildcards, white space and the rest of
    // the control characters, DEL, Latin-1, BMP and astral characters, and lone surrogates.
    const char = fc.constantFrom(...'ab.*>~ !\t\n\r\f\v\u0000\u001f\u007f\u0080é€😀'.split(''), '\ud800', '\udfff');
    fc.assert(
      fc.property(fc.array(char, { maxLength: 12 }), (chars) => agree(chars.join(''))),
      { numRuns: 3000 },
    );
    for (const value of [undefined, null, 7, {}]) agree(value as unknown as string);
  });

  test.each(longCases)(
    'bus publish and subscribe, %s: a SubjectError, never a RangeError',
    async (_, subject, publishRule, subscribeRule) => {
      const bus = new Bus();
      bus.subscribe('>');
      if (publishRule === undefined) await expect(bus.publish(subject, 1)).resolves.toBeUndefined();
      else expectSubjectError(await bus.publish(subject, 1).catch((e: unknown) => e), subject, publishRule);
      if (subscribeRule === undefined) expect(bus.subscribe(subject).subject).toBe(subject);
      else
        expectSubjectError(
          thrown(() => bus.subscribe(subject)),
          subject,
          subscribeRule,
        );
    },
  );

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

  test('subjects - a too long subject is refused in a message of bounded size that names the limit', () => {
    const subject = `telemetry.${'x'.repeat(16 * 1024)}`;
    const error = thrown(() => validateSubject(subject, 'publish')) as SubjectError;
    expect(error).toMatchObject({ rule: 'too-long', subject });
    expect(error.message).toContain(`at most ${MAX_SUBJECT_BYTES} bytes`);
    expect(error.message.length).toBeLessThan(500);
    expect((thrown(() => validateSubject('é'.repeat(2001), 'publish')) as Error).message).toContain(
      '4002 bytes in UTF-8',
    );
  });

  test('subjects - a lone surrogate is named with its position', () => {
    expect((thrown(() => validateSubject('ab\ud800', 'publish')) as Error).message).toContain(
      'lone surrogate (U+D800) at position 2',
    );
  });

  test('subjects - queue group names follow the same character rule, and _sys_ is reserved', () => {
    const bus = new Bus();
    for (const queue of ['q\f', 'q\u00a0', 'q\u0000', 'a.b', '*', '>', 'q'.repeat(4000)]) {
      expect(bus.subscribe('a', { queue }).subject).toBe('a');
    }
    for (const [queue, words] of [
      ['q b', 'white space'],
      ['q\r', 'white space'],
      ['q\ud800', 'lone surrogate'],
      ['q'.repeat(4001), 'at most 4000 bytes'],
      ['_sys_', 'reserved'],
      ['', 'non-empty'],
    ] as const) {
      const error = thrown(() => bus.subscribe('a', { queue }));
      expect(error).toBeInstanceOf(OptionsError);
      expect((error as Error).message).toContain(words);
    }
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

  test('SubjectTrie - a 50,000-token pattern and subject are walked without recursion', () => {
    // The bus refuses such subjects (too long); the trie itself must still not overflow the stack.
    const trie = new SubjectTrie<Item>();
    const pattern = `${'*.'.repeat(49_999)}>`;
    const item: Item = { id: 1, pattern, queue: undefined };
    trie.insert(pattern, item);
    const subject = `${'a.'.repeat(50_000)}a`;
    expect(trie.match(subject).plain).toEqual([item]);
    expect(trie.match(`${'a.'.repeat(49_998)}a`).plain).toEqual([]);
    expect(trie.remove(pattern, item)).toBe(true);
  });

  test('SubjectTrie - the match cache is bounded in bytes, not only in entries', () => {
    const trie = new SubjectTrie<Item>(65_536, undefined, undefined, 1024 * 1024);
    trie.insert('telemetry.>', { id: 1, pattern: 'telemetry.>', queue: undefined });
    const long = 'x'.repeat(3_900);
    for (let i = 0; i < 60_000; i++) trie.match(`telemetry.${i}.${long}`);
    const { entries, bytes } = trie.cacheStats;
    expect(bytes).toBeLessThanOrEqual(1024 * 1024);
    expect(entries).toBeGreaterThan(200); // filled to the byte bound
    expect(entries).toBeLessThan(300);
    // Short subjects still fill the cache up to its entry limit; once it is full, a subject seen
    // once is not cached, and one seen again is, dropping the oldest eighth of a shard
    // (runtime/bounded.ts says why an eighth).
    const small = new SubjectTrie<Item>(1_000, undefined, undefined, 1024 * 1024);
    for (let i = 0; i < 2_000; i++) small.match(`s.${i}`);
    expect(small.cacheStats.entries).toBe(1_000);
    small.match('s.1999');
    expect(small.cacheStats.entries).toBeLessThan(1_000);
    expect(small.cacheStats.entries).toBeGreaterThan(1_000 - 1_000 / 8);
  });

  test('SubjectTrie - a full cache takes a subject on its second miss, so subjects seen once do not push out those that come back', () => {
    let walks = 0;
    const trie = new SubjectTrie<Item>(100, (subject) => {
      walks++;
      return subject.split('.');
    });
    trie.insert('orders.>', { id: 1, pattern: 'orders.>', queue: undefined });
    for (let i = 0; i < 100; i++) trie.match(`orders.hot.${i}`);
    expect(trie.cacheStats.entries).toBe(100);
    walks = 0;
    // A stream of new subjects while the cache is full: each is walked, none is cached.
    for (let i = 0; i < 10_000; i++) trie.match(`orders.new.${i}`);
    expect(walks).toBe(10_000);
    walks = 0;
    for (let i = 0; i < 100; i++) trie.match(`orders.hot.${i}`);
    expect(walks).toBe(0); // the subjects that were there stay
    // A subject that comes back is cached at its second miss, and hits from then on.
    walks = 0;
    trie.match('orders.back.1');
    trie.match('orders.back.1');
    trie.match('orders.other.1');
    trie.match('orders.back.1');
    expect(walks).toBe(3);
    expect(trie.match('orders.back.1').plain.map((i) => i.id)).toEqual([1]);
    expect(walks).toBe(3);
  });

  test('SubjectTrie - a subject cached at its second miss gives its seen-once bytes back', () => {
    // The seen-once set is bounded in bytes (a quarter of the cache's: here three such subjects).
    // Subjects promoted from it must not keep counting there, or it empties early and forgets
    // subjects still waiting for their second miss.
    let walks = 0;
    const trie = new SubjectTrie<Item>(
      2,
      (subject) => {
        walks++;
        return subject.split('.');
      },
      undefined,
      840,
    );
    trie.insert('>', { id: 1, pattern: '>', queue: undefined });
    trie.match('x.0001');
    trie.match('x.0002');
    expect(trie.cacheStats.entries).toBe(2);
    trie.match('b.0000'); // seen once
    for (const subject of ['a.0001', 'a.0002', 'a.0003']) {
      trie.match(subject);
      trie.match(subject); // promoted into the cache
    }
    trie.match('b.0000'); // its second miss: cached
    walks = 0;
    trie.match('b.0000');
    expect(walks).toBe(0);
  });

  test('SubjectTrie - a subscription change forgets the subjects seen once, as it empties the cache', () => {
    let walks = 0;
    const trie = new SubjectTrie<Item>(2, (subject) => {
      walks++;
      return subject.split('.');
    });
    trie.insert('a.>', { id: 1, pattern: 'a.>', queue: undefined });
    trie.match('a.1');
    trie.match('a.2');
    trie.match('a.3'); // seen once: the cache is full
    trie.insert('b.>', { id: 2, pattern: 'b.>', queue: undefined });
    trie.match('a.1');
    trie.match('a.2');
    // After the change, a.3 starts over: its first miss does not count as a second.
    walks = 0;
    trie.match('a.3');
    trie.match('a.3');
    trie.match('a.3');
    expect(walks).toBe(2);
  });

  test('SubjectTrie - the default byte bound keeps 60,000 distinct 4 KB subjects under 16 MiB', () => {
    const trie = new SubjectTrie<Item>();
    trie.insert('telemetry.>', { id: 1, pattern: 'telemetry.>', queue: undefined });
    const long = 'x'.repeat(3_980);
    for (let i = 0; i < 60_000; i++) trie.match(`telemetry.${i}.${long}`);
    expect(trie.cacheStats.bytes).toBeLessThanOrEqual(16 * 1024 * 1024);
    expect(trie.cacheStats.entries).toBeLessThan(5_000);
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
