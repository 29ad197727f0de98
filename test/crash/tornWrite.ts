import { appendFileSync } from 'node:fs';
import type { SinkRecord } from 'sluice';
import type { FileSink } from 'sluice/connectors/file';

/**
 * Appends to `sink`'s file what its `write(records)` leaves when killed halfway through its bytes:
 * half of the lines it would write, whole, then the start of the next one. Only the lines it would
 * write: a record whose key it holds at the same or a newer revision (or an earlier record of the
 * batch does) is skipped by the sink, so a tear can never contain it. Tearing every record of the
 * batch would put on disk, as whole lines, replays the sink never writes, doubling their keys.
 */
export function tornWrite<T>(sink: FileSink<T>, records: readonly SinkRecord<T>[]): void {
  const taken = new Map<string, number>();
  const lines: string[] = [];
  for (const r of records) {
    // The sink's rule: a key without revision is held at -1, so any replay of it is skipped.
    const revision = r.revision ?? -1;
    const held = taken.get(r.key) ?? sink.revisionOf(r.key);
    if (held !== undefined && revision <= held) continue;
    taken.set(r.key, revision);
    lines.push(`${JSON.stringify({ key: r.key, revision: r.revision, value: r.value })}\n`);
  }
  if (lines.length === 0) return;
  const half = Math.floor(lines.length / 2);
  appendFileSync(sink.path, lines.slice(0, half).join('') + (lines[half] as string).slice(0, 10));
}
