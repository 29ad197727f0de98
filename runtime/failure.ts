import type { Envelope } from './envelope.ts';
import { messageOf, SluiceError } from './errors.ts';

/**
 * An error tied to the message that caused it. Operators that fail asynchronously (`mapAsync`)
 * wrap their errors in it, so the actor can retry or dead-letter that message instead of
 * restarting the whole pipeline for an unknown culprit.
 */
export class MessageError extends SluiceError {
  readonly messageId: string;
  readonly envelope: Envelope;
  constructor(envelope: Envelope, cause: unknown) {
    super('SLUICE_ERR_HANDLER', `message '${envelope.id}' on '${envelope.subject}' failed: ${messageOf(cause)}`, {
      cause,
      retryable: cause instanceof SluiceError ? cause.retryable : true,
    });
    this.name = 'MessageError';
    this.messageId = envelope.id;
    this.envelope = envelope;
  }

  /** Leaves the envelope out: its lineage links back through the graph of trackers. */
  override toJSON(): Record<string, unknown> {
    const { envelope: _envelope, ...rest } = super.toJSON();
    return { ...rest, subject: this.envelope.subject };
  }
}

/** Headers a dead letter carries, so it can be understood and replayed to its original subject. */
export const DEAD_LETTER_HEADERS = Object.freeze({
  error: 'sluice-error',
  code: 'sluice-error-code',
  actor: 'sluice-actor',
  attempts: 'sluice-attempts',
  subject: 'sluice-original-subject',
  messageId: 'sluice-original-id',
  time: 'sluice-dead-lettered-at',
});
