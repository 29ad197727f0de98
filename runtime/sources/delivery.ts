/**
 * What connector sources share to deliver broker messages onto the bus: the free room of the
 * mailboxes a subject reaches (how much to ask the broker for), and the publish of a message the
 * broker delivers again, at its delivery count. (A message's lineage is `SourceLineage`.)
 */

import type { Logger } from '../actors/actor.ts';
import { DEAD_LETTER_HEADERS } from '../actors/deadLetters.ts';
import { backoffDelay, DEFAULT_BACKOFF } from '../actors/supervisor.ts';
import type { Bus, BusClient } from '../bus/bus.ts';
import { checkHeaders, createEnvelope, type Headers, type PublishOptions, validName } from '../envelope.ts';
import { ClosedError, ConnectorError, MaxPayloadError, messageOf, SluiceError, StreamError } from '../errors.ts';
import type { Lineage } from '../lineage.ts';

/**
 * @internal Messages the mailboxes reached by `subject` can take now: the least over the plain
 * subscriptions, each queue group counting the room of all its members. Routes without a mailbox
 * (a stream's capture, a request inbox) take what comes. With `empty`, what they could take if
 * they were empty: their capacity.
 */
export function freeCapacity(bus: Bus, subject: string, empty = false): number {
  const match = bus.lookup(subject);
  let free = Number.POSITIVE_INFINITY;
  for (const r of match.plain) {
    const mb = r.mailbox;
    if (mb !== undefined) free = Math.min(free, Math.max(0, mb.capacity - (empty ? 0 : mb.depth)));
  }
  for (const group of match.groups) {
    let room = 0;
    for (const r of group) {
      const mb = r.mailbox;
      room += mb === undefined ? Number.POSITIVE_INFINITY : Math.max(0, mb.capacity - (empty ? 0 : mb.depth));
    }
    free = Math.min(free, room);
  }
  return free;
}

/**
 * @internal Publishes a broker message at the broker's delivery count `attempt`: undefined when
 * every mailbox took it at once, else a promise that resolves once they did. A first delivery goes
 * through the source's client as any publish; a message the broker delivers again carries its
 * count as `env.attempt` (a client refuses an attempt above 1, so that no publisher can forge one),
 * as a stream consumer's redelivery does, so an actor's retries count on from the broker's.
 */
export function publishDelivery(
  bus: Bus,
  client: BusClient,
  subject: string,
  data: unknown,
  options: PublishOptions,
  attempt: number,
): Promise<void> | undefined {
  if (attempt <= 1) {
    // Fast path, no promise: every mailbox takes it now (a captured subject must wait for its append).
    try {
      // The options are the source's own, made for this message: its headers checked in place, the
      // client finds them checked and copies no options for them (on this path, once per message).
      if (options.headers !== undefined) options.headers = checkHeaders(options.headers, 'tryPublish.headers');
      if (client.tryPublish(subject, data, options)) return undefined;
    } catch (error) {
      if (!(error instanceof StreamError)) return Promise.reject(error);
    }
    return client.publish(subject, data, options);
  }
  try {
    if (bus.refusal !== undefined) throw new ClosedError('bus', bus.refusal);
    const headers = checkHeaders(options.headers ?? {}, `${client.name}.headers`);
    bus.checkSize(subject, data, headers);
    const match = bus.lookup(subject);
    if (match.plain.length === 0 && match.groups.length === 0) {
      bus.publishedToNone();
      return Promise.resolve();
    }
    return bus.route(createEnvelope(subject, data, { ...options, headers, attempt }, bus.clock.now()), true, match);
  } catch (error) {
    return Promise.reject(error);
  }
}

/** @internal Publish options of a broker message: its lineage is the source's own. */
export type DeliveryOptions = PublishOptions & { lineage: Lineage };

/**
 * @internal {@link publishDelivery} of a message whose `lineage` the source holds: once the
 * mailboxes took it, counted in `stats.published` and its lineage released (with the error when
 * they refused it). Undefined when that happened at once, else a promise of it that never rejects.
 */
export function deliverHeld(
  bus: Bus,
  client: BusClient,
  subject: string,
  data: unknown,
  options: DeliveryOptions,
  attempt: number,
  stats: { published: number },
): Promise<void> | undefined {
  const lineage = options.lineage;
  const accepted = publishDelivery(bus, client, subject, data, options, attempt);
  if (accepted === undefined) {
    stats.published++;
    lineage.release();
    return undefined;
  }
  return accepted.then(
    () => {
      stats.published++;
      lineage.release();
    },
    (error: unknown) => lineage.release(error),
  );
}

/** @internal The delay before a failed message's next delivery: `backoffMs` by attempt (the last repeats), else the runtime's backoff. */
export function retryDelay(attempt: number, backoffMs: readonly number[] | undefined): number {
  return backoffMs !== undefined
    ? (backoffMs[Math.min(attempt, backoffMs.length) - 1] as number)
    : backoffDelay(attempt, DEFAULT_BACKOFF, Math.random);
}

/** @internal The dead-letter headers of a broker message a source gives up on, over its own `headers`. */
export function deadLetterHeaders(letter: {
  readonly headers?: Readonly<Record<string, string>>;
  readonly error: unknown;
  readonly source: string;
  readonly attempts: number;
  readonly subject: string;
  readonly messageId: string;
  readonly timeMs: number;
  /** The code of an `error` that is no `SluiceError`. @default 'SLUICE_ERR_HANDLER' */
  readonly code?: string;
}): Record<string, string> {
  return {
    ...letter.headers,
    [DEAD_LETTER_HEADERS.error]: messageOf(letter.error),
    [DEAD_LETTER_HEADERS.code]:
      letter.error instanceof SluiceError ? letter.error.code : (letter.code ?? 'SLUICE_ERR_HANDLER'),
    [DEAD_LETTER_HEADERS.actor]: letter.source,
    [DEAD_LETTER_HEADERS.attempts]: String(letter.attempts),
    [DEAD_LETTER_HEADERS.subject]: letter.subject,
    [DEAD_LETTER_HEADERS.messageId]: letter.messageId,
    [DEAD_LETTER_HEADERS.time]: new Date(letter.timeMs).toISOString(),
  };
}

/**
 * @internal `headers` of a broker message checked for the bus, or, when it refuses a name, a
 * `ConnectorError` of `source` naming `what` (the message) and the names, which are deleted from
 * `headers`: a message whose header the bus refuses is refused at every delivery, so it is
 * dead-lettered at once, and its dead letter, which carries its headers, must leave them out.
 */
export function busHeaders(headers: Record<string, string>, source: string, what: string): Headers | ConnectorError {
  try {
    return checkHeaders(headers, `${source}.headers`);
  } catch {
    const refused = Object.keys(headers).filter((name) => !validName(name));
    for (const name of refused) delete headers[name];
    const names = refused.map((name) => `'${name}'`).join(', ');
    return new ConnectorError(
      source,
      `${what} has a header the bus refuses (${names}): a header name is printable ASCII without white space or colon`,
    );
  }
}

/**
 * @internal Publishes the dead letter of a broker message. One over the bus's payload limit (the
 * message itself was, which is why it failed) would be refused at every try, and the message never
 * leave its broker's redelivery: it goes without its payload, `sluice-payload-dropped` saying why
 * (its position headers tell where a broker that keeps it has it), and the drop is logged.
 */
export async function publishDeadLetter(
  client: BusClient,
  subject: string,
  data: Uint8Array,
  headers: Record<string, string>,
  log: Logger,
): Promise<void> {
  try {
    await client.publish(subject, data, { headers });
  } catch (error) {
    if (!(error instanceof MaxPayloadError)) throw error;
    const why = `its payload of ${data.byteLength} bytes is over the bus's limit of ${error.limit} bytes`;
    log.error(`${client.name}: the dead letter to '${subject}' goes without its payload: ${why}`);
    await client.publish(subject, new Uint8Array(0), {
      headers: { ...headers, [DEAD_LETTER_HEADERS.payloadDropped]: why },
    });
  }
}
