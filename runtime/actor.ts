import type { StandardSchemaV1 } from '@standard-schema/spec';
import type { Observable, SchedulerLike } from 'rxjs';
import {
  type BusClient,
  type QueueStrategy,
  queueStrategies,
  type RequestOptions,
  type SubjectRef,
  validateQueue,
} from './bus.ts';
import type { Clock } from './clock.ts';
import type { Codec } from './codec.ts';
import type { Envelope, PublishOptions } from './envelope.ts';
import { OptionsError } from './errors.ts';
import { type MailboxOptions, resolveMailboxOptions } from './mailbox.ts';
import { intOption, oneOf } from './options.ts';
import type { Permissions } from './permissions.ts';
import { validateSubject } from './subjects.ts';
import { type RestartOptions, type RetryOptions, resolveRestart, resolveRetry } from './supervisor.ts';

/** Where an actor logs; `console` fits. */
export interface Logger {
  debug(message: string, ...details: unknown[]): void;
  info(message: string, ...details: unknown[]): void;
  warn(message: string, ...details: unknown[]): void;
  error(message: string, ...details: unknown[]): void;
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
  /** The subject(s) it takes input from; typed subjects with a schema check each input. */
  subscribe: SubjectRef<In> | readonly SubjectRef<In>[];
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
  /** Where failed and invalid inputs go, with the reason in headers. @default `$DLQ.<name>` */
  deadLetter?: string;
  permissions?: Permissions;
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
}

/** An actor that handles one message at a time per lane: for services and request/reply. */
export interface HandlerActor<In, Out> extends ActorBase<In> {
  /** Its result is published to `output`; what it publishes through `ctx` settles with it. */
  handle: (env: Envelope<In>, ctx: MessageContext) => HandlerResult<Out> | Promise<HandlerResult<Out>>;
  output?: SubjectRef<Out>;
  pipeline?: never;
}

export type ActorDefinition<In = unknown, Out = unknown> = PipelineActor<In, Out> | HandlerActor<In, Out>;

/** A checked actor definition, ready for `runtime.spawn`. */
export interface Actor<In = unknown, Out = unknown> {
  readonly definition: ActorDefinition<In, Out>;
  readonly name: string;
  readonly subjects: readonly { readonly name: string; readonly schema: StandardSchemaV1<unknown, In> | undefined }[];
  readonly deadLetter: string;
  readonly output: string | undefined;
  readonly lanes: number;
  readonly maxInFlight: number;
}

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
  ) as SubjectRef<In>[];
  if (refs.length === 0) throw new OptionsError(`actor '${name}'.subscribe`, 'must name at least one subject', refs);
  const subjects = refs.map((ref) => {
    const subjectName = typeof ref === 'string' ? ref : ref.name;
    validateSubject(subjectName, 'subscribe');
    return Object.freeze({ name: subjectName, schema: typeof ref === 'string' ? undefined : ref.schema });
  });
  const deadLetter = definition.deadLetter ?? `$DLQ.${name}`;
  validateSubject(deadLetter, 'publish');
  const output =
    definition.output === undefined
      ? undefined
      : typeof definition.output === 'string'
        ? definition.output
        : definition.output.name;
  if (output !== undefined) validateSubject(output, 'publish');
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
  if (definition.queue !== undefined) validateQueue(definition.queue, `actor '${name}'.queue`);
  oneOf(`actor '${name}'.queueStrategy`, definition.queueStrategy, queueStrategies, 'round-robin');
  if (definition.partitionBy !== undefined && typeof definition.partitionBy !== 'function') {
    throw new OptionsError(`actor '${name}'.partitionBy`, 'must be a function of the envelope', definition.partitionBy);
  }
  // Checked here as well as when spawned, so a mistake shows where the actor is declared.
  resolveMailboxOptions(definition.mailbox, `actor '${name}'.mailbox`);
  resolveRetry(definition.retry, `actor '${name}'.retry`);
  resolveRestart(definition.restart, `actor '${name}'.restart`);
  return Object.freeze({ definition, name, subjects: Object.freeze(subjects), deadLetter, output, lanes, maxInFlight });
}

/**
 * Any actor `actor()` made, whatever its input and output types: what `runtime.spawn` takes, so
 * that actors of different types go in one list (`[a, b, c].forEach(runtime.spawn)`).
 */
export type AnyActor = Omit<Actor, 'definition'> & { readonly definition: object };
