/**
 * Cases the Redis, RabbitMQ and MQTT source tests share: a runtime that stops while its actor
 * holds everything, and the dead letter of a message whose header the bus refuses.
 */
import { actor, createRuntime, DEAD_LETTER_HEADERS, type Envelope, type Runtime } from 'sluice';
import { expect, onTestFinished } from 'vitest';
import { until } from './conformance.ts';

const quiet = { debug() {}, info() {}, warn() {}, error() {} };

/**
 * A runtime whose actor on `subject` takes one message at a time and never finishes it, so the
 * source's next messages wait, and a stop that gives up on it after 100 ms.
 */
export function stuckRuntime(subject: string): Runtime {
  const rt = createRuntime({ logger: quiet, shutdownDeadlineMs: 100 });
  onTestFinished(() => rt.stop().then(() => undefined));
  rt.spawn(
    actor({
      name: 'stuck',
      subscribe: subject,
      mailbox: { capacity: 1 },
      maxInFlight: 1,
      handle: () => new Promise<void>(() => undefined),
    }),
  );
  return rt;
}

/**
 * Waits for the message `2` delivered and one dead letter: that of a message with the header
 * `tenant: eu` and one named `bad name`, given up at once, with the name in its error.
 */
export async function expectRefusedHeaderLetter(seen: readonly unknown[], letters: readonly Envelope[]): Promise<void> {
  await until(() => seen.length === 1 && letters.length === 1, 'one delivered, one dead letter');
  expect(seen).toEqual([2]);
  const letter = letters[0] as Envelope;
  expect(letter.headers[DEAD_LETTER_HEADERS.error]).toMatch(/'bad name'.*header name/);
  expect(letter.headers[DEAD_LETTER_HEADERS.attempts]).toBe('1');
  expect(letter.headers.tenant).toBe('eu');
  expect(letter.headers['bad name']).toBeUndefined();
}
