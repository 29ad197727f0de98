import { type ChildProcess, fork } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { expect, onTestFinished, test } from 'vitest';

const TARGET = fileURLToPath(new URL('./fixtures/pollTarget.ts', import.meta.url));
const TOKEN = 'poll-target-token-0123456789';

interface Delay {
  p50: number;
  p99: number;
  max: number;
  handled: number;
}

function next<T>(child: ChildProcess): Promise<T> {
  return new Promise((resolve, reject) => {
    child.once('message', (m) => resolve(m as T));
    child.once('exit', (code) => reject(new Error(`the job exited with ${code}`)));
  });
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

// The job runs in a process of its own, so its event-loop delay is its own, not the poller's.
test('a client polling the API hard does not block the job event loop', async () => {
  const child = fork(TARGET, { execArgv: ['--conditions=sluice-source', '--import', 'tsx'], stdio: 'inherit' });
  onTestFinished(() => {
    child.kill();
  });
  const { url } = await next<{ url: string }>(child);

  child.send('measure');
  await sleep(1500);
  child.send('report');
  const quiet = await next<Delay>(child);

  child.send('measure');
  const paths = [
    '/api/actors',
    '/api/streams',
    '/api/lag',
    '/api/status',
    '/api/messages?stream=EVENTS&limit=500',
    '/api/messages?stream=EVENTS&from=2000&limit=500&contains=%22n%22%3A4999',
    '/api/history',
  ];
  let requests = 0;
  const deadline = Date.now() + 1500;
  // Eight clients, each sending its next request as soon as the last one answered.
  await Promise.all(
    Array.from({ length: 8 }, async (_, c) => {
      for (let i = c; Date.now() < deadline; i++) {
        const res = await fetch(`${url}${paths[i % paths.length]}`, { headers: { authorization: `Bearer ${TOKEN}` } });
        expect(res.status).toBe(200);
        await res.arrayBuffer();
        requests++;
      }
    }),
  );
  child.send('report');
  const polled = await next<Delay>(child);
  child.send('stop');
  console.log(
    `event-loop delay of the job, quiet: p50 ${quiet.p50.toFixed(1)} ms, p99 ${quiet.p99.toFixed(1)} ms, max ${quiet.max.toFixed(1)} ms, ${quiet.handled} handled; ` +
      `polled by 8 clients (${requests} requests in 1.5 s): p50 ${polled.p50.toFixed(1)} ms, p99 ${polled.p99.toFixed(1)} ms, max ${polled.max.toFixed(1)} ms, ${polled.handled} handled`,
  );
  expect(requests).toBeGreaterThan(20);
  // A handler that held the loop (a full scan, an unbounded page, a burst of requests run back to
  // back) shows as hundreds of ms; the quiet figure is the loaded machine's own noise.
  expect(polled.p99).toBeLessThan(Math.max(100, quiet.p99 * 2));
  // The job kept going while polled.
  expect(polled.handled).toBeGreaterThan(0);
}, 30_000);
