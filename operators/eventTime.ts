import { map, type OperatorFunction } from 'rxjs';
import type { Envelope } from '../runtime/envelope.ts';
import { OptionsError } from '../runtime/errors.ts';
import { Watermark } from './watermarks.ts';

/**
 * Takes each envelope's event time from its data (epoch ms), replacing the publish time the bus
 * set, so watermarks and windows follow when things happened rather than when they arrived.
 * A `Date` is turned into its epoch ms; `undefined` or `null` (no time in the data) gives NaN, which
 * windows send to their late output as `missing-event-time`; any other value is an `OptionsError`
 * naming the message. Everything else passes through unchanged; order is kept;
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
    return withEventTime(env, epochMs(extractor(env.data) as unknown, env));
  });
}

function epochMs(t: unknown, env: Envelope<unknown>): number {
  if (typeof t === 'number') return t;
  // Duck-typed: a Date from another realm (a worker's, a vm context's) is no instance of this one's.
  if (typeof (t as Date | null)?.getTime === 'function') return (t as Date).getTime();
  // No time in the data: the windows send the input to their late output as missing-event-time.
  if (t === undefined || t === null) return Number.NaN;
  throw new OptionsError(
    'eventTime',
    `the extractor must return epoch ms (a number) or a Date; for message '${env.id}' on '${env.subject}' it returned a ${typeof t}`,
    t,
  );
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
