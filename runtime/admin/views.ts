import type { ActorCell, CheckpointInfo } from '../actors/actorCell.ts';
import { subjectMatches } from '../bus/subjects.ts';
import type { Envelope } from '../envelope.ts';
import { OptionsError } from '../errors.ts';
import type { StoredMessage, StreamImpl } from '../streams/stream.ts';
import type { ConsumerInfo } from '../streams/types.ts';
import type { Counters } from '../telemetry.ts';
import type { KeptLetter } from './deadLetterBuffer.ts';
import type { AdminHost } from './host.ts';
import type { Sampler } from './sampler.ts';

/** Flink's backpressure levels, here from how full the actor's mailbox is. */
export type Backpressure = 'OK' | 'LOW' | 'HIGH';

/** Mailbox fill at or under which an actor shows OK, and LOW; above, HIGH (Flink's 10% and 50%). */
export const BACKPRESSURE_LOW = 0.1;
export const BACKPRESSURE_HIGH = 0.5;

export function backpressure(depth: number, capacity: number): Backpressure {
  const fill = capacity === 0 ? 0 : depth / capacity;
  return fill <= BACKPRESSURE_LOW ? 'OK' : fill <= BACKPRESSURE_HIGH ? 'LOW' : 'HIGH';
}

export interface ActorView {
  readonly name: string;
  readonly kind: 'pipeline' | 'handler';
  readonly state: string;
  readonly paused: boolean;
  readonly depth: number;
  readonly capacity: number;
  readonly fill: number;
  readonly backpressure: Backpressure;
  readonly inFlight: number;
  readonly maxInFlight: number;
  readonly absorbed: number;
  readonly parked: number;
  readonly restarts: number;
  readonly rateIn: number;
  readonly rateOut: number;
  readonly inputs: readonly string[];
  readonly output: string | undefined;
  readonly deadLetter: string;
  readonly counters: Readonly<Counters>;
  readonly checkpoint: CheckpointInfo | undefined;
}

/** @internal */
export function actorView(cell: ActorCell, sampler: Sampler): ActorView {
  const d = cell.describe();
  const depth = cell.depth;
  const rates = sampler.rates(cell.name);
  return {
    name: cell.name,
    kind: d.kind,
    state: cell.state,
    paused: cell.paused,
    depth,
    capacity: d.capacity,
    fill: d.capacity === 0 ? 0 : Math.round((depth / d.capacity) * 1000) / 1000,
    backpressure: backpressure(depth, d.capacity),
    inFlight: cell.inFlight,
    maxInFlight: d.maxInFlight,
    absorbed: cell.absorbed,
    parked: cell.parked,
    restarts: cell.restarts,
    rateIn: rates.in,
    rateOut: rates.out,
    inputs: d.inputs,
    output: d.output,
    deadLetter: d.deadLetter,
    counters: { ...cell.counters },
    checkpoint: cell.checkpoint,
  };
}

export interface StreamView {
  readonly name: string;
  readonly subjects: readonly string[];
  readonly first: number;
  readonly last: number;
  readonly messages: number;
  readonly bytes: number | undefined;
  readonly retention: { maxAgeMs?: number; maxBytes?: number; maxMessages?: number };
  readonly consumers: readonly ConsumerInfo[];
}

/** @internal */
export function streamView(stream: StreamImpl): StreamView {
  return {
    ...stream.info(),
    retention: stream.retention,
    consumers: stream.consumers().map((c) => c.info()),
  };
}

/** A consumer with the actors that read it (by its delivery subject). */
export interface LagView extends ConsumerInfo {
  readonly actors: readonly string[];
}

/** @internal */
export function lagViews(host: AdminHost): LagView[] {
  const out: LagView[] = [];
  const cells = host.actors();
  for (const stream of host.streams()) {
    for (const c of stream.consumers()) {
      out.push({
        ...c.info(),
        actors: cells.filter((cell) => cell.describe().inputs.includes(c.deliverSubject)).map((cell) => cell.name),
      });
    }
  }
  return out;
}

/** @internal The positions of the consumers an actor reads, by `stream/consumer`. */
export function positionsOf(host: AdminHost, actor: string): Record<string, number> {
  const cell = host.actors().find((c) => c.name === actor);
  if (cell === undefined) return {};
  const inputs = cell.describe().inputs;
  const out: Record<string, number> = {};
  for (const stream of host.streams()) {
    for (const c of stream.consumers())
      if (inputs.includes(c.deliverSubject)) out[`${stream.name}/${c.name}`] = c.position;
  }
  return out;
}

/** Payload bytes shown per message; the rest is cut, so a page stays small. */
export const MAX_DATA_CHARS = 8192;
/** Messages per page at most. */
export const MAX_PAGE = 500;
/** Stored messages a filtered page reads at most before it returns what it found. */
export const MAX_SCAN = 10_000;
/** Time a page may spend reading before it returns what it found (the rest is the next page). */
export const MAX_SCAN_MS = 10;
/** Payload characters a page holds at most: past this it ends early, with a `next` to go on. */
export const MAX_PAGE_CHARS = 512 * 1024;

export interface MessageView {
  readonly seq: number;
  readonly subject: string;
  readonly id: string;
  readonly key: string | undefined;
  readonly eventTime: number | undefined;
  /** When it was appended (streams) or received (dead letters), epoch ms. */
  readonly time: number;
  readonly headers: Readonly<Record<string, string>>;
  /** The decoded payload, or a string preview when it is longer than {@link MAX_DATA_CHARS}. */
  readonly data: unknown;
  readonly truncated: boolean;
  /** Characters of the payload as JSON (before it was cut). */
  readonly size: number;
  readonly error?: string;
}

/** JSON-safe payload, cut to a bound. */
export function preview(data: unknown): { data: unknown; truncated: boolean; size: number } {
  let text: string | undefined;
  try {
    text =
      data instanceof Uint8Array
        ? JSON.stringify({ base64: Buffer.from(data.subarray(0, MAX_DATA_CHARS)).toString('base64') })
        : JSON.stringify(data, (_k, v: unknown) => (typeof v === 'bigint' ? `${v}n` : v));
  } catch (error) {
    return { data: `(not serialisable: ${(error as Error).message})`, truncated: true, size: 0 };
  }
  if (text === undefined) return { data: null, truncated: false, size: 0 };
  const size = text.length;
  if (size > MAX_DATA_CHARS) return { data: text.slice(0, MAX_DATA_CHARS), truncated: true, size };
  // Parsed back: the JSON-safe form (big integers as strings), sent as it was measured.
  return { data: JSON.parse(text) as unknown, truncated: data instanceof Uint8Array, size };
}

/** @internal */
export function letterView(l: KeptLetter): MessageView {
  return envelopeView(l.n, l.envelope, l.at);
}

function envelopeView(seq: number, env: Envelope, time: number): MessageView {
  return {
    seq,
    subject: env.subject,
    id: env.id,
    key: env.key,
    eventTime: env.eventTime,
    time,
    headers: env.headers,
    ...preview(env.data),
  };
}

/** A filter a page applies: a subject pattern (NATS wildcards) and text the JSON payload contains. */
export interface MessageFilter {
  readonly subject?: string | undefined;
  readonly contains?: string | undefined;
}

export function matches(env: { subject: string; data: unknown }, filter: MessageFilter): boolean {
  if (filter.subject !== undefined && !subjectMatches(filter.subject, env.subject)) return false;
  if (filter.contains !== undefined) {
    let text: string;
    try {
      text = typeof env.data === 'string' ? env.data : (JSON.stringify(env.data) ?? '');
    } catch {
      return false;
    }
    if (!text.includes(filter.contains)) return false;
  }
  return true;
}

export interface MessagePage {
  readonly stream: string;
  readonly first: number;
  readonly last: number;
  readonly messages: readonly MessageView[];
  /** Where the next page starts, or undefined at the end of the stream. */
  readonly next: number | undefined;
  /** Stored messages read for this page (a filter may skip most). */
  readonly scanned: number;
}

/** @internal One page of a stream from a sequence (or a time), filtered, bounded in messages and in reads. */
export function browse(
  stream: StreamImpl,
  from: { seq?: number | undefined; time?: number | undefined },
  limit: number,
  filter: MessageFilter,
): MessagePage {
  if (!Number.isInteger(limit) || limit < 1 || limit > MAX_PAGE) {
    throw new OptionsError('limit', `must be an integer from 1 to ${MAX_PAGE}`, limit);
  }
  const b = stream.store.bounds(stream.log);
  let seq = from.seq ?? (from.time !== undefined ? stream.seqAtTime(from.time) : b.first);
  seq = Math.max(seq, b.first);
  const messages: MessageView[] = [];
  let scanned = 0;
  let chars = 0;
  const until = performance.now() + MAX_SCAN_MS;
  // Bounded three ways: messages, reads, and time, so one page never holds the event loop long.
  while (
    seq <= b.last &&
    messages.length < limit &&
    scanned < MAX_SCAN &&
    chars < MAX_PAGE_CHARS &&
    (scanned === 0 || performance.now() < until)
  ) {
    const entries = stream.read(seq, Math.min(256, MAX_SCAN - scanned));
    if (entries.length === 0) break;
    for (const e of entries) {
      scanned++;
      seq = e.seq + 1;
      if (e.error !== undefined) {
        messages.push({
          seq: e.seq,
          subject: '',
          id: '',
          key: undefined,
          eventTime: 0,
          time: 0,
          headers: {},
          data: null,
          truncated: false,
          size: 0,
          error: e.error.message,
        });
      } else {
        const m = e.value as StoredMessage;
        if (!matches({ subject: m.s, data: m.d }, filter)) continue;
        const view = envelopeView(e.seq, stream.envelope(e.seq, m, 1, undefined), m.t);
        chars += Math.min(view.size, MAX_DATA_CHARS);
        messages.push(view);
      }
      if (messages.length >= limit || chars >= MAX_PAGE_CHARS) break;
    }
  }
  return {
    stream: stream.name,
    first: b.first,
    last: b.last,
    messages,
    next: seq <= b.last ? seq : undefined,
    scanned,
  };
}
