/**
 * The first run of the clickstream example, in a process of its own so that it can really crash:
 * `main.ts` starts it with the data directory and the sequence that page-views must settle before it dies.
 */
import { runUntilCrash } from './main.ts';

const [dir, target] = process.argv.slice(2);
if (dir === undefined || target === undefined) {
  console.error('usage: crash.ts DIR SEQUENCE');
  process.exit(2);
}
await runUntilCrash(dir, Number(target));
