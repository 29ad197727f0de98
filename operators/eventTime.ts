import { map, type OperatorFunction } from 'rxjs';
import type { Envelope } from '../runtime/envelope.ts';
import { Watermark } from './watermarks.ts';

/**
 * Takes each envelope's event time from its data (epoch ms), replacing the publish time the bus
 * set, so watermarks and windows follow when things happened rather than when they arrived.
 * A `Date` is turned into its epoch ms. Everything else passes through unchanged; order is kept;
 * the envelope is copied, never mutated. A `Watermark` in the stream (a test harness's, or one
 * merged in upstream) passes on as it is.
 *
 *     in:   --a{ts:90}--b{ts:75}--|
 *     out:  --a@90------b@75------|      eventTime((d) => d.ts)
 *
 * @example clicks$.pipe(eventTime((click) => click.timestamp), watermarks({ maxOutOfOrdernessMs: 2_000 }))
 * @see watermarks
 */
export function eventTime<T>(extractor: (data: T) => number | Date): OperatorFunction<Envelope<T>, Envelope<T>> {
  return map((env) => {
    if ((env as Envelope<T> | Watermark) instanceof Watermark) return env;
    const t = extractor(env.data);
    return withEventTime(env, typeof t === 'number' ? t : t.getTime());
  });
}

function withEventTime<T>(env: Envelope<T>, eventTime: number): Envelope<T> {
  return {
    id: env.id,
    subject: env.subject,
    data: env.data,
    key: env.key,
    eventTime,
    headers: env.headers,
    attempt: env.attempt,
    replyTo: env.replyTo,
    lineage: env.lineage,
  };
}
