import { MessageError } from './failure.ts';
import type { Input } from './input.ts';

/**
 * @internal The inputs a cell has taken and not yet settled, in arrival order, and how they count:
 * in flight (against `maxInFlight`) until only absorbed references are left (operator state,
 * mailboxes downstream), then absorbed until settled. An input parked behind a retrying input of
 * its key counts as parked instead of in flight, against a bound of its own, so one poison key
 * cannot take every slot of the actor. The list runs through the inputs
 * themselves, so taking and settling an input allocates nothing for it.
 */
export class OpenInputs implements Iterable<Input> {
  #inFlight = 0;
  #absorbed = 0;
  #parked = 0;
  #head: Input | undefined = undefined;
  #tail: Input | undefined = undefined;

  /** Inputs in flight, and slots held for inputs whose async schema check runs. */
  get inFlight(): number {
    return this.#inFlight;
  }

  get absorbed(): number {
    return this.#absorbed;
  }

  /** Inputs waiting behind a retrying input of their key: taken, not in flight. */
  get parked(): number {
    return this.#parked;
  }

  /** Takes an input, in flight. */
  add(input: Input): void {
    this.#inFlight++;
    input.prev = this.#tail;
    input.next = undefined;
    if (this.#tail === undefined) this.#head = input;
    else this.#tail.next = input;
    this.#tail = input;
  }

  /** Takes an input whose in-flight slot was held for it already ({@link holdSlot}). */
  adopt(input: Input): void {
    this.#inFlight--;
    this.add(input);
  }

  /** Counts an input as absorbed from now on; false when it no longer counted as in flight. */
  leaveFlight(input: Input): boolean {
    if (input.abandoned || !input.counted) return false;
    input.counted = false;
    this.#inFlight--;
    this.#absorbed++;
    return true;
  }

  /** Removes a settled input; false when it was settled or abandoned already. */
  settle(input: Input): boolean {
    if (input.abandoned || input.done) return false;
    input.done = true;
    this.#remove(input);
    return true;
  }

  /** Removes an input whose references no longer count: a replay replaces it, or a stop dead-letters it. */
  abandon(input: Input): void {
    input.abandoned = true;
    this.#remove(input);
  }

  /** Moves an input that waits behind a retrying input of its key from in flight to parked. */
  park(input: Input): void {
    if (input.parked || !input.counted || input.abandoned) return;
    input.parked = true;
    this.#inFlight--;
    this.#parked++;
  }

  /** Takes a parked input back in flight: its key goes on. */
  unpark(input: Input): void {
    if (!input.parked) return;
    input.parked = false;
    this.#parked--;
    this.#inFlight++;
  }

  /** Holds an in-flight slot for an input not taken yet, so the limit still bounds memory. */
  holdSlot(): void {
    this.#inFlight++;
  }

  releaseSlot(): void {
    this.#inFlight--;
  }

  /** The open input a failure names: the one whose envelope a {@link MessageError} carries. */
  named(error: unknown): Input | undefined {
    if (!(error instanceof MessageError)) return undefined;
    const lineage = error.envelope.lineage;
    for (const input of this) if (input.lineage === lineage) return input;
    for (const input of this) if (input.id === error.messageId) return input;
    return undefined;
  }

  /**
   * The inputs a failed pipeline still held, in arrival order, but its culprit: taken by that
   * pipeline, and kept by it (handled synchronously, in an async step, in operator state). Those
   * that only wait on a publish or on downstream were emitted already and settle where they are.
   */
  heldBy(lane: number, generation: number, culprit: Input | undefined): Input[] {
    const held: Input[] = [];
    for (const input of this) {
      if (input.lane !== lane || input.generation !== generation || input === culprit || !input.delivered) continue;
      if (input.heldByPipeline) held.push(input);
    }
    return held;
  }

  /** Walks the inputs; the one just visited may be removed (and inputs added) on the way. */
  *[Symbol.iterator](): Iterator<Input> {
    for (let input = this.#head; input !== undefined; ) {
      const next = input.next;
      yield input;
      input = next;
    }
  }

  #remove(input: Input): void {
    if (input.parked) {
      input.parked = false;
      input.counted = false;
      this.#parked--;
    } else if (input.counted) {
      input.counted = false;
      this.#inFlight--;
    } else this.#absorbed--;
    if (input.prev === undefined) this.#head = input.next;
    else input.prev.next = input.next;
    if (input.next === undefined) this.#tail = input.prev;
    else input.next.prev = input.prev;
    input.prev = undefined;
    input.next = undefined;
  }
}
