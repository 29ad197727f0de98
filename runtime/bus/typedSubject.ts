import type { StandardSchemaV1 } from '@standard-schema/spec';
import { SchemaError, type SchemaIssueSummary } from '../errors.ts';
import { validateSubject } from './subjects.ts';

/**
 * A subject name with the type of its data and, optionally, a Standard Schema (zod, valibot,
 * arktype...) that actors check their input against; input that fails goes to the dead-letter
 * subject with the reason.
 */
export interface TypedSubject<T> {
  readonly name: string;
  readonly schema: StandardSchemaV1<unknown, T> | undefined;
  /** Phantom: carries `T` for inference; never set. */
  readonly __type?: T;
}

export interface TypedSubjectOptions<T> {
  schema?: StandardSchemaV1<unknown, T>;
}

/** Declares a typed subject; a wildcard subject can only be subscribed to. */
export function subject<T>(name: string, options: TypedSubjectOptions<T> = {}): TypedSubject<T> {
  validateSubject(name, 'subscribe');
  return Object.freeze({ name, schema: options.schema });
}

/** The type carried by a typed subject. */
export type DataOf<S> = S extends TypedSubject<infer T> ? T : unknown;

/**
 * Validates `value` with a Standard Schema. Returns the (possibly transformed) value, throws a
 * {@link SchemaError} naming the subject and each issue, or returns a promise for async schemas.
 */
export function validate<T>(schema: StandardSchemaV1<unknown, T>, value: unknown, subjectName: string): T | Promise<T> {
  const result = schema['~standard'].validate(value);
  // Standard Schema allows any thenable; Promise.resolve adopts one that is not a native promise.
  if (isThenable(result)) return Promise.resolve(result).then((r) => unwrap(r, subjectName));
  return unwrap(result, subjectName);
}

/** @internal A promise or any object with a `then` method, which `await` would adopt. */
export function isThenable(value: unknown): value is PromiseLike<unknown> {
  if (value instanceof Promise) return true;
  return (
    value !== null &&
    (typeof value === 'object' || typeof value === 'function') &&
    typeof (value as { then?: unknown }).then === 'function'
  );
}

function unwrap<T>(result: StandardSchemaV1.Result<T>, subjectName: string): T {
  if (result.issues === undefined) return result.value;
  const issues: SchemaIssueSummary[] = result.issues.map((issue) => {
    const path = issue.path
      ?.map((p) => (typeof p === 'object' && p !== null && 'key' in p ? String(p.key) : String(p)))
      .join('.');
    return path ? { message: issue.message, path } : { message: issue.message };
  });
  throw new SchemaError(subjectName, issues);
}
