/**
 * A real Apache Kafka broker for tests: the broker's jars from Maven Central (fetched once into
 * the git-ignored `.cache/kafka/<version>/libs`), a temporary KRaft storage directory, and one
 * combined broker+controller JVM on free loopback ports. No Kafka install and no fake.
 *
 * - {@link kafkaMissing}: under CI (`CI=true`) a missing `java` or `mvn` fails the test; elsewhere
 *   the test is skipped with a message saying what to install.
 * - {@link ensureKafkaJars}: `mvn dependency:copy-dependencies` of test/services/kafka/pom.xml. The
 *   Maven local repository (~/.m2) survives on the machine, so a fresh clone copies in seconds.
 * - {@link startKafka}: formats the storage (`kafka.tools.StorageTool`, inside kafka_2.13.jar, also
 *   adds SCRAM users), starts `kafka.Kafka` with -Xmx512m and waits for "Kafka Server started".
 *   `stop()` sends SIGTERM (SIGKILL after a bound), `restart()` starts again on the same storage
 *   and ports, `kill()` sends SIGKILL at once, `pause()`/`resume()` send SIGSTOP/SIGCONT (a broker
 *   that stops answering, its connections open), `close()` stops and removes the storage.
 *
 * The offsets and transaction-state topics get 1 partition and replication factor 1 and the
 * first rebalance no delay, so a group join or a first transaction takes milliseconds, not seconds.
 */
import { type ChildProcess, execFile, execFileSync, spawn } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, rmdir, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { freePort } from '../natsServer.ts';

const run = promisify(execFile);

export const KAFKA_VERSION = '4.1.1';
const HERE = dirname(fileURLToPath(import.meta.url));
const ROOT = resolve(HERE, '../../..');
const POM = join(HERE, 'pom.xml');
/** Where the jars land: `.cache/` is git-ignored. */
export const KAFKA_LIBS = join(ROOT, '.cache', 'kafka', KAFKA_VERSION, 'libs');
const MAIN_JAR = `kafka_2.13-${KAFKA_VERSION}.jar`;
const READY_LINE = 'Kafka Server started';
const INSTALL_HINT =
  'install a JDK 17+ and Maven (apt-get install default-jdk-headless maven); the broker jars come from Maven Central';

/** A SCRAM user made at format time (KRaft has no ZooKeeper to hold credentials before the start). */
export interface ScramUser {
  readonly name: string;
  readonly password: string;
}

export type KafkaSecurity =
  /** PLAINTEXT on the client listener. */
  | { readonly kind: 'plaintext' }
  /** SASL_PLAINTEXT with SCRAM-SHA-256, SCRAM-SHA-512 (the users) and PLAIN (the same users). */
  | { readonly kind: 'sasl'; readonly users: readonly ScramUser[] }
  /** SSL with a server certificate for 127.0.0.1/localhost signed by a fresh CA. */
  | { readonly kind: 'tls' };

export interface KafkaOptions {
  /** @default { kind: 'plaintext' } */
  security?: KafkaSecurity;
  /** Partitions of an auto-created topic. @default 1 */
  partitions?: number;
  /** More `server.properties` lines (`key=value`). */
  properties?: Readonly<Record<string, string | number | boolean>>;
  /** How long to wait for the broker to start. @default 60000 */
  readyTimeoutMs?: number;
}

/** TLS material for clients of a `tls` broker. */
export interface KafkaTls {
  /** The CA that signed the broker's certificate, PEM. */
  readonly ca: string;
  readonly caPath: string;
}

export interface KafkaBroker {
  readonly host: string;
  readonly port: number;
  /** `127.0.0.1:<port>`, for a client's `brokers`/`bootstrapBrokers`. */
  readonly bootstrap: string;
  /** For a `tls` broker. */
  readonly tls: KafkaTls | undefined;
  /** The storage and config directory (removed by `close`). */
  readonly dir: string;
  /** What the broker logged (WARN and up, and the start line), for failure messages. */
  log(): string;
  /** Whether the JVM is running. */
  readonly running: boolean;
  /** SIGTERM (a clean shutdown, which the next start skips recovery for), SIGKILL after `graceMs`. */
  stop(graceMs?: number): Promise<void>;
  /** SIGKILL, as a crash. */
  kill(): Promise<void>;
  /**
   * SIGSTOP, at once (synchronous, so a diagnostics-channel subscriber can freeze the broker
   * before the request it sees is written): connections stay open and requests go unanswered.
   */
  pause(): void;
  /** SIGCONT after `pause`. */
  resume(): void;
  /** Starts again on the same storage and ports (after `stop` or `kill`, or stops it first). */
  restart(): Promise<void>;
  /** Stops and removes the storage. */
  close(): Promise<void>;
}

function has(command: string, args: string[]): boolean {
  try {
    execFileSync(command, args, { stdio: 'ignore', timeout: 20_000 });
    return true;
  } catch {
    return false;
  }
}

let tools: boolean | undefined;
/** Whether `java` and `mvn` are on PATH (checked once per process). */
export function kafkaToolsPresent(): boolean {
  tools ??= has('java', ['-version']) && (existsSync(join(KAFKA_LIBS, MAIN_JAR)) || has('mvn', ['-v']));
  return tools;
}

/**
 * A reason to skip a test that needs the Kafka broker, or undefined when java and mvn are there.
 * Under CI a missing tool is no reason to skip: the test runs and fails when it starts the broker.
 */
export function kafkaMissing(what: string): string | undefined {
  if (kafkaToolsPresent() || process.env.CI === 'true') return undefined;
  const reason = `${what} needs a Kafka broker, started from Maven Central jars with java and mvn, which are missing: ${INSTALL_HINT}`;
  console.warn(`skipped: ${reason}`);
  return reason;
}

/**
 * Copies the broker's jars into `.cache/kafka/<version>/libs` unless they are there. Test files run
 * in parallel: a lock directory lets one of them run Maven while the others wait for it.
 */
export async function ensureKafkaJars(): Promise<string> {
  const done = join(KAFKA_LIBS, '.complete');
  if (existsSync(done)) return KAFKA_LIBS;
  const lock = `${KAFKA_LIBS}.lock`;
  await mkdir(dirname(lock), { recursive: true });
  const deadline = Date.now() + 300_000;
  for (;;) {
    try {
      await mkdir(lock);
      break;
    } catch {
      if (existsSync(done)) return KAFKA_LIBS;
      if (Date.now() > deadline) throw new Error(`gave up waiting for ${lock} (remove it if no Maven runs)`);
      await new Promise((r) => setTimeout(r, 250));
    }
  }
  try {
    if (existsSync(done)) return KAFKA_LIBS;
    await run(
      'mvn',
      [
        '-B',
        '-q',
        '-f',
        POM,
        'dependency:copy-dependencies',
        `-DoutputDirectory=${KAFKA_LIBS}`,
        '-DincludeScope=runtime',
      ],
      { timeout: 280_000, maxBuffer: 16 << 20 },
    ).catch((error: { stdout?: string; stderr?: string; message: string }) => {
      throw new Error(`mvn could not fetch the Kafka ${KAFKA_VERSION} jars: ${error.message}\n${error.stdout ?? ''}`);
    });
    if (!readdirSync(KAFKA_LIBS).includes(MAIN_JAR)) throw new Error(`${MAIN_JAR} missing in ${KAFKA_LIBS} after mvn`);
    await writeFile(done, `${new Date().toISOString()}\n`);
    return KAFKA_LIBS;
  } finally {
    await rmdir(lock).catch(() => undefined);
  }
}

// Tools log at WARN to stderr, so `random-uuid` prints the id alone on stdout.
const TOOLS_LOG4J = [
  'rootLogger.level=WARN',
  'rootLogger.appenderRef.stderr.ref=STDERR',
  'appender.stderr.type=Console',
  'appender.stderr.name=STDERR',
  'appender.stderr.target=SYSTEM_ERR',
  'appender.stderr.layout.type=PatternLayout',
  'appender.stderr.layout.pattern=[%d] %p %m (%c)%n',
].join('\n');

// The broker logs WARN and up, and the line that says it started.
const BROKER_LOG4J = [
  'rootLogger.level=WARN',
  'rootLogger.appenderRef.stdout.ref=STDOUT',
  'appender.stdout.type=Console',
  'appender.stdout.name=STDOUT',
  'appender.stdout.layout.type=PatternLayout',
  'appender.stdout.layout.pattern=[%d] %p %m (%c)%n',
  'logger.started.name=kafka.server.KafkaRaftServer',
  'logger.started.level=INFO',
].join('\n');

const JAVA_OPTS = [
  '-Xms512m',
  '-Xmx512m',
  '-XX:+UseG1GC',
  '-XX:MaxGCPauseMillis=20',
  '-XX:+ExplicitGCInvokesConcurrent',
  '-Djava.awt.headless=true',
];

/** Processes still running, killed if the test process exits without stopping them. */
const live = new Set<ChildProcess>();
let exitHook = false;
function track(child: ChildProcess): void {
  live.add(child);
  child.once('exit', () => live.delete(child));
  if (exitHook) return;
  exitHook = true;
  process.once('exit', () => {
    for (const c of live) c.kill('SIGKILL');
  });
}

/** Formats a fresh storage directory and starts a broker on free loopback ports. */
export async function startKafka(options: KafkaOptions = {}): Promise<KafkaBroker> {
  if (!kafkaToolsPresent()) throw new Error(`java or mvn is not on PATH: ${INSTALL_HINT}`);
  const libs = await ensureKafkaJars();
  const dir = await mkdtemp(join(tmpdir(), 'sluice-kafka-'));
  try {
    const security = options.security ?? { kind: 'plaintext' };
    const host = '127.0.0.1';
    const [port, controller, internal] = [await freePort(), await freePort(), await freePort()];
    const tls = security.kind === 'tls' ? await makeTls(dir) : undefined;
    const props = serverProperties(dir, { port, controller, internal }, security, tls, options);
    await writeFile(join(dir, 'server.properties'), props);
    await writeFile(join(dir, 'tools-log4j2.properties'), TOOLS_LOG4J);
    await writeFile(join(dir, 'log4j2.properties'), BROKER_LOG4J);
    await format(libs, dir, security);
    const broker = new Broker(libs, dir, host, port, tls, options.readyTimeoutMs ?? 60_000);
    await broker.start();
    return broker;
  } catch (error) {
    await rm(dir, { recursive: true, force: true });
    throw error;
  }
}

function serverProperties(
  dir: string,
  ports: { port: number; controller: number; internal: number },
  security: KafkaSecurity,
  tls: KafkaTlsFiles | undefined,
  options: KafkaOptions,
): string {
  const h = '127.0.0.1';
  const client = security.kind === 'plaintext' ? 'PLAINTEXT' : security.kind === 'sasl' ? 'SASL_PLAINTEXT' : 'SSL';
  const lines: Record<string, string | number | boolean> = {
    'process.roles': 'broker,controller',
    'node.id': 1,
    'controller.quorum.voters': `1@${h}:${ports.controller}`,
    // The clients' listener has the security under test; the broker's own traffic stays plain.
    listeners: `CLIENT://${h}:${ports.port},INTERNAL://${h}:${ports.internal},CONTROLLER://${h}:${ports.controller}`,
    'advertised.listeners': `CLIENT://${h}:${ports.port},INTERNAL://${h}:${ports.internal}`,
    'listener.security.protocol.map': `CLIENT:${client},INTERNAL:PLAINTEXT,CONTROLLER:PLAINTEXT`,
    'controller.listener.names': 'CONTROLLER',
    'inter.broker.listener.name': 'INTERNAL',
    'log.dirs': join(dir, 'logs'),
    'num.partitions': options.partitions ?? 1,
    'offsets.topic.replication.factor': 1,
    'offsets.topic.num.partitions': 1,
    'transaction.state.log.replication.factor': 1,
    'transaction.state.log.min.isr': 1,
    'transaction.state.log.num.partitions': 1,
    'share.coordinator.state.topic.replication.factor': 1,
    'share.coordinator.state.topic.min.isr': 1,
    'group.initial.rebalance.delay.ms': 0,
    'auto.create.topics.enable': true,
    // Tests restart the broker and kill clients: let a dead member leave soon.
    'group.consumer.session.timeout.ms': 10_000,
    'group.consumer.min.session.timeout.ms': 1_000,
    'group.min.session.timeout.ms': 1_000,
    'log.flush.interval.messages': 1_000_000,
  };
  if (security.kind === 'sasl') {
    const users = security.users;
    lines['sasl.enabled.mechanisms'] = 'SCRAM-SHA-256,SCRAM-SHA-512,PLAIN';
    const plain = users.map((u) => `user_${u.name}="${u.password}"`).join(' ');
    lines['listener.name.client.plain.sasl.jaas.config'] =
      `org.apache.kafka.common.security.plain.PlainLoginModule required ${plain};`;
    lines['listener.name.client.scram-sha-256.sasl.jaas.config'] =
      'org.apache.kafka.common.security.scram.ScramLoginModule required;';
    lines['listener.name.client.scram-sha-512.sasl.jaas.config'] =
      'org.apache.kafka.common.security.scram.ScramLoginModule required;';
  }
  if (tls !== undefined) {
    // A PEM key store: no keytool and no store password needed.
    lines['listener.name.client.ssl.keystore.type'] = 'PEM';
    lines['listener.name.client.ssl.keystore.location'] = tls.keystorePath;
    lines['listener.name.client.ssl.client.auth'] = 'none';
  }
  Object.assign(lines, options.properties);
  return `${Object.entries(lines)
    .map(([k, v]) => `${k}=${v}`)
    .join('\n')}\n`;
}

async function format(libs: string, dir: string, security: KafkaSecurity): Promise<void> {
  const java = (args: string[]) =>
    run(
      'java',
      [
        '-cp',
        join(libs, '*'),
        `-Dlog4j2.configurationFile=${join(dir, 'tools-log4j2.properties')}`,
        'kafka.tools.StorageTool',
        ...args,
      ],
      { timeout: 60_000 },
    );
  const { stdout } = await java(['random-uuid']);
  const clusterId = stdout.trim().split('\n').pop() ?? '';
  const scram =
    security.kind === 'sasl'
      ? security.users.flatMap((u) =>
          ['SCRAM-SHA-256', 'SCRAM-SHA-512'].flatMap((m) => [
            '--add-scram',
            `${m}=[name="${u.name}",password="${u.password}"]`,
          ]),
        )
      : [];
  await java(['format', '-t', clusterId, '-c', join(dir, 'server.properties'), ...scram]).catch(
    (error: { stderr?: string; message: string }) => {
      throw new Error(`StorageTool format failed: ${error.message}\n${error.stderr ?? ''}`);
    },
  );
}

interface KafkaTlsFiles extends KafkaTls {
  readonly keystorePath: string;
}

/** A fresh CA and a server certificate for 127.0.0.1 and localhost, with openssl. */
async function makeTls(dir: string): Promise<KafkaTlsFiles> {
  const tlsDir = join(dir, 'tls');
  await mkdir(tlsDir);
  const f = (name: string) => join(tlsDir, name);
  const ssl = (args: string[]) => run('openssl', args, { timeout: 30_000 });
  await ssl(
    ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2', '-subj', '/CN=sluice-test-ca'].concat([
      '-keyout',
      f('ca.key'),
      '-out',
      f('ca.pem'),
    ]),
  );
  await ssl([
    'req',
    '-newkey',
    'rsa:2048',
    '-nodes',
    '-subj',
    '/CN=localhost',
    '-keyout',
    f('server.key'),
    '-out',
    f('server.csr'),
  ]);
  await writeFile(f('ext.cnf'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\n');
  await ssl(
    ['x509', '-req', '-in', f('server.csr'), '-CA', f('ca.pem'), '-CAkey', f('ca.key'), '-CAcreateserial'].concat([
      '-days',
      '2',
      '-extfile',
      f('ext.cnf'),
      '-out',
      f('server.pem'),
    ]),
  );
  // Kafka's PEM key store wants an unencrypted PKCS#8 key followed by the certificate chain.
  await ssl(['pkcs8', '-topk8', '-nocrypt', '-in', f('server.key'), '-out', f('server.pk8')]);
  const keystore = (await readFile(f('server.pk8'), 'utf8')) + (await readFile(f('server.pem'), 'utf8'));
  await writeFile(f('keystore.pem'), keystore);
  return { ca: await readFile(f('ca.pem'), 'utf8'), caPath: f('ca.pem'), keystorePath: f('keystore.pem') };
}

const MAX_LOG = 256 * 1024;

class Broker implements KafkaBroker {
  readonly host: string;
  readonly port: number;
  readonly bootstrap: string;
  readonly tls: KafkaTls | undefined;
  readonly dir: string;
  readonly #libs: string;
  readonly #readyTimeoutMs: number;
  #child: ChildProcess | undefined;
  #exited: Promise<void> = Promise.resolve();
  #log = '';

  constructor(libs: string, dir: string, host: string, port: number, tls: KafkaTls | undefined, readyMs: number) {
    this.#libs = libs;
    this.dir = dir;
    this.host = host;
    this.port = port;
    this.bootstrap = `${host}:${port}`;
    this.tls = tls === undefined ? undefined : { ca: tls.ca, caPath: tls.caPath };
    this.#readyTimeoutMs = readyMs;
  }

  get running(): boolean {
    const c = this.#child;
    return c !== undefined && c.exitCode === null && c.signalCode === null;
  }

  log(): string {
    return this.#log;
  }

  async start(): Promise<void> {
    const child = spawn(
      'java',
      [
        ...JAVA_OPTS,
        `-Dlog4j2.configurationFile=${join(this.dir, 'log4j2.properties')}`,
        '-cp',
        join(this.#libs, '*'),
        'kafka.Kafka',
        join(this.dir, 'server.properties'),
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    this.#child = child;
    track(child);
    this.#exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    const from = this.#log.length;
    const append = (chunk: Buffer) => {
      this.#log += chunk.toString();
      if (this.#log.length > MAX_LOG) this.#log = this.#log.slice(-MAX_LOG / 2);
    };
    child.stdout?.on('data', append);
    child.stderr?.on('data', append);
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        finish();
        reject(new Error(`Kafka broker not started after ${this.#readyTimeoutMs} ms:\n${this.#log.slice(from)}`));
      }, this.#readyTimeoutMs);
      const check = () => {
        if (!this.#log.includes(READY_LINE, Math.max(0, from - READY_LINE.length))) return;
        finish();
        resolve();
      };
      const exit = (code: number | null, signal: string | null) => {
        finish();
        reject(new Error(`Kafka broker exited (${code ?? signal}) before it started:\n${this.#log.slice(from)}`));
      };
      const finish = () => {
        clearTimeout(timer);
        child.stdout?.off('data', check);
        child.off('exit', exit);
      };
      child.stdout?.on('data', check);
      child.once('exit', exit);
    }).catch(async (error: unknown) => {
      await this.kill();
      throw error;
    });
  }

  async stop(graceMs = 15_000): Promise<void> {
    const child = this.#child;
    if (child === undefined || !this.running) return;
    child.kill('SIGCONT');
    child.kill('SIGTERM');
    const killer = setTimeout(() => child.kill('SIGKILL'), graceMs);
    await this.#exited;
    clearTimeout(killer);
  }

  async kill(): Promise<void> {
    const child = this.#child;
    if (child === undefined || !this.running) return;
    child.kill('SIGKILL');
    await this.#exited;
  }

  pause(): void {
    if (this.running) this.#child?.kill('SIGSTOP');
  }

  resume(): void {
    if (this.running) this.#child?.kill('SIGCONT');
  }

  async restart(): Promise<void> {
    await this.stop();
    await this.start();
  }

  async close(): Promise<void> {
    await this.stop();
    await rm(this.dir, { recursive: true, force: true });
  }
}
