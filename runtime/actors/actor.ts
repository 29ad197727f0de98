import type { StandardSchemaV1 } from '@standard-schema/spec';
import type { Observable, SchedulerLike } from 'rxjs';
import {
  type BusClient,
  type QueueStrategy,
  queueStrategies,
  type RequestOptions,
  type SubjectRef,
  validateQueue,
} from '../bus/bus.ts';
import { type MailboxOptions, resolveMailboxOptions } from '../bus/mailbox.ts';
import type { Permissions } from '../bus/permissions.ts';
import { subjectMatches, validateSubject } from '../bus/subjects.ts';
import type { Clock } from '../clock.ts';
import type { Codec } from '../codec.ts';
import type { Envelope, PublishOptions } from '../envelope.ts';
import { OptionsError } from '../errors.ts';
import { intOption, knownKeys, oneOf, optionKeys } from '../options.ts';
import { isSourceRef, type SourceRef } from '../sources/source.ts';
import { type CheckpointOptions, resolveCheckpoint } from '../state/checkpoint.ts';
import type { KeyedState } from '../state/keyedState.ts';
import type { DurableRef } from '../streams/types.ts';
import { TERMINAL_PREFIX } from './deadLetters.ts';
import { checkDelivery, type DeliveryMode, IDEMPOTENT_SINK } from './delivery.ts';
import { type RestartOptions, type RetryOptions, resolveRestart, resolveRetry } from './supervisor.ts';

/**
 * What an actor subscribes to: a subject by name, a typed subject, a durable subscription to a
 * stream, or the subject a connector's source publishes to (`source.ref`).
 */
export type SubscribeRef<In> = SubjectRef<In> | DurableRef<In> | SourceRef<In>;

function isDurable<In>(ref: SubscribeRef<In>): ref is DurableRef<In> {
  return typeof ref === 'object' && ref !== null && (ref as { durable?: unknown }).durable === true;
}

/** Where an actor logs; `console` fits. */
export interface Logger {
  debug(message: string, ...details: unknown[]): void;
  info(message: string, ...details: unknown[]): void;
  warn(message: string, ...details: unknown[]): void;
  error(message: string, ...details: unknown[]): void;
}

/**
 * @internal `log` whose methods never throw: what a failing logger (a JSON logger given a BigInt)
 * would have said is lost, nothing else. The runtime logs through it, so that a logger's throw
 * cannot stop a restart, a retry, a dead letter, an escalation or a shutdown half way.
 */
export function containedLogger(log: Logger): Logger {
  // Each method is looked up when called, as a direct call would: a logger may be swapped or spied on.
  const contain =
    (level: keyof Logger): Logger['error'] =>
    (message, ...details) => {
      try {
        log[level](message, ...details);
      } catch {
        // Nowhere left to report it.
      }
    };
  return { debug: contain('debug'), info: contain('info'), warn: contain('warn'), error: contain('error') };
}

/** What an actor's pipeline (and handler) can use besides its input. */
export interface ActorContext {
  readonly name: string;
  /** This pipeline's lane (0-based) and the number of lanes, when the actor is partitioned. */
  readonly lane: number;
  readonly lanes: number;
  /** Processing time: the runtime's clock. */
  readonly clock: Clock;
  /** An RxJS scheduler on that clock, for `bufferTime(ms, null, n, ctx.scheduler)` and friends. */
  readonly scheduler: SchedulerLike;
  /** The bus as this actor sees it, checked against the actor's permissions. */
  readonly bus: BusClient;
  readonly log: Logger;
  /**
   * Keyed state in the runtime's store, committed at the actor's checkpoints with the source
   * positions it reflects (docs/checkpoints.md). Only for an actor with a `checkpoint`; others get a
   * `StateError` on use.
   */
  readonly state: KeyedState;
  publish<T>(subject: SubjectRef<T>, data: T, options?: PublishOptions): Promise<void>;
  request<Req, Res = unknown>(subject: SubjectRef<Req>, data: Req, options?: RequestOptions): Promise<Envelope<Res>>;
}

/**
 * The context of one message in a `handle` actor: what it publishes is tied to the message's
 * lineage, so the message settles only once those publishes are accepted.
 */
export interface MessageContext extends ActorContext {
  /** Replies to the message's `replyTo` (request/reply). */
  respond<T>(data: T, options?: PublishOptions): Promise<void>;
}

/** What a handler returns: nothing, one value or several for the actor's `output` subject, or envelopes. */
export type HandlerResult<Out> = Out | readonly Out[] | undefined | void;

interface ActorBase<In> {
  /** Unique in the runtime; names its dead-letter subject, telemetry and permissions errors. */
  name: string;
  /**
   * The subject(s) it takes input from; typed subjects with a schema check each input. A durable
   * subscription (`durable('ORDERS', { consumer: 'billing' })`) takes a stream consumer's messages,
   * acknowledged as they settle.
   */
  subscribe: SubscribeRef<In> | readonly SubscribeRef<In>[];
  /** Instances sharing a queue group split the input. */
  queue?: string;
  /** @default 'round-robin' */
  queueStrategy?: QueueStrategy;
  mailbox?: MailboxOptions;
  /**
   * Inputs taken and not yet settled (their outputs not yet accepted downstream) before the actor
   * stops taking more. Inputs absorbed into operator state (windows) do not count. @default 256
   */
  maxInFlight?: number;
  /** The key of an input; sets `env.key` and, with `lanes`, routes each key to one ordered lane. */
  partitionBy?: (env: Envelope<In>) => string;
  /** Ordered lanes run in parallel, each key always in the same lane. @default 1, or 8 with partitionBy */
  lanes?: number;
  /** Decodes inputs that arrive as bytes (from a connector); undecodable ones are dead-lettered. */
  codec?: Codec;
  retry?: RetryOptions;
  restart?: RestartOptions;
  /**
   * Where failed and invalid inputs go, with the reason in headers. It may not be a subject the
   * actor subscribes to. An input that is itself a dead letter goes to `$DEAD.<name>` instead (see
   * docs/errors.md, "Dead letters"). @default `$DLQ.<name>`, or `$DEAD.<name>` when the actor's
   * own subscriptions match `$DLQ.<name>` (an actor on `$DLQ.>`)
   */
  deadLetter?: string;
  permissions?: Permissions;
  /**
   * Checkpoints its state (`ctx.state`), the positions of its durable subscriptions and its outputs
   * to streams in one store transaction, every `intervalMs` or `everyInputs` (docs/checkpoints.md).
   * Inputs are acknowledged upstream when the checkpoint that reflects them commits. Needs a
   * runtime with a `store`.
   */
  checkpoint?: CheckpointOptions;
  /**
   * The delivery it promises across a crash, checked against its subscriptions and checkpoint
   * when declared: a combination that cannot give it is an `OptionsError` (README, "Delivery
   * guarantees"). Not given: nothing is checked.
   */
  delivery?: DeliveryMode;
}

/** An actor whose inputs flow through an RxJS pipeline: for windows, joins, stateful streams. */
export interface PipelineActor<In, Out> extends ActorBase<In> {
  /**
   * Builds the pipeline of one lane; called again on restart. Each emitted envelope is published
   * to `output` if given, else to its own `subject`. See docs/settlement.md for how inputs that
   * produce nothing, or are kept by an operator, are settled.
   */
  pipeline: (input$: Observable<Envelope<In>>, ctx: ActorContext) => Observable<Envelope<Out>>;
  output?: SubjectRef<Out>;
  handle?: never;
  concurrency?: never;
}

/**
 * An actor that handles one message at a time per lane, as an Akka actor does: a handler that
 * reads, awaits and writes state never sees two messages interleave. `concurrency` lets
 * handlers that keep no such state overlap.
 */
export interface HandlerActor<In, Out> extends ActorBase<In> {
  /**
   * Its result (or what a returned promise or thenable resolves to) is published to `output`;
   * what it publishes through `ctx` settles with it.
   */
  handle: (env: Envelope<In>, ctx: MessageContext) => HandlerResult<Out> | PromiseLike<HandlerResult<Out>>;
  output?: SubjectRef<Out>;
  /**
   * Messages handled at once, each lane: the next starts while earlier ones still await. Not with
   * `partitionBy`, whose lanes keep each key's order. At most `maxInFlight`. @default 1
   */
  concurrency?: number;
  pipeline?: never;
}

export type ActorDefinition<In = unknown, Out = unknown> = PipelineActor<In, Out> | HandlerActor<In, Out>;

/** A checked actor definition, ready for `runtime.spawn`. */
export interface Actor<In = unknown, Out = unknown> {
  readonly definition: ActorDefinition<In, Out>;
  readonly name: string;
  readonly subjects: readonly {
    readonly name: string;
    readonly schema: StandardSchemaV1<unknown, In> | undefined;
    /** A durable subscription: its consumer pushes to its delivery subject. */
    readonly durable?: DurableRef<In> | undefined;
    /** A connector's source publishes to it: its stream names the positions its messages carry. */
    readonly source?: SourceRef['source'] | undefined;
  }[];
  readonly deadLetter: string;
  readonly output: string | undefined;
  readonly lanes: number;
  readonly maxInFlight: number;
  /** Handler runs at once per lane (1 for a pipeline, which takes its inputs as a stream). */
  readonly concurrency: number;
  /** When its state is checkpointed, if it is. */
  readonly checkpoint:
    | { readonly intervalMs: number | undefined; readonly everyInputs: number | undefined }
    | undefined;
  /** The delivery it declared (checked), if it did. */
  readonly delivery: DeliveryMode | undefined;
}

/** @internal The options every actor takes, as a record the compiler keeps in step with the type. */
export const actorBaseKeys: { readonly [K in keyof ActorBase<unknown>]-?: true } = {
  name: true,
  subscribe: true,
  queue: true,
  queueStrategy: true,
  mailbox: true,
  maxInFlight: true,
  partitionBy: true,
  lanes: true,
  codec: true,
  retry: true,
  restart: true,
  deadLetter: true,
  permissions: true,
  checkpoint: true,
  delivery: true,
};

const actorKeys = optionKeys<keyof PipelineActor<unknown, unknown> | keyof HandlerActor<unknown, unknown>>({
  ...actorBaseKeys,
  pipeline: true,
  handle: true,
  output: true,
  concurrency: true,
});

/**
 * Declares an actor. Checks the definition now, so a mistake is an error at start-up naming the
 * option, not a surprise at the first message.
 *
 * @example
 * const pricing = actor({
 *   name: 'pricing',
 *   subscribe: orders,
 *   output: priced,
 *   pipeline: (order$) => order$.pipe(map((env) => ({ ...env, data: price(env.data) }))),
 * });
 */
export function actor<In, Out>(definition: PipelineActor<In, Out>): Actor<In, Out>;
export function actor<In, Out>(definition: HandlerActor<In, Out>): Actor<In, Out>;
export function actor<In, Out>(definition: ActorDefinition<In, Out>): Actor<In, Out> {
  const name = definition.name;
  if (typeof name !== 'string' || name.length === 0 || /[\s.*>]/.test(name)) {
    throw new OptionsError('actor.name', 'must be a non-empty string without white space, dots or wildcards', name);
  }
  knownKeys(`actor '${name}'`, definition, actorKeys);
  const hasPipeline = typeof definition.pipeline === 'function';
  const hasHandle = typeof definition.handle === 'function';
  if (hasPipeline === hasHandle) {
    throw new OptionsError(
      `actor '${name}'.pipeline`,
      "give exactly one of 'pipeline' and 'handle'",
      hasPipeline ? 'both' : 'neither',
    );
  }
  const refs = (
    Array.isArray(definition.subscribe) ? definition.subscribe : [definition.subscribe]
  ) as SubscribeRef<In>[];
  if (refs.length === 0) throw new OptionsError(`actor '${name}'.subscribe`, 'must name at least one subject', refs);
  const subjects = refs.map((ref) => {
    if (isDurable(ref)) {
      validateSubject(ref.name, 'subscribe');
      return Object.freeze({ name: ref.name, schema: ref.schema, durable: ref });
    }
    if (isSourceRef(ref)) {
      validateSubject(ref.name, 'subscribe');
      return Object.freeze({ name: ref.name, schema: ref.schema, source: Object.freeze({ ...ref.source }) });
    }
    const subjectName = typeof ref === 'string' ? ref : ref.name;
    validateSubject(subjectName, 'subscribe');
    return Object.freeze({ name: subjectName, schema: typeof ref === 'string' ? undefined : ref.schema });
  });
  // What an actor sends to a subject it subscribes to comes back to it: a message loop.
  const ownSubscription = (subject: string) => subjects.find((s) => subjectMatches(s.name, subject))?.name;
  let deadLetter = definition.deadLetter ?? `$DLQ.${name}`;
  validateSubject(deadLetter, 'publish');
  if (ownSubscription(deadLetter) !== undefined) {
    if (definition.deadLetter !== undefined) {
      throw new OptionsError(
        `actor '${name}'.deadLetter`,
        `must not be a subject the actor subscribes to ('${ownSubscription(deadLetter)}'): its dead letters would come back to it`,
        deadLetter,
      );
    }
    deadLetter = `${TERMINAL_PREFIX}${name}`;
  }
  const output =
    definition.output === undefined
      ? undefined
      : typeof definition.output === 'string'
        ? definition.output
        : definition.output.name;
  if (output !== undefined) {
    validateSubject(output, 'publish');
    const loop = ownSubscription(output);
    if (loop !== undefined) {
      throw new OptionsError(
        `actor '${name}'.output`,
        `must not be a subject the actor subscribes to ('${loop}'): its outputs would come back to it as input`,
        output,
      );
    }
  }
  const partitioned = definition.partitionBy !== undefined;
  const lanes = intOption(`actor '${name}'.lanes`, definition.lanes, partitioned ? 8 : 1, 1);
  if (lanes > 1 && !partitioned) {
    throw new OptionsError(
      `actor '${name}'.lanes`,
      "more than one lane needs 'partitionBy' to choose a lane per key",
      lanes,
    );
  }
  const maxInFlight = intOption(`actor '${name}'.maxInFlight`, definition.maxInFlight, 256, 1);
  const concurrency = intOption(`actor '${name}'.concurrency`, definition.concurrency, 1, 1);
  if (definition.concurrency !== undefined) {
    if (hasPipeline) {
      throw new OptionsError(
        `actor '${name}'.concurrency`,
        "is for 'handle' actors; a pipeline sets its own with mergeMap or mapAsync",
        concurrency,
      );
    }
    if (partitioned && concurrency > 1) {
      throw new OptionsError(
        `actor '${name}'.concurrency`,
        "must be 1 with 'partitionBy': each lane keeps the order of its keys; add lanes instead",
        concurrency,
      );
    }
    if (concurrency > maxInFlight) {
      throw new OptionsError(`actor '${name}'.concurrency`, `must be <= maxInFlight (${maxInFlight})`, concurrency);
    }
  }
  if (definition.queue !== undefined) validateQueue(definition.queue, `actor '${name}'.queue`);
  oneOf(`actor '${name}'.queueStrategy`, definition.queueStrategy, queueStrategies, 'round-robin');
  if (definition.partitionBy !== undefined && typeof definition.partitionBy !== 'function') {
    throw new OptionsError(`actor '${name}'.partitionBy`, 'must be a function of the envelope', definition.partitionBy);
  }
  // Checked here as well as when spawned, so a mistake shows where the actor is declared.
  resolveMailboxOptions(definition.mailbox, `actor '${name}'.mailbox`);
  resolveRetry(definition.retry, `actor '${name}'.retry`);
  resolveRestart(definition.restart, `actor '${name}'.restart`);
  const checkpoint =
    definition.checkpoint === undefined
      ? undefined
      : Object.freeze(resolveCheckpoint(definition.checkpoint, `actor '${name}'.checkpoint`));
  const delivery = checkDelivery(
    name,
    definition.delivery,
    subjects,
    checkpoint !== undefined,
    (definition as { [IDEMPOTENT_SINK]?: boolean })[IDEMPOTENT_SINK] === true,
  );
  return Object.freeze({
    definition,
    name,
    subjects: Object.freeze(subjects),
    deadLetter,
    output,
    lanes,
    maxInFlight,
    concurrency,
    checkpoint,
    delivery,
  });
}

/**
 * Any actor `actor()` made, whatever its input and output types: what `runtime.spawn` takes, so
 * that actors of different types go in one list (`[a, b, c].forEach(runtime.spawn)`).
 */
export type AnyActor = Omit<Actor, 'definition'> & { readonly definition: object };
