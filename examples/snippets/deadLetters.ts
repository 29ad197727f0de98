// The TypeScript block of docs/errors.md's "Dead letters", verbatim, run by test/docs/snippets.test.ts.
import { deepStrictEqual, strictEqual } from 'node:assert/strict';
import { actor, createRuntime, type Envelope, replayDeadLetters } from 'sluice';

export async function main(): Promise<void> {
  const runtime = createRuntime({ logger: { debug() {}, info() {}, warn() {}, error() {} } });
  const tried = new Set<string>();
  const billed: unknown[] = [];
  runtime.spawn(
    actor<{ invoice: string }, never>({
      name: 'billing',
      subscribe: 'invoices.>',
      retry: { maxAttempts: 1 },
      handle: (env) => {
        // The payment service fails the first call for each invoice.
        if (!tried.has(env.data.invoice)) {
          tried.add(env.data.invoice);
          throw new Error('payment service down');
        }
        billed.push({ subject: env.subject, data: env.data, headers: env.headers });
      },
    }),
  );
  try {
    const letters: Envelope[] = [];
    runtime.bus.subscribe('$DLQ.billing', { callback: (env) => void letters.push(env) });
    await runtime.bus.publish('invoices.eu', { invoice: 'i-1' }); // billing fails on it: dead-lettered
    await runtime.idle();
    // ...later, once what made it fail is fixed:
    const replayed = await replayDeadLetters(runtime.bus, letters, {
      filter: (letter) => letter.headers['sluice-error-code'] === 'SLUICE_ERR_HANDLER',
    });
    await runtime.idle();

    strictEqual(letters.length, 1);
    strictEqual(replayed, 1);
    // Back on its original subject, as a new message: the dead-letter headers are gone.
    deepStrictEqual(billed, [{ subject: 'invoices.eu', data: { invoice: 'i-1' }, headers: {} }]);
  } finally {
    await runtime.stop();
  }
}
