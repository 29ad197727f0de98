import { map, type OperatorFunction } from 'rxjs';
import type { Envelope } from '../runtime/envelope.ts';
import { OptionsError } from '../runtime/errors.ts';
import { Watermark } from './watermarks.ts';

/**
 * Sets each envelope's key from its data, so `partitionBy` lanes and keyed windows group by it.
 * Id, headers, event time and lineage pass through unchanged; order is kept. The envelope is
 * copied, never mutated: the same input may still sit in a window, a mailbox or a retry buffer.
 * A `Watermark` in the stream passes on as it is. A selector that returns anything but a string
 * (a missing field) fails the input with an `OptionsError` naming the message.
 *
 *     in:   --a{user:1}--b{user:2}--|
 *     out:  --a[u1]------b[u2]------|      keyBy((d) => `u${d.user}`)
 *
 * @example clicks$.pipe(keyBy((click) => click.page), watermarks(opts), tumbling({ sizeMs: 60_000, ... }))
 * @see tumbling, WatermarkHub
 */
export function keyBy<T>(selector: (data: T) => string): OperatorFunction<Envelope<T>, Envelope<T>> {
  return map((env) => {
    if ((env as Envelope<T> | Watermark) instanceof Watermark) return env;
    const key = selector(env.data) as unknown;
    // undefined would silently join the global window of every keyless input; the bus refuses
    // any other non-string key only when the result is published, far from the input.
    if (typeof key !== 'string') {
      throw new OptionsError(
        'keyBy',
        `the selector must return a string; for message '${env.id}' on '${env.subject}' it returned ${key === null ? 'null' : `a ${typeof key}`}`,
        key,
      );
    }
    return withKey(env, key);
  });
}

function withKey<T>(env: Envelope<T>, key: string): Envelope<T> {
  // One literal in the envelope's field order keeps results on the envelope's hidden class.
  return {
    id: env.id,
    subject: env.subject,
    data: env.data,
    key,
    eventTime: env.eventTime,
    headers: env.headers,
    attempt: env.attempt,
    replyTo: env.replyTo,
    lineage: env.lineage,
  };
}
