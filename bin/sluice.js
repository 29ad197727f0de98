#!/usr/bin/env node
// The `sluice` command. A built package runs dist/cli/main.js; a checkout (`npm install`, no
// build) runs cli/main.ts through tsx, as `npm start` does. The command line uses Node built-ins
// only, so it needs no export condition.
import { existsSync } from 'node:fs';

const built = new URL('../dist/cli/main.js', import.meta.url);
let entry = built;
if (!existsSync(built)) {
  const { register } = await import('tsx/esm/api');
  register();
  entry = new URL('../cli/main.ts', import.meta.url);
}
const { main } = await import(entry.href);
process.exitCode = await main(process.argv.slice(2));
