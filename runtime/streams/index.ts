import type { SubjectRef } from '../bus/bus.ts';
import { OptionsError, StreamError } from '../errors.ts';
import { type ConsumerImpl, deliverSubjectOf, type StreamDeps } from './consumer.ts';
import { PushTurns } from './pushTurns.ts';
import { checkName, patternsOverlap, StreamImpl } from './stream.ts';
import type { ConsumerOptions, DurableRef, StreamConfig } from './types.ts';

export { POSITIONS_NAMESPACE, type StoredPosition } from './consumer.ts';
export { STREAM_HEADERS } from './stream.ts';
export type {
  Consumer,
  ConsumerInfo,
  ConsumerLag,
  ConsumerOptions,
  DeliverPolicy,
  DurableRef,
  RetentionOptions,
  Stream,
  StreamConfig,
  StreamInfo,
  StreamMessage,
} from './types.ts';

/** Options of {@link durable}: the consumer's name and its options. */
export interface DurableOptions<T> extends ConsumerOptions<T> {
  /** The durable consumer's name; actors that name the same one share its messages (a queue group). */
  consumer: string;
}

/**
 * An actor's durable subscription: `subscribe: durable('ORDERS', { consumer: 'billing' })`. The
 * actor takes the messages of the named consumer of the stream (made with these options if it
 * does not exist yet), pushed no faster than its mailbox takes them; each input's settlement is
 * its acknowledgement: acked when it settles, delivered again (after the consumer's backoff) when
 * it fails, dead-lettered by the consumer after `maxDeliver`. A typed subject as `filter` gives the
 * inputs its type and schema.
 */
export function durable<T = unknown>(stream: string, options: DurableOptions<T>): DurableRef<T> {
  checkName(stream, 'durable stream');
  if (typeof options !== 'object' || options === null) {
    throw new OptionsError('durable options', 'must be an object with a consumer name', options);
  }
  const { consumer, ...rest } = options;
  checkName(consumer, 'durable.consumer');
  const filter = rest.filter as SubjectRef<T> | undefined;
  const deliverSubject = deliverSubjectOf(stream, consumer);
  return Object.freeze({
    durable: true as const,
    stream,
    consumer,
    name: filter === undefined ? deliverSubject : typeof filter === 'string' ? filter : filter.name,
    schema: filter === undefined || typeof filter === 'string' ? undefined : filter.schema,
    deliverSubject,
    options: rest,
  });
}

/** @internal A runtime's streams. */
export class Streams {
  readonly #deps: StreamDeps;
  readonly #streams = new Map<string, StreamImpl>();
  #closed = false;

  constructor(deps: StreamDeps) {
    // One set of turns per runtime: its consumers' push loops share the event loop round-robin.
    this.#deps = deps.turns === undefined ? { ...deps, turns: new PushTurns() } : deps;
  }

  define(config: StreamConfig): StreamImpl {
    if (this.#closed) throw new StreamError(String(config?.name), 'the runtime is stopping');
    const stream = new StreamImpl(config, this.#deps);
    if (this.#streams.has(stream.name)) {
      throw new OptionsError('stream.name', 'must be unique in the runtime; a stream of that name exists', stream.name);
    }
    for (const other of this.#streams.values()) {
      for (const a of stream.subjects) {
        for (const b of other.subjects) {
          if (patternsOverlap(a, b)) {
            throw new OptionsError(
              `stream '${stream.name}'.subjects`,
              `'${a}' overlaps '${b}' of stream '${other.name}': a message would be stored twice`,
              stream.subjects,
            );
          }
        }
      }
    }
    this.#streams.set(stream.name, stream);
    stream.start();
    return stream;
  }

  get(name: string): StreamImpl {
    const stream = this.#streams.get(name);
    if (stream === undefined)
      throw new StreamError(name, 'no such stream in this runtime (define it with runtime.stream())');
    return stream;
  }

  /** An actor's durable subscription starts: returns its end. */
  attach(ref: DurableRef): () => void {
    const consumer: ConsumerImpl = this.get(ref.stream).consumer(ref.consumer, ref.options as ConsumerOptions);
    return consumer.attach();
  }

  /** The consumer of an actor's durable subscription (made if it does not exist yet). */
  consumerOf(ref: DurableRef): ConsumerImpl {
    return this.get(ref.stream).consumer(ref.consumer, ref.options as ConsumerOptions);
  }

  /** @internal Every stream the runtime defines (for the admin API). */
  all(): StreamImpl[] {
    return [...this.#streams.values()];
  }

  /** The stream named `name`, if the runtime defines it. */
  find(name: string): StreamImpl | undefined {
    return this.#streams.get(name);
  }

  /** A shutdown begins: consumers push nothing new, so actors can drain what they have. */
  quiesce(): void {
    for (const s of this.#streams.values()) s.quiesce();
  }

  async close(): Promise<void> {
    this.#closed = true;
    await Promise.all([...this.#streams.values()].map((s) => s.close()));
  }
}
