/**
 * Sequences settled above a consumer's floor, as sorted runs `[first, last]`: acks mostly come in
 * order, or in a few gaps, so a run list stays a handful of pairs where a set would hold one entry
 * per message (a filter that skips most of a stream settles long runs at once).
 */
export class RangeSet {
  /** Flat pairs: first0, last0, first1, last1, ... sorted and never touching. */
  #runs: number[] = [];
  #count = 0;

  /**
   * The set of stored runs, taken as runs (a run may span millions of sequences a filter skipped:
   * added one by one, a restart would take as long). Throws a {@link RangeError} naming the run
   * when they are not sorted runs of positive integers, apart from each other.
   */
  static from(runs: readonly (readonly [number, number])[] | undefined): RangeSet {
    const set = new RangeSet();
    if (runs === undefined) return set;
    if (!Array.isArray(runs)) throw new RangeError('the runs are not an array');
    const flat = set.#runs;
    for (const [i, run] of runs.entries()) {
      const first: unknown = Array.isArray(run) ? run[0] : undefined;
      const last: unknown = Array.isArray(run) ? run[1] : undefined;
      if (!Number.isSafeInteger(first) || !Number.isSafeInteger(last) || (first as number) < 1) {
        throw new RangeError(`run ${i} is not a pair of positive integers: ${JSON.stringify(run)}`);
      }
      const a = first as number;
      const b = last as number;
      if (b < a) throw new RangeError(`run ${i} ends before it starts: [${a}, ${b}]`);
      const previous = flat.length === 0 ? undefined : (flat[flat.length - 1] as number);
      if (previous !== undefined && a <= previous + 1) {
        throw new RangeError(`run ${i} [${a}, ${b}] does not start above the run before it, which ends at ${previous}`);
      }
      flat.push(a, b);
      set.#count += b - a + 1;
    }
    return set;
  }

  get count(): number {
    return this.#count;
  }

  get runs(): [number, number][] {
    const out: [number, number][] = [];
    for (let i = 0; i < this.#runs.length; i += 2) out.push([this.#runs[i] as number, this.#runs[i + 1] as number]);
    return out;
  }

  has(seq: number): boolean {
    const i = this.#find(seq);
    return i >= 0 && seq <= (this.#runs[i + 1] as number);
  }

  add(seq: number): void {
    const r = this.#runs;
    const i = this.#find(seq);
    if (i >= 0 && seq <= (r[i + 1] as number)) return;
    this.#count++;
    const extendsLeft = i >= 0 && r[i + 1] === seq - 1;
    const next = i + 2;
    const extendsRight = next < r.length && r[next] === seq + 1;
    if (extendsLeft && extendsRight) {
      r[i + 1] = r[next + 1] as number;
      r.splice(next, 2);
    } else if (extendsLeft) r[i + 1] = seq;
    else if (extendsRight) r[next] = seq;
    else r.splice(next, 0, seq, seq);
  }

  /**
   * Removes the run that starts at `floor` (if any) and every sequence below it; returns the new
   * floor: the first sequence above `floor` that is not in the set.
   */
  advance(floor: number): number {
    const r = this.#runs;
    while (r.length > 0 && (r[1] as number) < floor) {
      this.#count -= (r[1] as number) - (r[0] as number) + 1;
      r.splice(0, 2);
    }
    if (r.length > 0 && (r[0] as number) <= floor) {
      const last = r[1] as number;
      this.#count -= last - (r[0] as number) + 1;
      r.splice(0, 2);
      return last + 1;
    }
    return floor;
  }

  /** Index of the run starting at or before `seq`, -2 when none does. */
  #find(seq: number): number {
    const r = this.#runs;
    let lo = 0;
    let hi = r.length / 2 - 1;
    let found = -2;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if ((r[mid * 2] as number) <= seq) {
        found = mid * 2;
        lo = mid + 1;
      } else hi = mid - 1;
    }
    return found;
  }
}
