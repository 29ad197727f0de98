import type { Headers } from '../envelope.ts';
import { IDEMPOTENCY_KEY_HEADER } from '../sinks/sink.ts';
import { STREAM_HEADERS } from '../streams/stream.ts';
import type { Actor } from './actor.ts';
import type { Input } from './input.ts';

/**
 * @internal The streams an actor reads durably, or undefined when it reads none: only then do its
 * outputs get keys derived from positions, so other actors pay nothing per output.
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
 * @internal The idempotency key of the next output an actor emits for `input`:
 * `<stream>/<sequence>/<actor>/<index>`, the index counting that input's outputs from 0. A replay
 * of the input (after a crash, a retry, a pipeline restart) is a fresh input whose outputs count
 * from 0 again, so they land on the same keys. Undefined when the input did not come from one of
 * `streams`, or when `headers` (the output's) already carry a key: a window result's, one the
 * code set, or one copied from the input; such an output does not count.
 */
export function outputKey(
  streams: ReadonlySet<string>,
  actor: string,
  input: Input,
  headers: Headers | undefined,
): string | undefined {
  if (headers !== undefined && headers[IDEMPOTENCY_KEY_HEADER] !== undefined) return undefined;
  const from = input.env.headers;
  const stream = from[STREAM_HEADERS.stream];
  const sequence = from[STREAM_HEADERS.sequence];
  if (stream === undefined || sequence === undefined || !streams.has(stream)) return undefined;
  return `${stream}/${sequence}/${actor}/${input.outputs++}`;
}
