/**
 * `npm run replay -- --store <dir> --stream DLQ --capture ORDERS='orders.>' [--from-seq N]
 * [--limit M] [--to SUBJECT] [--dry-run]`: replays dead letters kept in a stream of an LMDB store
 * (a stream on `$DLQ.>`) to their original subjects, through a runtime on that store whose
 * `--capture` streams store them, so the stream an actor reads durably gets them back. See
 * docs/errors.md, "Dead letters". Run it while no other process has the store open.
 */
import { existsSync } from 'node:fs';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import {
  createEnvelope,
  createRuntime,
  DEAD_LETTER_HEADERS,
  type Envelope,
  LmdbStore,
  replayDeadLetters,
  type StreamConfig,
  subjectMatches,
} from 'sluice';
import type { StoredMessage } from '../runtime/streams/stream.ts';

const USAGE =
  'usage: npm run replay -- --store <dir> --stream <dead-letter stream> --capture NAME=pattern[,pattern] ' +
  '[--capture ...] [--from-seq N] [--limit M] [--to SUBJECT] [--dry-run]';

interface Letter {
  readonly seq: number;
  readonly envelope: Envelope;
  /** Where it is published: `--to`, else its `sluice-original-subject`. */
  readonly target: string;
  /** The `--capture` stream that stores it there, if any. */
  readonly stream: string | undefined;
}

/** Runs the command; returns the exit code. `out`/`err` take one line each. */
export async function replayCommand(
  argv: readonly string[],
  out: (line: string) => void,
  err: (line: string) => void,
): Promise<number> {
  let args: ReturnType<typeof parse>;
  try {
    args = parse(argv);
  } catch (error) {
    err(`${(error as Error).message}\n${USAGE}`);
    return 2;
  }
  if (!existsSync(args.store)) {
    err(`no store at '${args.store}'`);
    return 2;
  }
  const store = new LmdbStore({ path: args.store });
  let runtime: ReturnType<typeof createRuntime> | undefined;
  try {
    try {
      // Before anything is read: bad or overlapping --capture streams are refused here.
      runtime = createRuntime({ store, streams: args.capture, logger: quiet });
    } catch (error) {
      err(`${(error as Error).message}\n${USAGE}`);
      return 2;
    }
    if (!store.streams().includes(args.stream)) {
      err(`store '${args.store}' has no stream '${args.stream}' (it has: ${store.streams().join(', ') || 'none'})`);
      return 2;
    }
    const bounds = store.bounds(args.stream);
    const from = Math.max(args.fromSeq ?? bounds.first, bounds.first);
    const letters: Letter[] = [];
    const refused: string[] = [];
    for (const entry of store.read(args.stream, from, { limit: args.limit })) {
      if (entry.error !== undefined) {
        refused.push(`seq ${entry.seq}: ${entry.error.message}`);
        continue;
      }
      const m = entry.value as StoredMessage;
      const envelope = createEnvelope(m.s, m.d, { id: m.i, key: m.k, eventTime: m.e ?? m.t, headers: m.h });
      const original = envelope.headers[DEAD_LETTER_HEADERS.subject];
      const target = args.to ?? (original === '' ? undefined : original);
      if (target === undefined) {
        refused.push(`seq ${entry.seq}: not a dead letter (no '${DEAD_LETTER_HEADERS.subject}'); give --to`);
        continue;
      }
      const stream = args.capture.find((c) => c.subjects.some((p) => subjectMatches(p, target)))?.name;
      // Published where no stream stores it, it would reach only this process's subscribers: none.
      if (stream === undefined) {
        refused.push(`seq ${entry.seq}: '${target}' is captured by no --capture stream; it would be lost`);
        continue;
      }
      letters.push({ seq: entry.seq, envelope, target, stream });
    }
    if (refused.length > 0) {
      for (const line of refused) err(`refused ${line}`);
      err(`nothing replayed: ${refused.length} letter(s) refused (narrow with --from-seq/--limit, or use --to)`);
      return 1;
    }
    for (const l of letters) {
      const h = l.envelope.headers;
      out(
        `${args.dryRun ? 'would replay' : 'replay'} ${args.stream} seq ${l.seq} -> ${l.target} (stream ${l.stream}): ` +
          `id ${h[DEAD_LETTER_HEADERS.messageId] || l.envelope.id}, failed in ${h[DEAD_LETTER_HEADERS.actor]}: ${h[DEAD_LETTER_HEADERS.error]}`,
      );
    }
    const next = letters.length === 0 ? from : (letters.at(-1) as Letter).seq + 1;
    if (args.dryRun) {
      out(`dry run: ${letters.length} letter(s) would be replayed; nothing published`);
      return 0;
    }
    const replayed = await replayDeadLetters(
      runtime.bus,
      letters.map((l) => l.envelope),
      args.to === undefined ? undefined : { to: args.to },
    );
    out(
      `replayed ${replayed} letter(s) from ${args.stream}` +
        (letters.length > 0 ? ` seq ${(letters[0] as Letter).seq}..${next - 1}` : '') +
        `; next --from-seq ${next}`,
    );
    return 0;
  } finally {
    await runtime?.stop();
    await store.close();
  }
}

const quiet = { debug() {}, info() {}, warn() {}, error: (m: string) => console.error(m) };

function parse(argv: readonly string[]) {
  const { values } = parseArgs({
    args: [...argv],
    options: {
      store: { type: 'string' },
      stream: { type: 'string' },
      capture: { type: 'string', multiple: true },
      'from-seq': { type: 'string' },
      limit: { type: 'string' },
      to: { type: 'string' },
      'dry-run': { type: 'boolean' },
    },
    strict: true,
  });
  if (values.store === undefined) throw new Error('--store <dir> is required');
  if (values.stream === undefined)
    throw new Error('--stream <name of the stream holding the dead letters> is required');
  const int = (name: string, v: string | undefined, min: number) => {
    if (v === undefined) return undefined;
    const n = Number(v);
    if (!Number.isSafeInteger(n) || n < min) throw new Error(`--${name} must be an integer >= ${min}, got '${v}'`);
    return n;
  };
  const capture: StreamConfig[] = (values.capture ?? []).map((c) => {
    const eq = c.indexOf('=');
    if (eq <= 0 || eq === c.length - 1) throw new Error(`--capture must be NAME=pattern[,pattern], got '${c}'`);
    return { name: c.slice(0, eq), subjects: c.slice(eq + 1).split(',') };
  });
  return {
    store: values.store,
    stream: values.stream,
    capture,
    fromSeq: int('from-seq', values['from-seq'], 1),
    limit: int('limit', values.limit, 1),
    to: values.to,
    dryRun: values['dry-run'] === true,
  };
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  process.exitCode = await replayCommand(
    process.argv.slice(2),
    (line) => console.log(line),
    (line) => console.error(line),
  );
}
