export type {
  Actor,
  ActorContext,
  ActorDefinition,
  AnyActor,
  HandlerActor,
  HandlerResult,
  Logger,
  MessageContext,
  PipelineActor,
  SubscribeRef,
} from './actors/actor.ts';
export { actor } from './actors/actor.ts';
export type { ActorRef, ActorState, CheckpointInfo } from './actors/actorCell.ts';
export type { ReplayOptions } from './actors/deadLetters.ts';
export { DEAD_LETTER_HEADERS, replayDeadLetter, replayDeadLetters } from './actors/deadLetters.ts';
export type { DeliveryMode } from './actors/delivery.ts';
export { MessageError } from './actors/failure.ts';
export type { WindowView } from './actors/operatorProbes.ts';
export type { BackoffOptions, RestartLimitAction, RestartOptions, RetryOptions } from './actors/supervisor.ts';
export {
  backoffDelay,
  DEFAULT_BACKOFF,
  DEFAULT_RESTART,
  DEFAULT_RETRY,
  restartLimitActions,
} from './actors/supervisor.ts';
export type {
  AdminServer,
  AuditEntry,
  Backpressure,
  Caller,
  DeadLetterSubjectInfo,
  ServeOptions,
} from './admin/index.ts';
export {
  BACKPRESSURE_HIGH,
  BACKPRESSURE_LOW,
  MAX_BODY_BYTES,
  MAX_PAGE,
  MAX_SCAN,
  MIN_TOKEN_LENGTH,
  REPLAYED_FROM_HEADER,
} from './admin/index.ts';
export type {
  BusClient,
  BusOptions,
  PayloadMeasure,
  QueueStrategy,
  RequestManyLimits,
  RequestManyOptions,
  RequestOptions,
  Route,
  SubjectRef,
} from './bus/bus.ts';
export { Bus, DEFAULT_BUS_OPTIONS, payloadMeasures, queueStrategies } from './bus/bus.ts';
export type { DropReason, MailboxOptions, OverflowPolicy } from './bus/mailbox.ts';
export { DEFAULT_MAILBOX_OPTIONS, Mailbox, overflowPolicies } from './bus/mailbox.ts';
export type { Permissions, SubjectPermission } from './bus/permissions.ts';
export { isSubsetMatch } from './bus/permissions.ts';
export { isLiteral, MAX_SUBJECT_BYTES, subjectMatches, validateSubject } from './bus/subjects.ts';
export type { SubscriptionOptions } from './bus/subscription.ts';
export { Subscription } from './bus/subscription.ts';
export type { DataOf, TypedSubject, TypedSubjectOptions } from './bus/typedSubject.ts';
export { subject, validate } from './bus/typedSubject.ts';
export type { Clock, Timer } from './clock.ts';
export { SystemClock, systemClock, VirtualClock } from './clock.ts';
export type { Codec } from './codec.ts';
export { decodeEnvelope, encodeEnvelope, jsonCodec, msgpackCodec } from './codec.ts';
export type { Envelope, EnvelopeOptions, Headers, PublishOptions } from './envelope.ts';
export { createEnvelope, nextId, withData, withHeaders } from './envelope.ts';
export type { ErrorCode, PermissionOperation, SluiceErrorOptions, SubjectRule } from './errors.ts';
export {
  ClosedError,
  ConnectorError,
  CorruptRecordError,
  DecodeError,
  EncodeError,
  errorCodes,
  HandlerError,
  LateDataError,
  MailboxFullError,
  MaxPayloadError,
  NoRespondersError,
  OptionsError,
  PermissionError,
  RestartLimitError,
  SchemaError,
  SettlementError,
  ShutdownError,
  SluiceError,
  StateError,
  StreamError,
  SubjectError,
  TimeoutError,
} from './errors.ts';
export type { Lineage, Outcome } from './lineage.ts';
export { absorb, hold, mergeLineage } from './lineage.ts';
export type {
  ActorLeft,
  Runtime,
  RuntimeOptions,
  ShutdownReport,
  SignalOptions,
  SubscriptionLeft,
} from './runtime.ts';
export { createRuntime, describeReport } from './runtime.ts';
export type { Sink, SinkRecord, SinkRecordOptions } from './sinks/sink.ts';
export { IDEMPOTENCY_KEY_HEADER, latestPerKey } from './sinks/sink.ts';
export type { StreamSinkOptions } from './sinks/streamSink.ts';
export { REVISION_HEADER, streamSink } from './sinks/streamSink.ts';
export type { SinkActorDefinition, SinkBatchOptions, WriteToOptions } from './sinks/writeTo.ts';
export { DEFAULT_SINK_BATCH, sinkActor, writeTo } from './sinks/writeTo.ts';
export type { SourceConnection, SourceHealth, SourceProbe, SourceStatus } from './sources/registry.ts';
export { MAX_CLOSED_SOURCES } from './sources/registry.ts';
export type { Source, SourceHost, SourceLag, SourceRef } from './sources/source.ts';
export type { CheckpointOptions, CheckpointRecord, CheckpointStats } from './state/checkpoint.ts';
export { CHECKPOINT_HISTORY } from './state/checkpoint.ts';
export type { KeyedState } from './state/keyedState.ts';
export { stateNamespace } from './state/keyedState.ts';
export type { ActorCounts, ActorWindows, RuntimeStatus } from './status.ts';
export type {
  Durability,
  KvEntry,
  LmdbStoreOptions,
  LogEntry,
  ReadOptions,
  ScanOptions,
  SequenceRange,
  Store,
  StoreBatch,
  StoreStats,
  StreamBounds,
} from './store/index.ts';
export { LmdbStore, MemoryStore } from './store/index.ts';
export type {
  Consumer,
  ConsumerInfo,
  ConsumerLag,
  ConsumerOptions,
  DeliverPolicy,
  DurableOptions,
  DurableRef,
  RetentionOptions,
  Stream,
  StreamConfig,
  StreamInfo,
  StreamMessage,
} from './streams/index.ts';
export { durable, STREAM_HEADERS } from './streams/index.ts';
export type { Counters } from './telemetry.ts';
export { Telemetry } from './telemetry.ts';
export type { Transport, TransportHost } from './transport/transport.ts';
export { LOCAL_PREFIX, TransportBus } from './transport/transport.ts';
