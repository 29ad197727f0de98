import { map, type OperatorFunction } from 'rxjs';
import type { Envelope } from '../runtime/envelope.ts';
import { Watermark } from './watermarks.ts';

/**
 * Sets each envelope's key from its data, so `partitionBy` lanes and keyed windows group by it.
 * Id, headers, event time and lineage pass through unchanged; order is kept. The envelope is
 * copied, never mutated: the same input may still sit in a window, a mailbox or a retry buffer.
 * A `Watermark` in the stream passes on as it is.
 *
 *     in:   --a{user:1}--b{user:2}--|
 *     out:  --a[u1]------b[u2]------|      keyBy((d) => `u${d.user}`)
 *
 * @example clicks$.pipe(keyBy((click) => click.page), watermarks(opts), tumbling({ sizeMs: 60_000, ... }))
 * @see tumbling, WatermarkHub
 */
export function keyBy<T>(selector: (data: T) => string): OperatorFunction<Envelope<T>, Envelope<T>> {
  return map((env) => ((env as Envelope<T> | Watermark) instanceof Watermark ? env : withKey(env, selector(env.data))));
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
