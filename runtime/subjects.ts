import { SubjectError } from './errors.ts';

/**
 * Subject syntax and matching, following NATS exactly so the same names work in-process and on a
 * NATS server: tokens separated by `.`, a token that is exactly `*` matches one token, a last token
 * that is exactly `>` matches one or more tokens. As in NATS, `*` or `>` inside a longer token
 * (`ord*`) is an ordinary character, not a wildcard.
 */

const WHITESPACE = /\s/;

/** Throws a {@link SubjectError} naming the subject and the broken rule, or returns the tokens. */
export function validateSubject(subject: string, use: 'publish' | 'subscribe'): string[] {
  if (typeof subject !== 'string') {
    throw new SubjectError(String(subject), 'not-a-string', `a subject is a string, got ${typeof subject}`);
  }
  if (subject.length === 0) throw new SubjectError(subject, 'empty', 'a subject has at least one token');
  const ws = WHITESPACE.exec(subject);
  if (ws !== null) {
    throw new SubjectError(
      subject,
      'whitespace',
      `white space at position ${ws.index} (${JSON.stringify(ws[0])}); subjects may not contain spaces, tabs or line breaks`,
    );
  }
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
 */
export class SubjectTrie<T extends Routable> {
  readonly #root: TrieNode<T> = newNode();
  readonly #cache = new Map<string, Match<T>>();
  readonly #cacheLimit: number;
  #size = 0;

  readonly #checkMiss: ((subject: string) => void) | undefined;
  readonly #uncached: ((subject: string) => boolean) | undefined;

  /**
   * @param cacheLimit subjects whose results are kept; above the number of live subjects, every
   *   publish after the first costs one map lookup, below it FIFO eviction makes most of them walks.
   * @param checkMiss runs on a cache miss before the walk (the bus validates the subject there), so
   *   a cached subject is known valid and a hot publish needs no other lookup.
   * @param uncached subjects never worth caching (one-off reply inboxes): caching them would evict
   *   hot subjects.
   */
  constructor(cacheLimit = 65_536, checkMiss?: (subject: string) => void, uncached?: (subject: string) => boolean) {
    this.#cacheLimit = cacheLimit;
    this.#checkMiss = checkMiss;
    this.#uncached = uncached;
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
  match(subject: string): Match<T> {
    const cached = this.#cache.get(subject);
    if (cached !== undefined) return cached;
    this.#checkMiss?.(subject);
    const found: T[] = [];
    collect(this.#root, subject.split('.'), 0, found);
    const result = found.length === 0 ? (EMPTY_MATCH as Match<T>) : group(found);
    if (this.#uncached?.(subject) === true) return result;
    if (this.#cache.size >= this.#cacheLimit) {
      // Evict the oldest entry: Map iteration order is insertion order.
      const oldest = this.#cache.keys().next().value;
      if (oldest !== undefined) this.#cache.delete(oldest);
    }
    this.#cache.set(subject, result);
    return result;
  }

  #add(set: Set<T>, item: T): void {
    // Inserting the same item twice under one pattern holds it once, so it must count once.
    if (set.has(item)) return;
    set.add(item);
    this.#changed(1);
  }

  #changed(delta: number): void {
    this.#size += delta;
    this.#cache.clear();
  }
}

function newNode<T>(): TrieNode<T> {
  return { literal: undefined, star: undefined, tail: undefined, here: undefined };
}

function isEmpty<T>(node: TrieNode<T>): boolean {
  return node.literal === undefined && node.star === undefined && node.tail === undefined && node.here === undefined;
}

function collect<T>(node: TrieNode<T>, tokens: string[], depth: number, out: T[]): void {
  if (depth === tokens.length) {
    if (node.here !== undefined) for (const item of node.here) out.push(item);
    return;
  }
  // `>` needs at least one more token, which holds here since depth < tokens.length.
  if (node.tail !== undefined) for (const item of node.tail) out.push(item);
  const next = node.literal?.get(tokens[depth] as string);
  if (next !== undefined) collect(next, tokens, depth + 1, out);
  if (node.star !== undefined) collect(node.star, tokens, depth + 1, out);
}

function group<T extends Routable>(found: T[]): Match<T> {
  // A subscription reached through two patterns still gets one copy, as NATS de-duplicates per subscription.
  const unique = [...new Set(found)];
  const plain: T[] = [];
  const groups = new Map<string, T[]>();
  for (const item of unique) {
    if (item.queue === undefined) plain.push(item);
    else {
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
    groups: Object.freeze([...groups.values()].map((m) => Object.freeze(m))),
  });
}
