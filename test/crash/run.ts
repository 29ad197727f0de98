/**
 * `npm run crash -- [--kills N] [--events N] [--seed N] [--max-delay MS] [--checkpointed | --nats]`: the
 * crash test's long form (harness.ts), outside `npm test`. Prints each run, then a JSON summary;
 * exits 1 when the sinks differ from the expected results or a fault point was never reached.
 * `--checkpointed` runs the checkpointed job (checkpointJob.ts) instead of the at-least-once one;
 * `--nats` the JetStream job (natsJob.ts: NATS as source and sink, 20,000 events by default).
 */
import { FAULTS, runCrash } from './harness.ts';
import { NATS_FAULTS, runNatsCrash } from './natsHarness.ts';

function flag(name: string, fallback: number): number {
  const args = process.argv.slice(2);
  const at = args.findIndex((a) => a === `--${name}` || a.startsWith(`--${name}=`));
  if (at === -1) return fallback;
  const raw = args[at]?.includes('=') ? args[at]?.split('=')[1] : args[at + 1];
  const value = Number(raw);
  if (!Number.isSafeInteger(value) || value < 0) {
    process.stderr.write(`--${name} takes a whole number, got '${raw}'\n`);
    process.exit(2);
  }
  return value;
}

const maxDelay = flag('max-delay', 0);
const nats = process.argv.includes('--nats');
const variant = process.argv.includes('--checkpointed') ? 'checkpointed' : 'at-least-once';
const options = {
  ...(maxDelay > 0 ? { maxKillDelayMs: maxDelay } : {}),
  kills: flag('kills', 50),
  events: flag('events', nats ? 20_000 : 200_000),
  seed: flag('seed', Date.now() % 1_000_000),
  log: (line: string) => process.stdout.write(`${line}\n`),
};
const report = nats ? await runNatsCrash(options) : await runCrash({ variant, ...options });
const { runs, ...summary } = report;
process.stdout.write(`${JSON.stringify({ ...summary, runs: runs.length })}\n`);
const faults = nats ? NATS_FAULTS : FAULTS[variant];
const ok = report.problems.length === 0 && new Set(report.faults).size === faults.length;
process.stdout.write(ok ? 'crash test passed\n' : `crash test FAILED:\n${report.problems.join('\n')}\n`);
process.exit(ok ? 0 : 1);
