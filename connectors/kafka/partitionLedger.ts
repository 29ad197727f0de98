import { RangeSet } from '../../runtime/streams/rangeSet.ts';

/**
 * What one assigned partition delivered and which of it is settled, so the offset committed is the
 * lowest one not settled yet: acks may come in any order (lanes, retries), and Kafka commits one
 * offset per partition meaning "everything below is done".
 *
 * Kafka offsets have gaps (transaction markers, aborted or compacted records), so each delivered
 * record gets a dense index and settlement runs over indexes as a durable consumer's does over
 * sequences (runtime/streams/rangeSet.ts): acks above the floor are kept as runs, a handful of
 * pairs when they come nearly in order.
 */
export class PartitionLedger {
  readonly topic: string;
  readonly partition: number;
  /** Offsets of delivered records from index `#base` on, ascending. */
  #offsets: number[] = [];
  /** Their record timestamps (ms), for the time lag. */
  #timestamps: number[] = [];
  #base = 0;
  /** Index of the lowest delivered record not settled. */
  #floor = 0;
  /** Index the next delivered record gets. */
  #next = 0;
  readonly #settled = new RangeSet();
  /** The offset after what was fetched and not delivered yet: the floor once all delivered settle. */
  undelivered: number;
  /** The last offset committed (or read from the group at assignment). */
  committed: number;

  constructor(topic: string, partition: number, start: number) {
    this.topic = topic;
    this.partition = partition;
    this.undelivered = start;
    this.committed = start;
  }

  /** Delivered and not settled. */
  get pending(): number {
    return this.#next - this.#floor - this.#settled.count;
  }

  /**
   * Delivered from the lowest unsettled record on, settled or not: what the ledger tracks and a
   * commit walks. Unlike {@link pending}, it grows while one record stays unsettled and the rest settle.
   */
  get window(): number {
    return this.#next - this.#floor;
  }

  /** The offset to commit: the lowest delivered and unsettled, else the next not delivered. */
  get floor(): number {
    return this.#floor < this.#next ? (this.#offsets[this.#floor - this.#base] as number) : this.undelivered;
  }

  /** The timestamp of the record at the floor, when one is delivered and not settled. */
  get floorTimestamp(): number | undefined {
    return this.#floor < this.#next ? this.#timestamps[this.#floor - this.#base] : undefined;
  }

  /** Records a delivery; returns its index, for {@link settle}. */
  deliver(offset: number, timestamp = 0): number {
    this.#offsets.push(offset);
    this.#timestamps.push(timestamp);
    this.undelivered = offset + 1;
    return this.#next++;
  }

  settle(index: number): void {
    if (index < this.#floor || index >= this.#next) return;
    this.#settled.add(index);
    const floor = this.#settled.advance(this.#floor);
    if (floor === this.#floor) return;
    this.#floor = floor;
    // Drop settled offsets in chunks, not one shift per ack.
    const drop = this.#floor - this.#base;
    if (drop > 1024 || drop === this.#offsets.length) {
      this.#offsets.splice(0, drop);
      this.#timestamps.splice(0, drop);
      this.#base = this.#floor;
    }
  }

  /** The index of a delivered offset still tracked, or -1. */
  indexOf(offset: number): number {
    const o = this.#offsets;
    let lo = this.#floor - this.#base;
    let hi = o.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const at = o[mid] as number;
      if (at === offset) return mid + this.#base;
      if (at < offset) lo = mid + 1;
      else hi = mid - 1;
    }
    return -1;
  }

  /**
   * What a transaction holding the outputs of the records at `offsets` commits for this partition:
   * the floor as if they were settled too, and the offsets above it that are done (settled, or in
   * `offsets`) as runs. An earlier record still in another lane keeps the floor below itself; the
   * runs, stored in the commit's metadata, let a restart skip what was written above it.
   */
  commitIfSettled(offsets: Iterable<number>): { floor: number; doneAbove: [number, number][] } {
    // Their indexes in order, walked beside the ledger's (which goes up only): no set per commit.
    const extra: number[] = [];
    let sorted = true;
    for (const offset of offsets) {
      const i = this.indexOf(offset);
      if (i < 0) continue;
      if (extra.length > 0 && i <= (extra[extra.length - 1] as number)) sorted = false;
      extra.push(i);
    }
    if (!sorted) extra.sort((a, b) => a - b);
    let next = 0;
    const done = (i: number) => {
      while (next < extra.length && (extra[next] as number) < i) next++;
      return extra[next] === i || this.#settled.has(i);
    };
    let i = this.#floor;
    while (i < this.#next && done(i)) i++;
    const floor = i < this.#next ? (this.#offsets[i - this.#base] as number) : this.undelivered;
    const doneAbove: [number, number][] = [];
    for (; i < this.#next; i++) {
      if (!done(i)) continue;
      const offset = this.#offsets[i - this.#base] as number;
      const last = doneAbove[doneAbove.length - 1];
      if (last !== undefined && last[1] === offset - 1) last[1] = offset;
      else doneAbove.push([offset, offset]);
    }
    return { floor, doneAbove };
  }
}

/**
 * The longest commit metadata written. The broker refuses an offset commit whose metadata is
 * longer than its `offset.metadata.max.bytes` (4096 by default) with OFFSET_METADATA_TOO_LARGE,
 * which a transaction cannot get past: its inputs were retried, dead-lettered, and a later
 * transaction committed past them. Below the default, with room for a broker set a little lower.
 * The metadata is ASCII, so characters are bytes.
 */
export const MAX_COMMIT_METADATA = 4000;

const PREFIX = 'sluice:';

/**
 * Runs of offsets as commit metadata, `sluice:3-5,9`, at most `maxLength` characters: the lowest
 * runs that fit. Runs left out above are read again by the partition's next owner (a duplicate,
 * never a loss: the offset committed does not depend on them). `dropped` counts them.
 */
export function encodeRuns(
  runs: readonly (readonly [number, number])[],
  maxLength = MAX_COMMIT_METADATA,
): { metadata: string | null; dropped: number } {
  let metadata = PREFIX;
  let kept = 0;
  for (const [a, b] of runs) {
    const run = a === b ? `${a}` : `${a}-${b}`;
    const next = kept === 0 ? `${metadata}${run}` : `${metadata},${run}`;
    if (next.length > maxLength) break;
    metadata = next;
    kept++;
  }
  return { metadata: kept === 0 ? null : metadata, dropped: runs.length - kept };
}

/**
 * Sorted runs as one sorted list, overlapping or adjacent ones joined, cut below `floor` (what is
 * below the committed offset needs no run).
 */
export function mergeRuns(
  floor: number,
  ...lists: readonly (readonly (readonly [number, number])[])[]
): [number, number][] {
  const all: [number, number][] = [];
  for (const list of lists) for (const [a, b] of list) if (b >= floor) all.push([Math.max(a, floor), b]);
  all.sort((x, y) => x[0] - y[0]);
  const out: [number, number][] = [];
  for (const [a, b] of all) {
    const last = out[out.length - 1];
    if (last !== undefined && a <= last[1] + 1) last[1] = Math.max(last[1], b);
    else out.push([a, b]);
  }
  return out;
}

/** The runs of commit metadata written by {@link encodeRuns}; anything else has none. */
export function decodeRuns(metadata: string | null | undefined): [number, number][] {
  if (typeof metadata !== 'string' || !metadata.startsWith(PREFIX)) return [];
  const out: [number, number][] = [];
  for (const part of metadata.slice(PREFIX.length).split(',')) {
    const [a, b] = part.split('-').map(Number);
    if (a !== undefined && Number.isSafeInteger(a)) out.push([a, b !== undefined && Number.isSafeInteger(b) ? b : a]);
  }
  return out;
}
