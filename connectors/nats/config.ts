/**
 * Connection options of the NATS connector, and the connection itself: the client's own option
 * names (servers, user, pass, token, tls) plus an NKey seed and a credentials file, with
 * reconnection by exponential backoff. See docs/nats.md.
 */
import { readFileSync } from 'node:fs';
import {
  type Authenticator,
  type ConnectionOptions,
  connect,
  credsAuthenticator,
  type NatsConnection,
  nkeyAuthenticator,
} from '@nats-io/transport-node';
import { ConnectorError, messageOf, OptionsError } from '../../runtime/errors.ts';
import { intOption, knownKeys, optionKeys } from '../../runtime/options.ts';

/** TLS settings, as the NATS client names them: files by path, or their PEM text. */
export interface NatsTlsOptions {
  /** The CA that signed the server's certificate (PEM file); without it the system's CAs. */
  caFile?: string;
  /** The same, as PEM text. */
  ca?: string;
  /** Client certificate (PEM file), for servers that verify clients (`verify: true`). */
  certFile?: string;
  cert?: string;
  /** The client certificate's private key (PEM file). */
  keyFile?: string;
  key?: string;
}

/** Reconnection after a lost connection: exponential backoff with jitter, as the client retries. */
export interface NatsReconnectOptions {
  /** The first wait between attempts. @default 250 */
  initialDelayMs?: number;
  /** The longest wait between attempts. @default 5000 */
  maxDelayMs?: number;
  /** Attempts before the connection is given up; -1 for no limit. @default -1 */
  maxAttempts?: number;
}

/**
 * Where and how to connect. Authentication: give one of `user`/`pass`, `token`, `nkeySeed` or
 * `credsFile` (two at once is an `OptionsError`). Everything else the client takes
 * (`pingInterval`, `inboxPrefix`, ...) passes through `client`.
 */
export interface NatsConnectionOptions {
  /** One URL or several (`nats://host:port`, `tls://...`). @default 'nats://127.0.0.1:4222' */
  servers?: string | readonly string[];
  /** The connection's name, shown by the server's monitoring. @default 'sluice' */
  name?: string;
  user?: string;
  pass?: string;
  token?: string;
  /** An NKey user seed (`SU...`), as `nk -gen user` prints it; the server knows the public key. */
  nkeySeed?: string;
  /** A `.creds` file (a user JWT and its NKey seed, from `nsc`), for decentralized auth. */
  credsFile?: string;
  tls?: NatsTlsOptions;
  reconnect?: NatsReconnectOptions;
  /** Time to connect before giving up. @default 5000 */
  timeoutMs?: number;
  /** More options for the client's `connect`, as it names them; these win over the above. */
  client?: Partial<ConnectionOptions>;
}

export const DEFAULT_NATS_RECONNECT = Object.freeze({ initialDelayMs: 250, maxDelayMs: 5_000, maxAttempts: -1 });

const connectionKeys = optionKeys<keyof NatsConnectionOptions>({
  servers: true,
  name: true,
  user: true,
  pass: true,
  token: true,
  nkeySeed: true,
  credsFile: true,
  tls: true,
  reconnect: true,
  timeoutMs: true,
  client: true,
});
const tlsKeys = optionKeys<keyof NatsTlsOptions>({
  caFile: true,
  ca: true,
  certFile: true,
  cert: true,
  keyFile: true,
  key: true,
});
const reconnectKeys = optionKeys<keyof NatsReconnectOptions>({
  initialDelayMs: true,
  maxDelayMs: true,
  maxAttempts: true,
});

/** The connection of a source or sink: one of its own (closed with it) or one the caller shares. */
export type NatsConnectionRef = NatsConnection | NatsConnectionOptions;

function isConnection(ref: NatsConnectionRef): ref is NatsConnection {
  return typeof (ref as NatsConnection).publish === 'function' && typeof (ref as NatsConnection).close === 'function';
}

/** @internal The client options for `connect`, checked; throws an `OptionsError` naming the option. */
export function clientOptions(options: NatsConnectionOptions, where: string): ConnectionOptions {
  knownKeys(where, options, connectionKeys);
  knownKeys(`${where}.tls`, options.tls, tlsKeys);
  knownKeys(`${where}.reconnect`, options.reconnect, reconnectKeys);
  const auths = (['user', 'token', 'nkeySeed', 'credsFile'] as const).filter((k) => options[k] !== undefined);
  if (auths.length > 1) {
    throw new OptionsError(
      `${where}.${auths[1]}`,
      `give one way to authenticate, not both '${auths[0]}' and '${auths[1]}'`,
      options[auths[1] as 'user'],
    );
  }
  for (const k of ['name', 'user', 'pass', 'token', 'nkeySeed', 'credsFile'] as const) {
    if (options[k] !== undefined && (typeof options[k] !== 'string' || options[k] === '')) {
      throw new OptionsError(
        `${where}.${k}`,
        'must be a non-empty string',
        k === 'pass' || k === 'token' || k === 'nkeySeed' ? '(hidden)' : options[k],
      );
    }
  }
  if (options.pass !== undefined && options.user === undefined) {
    throw new OptionsError(`${where}.pass`, "needs 'user'", '(hidden)');
  }
  const servers = options.servers ?? 'nats://127.0.0.1:4222';
  const list = typeof servers === 'string' ? [servers] : servers;
  if (!Array.isArray(list) || list.length === 0 || list.some((s) => typeof s !== 'string' || s === '')) {
    throw new OptionsError(`${where}.servers`, 'must be a URL or a non-empty array of URLs', servers);
  }
  const reconnect = options.reconnect ?? {};
  const initial = intOption(
    `${where}.reconnect.initialDelayMs`,
    reconnect.initialDelayMs,
    DEFAULT_NATS_RECONNECT.initialDelayMs,
    1,
  );
  const max = intOption(
    `${where}.reconnect.maxDelayMs`,
    reconnect.maxDelayMs,
    DEFAULT_NATS_RECONNECT.maxDelayMs,
    initial,
  );
  const attempts = intOption(
    `${where}.reconnect.maxAttempts`,
    reconnect.maxAttempts,
    DEFAULT_NATS_RECONNECT.maxAttempts,
    -1,
  );
  const timeout = intOption(`${where}.timeoutMs`, options.timeoutMs, 5_000, 1);

  let authenticator: Authenticator | undefined;
  if (options.nkeySeed !== undefined) {
    authenticator = nkeyAuthenticator(new TextEncoder().encode(options.nkeySeed));
  } else if (options.credsFile !== undefined) {
    const file = options.credsFile;
    let creds: Uint8Array;
    try {
      creds = readFileSync(file);
    } catch (error) {
      throw new OptionsError(`${where}.credsFile`, `must be a readable credentials file: ${messageOf(error)}`, file);
    }
    authenticator = credsAuthenticator(creds);
  }
  // Backoff doubles from `initial` to `max` over the attempts since the connection was lost; the
  // client adds no jitter of its own to a delay handler, so a quarter of jitter is added here.
  let failures = 0;
  const reconnectDelayHandler = () => {
    const base = Math.min(max, initial * 2 ** Math.min(failures++, 30));
    return Math.round(base * (0.75 + Math.random() * 0.25));
  };
  const out: ConnectionOptions & { resetBackoff?: () => void } = {
    servers: [...list],
    name: options.name ?? 'sluice',
    timeout,
    maxReconnectAttempts: attempts,
    reconnectDelayHandler,
    waitOnFirstConnect: false,
    ...(options.user !== undefined ? { user: options.user, pass: options.pass } : {}),
    ...(options.token !== undefined ? { token: options.token } : {}),
    ...(authenticator !== undefined ? { authenticator } : {}),
    ...(options.tls !== undefined ? { tls: { ...options.tls } } : {}),
    ...options.client,
  };
  Object.defineProperty(out, 'resetBackoff', { value: () => (failures = 0), enumerable: false });
  return out;
}

/** A connection in use by a source or sink, and whether closing them closes it. */
export interface HeldConnection {
  readonly nc: NatsConnection;
  readonly owned: boolean;
  readonly where: string;
}

/**
 * @internal Connects (or takes the caller's connection). A refused connection is a
 * `ConnectorError` naming the servers and the reason in plain words (authorization, TLS, refused).
 */
export async function openConnection(ref: NatsConnectionRef | undefined, name: string): Promise<HeldConnection> {
  if (ref !== undefined && isConnection(ref)) return { nc: ref, owned: false, where: ref.getServer() };
  const options = clientOptions(ref ?? {}, `${name}.connection`);
  const where = (options.servers as string[]).join(', ');
  let nc: NatsConnection;
  try {
    nc = await connect(options);
  } catch (error) {
    throw new ConnectorError(name, `could not connect to '${where}': ${explain(error)}`, {
      cause: error,
      retryable: !/authoriz|authentic|tls|certificate/i.test(messageOf(error)),
    });
  }
  void (async () => {
    for await (const s of nc.status())
      if (s.type === 'reconnect') (options as { resetBackoff?: () => void }).resetBackoff?.();
  })().catch(() => undefined);
  return { nc, owned: true, where };
}

/** The client's error in words that say what to check. */
function explain(error: unknown): string {
  const text = messageOf(error);
  const cause = error instanceof Error && error.cause !== undefined ? `: ${messageOf(error.cause)}` : '';
  if (/authorization violation|authentication/i.test(text + cause)) {
    return `the server refused the credentials (${text}${cause}); check user/pass, token, nkeySeed or credsFile`;
  }
  if (/tls|certificate|self.signed|ssl/i.test(text + cause)) {
    return `TLS failed (${text}${cause}); check tls.caFile, tls.certFile and tls.keyFile against the server's certificates`;
  }
  return text + cause;
}

/** @internal Closes a connection the source or sink opened; a shared one stays open. */
export async function closeConnection(held: HeldConnection | undefined): Promise<void> {
  if (held === undefined || !held.owned || held.nc.isClosed()) return;
  await held.nc.drain().catch(() => held.nc.close().catch(() => undefined));
}
