import type { Envelope } from '../envelope.ts';
import { messageOf, SluiceError } from '../errors.ts';

/**
 * An error tied to the message that caused it. Operators that fail asynchronously (`mapAsync`)
 * wrap their errors in it, so the actor can retry or dead-letter that message instead of
 * restarting the whole pipeline for an unknown culprit.
 */
export class MessageError extends SluiceError {
  readonly messageId: string;
  readonly envelope: Envelope;
  /** `retryable`: by default as the cause says (a `SluiceError`'s own), else true. */
  constructor(envelope: Envelope, cause: unknown, retryable?: boolean) {
    super('SLUICE_ERR_HANDLER', `message '${envelope.id}' on '${envelope.subject}' failed: ${messageOf(cause)}`, {
      cause,
      retryable: retryable ?? (cause instanceof SluiceError ? cause.retryable : true),
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
