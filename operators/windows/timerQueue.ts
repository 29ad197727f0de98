/** @internal */
/** Event-time timers: a min-heap of distinct times, each with the windows due then. */
export class TimerQueue<W> {
  readonly heap: number[] = [];
  readonly buckets = new Map<number, W[]>();

  add(time: number, item: W): void {
    const bucket = this.buckets.get(time);
    if (bucket !== undefined) {
      bucket.push(item);
      return;
    }
    this.buckets.set(time, [item]);
    const heap = this.heap;
    let i = heap.length;
    heap.push(time);
    while (i > 0) {
      const parent = (i - 1) >> 1;
      const p = heap[parent] as number;
      if (p <= time) break;
      heap[i] = p;
      i = parent;
    }
    heap[i] = time;
  }

  /** Removes the earliest time; returns its windows. */
  pop(): W[] {
    const heap = this.heap;
    const top = heap[0] as number;
    const last = heap.pop() as number;
    const n = heap.length;
    if (n > 0) {
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        if (l >= n) break;
        const r = l + 1;
        const c = r < n && (heap[r] as number) < (heap[l] as number) ? r : l;
        if ((heap[c] as number) >= last) break;
        heap[i] = heap[c] as number;
        i = c;
      }
      heap[i] = last;
    }
    const bucket = this.buckets.get(top) as W[];
    this.buckets.delete(top);
    return bucket;
  }

  /** Takes over the timers of another queue (a restarted operator going on from its state). */
  adopt(other: TimerQueue<W>): void {
    this.heap.length = 0;
    for (const t of other.heap) this.heap.push(t);
    this.buckets.clear();
    for (const [t, b] of other.buckets) this.buckets.set(t, b);
  }

  clear(): void {
    this.heap.length = 0;
    this.buckets.clear();
  }
}
