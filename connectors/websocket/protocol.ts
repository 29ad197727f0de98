/**
 * The gateway's wire protocol, `sluice.v1`: JSON text frames, one object each, with an `op`.
 * Client to server: `sub`, `unsub`, `pub`, `req`. Server to client: `hello`, `ack`, `msg`, `reply`,
 * `err`. See docs/websocket.md for each frame's fields.
 */
import type { Envelope } from '../../runtime/envelope.ts';
import { EncodeError, messageOf, OptionsError, SluiceError } from '../../runtime/errors.ts';

/** The subprotocol the gateway speaks; a browser names it with its token in `Sec-WebSocket-Protocol`. */
export const GATEWAY_PROTOCOL = 'sluice.v1';
/** The `Sec-WebSocket-Protocol` entry that carries a bearer token, base64url-encoded after it. */
export const BEARER_PREFIX = 'sluice.bearer.';

/** Close codes the gateway sends, besides ws's own (1009 for a frame over `maxPayloadBytes`). */
export const CloseCode = {
  /** The gateway is closing. */
  GoingAway: 1001,
  /** The connection fell behind: its socket buffer and a subscription's queue were both full. */
  SlowConsumer: 4008,
} as const;

/** A request's correlation id, chosen by the client and echoed in its `ack`, `reply` or `err`. */
export type FrameId = string | number;

export interface SubFrame {
  readonly op: 'sub';
  readonly sid: string;
  readonly subject: string;
  readonly queue?: string;
}
export interface UnsubFrame {
  readonly op: 'unsub';
  readonly sid: string;
}
export interface PubFrame {
  readonly op: 'pub';
  readonly id?: FrameId;
  readonly subject: string;
  readonly data?: unknown;
  readonly key?: string;
  readonly eventTime?: number;
  readonly headers?: Record<string, string>;
  readonly replyTo?: string;
}
export interface ReqFrame {
  readonly op: 'req';
  readonly id: FrameId;
  readonly subject: string;
  readonly data?: unknown;
  readonly key?: string;
  readonly headers?: Record<string, string>;
  readonly timeoutMs?: number;
}
export type ClientFrame = SubFrame | UnsubFrame | PubFrame | ReqFrame;

/** What an `err` frame says about a refused frame, so a client can tell which one failed. */
export interface FrameRef {
  readonly op?: string;
  readonly id?: FrameId;
  readonly sid?: string;
}

const ops = ['sub', 'unsub', 'pub', 'req'] as const;
const MAX_SID = 64;

/**
 * The frame a client sent, checked for shape; an OptionsError naming the field (`frame.sid`) and
 * the rule otherwise, with what could be read of the frame to correlate the error. Subjects,
 * headers and the other message fields are checked by the bus as any publish's are.
 */
export function parseFrame(text: string): { frame?: ClientFrame; error?: SluiceError; ref: FrameRef } {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (error) {
    return {
      error: new OptionsError('frame', `must be JSON: ${messageOf(error)}`, `(${text.length} characters)`),
      ref: {},
    };
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    return { error: new OptionsError('frame', "must be a JSON object with an 'op'", value), ref: {} };
  }
  const f = value as Record<string, unknown>;
  const ref: FrameRef = {
    ...(typeof f.op === 'string' ? { op: f.op } : {}),
    ...(isId(f.id) ? { id: f.id } : {}),
    ...(typeof f.sid === 'string' ? { sid: f.sid } : {}),
  };
  const problem = check(f);
  if (problem !== undefined) return { error: new OptionsError(`frame.${problem[0]}`, problem[1], f[problem[0]]), ref };
  return { frame: f as unknown as ClientFrame, ref };
}

function check(f: Record<string, unknown>): [field: string, rule: string] | undefined {
  if (!(ops as readonly unknown[]).includes(f.op))
    return ['op', `must be one of ${ops.map((o) => `'${o}'`).join(', ')}`];
  if (f.op === 'sub' || f.op === 'unsub') {
    if (typeof f.sid !== 'string' || f.sid.length === 0 || f.sid.length > MAX_SID) {
      return ['sid', `a subscription id is a string of 1 to ${MAX_SID} characters`];
    }
    if (f.op === 'unsub') return undefined;
    if (f.queue !== undefined && typeof f.queue !== 'string') return ['queue', 'a queue group name is a string'];
  }
  if (f.op === 'req' && !isId(f.id)) return ['id', 'a request needs an id: a string of 1 to 64 characters or a number'];
  if (f.id !== undefined && !isId(f.id)) return ['id', 'an id is a string of 1 to 64 characters or a number'];
  // The bus names a subject that is not a string too, but as 'undefined': say which field is missing.
  if (typeof f.subject !== 'string') return ['subject', 'a subject is a string'];
  if (f.op === 'req' && f.timeoutMs !== undefined && typeof f.timeoutMs !== 'number') {
    return ['timeoutMs', 'a timeout is a number of milliseconds'];
  }
  return undefined;
}

function isId(id: unknown): id is FrameId {
  return (
    (typeof id === 'string' && id.length > 0 && id.length <= MAX_SID) || (typeof id === 'number' && Number.isFinite(id))
  );
}

/** The `msg` frame of a message delivered to subscription `sid`; an EncodeError when its data is not JSON. */
export function msgFrame(sid: string, env: Envelope): string {
  return encode(env, `{"op":"msg","sid":${JSON.stringify(sid)},`);
}

/** The `reply` frame of a request's reply. */
export function replyFrame(id: FrameId, env: Envelope): string {
  return encode(env, `{"op":"reply","id":${JSON.stringify(id)},`);
}

function encode(env: Envelope, head: string): string {
  let data: string | undefined;
  try {
    data = JSON.stringify(env.data);
  } catch (error) {
    throw new EncodeError(env.subject, 'json', error);
  }
  const hasHeaders = Object.keys(env.headers).length > 0;
  return (
    `${head}"subject":${JSON.stringify(env.subject)},"messageId":${JSON.stringify(env.id)},` +
    // NaN, Infinity and undefined have no JSON number (a late copy forwarded for missing-event-time).
    `"eventTime":${Number.isFinite(env.eventTime) ? env.eventTime : null}` +
    (env.key === undefined ? '' : `,"key":${JSON.stringify(env.key)}`) +
    (hasHeaders ? `,"headers":${JSON.stringify(env.headers)}` : '') +
    (env.replyTo === undefined ? '' : `,"replyTo":${JSON.stringify(env.replyTo)}`) +
    // undefined data (a bare signal) has no JSON form: the field is left out.
    (data === undefined ? '' : `,"data":${data}`) +
    '}'
  );
}

/** The `ack` of a frame that asked for one. */
export function ackFrame(ref: FrameRef): string {
  return JSON.stringify({ op: 'ack', ...ref });
}

/**
 * The `err` frame for `error`: its code and message, and the fields that name the input (subject,
 * rule, field, operation), so a page can show what was refused and why.
 */
export function errFrame(ref: FrameRef, error: unknown): string {
  const e = error instanceof SluiceError ? (error as SluiceError & Record<string, unknown>) : undefined;
  return JSON.stringify({
    op: 'err',
    ...(ref.op === undefined ? {} : { for: ref.op }),
    ...(ref.id === undefined ? {} : { id: ref.id }),
    ...(ref.sid === undefined ? {} : { sid: ref.sid }),
    code: e?.code ?? 'SLUICE_ERR_HANDLER',
    message: messageOf(error),
    ...(typeof e?.subject === 'string' ? { subject: e.subject } : {}),
    ...(typeof e?.rule === 'string' ? { rule: e.rule } : {}),
    ...(typeof e?.option === 'string' ? { field: e.option } : {}),
    ...(typeof e?.operation === 'string' ? { operation: e.operation } : {}),
  });
}
