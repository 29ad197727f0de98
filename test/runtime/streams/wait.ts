import { flush } from '../helpers.ts';

/**
 * Waits until `check` stops throwing: for writes that end with an LMDB commit (a real fsync), which
 * no number of event-loop turns bounds. Fails with the last assertion after `ms` of real time.
 */
export async function eventually(check: () => void, ms = 3000): Promise<void> {
  const until = Date.now() + ms;
  for (;;) {
    try {
      check();
      return;
    } catch (error) {
      if (Date.now() > until) throw error;
      await flush(1);
    }
  }
}
