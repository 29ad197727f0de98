/**
 * Mosquitto for tests: the shared broker the machine runs (127.0.0.1:1883; MQTT_HOST and
 * MQTT_PORT override), or one a test starts itself (Debian's `mosquitto`, /usr/sbin/mosquitto) on
 * a free loopback port with a temporary configuration: users in a password file, an ACL file, and
 * a log in which the test counts what the broker received (its PUBACKs: what a client acknowledged).
 *
 * A test that needs the broker checks {@link mosquittoMissing} first: under CI (`CI=true`) a
 * missing broker fails the test, elsewhere the test is skipped with a message saying what to install.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, rmSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir, userInfo } from 'node:os';
import { join } from 'node:path';
import mqtt from 'mqtt';
import { freePort, launchReady, stopChild } from './natsServer.ts';

export const MOSQUITTO = Object.freeze({
  host: process.env.MQTT_HOST ?? '127.0.0.1',
  port: Number(process.env.MQTT_PORT ?? 1883),
});

const BINARY = ['/usr/sbin/mosquitto', '/usr/bin/mosquitto'].find((p) => existsSync(p)) ?? 'mosquitto';
const INSTALL_HINT = "install Debian's mosquitto package (apt-get install mosquitto mosquitto-clients)";

/** Whether the mosquitto binary runs. */
function mosquittoVersion(): string | undefined {
  try {
    // `-h` prints the version and exits with 3.
    return execFileSync(BINARY, ['-h'], { encoding: 'utf8', timeout: 5_000, stdio: 'pipe' });
  } catch (error) {
    const out = (error as { stdout?: unknown }).stdout;
    return typeof out === 'string' && out.includes('mosquitto version') ? out.split('\n')[0] : undefined;
  }
}

/**
 * A reason to skip a test that needs the mosquitto binary, or undefined when it is there. Under CI
 * a missing broker is no reason to skip: the test runs and fails when it starts the broker.
 */
export function mosquittoMissing(what: string): string | undefined {
  if (mosquittoVersion() !== undefined || process.env.CI === 'true') return undefined;
  const reason = `${what} needs mosquitto (${BINARY}), which is missing: ${INSTALL_HINT}`;
  console.warn(`skipped: ${reason}`);
  return reason;
}

let reachable: Promise<string | undefined> | undefined;

/**
 * A reason to skip a test that needs the shared broker ({@link MOSQUITTO}), or undefined when it
 * answers. Under CI a missing broker is no reason to skip: the test runs and fails when it connects.
 */
export async function sharedMosquittoMissing(what: string): Promise<string | undefined> {
  reachable ??= mqtt
    .connectAsync(`mqtt://${MOSQUITTO.host}:${MOSQUITTO.port}`, { reconnectPeriod: 0, connectTimeout: 2_000 })
    .then(
      (c) => c.endAsync().then(() => undefined),
      (error: unknown) => (error instanceof Error ? error.message : String(error)),
    );
  const problem = await reachable;
  if (problem === undefined || process.env.CI === 'true') return undefined;
  const reason = `${what} needs Mosquitto on ${MOSQUITTO.host}:${MOSQUITTO.port} (${problem}): ${INSTALL_HINT} and start it`;
  console.warn(`skipped: ${reason}`);
  return reason;
}

export interface MosquittoOptions {
  /** Users and their passwords, written with `mosquitto_passwd -b`; with them, anonymous clients are refused. */
  users?: Readonly<Record<string, string>>;
  /** The ACL file's text (`user name` then `topic read|write|readwrite filter` lines). */
  acl?: string;
  /**
   * The filters the first user may subscribe to; the broker refuses others in its SUBACK (and
   * allows every publish). Mosquitto's ACL file grants every subscription and filters at delivery,
   * and while it is there no plugin is asked: so this takes the dynamic security plugin instead of
   * an ACL file.
   */
  subscribable?: readonly string[];
  /** What the broker logs: everything (which {@link Mosquitto.pubacks} counts in), or errors and notices only (a benchmark). @default 'all' */
  log?: 'all' | 'errors';
  /**
   * Whether sessions survive {@link Mosquitto.restart}: false makes a restart the loss of every
   * session (the CONNACK after it says the session is not present). @default true
   */
  persistence?: boolean;
}

const DYNSEC = ['/usr/lib/x86_64-linux-gnu', '/usr/lib/aarch64-linux-gnu', '/usr/lib']
  .map((d) => join(d, 'mosquitto_dynamic_security.so'))
  .find((p) => existsSync(p));

export interface Mosquitto {
  readonly host: string;
  readonly port: number;
  /** `mqtt://host:port` */
  readonly url: string;
  /** What the broker logged so far. */
  log(): string;
  /** PUBACKs the broker received from `clientId` so far: the QoS 1 messages it acknowledged. */
  pubacks(clientId: string): number;
  /** Stops the broker (its sessions saved, unless `persistence: false`) and starts it again on the same port: a restart mid-stream. */
  restart(): Promise<void>;
  stop(): Promise<void>;
  /** Kills the broker and removes its files at once, for a process `exit` handler (which cannot wait). */
  stopSync(): void;
}

/** Starts a broker; retries on another port when the one picked was taken in between. */
export async function startMosquitto(options: MosquittoOptions = {}): Promise<Mosquitto> {
  const dir = await mkdtemp(join(tmpdir(), 'sluice-mosquitto-'));
  // Started as root, mosquitto would switch to its own user, who cannot read the temporary files.
  const lines = [
    `user ${userInfo().username}`,
    'log_dest stderr',
    // Information too: the line that says the broker is running is one (as are connects, not messages).
    ...(options.log === 'errors'
      ? ['log_type error', 'log_type warning', 'log_type notice', 'log_type information']
      : ['log_type all']),
    // Sessions kept in the temporary directory (saved at a clean stop), for `restart`.
    ...(options.persistence === false
      ? ['persistence false']
      : ['persistence true', `persistence_location ${dir}/`, 'autosave_interval 0']),
    // PUBACKs go out at once, not after the client's delayed ACK (Nagle): batches end without a stall.
    'set_tcp_nodelay true',
    // The default 1000 would drop what a test or a benchmark queues for a session beyond it.
    'max_queued_messages 1000000',
  ];
  if (options.users !== undefined) {
    const file = join(dir, 'passwd');
    await writeFile(file, '');
    for (const [user, password] of Object.entries(options.users)) {
      execFileSync('mosquitto_passwd', ['-b', file, user, password], { stdio: 'pipe', timeout: 10_000 });
    }
    lines.push('allow_anonymous false', `password_file ${file}`);
  } else lines.push('allow_anonymous true');
  if (options.acl !== undefined) {
    const file = join(dir, 'acl');
    await writeFile(file, options.acl);
    lines.push(`acl_file ${file}`);
  }
  if (options.subscribable !== undefined) {
    const [user, password] = Object.entries(options.users ?? {})[0] ?? [];
    if (user === undefined || password === undefined || DYNSEC === undefined || options.acl !== undefined) {
      throw new Error(
        'subscribable needs a user, no acl (Mosquitto asks no plugin while an ACL file decides) and the dynamic security plugin (mosquitto_dynamic_security.so)',
      );
    }
    const file = join(dir, 'dynsec.json');
    execFileSync('mosquitto_ctrl', ['dynsec', 'init', file, user, password], { stdio: 'pipe', timeout: 10_000 });
    const config = JSON.parse(await readFile(file, 'utf8')) as { roles: unknown[]; defaultACLAccess: unknown };
    config.roles = [
      {
        rolename: 'admin',
        acls: options.subscribable.map((topic) => ({ acltype: 'subscribePattern', topic, allow: true })),
      },
    ];
    config.defaultACLAccess = {
      publishClientSend: true,
      publishClientReceive: true,
      subscribe: false,
      unsubscribe: true,
    };
    await writeFile(file, JSON.stringify(config));
    lines.push(`plugin ${DYNSEC}`, `plugin_opt_config_file ${file}`);
  }
  let lastError: unknown;
  for (let attempt = 0; attempt < 3; attempt++) {
    const port = await freePort();
    const conf = join(dir, 'mosquitto.conf');
    await writeFile(conf, [`listener ${port} 127.0.0.1`, ...lines, ''].join('\n'));
    try {
      const ready = /mosquitto version \S+ running/;
      let launched = await launchReady(BINARY, ['-c', conf], ready, 10_000);
      let earlier = '';
      const log = () => earlier + launched.log;
      return {
        host: '127.0.0.1',
        port,
        url: `mqtt://127.0.0.1:${port}`,
        log,
        pubacks: (clientId) => log().split(`Received PUBACK from ${clientId} `).length - 1,
        async restart() {
          // SIGTERM: the broker saves its sessions, and has them again on the same port.
          await stopChild(launched.child, launched.exited);
          earlier += launched.log;
          launched = await launchReady(BINARY, ['-c', conf], ready, 10_000);
        },
        async stop() {
          await stopChild(launched.child, launched.exited);
          await rm(dir, { recursive: true, force: true });
        },
        stopSync() {
          launched.child.kill('SIGKILL');
          rmSync(dir, { recursive: true, force: true });
        },
      };
    } catch (error) {
      lastError = error;
    }
  }
  await rm(dir, { recursive: true, force: true });
  throw lastError;
}
