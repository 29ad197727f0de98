/**
 * The one catalogue of Sluice errors. Every error carries a stable `code`, a `retryable` flag
 * that the supervisor reads before it dead-letters, a `cause`, and fields that name the input.
 * Messages read `invalid WHAT 'INPUT': RULE`, lowercase, with no final period.
 * docs/errors.md has a row per code; a test keeps the two in step.
 */
export const errorCodes = [
  'SLUICE_ERR_SUBJECT',
  'SLUICE_ERR_OPTIONS',
  'SLUICE_ERR_TIMEOUT',
  'SLUICE_ERR_NO_RESPONDERS',
  'SLUICE_ERR_PERMISSION',
  'SLUICE_ERR_MAX_PAYLOAD',
  'SLUICE_ERR_MAILBOX_FULL',
  'SLUICE_ERR_CLOSED',
  'SLUICE_ERR_SCHEMA',
  'SLUICE_ERR_DECODE',
  'SLUICE_ERR_HANDLER',
  'SLUICE_ERR_RESTART_LIMIT',
  'SLUICE_ERR_SHUTDOWN',
  'SLUICE_ERR_SETTLEMENT',
  'SLUICE_ERR_LATE_DATA',
  'SLUICE_ERR_ENCODE',
  'SLUICE_ERR_CORRUPT_RECORD',
  'SLUICE_ERR_STREAM',
  'SLUICE_ERR_STATE',
  'SLUICE_ERR_CONNECTOR',
] as const;
export type ErrorCode = (typeof errorCodes)[number];

export interface SluiceErrorOptions extends ErrorOptions {
  /** The same call may succeed later: the supervisor retries before it dead-letters. */
  retryable?: boolean;
}

export class SluiceError extends Error {
  readonly code: ErrorCode;
  readonly retryable: boolean;
  constructor(code: ErrorCode, message: string, options: SluiceErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'SluiceError';
    this.code = code;
    this.retryable = options.retryable ?? false;
  }

  /** Keeps code, fields and message when written to dead-letter headers and logs. */
  toJSON(): Record<string, unknown> {
    return { ...(this as object), name: this.name, message: this.message };
  }
}

export type SubjectRule =
  | 'empty'
  | 'empty-token'
  | 'whitespace'
  | 'wildcard-in-publish'
  | 'full-wildcard-not-last'
  | 'not-a-string'
  | 'too-long'
  | 'invalid-unicode';

export class SubjectError extends SluiceError {
  readonly subject: string;
  readonly rule: SubjectRule;
  constructor(subject: string, rule: SubjectRule, detail: string) {
    // The field keeps the whole subject; the message a readable start of it (a subject may be huge).
    const shown = subject.length > 200 ? `${subject.slice(0, 200)}...` : subject;
    super('SLUICE_ERR_SUBJECT', `invalid subject '${shown}': ${detail}`);
    this.name = 'SubjectError';
    this.subject = subject;
    this.rule = rule;
  }
}

export class OptionsError extends SluiceError {
  readonly option: string;
  readonly value: unknown;
  constructor(option: string, rule: string, value: unknown) {
    super('SLUICE_ERR_OPTIONS', `invalid option '${option}': ${rule}, got ${describe(value)}`);
    this.name = 'OptionsError';
    this.option = option;
    this.value = value;
  }
}

export class TimeoutError extends SluiceError {
  readonly subject: string;
  readonly timeoutMs: number;
  constructor(operation: string, subject: string, timeoutMs: number) {
    super('SLUICE_ERR_TIMEOUT', `${operation} on '${subject}' timed out after ${timeoutMs} ms`, {
      retryable: true,
    });
    this.name = 'TimeoutError';
    this.subject = subject;
    this.timeoutMs = timeoutMs;
  }
}

export class NoRespondersError extends SluiceError {
  readonly subject: string;
  constructor(subject: string) {
    super('SLUICE_ERR_NO_RESPONDERS', `no responders on '${subject}': nothing subscribes to it`, {
      retryable: true,
    });
    this.name = 'NoRespondersError';
    this.subject = subject;
  }
}

export type PermissionOperation = 'publish' | 'subscribe';

export class PermissionError extends SluiceError {
  readonly operation: PermissionOperation;
  readonly subject: string;
  readonly client: string;
  constructor(operation: PermissionOperation, subject: string, client: string, rule: string) {
    super('SLUICE_ERR_PERMISSION', `permission denied: '${client}' may not ${operation} to '${subject}': ${rule}`);
    this.name = 'PermissionError';
    this.operation = operation;
    this.subject = subject;
    this.client = client;
  }
}

export class MaxPayloadError extends SluiceError {
  readonly subject: string;
  readonly size: number;
  readonly limit: number;
  constructor(subject: string, size: number, limit: number) {
    super(
      'SLUICE_ERR_MAX_PAYLOAD',
      `invalid message on '${subject}': its size ${size} bytes exceeds the limit of ${limit} bytes`,
    );
    this.name = 'MaxPayloadError';
    this.subject = subject;
    this.size = size;
    this.limit = limit;
  }
}

export class MailboxFullError extends SluiceError {
  readonly mailbox: string;
  readonly capacity: number;
  constructor(mailbox: string, capacity: number) {
    super(
      'SLUICE_ERR_MAILBOX_FULL',
      `mailbox '${mailbox}' is full: it holds ${capacity} messages and its policy is 'fail'`,
      {
        retryable: true,
      },
    );
    this.name = 'MailboxFullError';
    this.mailbox = mailbox;
    this.capacity = capacity;
  }
}

export class ClosedError extends SluiceError {
  readonly target: string;
  constructor(target: string, detail = 'it is closed') {
    super('SLUICE_ERR_CLOSED', `'${target}' accepts no more messages: ${detail}`);
    this.name = 'ClosedError';
    this.target = target;
  }
}

export interface SchemaIssueSummary {
  readonly message: string;
  readonly path?: string;
}

export class SchemaError extends SluiceError {
  readonly subject: string;
  readonly issues: readonly SchemaIssueSummary[];
  constructor(subject: string, issues: readonly SchemaIssueSummary[]) {
    const text = issues.map((i) => (i.path ? `${i.path}: ${i.message}` : i.message)).join('; ');
    super('SLUICE_ERR_SCHEMA', `invalid data on '${subject}': ${text || 'rejected by its schema'}`);
    this.name = 'SchemaError';
    this.subject = subject;
    this.issues = issues;
  }
}

export class DecodeError extends SluiceError {
  readonly subject: string;
  constructor(subject: string, codec: string, cause: unknown) {
    super('SLUICE_ERR_DECODE', `invalid payload on '${subject}': not decodable as ${codec}: ${messageOf(cause)}`, {
      cause,
    });
    this.name = 'DecodeError';
    this.subject = subject;
  }
}

export class HandlerError extends SluiceError {
  readonly actor: string;
  constructor(actor: string, cause: unknown) {
    super('SLUICE_ERR_HANDLER', `actor '${actor}' failed: ${messageOf(cause)}`, {
      cause,
      retryable: cause instanceof SluiceError ? cause.retryable : true,
    });
    this.name = 'HandlerError';
    this.actor = actor;
  }
}

export class RestartLimitError extends SluiceError {
  readonly actor: string;
  readonly restarts: number;
  readonly windowMs: number;
  constructor(actor: string, restarts: number, windowMs: number, cause: unknown) {
    super(
      'SLUICE_ERR_RESTART_LIMIT',
      `actor '${actor}' stopped: it failed after ${restarts} restarts within ${windowMs} ms: ${messageOf(cause)}`,
      { cause },
    );
    this.name = 'RestartLimitError';
    this.actor = actor;
    this.restarts = restarts;
    this.windowMs = windowMs;
  }
}

/**
 * What an actor still had when a shutdown ended: the runtime dead-letters each such message with
 * this error. `detail` replaces the message when the deadline is not why (a forced stop, inputs
 * kept by operator state past the end of input).
 */
export class ShutdownError extends SluiceError {
  readonly leftInFlight: number;
  constructor(deadlineMs: number, leftInFlight: number, detail?: string) {
    super(
      'SLUICE_ERR_SHUTDOWN',
      detail ?? `shutdown deadline of ${deadlineMs} ms passed with ${leftInFlight} messages in flight`,
    );
    this.name = 'ShutdownError';
    this.leftInFlight = leftInFlight;
  }
}

export class SettlementError extends SluiceError {
  readonly messageId: string;
  constructor(messageId: string, detail: string) {
    super('SLUICE_ERR_SETTLEMENT', `invalid settlement of message '${messageId}': ${detail}`);
    this.name = 'SettlementError';
    this.messageId = messageId;
  }
}

/**
 * An input arrived after its windows closed (beyond the allowed lateness), or without an event
 * time, and the window operator was given no `late` handler: the input fails with this error,
 * which is not retryable, so the actor dead-letters it with the reason instead of losing it.
 */
export class LateDataError extends SluiceError {
  readonly operator: string;
  readonly messageId: string;
  readonly reason: string;
  readonly eventTime: number | undefined;
  readonly watermark: number;
  constructor(operator: string, messageId: string, reason: string, eventTime: number | undefined, watermark: number) {
    super(
      'SLUICE_ERR_LATE_DATA',
      `late message '${messageId}' in window '${operator}': ${reason} (event time ${eventTime}, watermark ${watermark})`,
    );
    this.name = 'LateDataError';
    this.operator = operator;
    this.messageId = messageId;
    this.reason = reason;
    this.eventTime = eventTime;
    this.watermark = watermark;
  }
}

/** Where a stored record lives: a sequence of a stream (a log) or a key of a key-value namespace. */
export type RecordLocation =
  | { readonly stream: string; readonly sequence: number }
  | { readonly namespace: string; readonly key: string };

/**
 * A stored record failed its checksum, was cut short, or does not decode: the store names it and
 * goes on; the other records stay readable. Not retryable: reading it again gives the same bytes.
 */
export class CorruptRecordError extends SluiceError {
  readonly stream: string | undefined;
  readonly sequence: number | undefined;
  readonly namespace: string | undefined;
  readonly key: string | undefined;
  constructor(location: RecordLocation, detail: string, cause?: unknown) {
    const where =
      'stream' in location
        ? `sequence ${location.sequence} of stream '${location.stream}'`
        : `key '${location.key}' of namespace '${location.namespace}'`;
    super('SLUICE_ERR_CORRUPT_RECORD', `corrupt record at ${where}: ${detail}`, cause === undefined ? {} : { cause });
    this.name = 'CorruptRecordError';
    this.stream = 'stream' in location ? location.stream : undefined;
    this.sequence = 'stream' in location ? location.sequence : undefined;
    this.namespace = 'namespace' in location ? location.namespace : undefined;
    this.key = 'namespace' in location ? location.key : undefined;
  }
}

export function messageOf(error: unknown): string {
  if (error instanceof Error) return error.message;
  return typeof error === 'string' ? error : describe(error);
}

function describe(value: unknown): string {
  if (typeof value === 'string') return `'${value}'`;
  if (typeof value === 'bigint') return `${value}n`;
  // JSON would show NaN and Infinity as null, the opposite of what was given.
  if (typeof value === 'number') return String(value);
  if (value === undefined || typeof value === 'function' || typeof value === 'symbol') return String(value);
  try {
    return JSON.stringify(value) ?? String(value);
  } catch {
    return String(value);
  }
}

/**
 * A value could not be encoded with a codec: a cycle, a symbol or function where data belongs, a
 * BigInt for JSON. Raised where a payload is encoded (`measure: 'encoded'`, `encodeEnvelope`,
 * `codec.encode`), naming the subject, instead of the codec's own error.
 */
export class EncodeError extends SluiceError {
  readonly subject: string;
  constructor(subject: string, codec: string, cause: unknown) {
    super('SLUICE_ERR_ENCODE', `invalid payload on '${subject}': not encodable as ${codec}: ${messageOf(cause)}`, {
      cause,
    });
    this.name = 'EncodeError';
    this.subject = subject;
  }
}

/**
 * A durable subject (stream) or durable consumer refused a call: `tryPublish` on a subject a stream
 * captures (it cannot wait for the append to be synced), a stream or consumer unknown to the
 * runtime, a runtime without a store, a consumer used after its runtime stopped.
 */
export class StreamError extends SluiceError {
  readonly stream: string;
  constructor(stream: string, detail: string) {
    super('SLUICE_ERR_STREAM', `stream '${stream}': ${detail}`);
    this.name = 'StreamError';
    this.stream = stream;
  }
}

/**
 * An actor's keyed state or checkpoint refused a call: `ctx.state` on an actor without a
 * checkpoint, a key that is not a non-empty string, an undefined value, a checkpoint on a runtime
 * with no store. Names the actor.
 */
export class StateError extends SluiceError {
  readonly actor: string;
  constructor(actor: string, detail: string) {
    super('SLUICE_ERR_STATE', `actor '${actor}' state: ${detail}`);
    this.name = 'StateError';
    this.actor = actor;
  }
}

/**
 * A connector could not reach or use its broker, naming the connector and the broker's address or
 * resource: a connection refused, authentication or TLS rejected, a stream or consumer missing, a
 * publish not acknowledged. `retryable` is true when the same call may succeed later (a
 * disconnect, a timeout), so the inputs of a failed sink batch are retried before they are
 * dead-lettered; `cause` holds the client's own error.
 */
export class ConnectorError extends SluiceError {
  readonly connector: string;
  constructor(connector: string, detail: string, options: SluiceErrorOptions = {}) {
    super('SLUICE_ERR_CONNECTOR', `connector '${connector}': ${detail}`, options);
    this.name = 'ConnectorError';
    this.connector = connector;
  }
}
