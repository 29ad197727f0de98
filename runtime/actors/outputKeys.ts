import type { Headers } from '../envelope.ts';
import { IDEMPOTENCY_KEY_HEADER } from '../sinks/sink.ts';
import { STREAM_HEADERS } from '../streams/stream.ts';
import type { Actor } from './actor.ts';

/**
 * @internal The streams an actor reads durably, or undefined when it reads none: only then do its
 * outputs get keys derived from positions.
 */
export function durableStreamsOf(actor: Actor): ReadonlySet<string> | undefined {
  let streams: Set<string> | undefined;
  for (const s of actor.subjects) {
    // A durable connector source (JetStream, Kafka) numbers its messages as a stream does.
    const stream = s.durable?.stream ?? (s.source?.durable === true ? s.source.stream : undefined);
    if (stream === undefined) continue;
    streams ??= new Set();
    streams.add(stream);
  }
  return streams;
}

/**
 * @internal The idempotency key of the output an actor emits for an input with headers `from`,
 * `index` counting that input's keyed outputs so far (the caller counts one whenever a key is
 * returned, and sets it on the output unless the output carries it already):
 * - an output that carries a key of its own (a window result's, one the code set) keeps it,
 *   uncounted: undefined;
 * - an output that carries its input's key, copied with `{ ...env }`: the first keeps it, the
 *   next ones of that input get `<key>/<actor>/<index>` (the same key on each would let a sink keep
 *   only one of them);
 * - an output without a key, of an input from one of `streams`: `<stream>/<sequence>/<actor>/<index>`.
 * A replay of the input (after a crash, a retry, a pipeline restart) is a fresh input whose
 * outputs count from 0 again, so they land on the same keys.
 */
export function outputKey(
  streams: ReadonlySet<string> | undefined,
  actor: string,
  from: Headers,
  index: number,
  headers: Headers | undefined,
): string | undefined {
  const own = headers?.[IDEMPOTENCY_KEY_HEADER];
  if (own !== undefined) {
    if (own !== from[IDEMPOTENCY_KEY_HEADER]) return undefined;
    return index === 0 ? own : `${own}/${actor}/${index}`;
  }
  if (streams === undefined) return undefined;
  const stream = from[STREAM_HEADERS.stream];
  const sequence = from[STREAM_HEADERS.sequence];
  if (stream === undefined || sequence === undefined || !streams.has(stream)) return undefined;
  return `${stream}/${sequence}/${actor}/${index}`;
}

/**
 * @internal Whether outputs for an input with headers `from` may need a key: the actor reads
 * durably, or the input carries a key its outputs may copy. One lookup for other actors' outputs.
 */
export function keysOutputs(streams: ReadonlySet<string> | undefined, from: Headers): boolean {
  return streams !== undefined || from[IDEMPOTENCY_KEY_HEADER] !== undefined;
}
