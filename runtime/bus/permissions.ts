import { OptionsError } from '../errors.ts';
import { validateSubject } from './subjects.ts';

/** Allow and deny lists of subject patterns, as NATS accounts and users have them. */
export interface SubjectPermission {
  /** When given, only subjects matched by one of these patterns are allowed. */
  allow?: readonly string[];
  /** Subjects matched by one of these are refused, even when also allowed. */
  deny?: readonly string[];
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
  readonly #subscribe: SubjectPermission | undefined;
  readonly #publishCache = new Map<string, string | undefined>();

  /** `option` names the permissions in errors, e.g. `client 'x'.permissions`. */
  constructor(permissions: Permissions | undefined, option = 'permissions') {
    this.#publish = ownPermission(permissions, 'publish', option);
    this.#subscribe = ownPermission(permissions, 'subscribe', option);
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
   * Why subscribing to `pattern` is refused, or undefined. As in NATS, a wildcard subscription that
   * merely overlaps a deny is allowed, and the denied subjects are filtered out at delivery
   * (see {@link deliveryDenied}).
   */
  subscribeDenied(pattern: string): string | undefined {
    const p = this.#subscribe;
    if (p === undefined) return undefined;
    const denied = p.deny?.find((d) => isSubsetMatch(pattern, d));
    if (denied !== undefined) return `denied by '${denied}'`;
    if (p.allow !== undefined && !p.allow.some((a) => isSubsetMatch(pattern, a))) {
      return notAllowed(p.allow);
    }
    return undefined;
  }

  /** The deny patterns that overlap `pattern`, checked per message at delivery; undefined when none. */
  deliveryFilter(pattern: string): ((subject: string) => boolean) | undefined {
    const deny = this.#subscribe?.deny?.filter((d) => overlaps(pattern, d));
    if (deny === undefined || deny.length === 0) return undefined;
    return (subject) => !deny.some((d) => isSubsetMatch(subject, d));
  }
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
    for (const pattern of patterns) validateSubject(pattern, 'subscribe');
    own[list] = Object.freeze([...(patterns as string[])]);
  }
  return Object.freeze(own);
}

/** Why a subject outside `allow` is refused; an empty list allows nothing, and says so. */
function notAllowed(allow: readonly string[]): string {
  if (allow.length === 0) return 'the allowed subjects are none (allow is empty)';
  return `not in the allowed subjects ${allow.map((a) => `'${a}'`).join(', ')}`;
}
