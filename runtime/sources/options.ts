/**
 * The option checks connector sources share: the options object, the bus subject, the dead-letter
 * subject and its default, the settlement bounds, and the frozen `ref`. Each names the option in
 * its `OptionsError` as the source's own checks do (`redisSource.maxDeliver`, ...).
 */

import type { StandardSchemaV1 } from '@standard-schema/spec';
import { validateSubject } from '../bus/subjects.ts';
import { OptionsError } from '../errors.ts';
import { intOption, knownKeys, optionsObject } from '../options.ts';
import type { SourceRef } from './source.ts';

/**
 * @internal A source's options object checked: an object (`where` names it in the error), with no
 * key but `known`.
 */
export function checkOptions(where: string, options: unknown, known: ReadonlySet<string>): void {
  optionsObject(where, options);
  if (options === undefined) throw new OptionsError(where, 'must be an options object', options);
  knownKeys(where, options, known);
}

/** @internal A source's `subject` option: the bus subject its `what` (entries, messages) are published to. */
export function subjectOption(where: string, value: unknown, what: string): string {
  if (typeof value !== 'string') {
    throw new OptionsError(where, `must be the bus subject the ${what} are published to`, value);
  }
  validateSubject(value, 'publish');
  return value;
}

/**
 * @internal A source's `deadLetter` subject, checked: the option, else `$DLQ.<tokens>`, each token
 * with white space, dots and wildcards made `_`.
 */
export function deadLetterOption(value: string | undefined, ...tokens: string[]): string {
  const subject = value ?? `$DLQ.${tokens.map((t) => t.replace(/[\s.*>]/g, '_')).join('.')}`;
  validateSubject(subject, 'publish');
  return subject;
}

/**
 * @internal A source's `maxAckPending` (default 1000), `maxDeliver` (default 5) and `backoffMs`,
 * checked in that order. `bound` runs between the first two, where a source checks what limits
 * them (its own limit of `maxAckPending`, a broker's delivery limit), so errors come in the order
 * the options are read.
 */
export function ackOptions(
  where: string,
  options: { maxAckPending?: number; maxDeliver?: number; backoffMs?: readonly number[] },
  bound?: (maxAckPending: number) => void,
): { maxAckPending: number; maxDeliver: number; backoffMs: readonly number[] | undefined } {
  const maxAckPending = intOption(`${where}.maxAckPending`, options.maxAckPending, 1_000, 1);
  bound?.(maxAckPending);
  return {
    maxAckPending,
    maxDeliver: intOption(`${where}.maxDeliver`, options.maxDeliver, 5, 1),
    backoffMs: backoffOption(`${where}.backoffMs`, options.backoffMs),
  };
}

/** @internal A source's `backoffMs` option, checked (an `OptionsError` naming `where`) and frozen. */
export function backoffOption(where: string, value: readonly number[] | undefined): readonly number[] | undefined {
  if (value === undefined) return undefined;
  if (!Array.isArray(value) || value.length === 0) {
    throw new OptionsError(where, 'must be a non-empty array of delays in ms', value);
  }
  for (const [i, ms] of value.entries()) intOption(`${where}[${i}]`, ms, 0, 0);
  return Object.freeze([...value]);
}

/** @internal A source's `ref`, frozen: what actors subscribe to. */
export function sourceRef<T>(
  name: string,
  schema: StandardSchemaV1<unknown, T> | undefined,
  stream: string,
  durable: boolean,
): SourceRef<T> {
  return Object.freeze({ name, schema, source: Object.freeze({ stream, durable }) });
}
