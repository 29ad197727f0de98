/**
 * `npm start` runs the main example; `npm run example -- NAME` runs examples/NAME/main.ts.
 */
const MAIN = 'clickstream-analytics';
const names = ['clickstream-analytics', 'dashboard', 'live-views', 'order-flow', 'orders-to-postgres', 'tour'];

const name = process.argv[2] ?? MAIN;
if (!names.includes(name)) {
  console.error(`unknown example '${name}': choose one of ${names.join(', ')}`);
  process.exit(2);
}
const example = (await import(`./${name}/main.ts`)) as { main: () => Promise<unknown> };
await example.main();
