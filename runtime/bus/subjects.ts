import { dropOldest } from '../bounded.ts';
import { SubjectError } from '../errors.ts';

/**
 * Subject syntax and matching, following NATS exactly so the same names work in-process and on a
 * NATS server: tokens separated by `.`, a token that is exactly `*` matches one token, a last token
 * that is exactly `>` matches one or more tokens. As in NATS, `*` or `>` inside a longer token
 * (`ord*`) is an ordinary character, not a wildcard. The characters allowed are nats-server's
 * (checked against the server in test/security/natsServerSubjects.test.ts): anything but space,
 * tab, CR and LF, in valid Unicode, up to {@link MAX_SUBJECT_BYTES}.
 */

/**
 * The longest subject, in UTF-8 bytes. nats-server refuses a protocol line (`PUB subject reply
 * size`, `SUB subject queue sid`) longer than 4 KiB; 4000 bytes leave room for the rest of the
 * line, so a subject Sluice takes also fits a NATS server. It also bounds what one subject can cost.
 */
export const MAX_SUBJECT_BYTES = 4000;

/** A broken character rule: what to call it and the words for the message. */
interface Problem {
  readonly rule: 'whitespace' | 'too-long' | 'invalid-unicode';
  readonly detail: string;
}

/**
 * Checks what nats-server itself checks of a subject's or queue name's characters, as the client
 * protocol carries them: the protocol splits a line on space, tab, CR and LF, so those cannot be
 * part of a name (every other character can, NUL, form feed and Unicode spaces included); a line
 * holds at most 4 KiB; and a name travels as UTF-8, where a lone UTF-16 surrogate becomes U+FFFD,
 * another name. One pass over the characters, run on a match-cache miss or a subscribe only.
 */
function characterProblem(text: string, what: string): Problem | undefined {
  // A UTF-16 unit is at least one UTF-8 byte: a long string is refused before it is scanned.
  if (text.length > MAX_SUBJECT_BYTES) return tooLong(what, text.length, true);
  let bytes = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c < 0x80) {
      bytes++;
      if (c === 32 || c === 9 || c === 10 || c === 13) {
        return {
          rule: 'whitespace',
          detail: `white space at position ${i} (${JSON.stringify(text[i])}); a ${what} may not contain spaces, tabs or line breaks`,
        };
      }
    } else if (c < 0x800) bytes += 2;
    else if (c >= 0xd800 && c <= 0xdfff) {
      const next = text.charCodeAt(i + 1);
      if (c > 0xdbff || !(next >= 0xdc00 && next <= 0xdfff)) {
        return {
          rule: 'invalid-unicode',
          detail: `a lone surrogate (U+${c.toString(16).toUpperCase()}) at position ${i} is not Unicode text; as UTF-8 it would become U+FFFD, another ${what}`,
        };
      }
      bytes += 4;
      i++;
    } else bytes += 3;
  }
  return bytes > MAX_SUBJECT_BYTES ? tooLong(what, bytes, false) : undefined;
}

function tooLong(what: string, size: number, units: boolean): Problem {
  const measured = units ? `${size} characters` : `${size} bytes in UTF-8`;
  return {
    rule: 'too-long',
    detail: `${measured}; a ${what} has at most ${MAX_SUBJECT_BYTES} bytes in UTF-8 (it must fit nats-server's 4 KiB protocol line)`,
  };
}

/**
 * Why `queue` is not a valid queue group name, or undefined when it is: nats-server's rule, which
 * is the subject's character rule (no space, tab or line break, at most {@link MAX_SUBJECT_BYTES})
 * without the token rules, and `_sys_`, which the server reserves.
 */
export function queueProblem(queue: unknown): string | undefined {
  if (typeof queue !== 'string' || queue === '') return 'a queue group name is a non-empty string';
  if (queue === '_sys_') return "'_sys_' is reserved by nats-server";
  return characterProblem(queue, 'queue group name')?.detail;
}

/** Throws a {@link SubjectError} naming the subject and the broken rule, or returns the tokens. */
export function validateSubject(subject: string, use: 'publish' | 'subscribe'): string[] {
  if (typeof subject !== 'string') {
    throw new SubjectError(String(subject), 'not-a-string', `a subject is a string, got ${typeof subject}`);
  }
  if (subject.length === 0) throw new SubjectError(subject, 'empty', 'a subject has at least one token');
  const problem = characterProblem(subject, 'subject');
  if (problem !== undefined) throw new SubjectError(subject, problem.rule, problem.detail);
  const tokens = subject.split('.');
  for (let i = 0; i < tokens.length; i++) {
    const token = tokens[i];
    if (token === '') {
      throw new SubjectError(subject, 'empty-token', `token ${i + 1} is empty; tokens are separated by one dot`);
    }
    if (token === '*' || token === '>') {
      if (use === 'publish') {
        throw new SubjectError(subject, 'wildcard-in-publish', `'*' and '>' are for subscribing, not publishing`);
      }
      if (token === '>' && i !== tokens.length - 1) {
        throw new SubjectError(
          subject,
          'full-wildcard-not-last',
          `'>' must be the last token, found at token ${i + 1}`,
        );
      }
    }
  }
  return tokens;
}

/**
 * {@link validateSubject} for publishing, on a match-cache miss: one pass over the characters finds
 * the common subject valid (printable ASCII, which is one byte a character, without an empty or a
 * wildcard token); anything else, valid or not, takes the full check, which names the broken rule.
 */
export function publishTokens(subject: string): string[] {
  if (typeof subject !== 'string') return validateSubject(subject, 'publish');
  const n = subject.length;
  if (n === 0 || n > MAX_SUBJECT_BYTES) return validateSubject(subject, 'publish');
  // Cut here rather than by split('.'), which costs twice as much on a subject V8 has not interned.
  const tokens: string[] = [];
  let start = 0;
  for (let i = 0; i <= n; i++) {
    const c = i === n ? 46 : subject.charCodeAt(i);
    if (c === 46) {
      // '.', or the end: a token ends here. An empty one, and `*` or `>` alone, are refused.
      const length = i - start;
      if (length === 0) return validateSubject(subject, 'publish');
      if (length === 1) {
        const t = subject.charCodeAt(start);
        if (t === 42 || t === 62) return validateSubject(subject, 'publish');
      }
      tokens.push(length === n ? subject : subject.slice(start, i));
      start = i + 1;
      // Space and below (white space, control characters), DEL and above (not ASCII).
    } else if (c <= 32 || c >= 127) return validateSubject(subject, 'publish');
  }
  return tokens;
}

/** True when the (valid) subject has no wildcard token. */
export function isLiteral(subject: string): boolean {
  return !subject.split('.').some((t) => t === '*' || t === '>');
}

/** True when the literal `subject` is matched by `pattern`; both are assumed valid. */
export function subjectMatches(pattern: string, subject: string): boolean {
  const p = pattern.split('.');
  const s = subject.split('.');
  for (let i = 0; i < p.length; i++) {
    const token = p[i];
    if (token === '>') return s.length > i;
    if (i >= s.length) return false;
    if (token !== '*' && token !== s[i]) return false;
  }
  return p.length === s.length;
}

/** Anything held in the trie: a plain subscriber has no queue group. */
export interface Routable {
  readonly queue?: string | undefined;
}

/** What a literal subject reaches: plain subscribers each get a copy, each queue group one copy. */
export interface Match<T extends Routable> {
  readonly plain: readonly T[];
  readonly groups: readonly (readonly T[])[];
}

interface TrieNode<T> {
  literal: Map<string, TrieNode<T>> | undefined;
  star: TrieNode<T> | undefined;
  /** Subscriptions ending in `>` at this level. */
  tail: Set<T> | undefined;
  /** Subscriptions ending exactly here. */
  here: Set<T> | undefined;
}

const EMPTY_MATCH: Match<never> = Object.freeze({ plain: Object.freeze([]), groups: Object.freeze([]) });

/**
 * A token trie of subscriptions with a cache of match results, so a publish costs one map lookup
 * once a subject has been seen, and a cold publish walks one path per wildcard instead of scanning
 * every subscription. Results are frozen snapshots: subscribing or unsubscribing while a publish
 * iterates a result never changes what that publish sees, and clears the cache for the next one.
 * A `compile` step may turn each result into what its user routes with (the bus's routing plan,
 * `M`), so that work is done once per subject and cached with it, not once per publish.
 */
export class SubjectTrie<T extends Routable, M extends Match<T> = Match<T>> {
  readonly #root: TrieNode<T> = newNode();
  /**
   * The match cache, in {@link CACHE_SHARDS} maps picked by a few characters of the subject. One
   * map of ten thousand subjects or more lives in V8's large-object space, where filling it costs
   * about ten times what it costs in maps of a thousand: on a cold bus that was a third of a miss.
   */
  readonly #shards: Map<string, M>[] = Array.from({ length: CACHE_SHARDS }, () => new Map<string, M>());
  #entries = 0;
  /** Where eviction looks next when the shard being filled has nothing to give. */
  #evictFrom = 0;
  /** The walk's stack, kept between walks: a walk runs no other code, so no two share it. */
  readonly #stack: (TrieNode<T> | number)[] = [];
  /**
   * Subjects that missed once lately, while the cache is full: then a subject is cached only when
   * it misses again. One seen once (an order id in the subject, a stream of new keys) would only
   * push out subjects that come back, and its entry lived long enough to be collected as an old
   * object: with a new subject on every publish, caching each one made a publish cost 3.4 µs, a
   * third of it in collection. Emptied whole when full, so it never walks itself to evict
   * (runtime/bounded.ts).
   */
  readonly #seenOnce = new Set<string>();
  #seenOnceBytes = 0;
  readonly #cacheLimit: number;
  readonly #cacheByteLimit: number;
  #cacheBytes = 0;
  #size = 0;
  /**
   * Changes on every insert and removal: a caller that keeps a result of {@link match} (a
   * publisher's last subject) may use it while the epoch is the one it read with it.
   */
  epoch = 0;

  readonly #checkMiss: ((subject: string) => readonly string[] | undefined) | undefined;
  readonly #uncached: ((subject: string) => boolean) | undefined;
  readonly #compile: ((match: Match<T>, subject: string) => M) | undefined;

  /**
   * @param cacheLimit subjects whose results are kept; above the number of live subjects, every
   *   publish after the first costs one map lookup, below it FIFO eviction makes most of them walks.
   * @param checkMiss runs on a cache miss before the walk (the bus validates the subject there), so
   *   a cached subject is known valid and a hot publish needs no other lookup. The subject's tokens
   *   it returns (validation splits it anyway) spare the walk a second split.
   * @param uncached subjects never worth caching (one-off reply inboxes): caching them would evict
   *   hot subjects.
   * @param cacheByteLimit what the cached subjects may cost, counted as {@link cacheCost}: the
   *   entry limit alone would let long distinct subjects hold hundreds of megabytes.
   * @param compile turns a result into what is cached and returned (without it, the result itself).
   */
  constructor(
    cacheLimit = 65_536,
    checkMiss?: (subject: string) => readonly string[] | undefined,
    uncached?: (subject: string) => boolean,
    cacheByteLimit = 16 * 1024 * 1024,
    compile?: (match: Match<T>, subject: string) => M,
  ) {
    this.#cacheLimit = cacheLimit;
    this.#cacheByteLimit = cacheByteLimit;
    this.#checkMiss = checkMiss;
    this.#uncached = uncached;
    this.#compile = compile;
  }

  /** @internal Subjects cached, and what they cost by {@link cacheCost}: for tests of the bound. */
  get cacheStats(): { readonly entries: number; readonly bytes: number } {
    return { entries: this.#entries, bytes: this.#cacheBytes };
  }

  /** Subscriptions held. */
  get size(): number {
    return this.#size;
  }

  insert(pattern: string, item: T): void {
    let node = this.#root;
    const tokens = pattern.split('.');
    for (let i = 0; i < tokens.length; i++) {
      const token = tokens[i] as string;
      if (token === '>') {
        node.tail ??= new Set();
        this.#add(node.tail, item);
        return;
      }
      if (token === '*') {
        node.star ??= newNode();
        node = node.star;
      } else {
        node.literal ??= new Map();
        let next = node.literal.get(token);
        if (next === undefined) {
          next = newNode();
          node.literal.set(token, next);
        }
        node = next;
      }
    }
    node.here ??= new Set();
    this.#add(node.here, item);
  }

  /** Removes one subscription; returns false if it was not there. Empty branches are pruned. */
  remove(pattern: string, item: T): boolean {
    const tokens = pattern.split('.');
    const path: [TrieNode<T>, string, TrieNode<T>][] = [];
    let node = this.#root;
    let removed = false;
    for (let i = 0; i < tokens.length; i++) {
      const token = tokens[i] as string;
      if (token === '>') {
        removed = node.tail?.delete(item) ?? false;
        if (node.tail?.size === 0) node.tail = undefined;
        break;
      }
      const next = token === '*' ? node.star : node.literal?.get(token);
      if (next === undefined) return false;
      path.push([node, token, next]);
      node = next;
      if (i === tokens.length - 1) {
        removed = node.here?.delete(item) ?? false;
        if (node.here?.size === 0) node.here = undefined;
      }
    }
    if (!removed) return false;
    for (let i = path.length - 1; i >= 0; i--) {
      const [parent, token, child] = path[i] as [TrieNode<T>, string, TrieNode<T>];
      if (!isEmpty(child)) break;
      if (token === '*') parent.star = undefined;
      else {
        parent.literal?.delete(token);
        if (parent.literal?.size === 0) parent.literal = undefined;
      }
    }
    this.#changed(-1);
    return true;
  }

  /** What the literal `subject` reaches. The result is frozen and shared: do not keep it past a change. */
  match(subject: string): M {
    // No last-subject shortcut here: the clients keep their own (a publisher mostly publishes to one
    // subject), and a second one on a miss of theirs only cost a comparison and two stores.
    const shard = this.#shards[shardOf(subject)] as Map<string, M>;
    const cached = shard.get(subject);
    if (cached !== undefined) return cached;
    const tokens = this.#checkMiss?.(subject) ?? subject.split('.');
    const found = collect(this.#root, tokens, this.#stack);
    const grouped = found === undefined ? (EMPTY_MATCH as Match<T>) : group(found);
    const result = this.#compile === undefined ? (grouped as M) : this.#compile(grouped, subject);
    if (this.#uncached?.(subject) === true) return result;
    const cost = cacheCost(subject);
    if (cost > this.#cacheByteLimit) return result;
    const full = this.#full(cost);
    if (full && this.#seenOnce.delete(subject)) {
      // Its second miss: it leaves the seen-once set for the cache, and its cost with it.
      this.#seenOnceBytes -= cost;
    } else if (full) {
      // Bounded in bytes too (a quarter of the cache's): subjects may be 4,000 characters long.
      if (this.#seenOnce.size >= SEEN_ONCE_LIMIT || this.#seenOnceBytes + cost > this.#cacheByteLimit / 4) {
        this.#seenOnce.clear();
        this.#seenOnceBytes = 0;
      }
      this.#seenOnce.add(subject);
      this.#seenOnceBytes += cost;
      return result;
    }
    while (this.#entries > 0 && this.#full(cost)) this.#evict(shard);
    shard.set(subject, result);
    this.#entries++;
    this.#cacheBytes += cost;
    return result;
  }

  /** Whether an entry costing `cost` would take the cache past its entry or byte limit. */
  #full(cost: number): boolean {
    return this.#entries >= this.#cacheLimit || this.#cacheBytes + cost > this.#cacheByteLimit;
  }

  /**
   * Drops the oldest eighth of `shard` (a map iterates in insertion order), or when it has none, of
   * the next shard that has one: first in, first out within a shard. An eighth in one walk, not one
   * entry a miss: the walk passes every entry deleted since V8 last rebuilt the map (runtime/bounded.ts),
   * which made a miss with a full cache cost several microseconds.
   */
  #evict(shard: Map<string, M>): void {
    let from = shard;
    for (let i = 0; from.size === 0 && i < CACHE_SHARDS; i++) {
      from = this.#shards[this.#evictFrom] as Map<string, M>;
      this.#evictFrom = (this.#evictFrom + 1) & (CACHE_SHARDS - 1);
    }
    const dropped = dropOldest(from, Math.max(1, from.size >> 3));
    for (const oldest of dropped) {
      this.#entries--;
      this.#cacheBytes -= cacheCost(oldest);
    }
    // Every shard empty while the counts say otherwise would make the caller's loop spin: the
    // counts give way to what is there (nothing).
    if (dropped.length === 0) {
      this.#entries = 0;
      this.#cacheBytes = 0;
    }
  }

  #add(set: Set<T>, item: T): void {
    // Inserting the same item twice under one pattern holds it once, so it must count once.
    if (set.has(item)) return;
    set.add(item);
    this.#changed(1);
  }

  #changed(delta: number): void {
    this.#size += delta;
    this.epoch++;
    if (this.#entries > 0) {
      // Only the shards that hold something: clearing a map allocates its new table.
      for (const shard of this.#shards) if (shard.size > 0) shard.clear();
      this.#entries = 0;
    }
    this.#cacheBytes = 0;
    // The cache starts empty again: subjects seen before the change have no claim on it.
    if (this.#seenOnce.size > 0) this.#seenOnce.clear();
    this.#seenOnceBytes = 0;
  }
}

/** Subjects remembered as having missed once, before the set is emptied. */
const SEEN_ONCE_LIMIT = 8_192;

/** Maps the match cache is split over: a power of two. */
const CACHE_SHARDS = 16;

/**
 * The cache shard of a subject, from its length and three of its characters: the last two (where
 * ids and names mostly differ) and the middle one. Any spread will do; a poor one costs what one
 * map costs. A non-string (untyped code) goes to shard 0 and on to validation.
 */
function shardOf(subject: string): number {
  if (typeof subject !== 'string') return 0;
  const n = subject.length;
  // Out of range, charCodeAt is NaN, which the bitwise operators take as 0.
  const mixed = subject.charCodeAt(n - 1) ^ (subject.charCodeAt(n - 2) << 2) ^ (subject.charCodeAt(n >> 1) << 4) ^ n;
  return mixed & (CACHE_SHARDS - 1);
}

function newNode<T>(): TrieNode<T> {
  return { literal: undefined, star: undefined, tail: undefined, here: undefined };
}

function isEmpty<T>(node: TrieNode<T>): boolean {
  return node.literal === undefined && node.star === undefined && node.tail === undefined && node.here === undefined;
}

/**
 * A cache entry's cost in bytes, roughly: the key (one byte per character for the Latin-1 strings
 * V8 mostly makes of subjects) plus the map entry and the result it holds.
 */
function cacheCost(subject: string): number {
  return subject.length + 64;
}

/**
 * Depth first, literal branch before `*` branch, with a stack of its own: a walk as deep as the
 * subject has tokens must not depend on the call stack left to the caller. Undefined when nothing
 * matches (most subjects of a wildcard-heavy bus): no array is made for them.
 */
function collect<T>(root: TrieNode<T>, tokens: readonly string[], stack: (TrieNode<T> | number)[]): T[] | undefined {
  let out: T[] | undefined;
  // One stack of nodes and depths, interleaved, empty between walks (each runs until it is).
  stack.push(root, 0);
  while (stack.length > 0) {
    const depth = stack.pop() as number;
    const node = stack.pop() as TrieNode<T>;
    if (depth === tokens.length) {
      if (node.here !== undefined) for (const item of node.here) (out ??= []).push(item);
      continue;
    }
    // `>` needs at least one more token, which holds here since depth < tokens.length.
    if (node.tail !== undefined) for (const item of node.tail) (out ??= []).push(item);
    // Pushed in reverse: the literal branch is walked first.
    if (node.star !== undefined) stack.push(node.star, depth + 1);
    const next = node.literal?.get(tokens[depth] as string);
    if (next !== undefined) stack.push(next, depth + 1);
  }
  return out;
}

const NO_GROUPS: readonly (readonly never[])[] = Object.freeze([]);
const NO_ITEMS: readonly never[] = Object.freeze([]);

function group<T extends Routable>(found: T[]): Match<T> {
  if (found.length === 1) {
    // The common miss: one subscription, no de-duplication or grouping to do.
    const only = Object.freeze(found);
    return Object.freeze(
      (found[0] as T).queue === undefined
        ? { plain: only, groups: NO_GROUPS }
        : { plain: NO_ITEMS, groups: Object.freeze([only]) },
    );
  }
  // A subscription reached through two patterns still gets one copy, as NATS de-duplicates per subscription.
  const unique = [...new Set(found)];
  const plain: T[] = [];
  let groups: Map<string, T[]> | undefined;
  for (const item of unique) {
    if (item.queue === undefined) plain.push(item);
    else {
      groups ??= new Map();
      let members = groups.get(item.queue);
      if (members === undefined) {
        members = [];
        groups.set(item.queue, members);
      }
      members.push(item);
    }
  }
  return Object.freeze({
    plain: Object.freeze(plain),
    groups: groups === undefined ? NO_GROUPS : Object.freeze([...groups.values()].map((m) => Object.freeze(m))),
  });
}
