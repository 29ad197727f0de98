import { OptionsError } from '../errors.ts';
import { queueProblem, validateSubject } from './subjects.ts';

/**
 * Allow and deny lists of subject patterns, as NATS accounts and users have them. On the subscribe
 * side an entry may name a queue group after the pattern, `'<pattern> <queue>'` (the queue may have
 * wildcards, `'orders.> billing.*'`), as in NATS: see {@link PermissionChecker.subscribeDenied}.
 */
export interface SubjectPermission {
  /** When given, only subjects matched by one of these patterns are allowed. */
  allow?: readonly string[];
  /** Subjects matched by one of these are refused, even when also allowed. */
  deny?: readonly string[];
}

/** One entry of a subscribe list: a pattern, and the queue group pattern it is limited to. */
interface SubscribeEntry {
  readonly text: string;
  readonly pattern: string;
  readonly queue: string | undefined;
}

export interface Permissions {
  publish?: SubjectPermission;
  subscribe?: SubjectPermission;
}

/**
 * True when every subject matched by `sub` is also matched by `pattern` (NATS's
 * `subjectIsSubsetMatch`): `orders.eu.*` is a subset of `orders.>`, `orders.*` is not a subset of
 * `orders.eu`.
 */
export function isSubsetMatch(sub: string, pattern: string): boolean {
  const s = sub.split('.');
  const p = pattern.split('.');
  for (let i = 0; i < p.length; i++) {
    const pt = p[i];
    if (i >= s.length) return false;
    const st = s[i];
    if (pt === '>') return true;
    if (st === '>') return false;
    if (pt === '*') continue;
    if (st === '*' || st !== pt) return false;
  }
  return s.length === p.length;
}

/** True when some subject is matched by both patterns. */
export function overlaps(a: string, b: string): boolean {
  const x = a.split('.');
  const y = b.split('.');
  for (let i = 0; ; i++) {
    const xt = x[i];
    const yt = y[i];
    if (xt === '>' || yt === '>') return xt !== undefined && yt !== undefined;
    if (xt === undefined || yt === undefined) return xt === yt;
    if (xt !== '*' && yt !== '*' && xt !== yt) return false;
  }
}

/** A checked, cached form of {@link Permissions} for one client. */
export class PermissionChecker {
  readonly #publish: SubjectPermission | undefined;
  readonly #subscribe: { allow?: readonly SubscribeEntry[]; deny?: readonly SubscribeEntry[] } | undefined;
  readonly #publishCache = new Map<string, string | undefined>();

  /** `option` names the permissions in errors, e.g. `client 'x'.permissions`. */
  constructor(permissions: Permissions | undefined, option = 'permissions') {
    this.#publish = ownPermission(permissions, 'publish', option);
    const subscribe = ownPermission(permissions, 'subscribe', option);
    this.#subscribe =
      subscribe === undefined
        ? undefined
        : {
            ...(subscribe.allow === undefined ? {} : { allow: subscribe.allow.map(subscribeEntry) }),
            ...(subscribe.deny === undefined ? {} : { deny: subscribe.deny.map(subscribeEntry) }),
          };
  }

  get unrestricted(): boolean {
    return this.#publish === undefined && this.#subscribe === undefined;
  }

  /** Why publishing to the literal `subject` is refused, or undefined when it is allowed. */
  publishDenied(subject: string): string | undefined {
    const p = this.#publish;
    if (p === undefined) return undefined;
    if (this.#publishCache.has(subject)) return this.#publishCache.get(subject);
    let reason: string | undefined;
    const denied = p.deny?.find((d) => isSubsetMatch(subject, d));
    if (denied !== undefined) reason = `denied by '${denied}'`;
    else if (p.allow !== undefined && !p.allow.some((a) => isSubsetMatch(subject, a))) {
      reason = notAllowed(p.allow);
    }
    if (this.#publishCache.size > 4096) this.#publishCache.clear();
    this.#publishCache.set(subject, reason);
    return reason;
  }

  /**
   * Why subscribing to `pattern` (in queue group `queue`, if given) is refused, or undefined. As in
   * NATS (its `canSubscribe`): a plain subscription needs a plain allow entry covering it; a queue
   * subscription too, unless entries with a queue group cover the pattern, which then decide alone
   * by its queue. Then the deny entries: a plain one covering the pattern refuses, unless entries
   * with a queue group cover it, which for a queue subscription decide alone, refusing it when its
   * queue matches one. A wildcard subscription that merely overlaps a deny is allowed, and the
   * denied subjects are filtered out at delivery (see {@link deliveryFilter}).
   */
  subscribeDenied(pattern: string, queue?: string): string | undefined {
    const p = this.#subscribe;
    if (p === undefined) return undefined;
    if (p.allow !== undefined) {
      const covering = p.allow.filter((a) => isSubsetMatch(pattern, a.pattern));
      const queued = covering.filter((a) => a.queue !== undefined);
      if (queue !== undefined && queued.length > 0) {
        if (!queued.some((a) => queueMatches(queue, a.queue as string))) {
          return `queue group '${queue}' is not in the queue groups allowed on it, ${listed(queued)}`;
        }
      } else if (!covering.some((a) => a.queue === undefined)) {
        return notAllowed(p.allow.map((a) => a.text));
      }
    }
    if (p.deny !== undefined) {
      const covering = p.deny.filter((d) => isSubsetMatch(pattern, d.pattern));
      const queued = covering.filter((d) => d.queue !== undefined);
      if (queue !== undefined && queued.length > 0) {
        const denied = queued.find((d) => queueMatches(queue, d.queue as string));
        if (denied !== undefined) return `denied by '${denied.text}'`;
      } else {
        const denied = covering.find((d) => d.queue === undefined);
        if (denied !== undefined) return `denied by '${denied.text}'`;
      }
    }
    return undefined;
  }

  /** The deny patterns that overlap `pattern`, checked per message at delivery; undefined when none. */
  deliveryFilter(pattern: string): ((subject: string) => boolean) | undefined {
    // As NATS, only the plain deny entries filter deliveries; one with a queue group acts at subscribe.
    const deny = this.#subscribe?.deny
      ?.filter((d) => d.queue === undefined && overlaps(pattern, d.pattern))
      .map((d) => d.pattern);
    if (deny === undefined || deny.length === 0) return undefined;
    return (subject) => !deny.some((d) => isSubsetMatch(subject, d));
  }
}

/** A queue group matches an entry's: the same name, or matched by it when it has wildcards (NATS's `queueMatches`). */
function queueMatches(queue: string, entry: string): boolean {
  if (queue === entry) return true;
  return (entry.includes('*') || entry.includes('>')) && isSubsetMatch(queue, entry);
}

function subscribeEntry(text: string): SubscribeEntry {
  const space = text.indexOf(' ');
  if (space < 0) return { text, pattern: text, queue: undefined };
  return { text, pattern: text.slice(0, space), queue: text.slice(space + 1) };
}

function listed(entries: readonly SubscribeEntry[]): string {
  return entries.map((e) => `'${e.text}'`).join(', ');
}

/**
 * One side of `permissions`, checked and copied (a caller changing its lists later changes
 * nothing); an OptionsError naming the option when it is not an object of pattern lists. A string
 * where a list belongs would otherwise be read one character at a time.
 */
function ownPermission(
  permissions: Permissions | undefined,
  op: 'publish' | 'subscribe',
  option: string,
): SubjectPermission | undefined {
  if (permissions === undefined) return undefined;
  if (typeof permissions !== 'object' || permissions === null || Array.isArray(permissions)) {
    throw new OptionsError(option, "permissions are an object with 'publish' and 'subscribe' sides", permissions);
  }
  const side: unknown = permissions[op];
  if (side === undefined) return undefined;
  if (typeof side !== 'object' || side === null || Array.isArray(side)) {
    throw new OptionsError(`${option}.${op}`, "a permission is an object with 'allow' and 'deny' lists", side);
  }
  const own: { allow?: readonly string[]; deny?: readonly string[] } = {};
  for (const list of ['allow', 'deny'] as const) {
    const patterns: unknown = (side as SubjectPermission)[list];
    if (patterns === undefined) continue;
    if (!Array.isArray(patterns)) {
      throw new OptionsError(`${option}.${op}.${list}`, 'a permission list is an array of subject patterns', patterns);
    }
    for (const [i, entry] of patterns.entries()) checkEntry(entry, op, `${option}.${op}.${list}[${i}]`);
    own[list] = Object.freeze([...(patterns as string[])]);
  }
  return Object.freeze(own);
}

/** Why a subject outside `allow` is refused; an empty list allows nothing, and says so. */
function notAllowed(allow: readonly string[]): string {
  if (allow.length === 0) return 'the allowed subjects are none (allow is empty)';
  return `not in the allowed subjects ${allow.map((a) => `'${a}'`).join(', ')}`;
}

/**
 * A list entry: a subject pattern, or on the subscribe side `'<pattern> <queue>'` (one space), the
 * queue a queue group name, wildcards allowed. An OptionsError naming the entry otherwise.
 */
function checkEntry(entry: unknown, op: 'publish' | 'subscribe', option: string): void {
  if (typeof entry === 'string' && entry.includes(' ')) {
    const parts = entry.split(' ');
    if (op === 'publish') {
      throw new OptionsError(option, 'a publish permission is a subject pattern: no queue group after it', entry);
    }
    if (parts.length !== 2) {
      throw new OptionsError(
        option,
        "a subscribe permission is '<pattern>' or '<pattern> <queue>', with one space",
        entry,
      );
    }
    validateSubject(parts[0] as string, 'subscribe');
    const problem = queueProblem(parts[1]);
    if (problem !== undefined) throw new OptionsError(option, problem, entry);
    return;
  }
  validateSubject(entry as string, 'subscribe');
}
