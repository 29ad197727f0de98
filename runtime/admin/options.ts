import { isIP } from 'node:net';
import { OptionsError } from '../errors.ts';
import { intOption, knownKeys, optionKeys, optionsObject } from '../options.ts';

/** Options of `runtime.serve`: where the admin API listens and who may use it. */
export interface ServeOptions {
  /** TCP port; 0 picks a free one (see `AdminServer.port`). @default 7420 */
  port?: number;
  /** Address to bind. Anything but a loopback address exposes the job to the network. @default '127.0.0.1' */
  host?: string;
  /**
   * Bearer token with every right (reads and actions), at least 16 characters. `false` serves
   * without authentication, allowed only on a loopback host.
   */
  token?: string | false;
  /** A second token that may read but not act (dashboards on a wall, monitoring scripts). */
  readToken?: string;
  /** Refuses every action, whatever the token. @default false */
  readOnly?: boolean;
  /** A file every action is appended to as one JSON line (the in-memory log keeps the last 1000). */
  auditLog?: string;
  /**
   * Dead letters kept in memory for peeking and replay, the oldest dropped first: sets the bound
   * of the runtime's buffer (`createRuntime({ deadLetters })`, which keeps them from its creation).
   * @default the runtime's (1000)
   */
  deadLetters?: number;
  /** How often rates, lag and checkpoints are sampled for the history and the live feed. @default 1000 */
  sampleIntervalMs?: number;
  /** Samples kept per series (with the default interval, five minutes). @default 300 */
  historySamples?: number;
  /** Live-feed connections at once; more are refused with 503. @default 32 */
  maxFeeds?: number;
}

export interface ResolvedServeOptions {
  readonly port: number;
  readonly host: string;
  readonly token: string | false;
  readonly readToken: string | undefined;
  readonly readOnly: boolean;
  readonly auditLog: string | undefined;
  readonly deadLetters: number | undefined;
  readonly sampleIntervalMs: number;
  readonly historySamples: number;
  readonly maxFeeds: number;
}

const serveKeys = optionKeys<keyof ServeOptions>({
  port: true,
  host: true,
  token: true,
  readToken: true,
  readOnly: true,
  auditLog: true,
  deadLetters: true,
  sampleIntervalMs: true,
  historySamples: true,
  maxFeeds: true,
});

/** The shortest token accepted: shorter ones can be guessed by a client that polls fast. */
export const MIN_TOKEN_LENGTH = 16;

export function isLoopback(host: string): boolean {
  if (host === 'localhost') return true;
  if (isIP(host) === 4) return host.startsWith('127.');
  return host === '::1' || host === '::ffff:127.0.0.1';
}

export function resolveServeOptions(options: ServeOptions): ResolvedServeOptions {
  optionsObject('serve', options);
  knownKeys('serve', options, serveKeys);
  const port = intOption('serve.port', options.port, 7420, 0);
  if (port > 65_535) throw new OptionsError('serve.port', 'must be a port number, 0 to 65535', port);
  const host = options.host ?? '127.0.0.1';
  if (typeof host !== 'string' || host.length === 0) {
    throw new OptionsError('serve.host', 'must be a host name or an IP address', host);
  }
  const token = options.token;
  if (token === undefined) {
    throw new OptionsError(
      'serve.token',
      `a bearer token is required (a random string of at least ${MIN_TOKEN_LENGTH} characters), or token: false on a loopback host`,
      token,
    );
  }
  if (token === false) {
    if (!isLoopback(host)) {
      throw new OptionsError('serve.token', `may be false only on a loopback host, and host is '${host}'`, token);
    }
  } else checkToken('serve.token', token);
  if (options.readToken !== undefined) {
    checkToken('serve.readToken', options.readToken);
    if (options.readToken === token) {
      throw new OptionsError('serve.readToken', 'must differ from serve.token', '(the token)');
    }
  }
  if (options.readOnly !== undefined && typeof options.readOnly !== 'boolean') {
    throw new OptionsError('serve.readOnly', 'must be a boolean', options.readOnly);
  }
  if (options.auditLog !== undefined && (typeof options.auditLog !== 'string' || options.auditLog === '')) {
    throw new OptionsError('serve.auditLog', 'must be a file path', options.auditLog);
  }
  return {
    port,
    host,
    token,
    readToken: options.readToken,
    readOnly: options.readOnly ?? false,
    auditLog: options.auditLog,
    deadLetters:
      options.deadLetters === undefined ? undefined : intOption('serve.deadLetters', options.deadLetters, 0, 0),
    sampleIntervalMs: intOption('serve.sampleIntervalMs', options.sampleIntervalMs, 1000, 10),
    historySamples: intOption('serve.historySamples', options.historySamples, 300, 2),
    maxFeeds: intOption('serve.maxFeeds', options.maxFeeds, 32, 1),
  };
}

function checkToken(name: string, token: unknown): void {
  if (typeof token !== 'string' || token.length < MIN_TOKEN_LENGTH || /\s/.test(token)) {
    // The value is never echoed: error messages end up in logs.
    throw new OptionsError(
      name,
      `must be a string of at least ${MIN_TOKEN_LENGTH} characters without white space`,
      typeof token === 'string' ? `(a string of ${token.length} characters)` : token,
    );
  }
}
