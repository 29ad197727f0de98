import { ACCEPTED, type Bus, type BusClient } from '../bus/bus.ts';
import type { Clock } from '../clock.ts';
import { createEnvelope, DEAD_LETTER_HEADER_NAMES, DEAD_LETTER_HEADERS, type Envelope } from '../envelope.ts';
import { messageOf, OptionsError, SluiceError } from '../errors.ts';
import { type Lineage, releaseDownstream } from '../lineage.ts';
import { intOption, knownKeys, optionKeys } from '../options.ts';
import type { Logger } from './actor.ts';

// Defined beside the envelope, where the bus reserves them (see DEAD_LETTER_HEADERS there).
export { DEAD_LETTER_HEADERS };

/**
 * Where a dead letter of a dead letter goes: `$DEAD.<actor>`, outside `$DLQ.>`, so an actor that
 * consumes dead letters and fails on them never feeds itself. What fails again on a `$DEAD.`
 * subject is logged and dropped: the chain ends there.
 */
export const TERMINAL_PREFIX = '$DEAD.';

/**
 * @internal An actor's way to its dead-letter subject. A message moved there carries the reason
 * in headers, and its source reference passes to the dead letter, so the source is acknowledged
 * once the dead letter is accepted: it is kept, not lost. The dead letter is a new message: it
 * starts at attempt 1, so whoever consumes it gets its own retries; `sluice-attempts` keeps the
 * count of the input that failed.
 */
export class DeadLetters {
  readonly #actor: string;
  readonly #subject: string;
  readonly #bus: Bus;
  readonly #clock: Clock;
  readonly #log: Logger;
  readonly #onSent: () => void;
  readonly #keep: ((letter: Envelope) => void) | undefined;
  #pending = 0;
  #unheard = 0;

  /** `onSent` runs each time a dead letter was accepted (or refused, which is logged). */
  constructor(
    actor: string,
    subject: string,
    deps: {
      readonly bus: Bus;
      readonly clock: Clock;
      readonly log: Logger;
      readonly keepDeadLetter?: ((letter: Envelope) => void) | undefined;
    },
    onSent: () => void,
  ) {
    this.#keep = deps.keepDeadLetter;
    this.#actor = actor;
    this.#subject = subject;
    this.#bus = deps.bus;
    this.#clock = deps.clock;
    this.#log = deps.log;
    this.#onSent = onSent;
  }

  /** Dead letters sent and not yet accepted by the mailboxes of the dead-letter subject. */
  get pending(): number {
    return this.#pending;
  }

  /**
   * Messages no one received, each logged: dead letters sent to a subject nobody subscribed to
   * (counted where each went, which for a dead letter of a dead letter is `$DEAD.<actor>`), and
   * inputs from a `$DEAD.` subject, which are not sent again. The shutdown report's `lost`.
   */
  get unheard(): number {
    return this.#unheard;
  }

  /**
   * Sends `env` to the dead-letter subject (`$DEAD.<actor>` when `env` is already a dead letter);
   * `upstream` is its source reference, given back once accepted. Returns false when `env` came
   * from a `$DEAD.` subject: it is logged and dropped, and its source acknowledged.
   */
  send(env: Envelope, error: unknown, attempts: number, upstream: Lineage | undefined): boolean {
    if (env.subject.startsWith(TERMINAL_PREFIX)) {
      this.#log.error(
        `actor '${this.#actor}' failed on dead letter '${env.id}' from '${env.subject}' after ${attempts} attempt(s) and dropped it (a dead letter of a dead letter's dead letter goes nowhere): ${messageOf(error)}`,
        { data: env.data, headers: env.headers },
      );
      this.#unheard++;
      releaseDownstream(upstream);
      return false;
    }
    const subject =
      env.headers[DEAD_LETTER_HEADERS.error] !== undefined ? `${TERMINAL_PREFIX}${this.#actor}` : this.#subject;
    const now = this.#clock.now();
    const code = error instanceof SluiceError ? error.code : 'SLUICE_ERR_HANDLER';
    const headers: Record<string, string> = {
      ...env.headers,
      [DEAD_LETTER_HEADERS.error]: messageOf(error),
      [DEAD_LETTER_HEADERS.code]: code,
      [DEAD_LETTER_HEADERS.actor]: this.#actor,
      [DEAD_LETTER_HEADERS.attempts]: String(attempts),
      [DEAD_LETTER_HEADERS.subject]: env.subject,
      [DEAD_LETTER_HEADERS.messageId]: env.id,
      [DEAD_LETTER_HEADERS.time]: new Date(now).toISOString(),
    };
    if (!this.#bus.hasSubscribers(subject)) {
      this.#unheard++;
      this.#log.warn(
        `actor '${this.#actor}' dead-lettered message '${env.id}' from '${env.subject}' to '${subject}', which has no subscriber: ${messageOf(error)}`,
      );
    }
    const letter = createEnvelope(
      subject,
      env.data,
      { key: env.key, eventTime: env.eventTime, headers, lineage: upstream },
      now,
    );
    this.#keep?.(letter);
    this.#pending++;
    const done = () => {
      this.#pending--;
      releaseDownstream(upstream);
      this.#onSent();
    };
    // Dead letters bypass the actor's publish permissions: the runtime, not the actor, sends them.
    let accepted: Promise<void>;
    try {
      accepted = this.#bus.route(letter, true);
    } catch (error) {
      // A route may refuse at once (a `max` subscriber's full `fail` mailbox): refused all the same,
      // not thrown into whoever settled the input (a publish the actor had already accepted).
      accepted = Promise.reject(error);
    }
    if (accepted === ACCEPTED) done();
    else
      accepted.then(done, (e: unknown) => {
        // Refused: the source must not count it as handled, so it is given back as failed.
        this.#log.error(`actor '${this.#actor}' could not dead-letter message '${env.id}': ${messageOf(e)}`);
        this.#pending--;
        releaseDownstream(upstream, e);
        this.#onSent();
      });
    return true;
  }
}

/** Where and which dead letters {@link replayDeadLetters} publishes again. */
export interface ReplayOptions {
  /** Publishes there instead of each letter's `sluice-original-subject`. */
  to?: string;
  /** Replays at most this many (those `filter` skips do not count). @default all */
  limit?: number;
  /** Replays only the letters it returns true for. */
  filter?: (letter: Envelope) => boolean;
}

const replayKeys = optionKeys<keyof ReplayOptions>({ to: true, limit: true, filter: true });

/**
 * Publishes a dead letter again, to the subject its input came from (`sluice-original-subject`)
 * or to `to`: its data, key, event time and headers, without the dead-letter headers, so that
 * the actor takes it as a new message (attempt 1, its own retries) and not as a dead letter. It
 * gets a new id: a broker that de-duplicates by id would drop one that kept the old one. Resolves
 * once every matching mailbox accepted it, as `publish` does.
 */
export function replayDeadLetter(
  bus: Pick<BusClient, 'publish'>,
  letter: Envelope,
  options?: Pick<ReplayOptions, 'to'>,
): Promise<void> {
  const to = options?.to ?? letter.headers[DEAD_LETTER_HEADERS.subject];
  if (to === undefined) {
    return Promise.reject(
      new OptionsError(
        'replayDeadLetter(letter)',
        `must be a dead letter: it carries no '${DEAD_LETTER_HEADERS.subject}' header, and no 'to' was given`,
        letter.id,
      ),
    );
  }
  const headers: Record<string, string> = {};
  for (const name of Object.keys(letter.headers)) {
    if (!DEAD_LETTER_HEADER_NAMES.has(name)) headers[name] = letter.headers[name] as string;
  }
  return bus.publish(to, letter.data, { key: letter.key, eventTime: letter.eventTime, headers });
}

/**
 * Replays dead letters one after another (see {@link replayDeadLetter}), each once the one before
 * was accepted, from an array or any (async) iterable: envelopes kept from `$DLQ.<actor>`, or read
 * back from a durable subject. Resolves with how many it replayed.
 */
export async function replayDeadLetters(
  bus: Pick<BusClient, 'publish'>,
  letters: Iterable<Envelope> | AsyncIterable<Envelope>,
  options?: ReplayOptions,
): Promise<number> {
  knownKeys('replayDeadLetters options', options, replayKeys);
  const limit = intOption('replayDeadLetters options.limit', options?.limit, Number.MAX_SAFE_INTEGER, 0);
  const filter = options?.filter;
  if (filter !== undefined && typeof filter !== 'function') {
    throw new OptionsError('replayDeadLetters options.filter', 'must be a function of the letter', filter);
  }
  if (limit === 0) return 0;
  let replayed = 0;
  for await (const letter of letters) {
    if (filter !== undefined && !filter(letter)) continue;
    await replayDeadLetter(bus, letter, options);
    if (++replayed >= limit) break;
  }
  return replayed;
}
