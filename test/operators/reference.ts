/**
 * A brute-force model of event-time windows, written from Flink's documented semantics and
 * sharing no code with the operators: window membership is found by trying every window
 * position, session merging by repeating until nothing changes, and window contents are kept as
 * plain lists of input ids. Slow and obvious, for property tests.
 */

export type Item = { kind: 'event'; id: number; key: string; ts: number } | { kind: 'wm'; t: number };

export type RefAssigner =
  | { kind: 'aligned'; size: number; slide: number; offset: number }
  | { kind: 'session'; gap: number };

export interface RefConfig {
  name: string;
  assigner: RefAssigner;
  lateness: number;
  /** 0: no early firings. */
  earlyEvents: number;
}

export interface RefFiring {
  firing: 'early' | 'on-time' | 'late' | 'final';
  /** The watermark when it fired. */
  watermark: number;
  /** Ids in the window, sorted. */
  ids: number[];
  revision: number;
  isUpdate: boolean;
  supersedes: string[] | undefined;
}

export interface RefOutput {
  /** Idempotency key -> that window's results in emission order. */
  windows: Map<string, RefFiring[]>;
  /** Ids sent to the late side output, with the reason, in order. */
  late: { id: number; reason: string }[];
}

interface RefWindow {
  key: string;
  start: number;
  end: number;
  ids: number[];
  revision: number;
  closed: boolean;
  sinceFire: number;
  lastKey: string | undefined;
  pending: string[];
}

export function reference(items: readonly Item[], config: RefConfig): RefOutput {
  const out: RefOutput = { windows: new Map(), late: [] };
  const { lateness: L, earlyEvents } = config;
  let wm = Number.NEGATIVE_INFINITY;
  let live: RefWindow[] = [];

  const ik = (w: RefWindow) => `${config.name}/${w.key}/${w.start}-${w.end}`;
  const emit = (w: RefWindow, firing: RefFiring['firing']) => {
    const k = ik(w);
    const list = out.windows.get(k) ?? [];
    list.push({
      firing,
      watermark: wm,
      ids: [...w.ids].sort((a, b) => a - b),
      revision: w.revision,
      isUpdate: w.revision > 0,
      supersedes: w.pending.length === 0 ? undefined : [...w.pending].sort(),
    });
    out.windows.set(k, list);
    w.revision++;
    w.sinceFire = 0;
    w.pending = [];
    w.lastKey = k;
  };
  const trigger = (w: RefWindow) => {
    if (w.closed) emit(w, 'late');
    else if (earlyEvents > 0 && ++w.sinceFire >= earlyEvents) emit(w, 'early');
  };
  const advance = (t: number) => {
    if (t <= wm) return;
    wm = t;
    for (const w of live) {
      if (!w.closed && w.end - 1 <= wm) {
        w.closed = true;
        // The end of the input (an infinite watermark) flushes what is open as final.
        emit(w, wm === Number.POSITIVE_INFINITY ? 'final' : 'on-time');
      }
    }
    live = live.filter((w) => w.end - 1 + L > wm);
  };
  const fresh = (key: string, start: number, end: number): RefWindow => ({
    key,
    start,
    end,
    ids: [],
    revision: 0,
    closed: end - 1 <= wm,
    sinceFire: 0,
    lastKey: undefined,
    pending: [],
  });

  for (const item of items) {
    if (item.kind === 'wm') {
      advance(item.t);
      continue;
    }
    const { id, key, ts } = item;
    const a = config.assigner;
    if (a.kind === 'aligned') {
      // Every window start offset + k * slide whose window contains ts, latest first.
      const starts: number[] = [];
      const kLow = Math.floor((ts - a.size - a.offset) / a.slide) - 1;
      const kHigh = Math.ceil((ts - a.offset) / a.slide) + 1;
      for (let k = kLow; k <= kHigh; k++) {
        const s = a.offset + k * a.slide;
        if (s <= ts && ts < s + a.size) starts.push(s);
      }
      starts.sort((x, y) => y - x);
      if (starts.length === 0) {
        out.late.push({ id, reason: 'no-window' });
        continue;
      }
      let taken = false;
      for (const s of starts) {
        const end = s + a.size;
        if (end - 1 + L <= wm) continue;
        let w = live.find((x) => x.key === key && x.start === s);
        if (w === undefined) {
          w = fresh(key, s, end);
          live.push(w);
        }
        w.ids.push(id);
        taken = true;
        trigger(w);
      }
      if (!taken) out.late.push({ id, reason: 'beyond-allowed-lateness' });
      continue;
    }
    // Sessions: gather every live session of the key that overlaps or touches the growing cover.
    const cover = { start: ts, end: ts + a.gap };
    const merged: RefWindow[] = [];
    for (let changed = true; changed; ) {
      changed = false;
      for (const w of live) {
        if (w.key !== key || merged.includes(w)) continue;
        if (w.start <= cover.end && w.end >= cover.start) {
          merged.push(w);
          cover.start = Math.min(cover.start, w.start);
          cover.end = Math.max(cover.end, w.end);
          changed = true;
        }
      }
    }
    if (merged.length === 0) {
      if (ts + a.gap - 1 + L <= wm) {
        out.late.push({ id, reason: 'beyond-allowed-lateness' });
        continue;
      }
      const w = fresh(key, ts, ts + a.gap);
      live.push(w);
      w.ids.push(id);
      trigger(w);
      continue;
    }
    const w = fresh(key, cover.start, cover.end);
    for (const m of merged) {
      w.ids.push(...m.ids);
      w.revision += m.revision;
      w.sinceFire += m.sinceFire;
      w.pending.push(...m.pending);
      if (m.lastKey !== undefined) {
        if (m.start === cover.start && m.end === cover.end) w.lastKey = m.lastKey;
        else w.pending.push(m.lastKey);
      }
    }
    live = live.filter((x) => !merged.includes(x));
    live.push(w);
    w.ids.push(id);
    trigger(w);
  }
  advance(Number.POSITIVE_INFINITY);
  return out;
}
