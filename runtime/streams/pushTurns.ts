/**
 * Messages a consumer pushes to its actors in one turn. After that many its push loop waits for
 * its next turn, which comes after every other consumer's that asked first: one consumer with a
 * deep backlog (a replay, store-and-forward after a restart) can no longer keep the others of the
 * runtime, and the event loop, waiting until it is through.
 */
export const PUSH_BATCH = 128;

// Taken at load: fake timers installed afterwards must not stop the consumers from resuming.
const immediate = globalThis.setImmediate;

/**
 * @internal The turns of one runtime's push loops, round-robin. A loop that used up its batch asks
 * for its next turn and waits; the turns of all the loops that asked are given together on the
 * next macrotask, in the order they asked, so each pushes at most {@link PUSH_BATCH} messages
 * before each other waiting loop had its own, and timers, I/O and store commits run in between.
 * A loop that starts afresh (woken by an append or a settlement) goes at once: it too yields after
 * its batch.
 */
export class PushTurns {
  #waiting: (() => void)[] = [];
  #scheduled = false;

  /** Resolves at the caller's next turn. */
  next(): Promise<void> {
    return new Promise<void>((resolve) => {
      this.#waiting.push(resolve);
      if (this.#scheduled) return;
      this.#scheduled = true;
      immediate(() => this.#round());
    });
  }

  #round(): void {
    this.#scheduled = false;
    const due = this.#waiting;
    this.#waiting = [];
    // Each continuation runs in its own microtask, in order: one loop's batch, then the next one's.
    for (const resolve of due) resolve();
  }
}
