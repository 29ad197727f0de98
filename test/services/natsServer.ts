/**
 * Starts a real `nats-server` (Debian's package, on PATH) for tests that check Sluice against it:
 * on a free loopback port, optionally with JetStream in a temporary store, stopped by the test.
 *
 * A test that needs the server calls {@link natsServerMissing} first: under CI (`CI=true`) a
 * missing server fails the test, elsewhere the test is skipped with a message saying what to install.
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { rmSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface NatsServerOptions {
  /** Enables JetStream with a store in a temporary directory, removed on stop. */
  jetstream?: boolean;
  /** More command line arguments. */
  args?: readonly string[];
  /** How long to wait for "Server is ready". @default 10000 */
  readyTimeoutMs?: number;
  /**
   * A configuration file's text (authorization, TLS, ...), written to the server's temporary
   * directory and passed with `-c`; the port, address and store still come from the command line.
   */
  config?: string;
}

export interface NatsServer {
  readonly host: string;
  readonly port: number;
  /** `nats://host:port` */
  readonly url: string;
  /** What the server logged so far, for failure messages. */
  readonly log: () => string;
  /** Stops the server (SIGTERM, then SIGKILL after 5 s) and removes its store. */
  stop(): Promise<void>;
  /**
   * Ends the server process with `signal` (its store is kept) and starts it again on the same port
   * with the same store, resolving once it is ready: a restart mid-stream. SIGTERM lets it shut down
   * cleanly; SIGKILL cuts it off.
   */
  restart(signal: 'SIGTERM' | 'SIGKILL'): Promise<void>;
  /** Kills the server and removes its store at once, for a process `exit` handler (which cannot wait). */
  stopSync(): void;
}

const INSTALL_HINT = "install Debian's nats-server package (apt-get install nats-server) to run it";

/** The server's version line, or undefined when `nats-server` is not on PATH. */
export function natsServerVersion(): string | undefined {
  try {
    return execFileSync('nats-server', ['--version'], { encoding: 'utf8', timeout: 10_000 }).trim();
  } catch {
    return undefined;
  }
}

/**
 * A reason to skip a test that needs nats-server, or undefined when the server is there. Under CI
 * a missing server is no reason to skip: the test runs and fails when it starts the server.
 */
export function natsServerMissing(what: string): string | undefined {
  if (natsServerVersion() !== undefined || process.env.CI === 'true') return undefined;
  const reason = `${what} needs nats-server on PATH, which is missing: ${INSTALL_HINT}`;
  console.warn(`skipped: ${reason}`);
  return reason;
}

/** A port that was free a moment ago: the OS picks it for a listener that is closed at once. */
export function freePort(host = '127.0.0.1'): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = createServer();
    probe.unref();
    probe.on('error', reject);
    probe.listen(0, host, () => {
      const address = probe.address();
      probe.close(() => {
        if (address === null || typeof address === 'string') reject(new Error('no port from listen(0)'));
        else resolve(address.port);
      });
    });
  });
}

/** Starts nats-server; retries on another port when the one picked was taken in between. */
export async function startNatsServer(options: NatsServerOptions = {}): Promise<NatsServer> {
  if (natsServerVersion() === undefined) throw new Error(`nats-server is not on PATH: ${INSTALL_HINT}`);
  let lastError: unknown;
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      return await startOnce(await freePort(), options);
    } catch (error) {
      lastError = error;
    }
  }
  throw lastError;
}

async function startOnce(port: number, options: NatsServerOptions): Promise<NatsServer> {
  const host = '127.0.0.1';
  const dir = await mkdtemp(join(tmpdir(), 'sluice-nats-'));
  const store = options.jetstream === true ? join(dir, 'store') : undefined;
  const args = ['-a', host, '-p', String(port), ...(store === undefined ? [] : ['-js', '-sd', store])];
  if (options.config !== undefined) {
    const file = join(dir, 'server.conf');
    await writeFile(file, options.config);
    args.push('-c', file);
  }
  let proc = await launch([...args, ...(options.args ?? [])], options.readyTimeoutMs ?? 10_000);
  let log = proc.log;
  const cleanup = async () => {
    await stopChild(proc.child, proc.exited);
    await rm(dir, { recursive: true, force: true });
  };
  return {
    host,
    port,
    url: `nats://${host}:${port}`,
    log: () => log + proc.log,
    stop: cleanup,
    stopSync() {
      proc.child.kill('SIGKILL');
      rmSync(dir, { recursive: true, force: true });
    },
    async restart(signal) {
      proc.child.kill(signal);
      await proc.exited;
      log += proc.log;
      // The port is free again once the process is gone; the store directory is the same.
      proc = await launch([...args, ...(options.args ?? [])], options.readyTimeoutMs ?? 10_000);
    },
  };
}

/** @internal A child process started by a test, and its log so far (still growing). */
export interface Launched {
  readonly child: ChildProcess;
  readonly exited: Promise<void>;
  readonly log: string;
}

/** Spawns nats-server and waits for "Server is ready"; its log keeps growing in `log`. */
function launch(args: readonly string[], timeoutMs: number): Promise<Launched> {
  return launchReady('nats-server', args, 'Server is ready', timeoutMs);
}

/**
 * @internal Spawns `command` and waits until its output holds `ready`; its log keeps growing in
 * `log`. A process that exits first, or is not ready in time, is stopped and rejects with its log.
 */
export async function launchReady(
  command: string,
  args: readonly string[],
  ready: string | RegExp,
  timeoutMs: number,
): Promise<Launched> {
  const child = spawn(command, [...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  const launched = { child, exited: new Promise<void>((resolve) => child.once('exit', () => resolve())), log: '' };
  const append = (chunk: Buffer) => {
    launched.log += chunk.toString();
  };
  child.stdout?.on('data', append);
  child.stderr?.on('data', append);
  try {
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`${command} not ready after ${timeoutMs} ms:\n${launched.log}`)),
        timeoutMs,
      );
      const check = () => {
        if (typeof ready === 'string' ? !launched.log.includes(ready) : !ready.test(launched.log)) return;
        clearTimeout(timer);
        resolve();
      };
      child.stdout?.on('data', check);
      child.stderr?.on('data', check);
      child.once('error', (error) => {
        clearTimeout(timer);
        reject(error);
      });
      child.once('exit', (code, signal) => {
        clearTimeout(timer);
        reject(new Error(`${command} exited (${code ?? signal}) before it was ready:\n${launched.log}`));
      });
    });
  } catch (error) {
    await stopChild(child, launched.exited);
    throw error;
  }
  return launched;
}

/** @internal Stops a child: SIGTERM, then SIGKILL after 5 s. */
export async function stopChild(child: ChildProcess, exited: Promise<void>): Promise<void> {
  // No pid: the spawn failed and no exit will come.
  if (child.pid === undefined || child.exitCode !== null || child.signalCode !== null) return;
  child.kill('SIGTERM');
  const killer = setTimeout(() => child.kill('SIGKILL'), 5_000);
  await exited;
  clearTimeout(killer);
}
