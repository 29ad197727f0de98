/**
 * Options of the WebSocket gateway: where it listens, who may connect and with which permissions,
 * and the limits that keep one browser from growing the server's memory. See docs/websocket.md.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import type { IncomingHttpHeaders } from 'node:http';
import type { Logger } from '../../runtime/actors/actor.ts';
import { isLoopback, MIN_TOKEN_LENGTH } from '../../runtime/admin/options.ts';
import type { Bus } from '../../runtime/bus/bus.ts';
import type { OverflowPolicy } from '../../runtime/bus/mailbox.ts';
import { PermissionChecker, type Permissions } from '../../runtime/bus/permissions.ts';
import { OptionsError } from '../../runtime/errors.ts';
import { intOption, knownKeys, oneOf, optionKeys, optionsObject } from '../../runtime/options.ts';

/** Who a connection is, once authenticated: its name (in permission errors) and its permissions. */
export interface GatewayIdentity {
  /** Names the connection in permission errors and logs, e.g. a user id. */
  name: string;
  /** What it may publish and subscribe to, as `bus.client` takes them; none means everything. */
  permissions?: Permissions;
}

/** A static token and the identity it stands for. */
export interface GatewayToken extends GatewayIdentity {
  /** At least 16 characters without white space; compared in constant time. */
  token: string;
}

/** What `authenticate` sees of a connection's HTTP upgrade request. */
export interface GatewayAuthRequest {
  /**
   * The bearer token the client sent, decoded: from the `Sec-WebSocket-Protocol` entry
   * `sluice.bearer.<base64url>` (what a browser can send) or an `Authorization: Bearer` header
   * (what other clients can send). Undefined when it sent none.
   */
  readonly token: string | undefined;
  /** The `Origin` header, sent by browsers (already checked against `origins` when given). */
  readonly origin: string | undefined;
  /** All request headers, for cookie sessions and the like. */
  readonly headers: IncomingHttpHeaders;
  /** The request path and query. */
  readonly url: string;
  readonly remoteAddress: string | undefined;
}

/** Decides who a connection is; undefined (or false) refuses it with HTTP 401. */
export type GatewayAuthenticate = (
  request: GatewayAuthRequest,
) => GatewayIdentity | undefined | false | Promise<GatewayIdentity | undefined | false>;

export interface WebSocketGatewayOptions {
  /** The bus whose subjects the gateway opens, usually `runtime.bus`. */
  bus: Bus;
  /** TCP port; 0 picks a free one (see `WebSocketGateway.port`). @default 7430 */
  port?: number;
  /** Address to bind. Anything but a loopback address opens the bus to the network. @default '127.0.0.1' */
  host?: string;
  /** The path WebSocket upgrades are accepted on. @default '/ws' */
  path?: string;
  /** The path the browser client module is served on (`import { connect } from '…'`). @default '/sluice-ws.js' */
  clientPath?: string;
  /** Static tokens, each with its identity. One of `tokens`, `authenticate` or `auth: false` is required. */
  tokens?: readonly GatewayToken[];
  /**
   * Authenticates each connection at its upgrade; a throw refuses it with HTTP 500 (and is logged),
   * no answer within `authTimeoutMs` with HTTP 503.
   */
  authenticate?: GatewayAuthenticate;
  /**
   * How long `authenticate` may take: past it the upgrade is refused with HTTP 503 (and logged),
   * whatever the callback answers later, so a session store that never answers holds no socket.
   * @default 10000
   */
  authTimeoutMs?: number;
  /**
   * `false` accepts every connection as `anonymous` with `permissions` below (or none): allowed only
   * on a loopback host.
   */
  auth?: false;
  /** The permissions of anonymous connections under `auth: false`. @default none: everything */
  permissions?: Permissions;
  /**
   * Origins (`scheme://host[:port]`) a browser may connect from; others get HTTP 403. Needed when
   * `authenticate` trusts cookies, which a browser sends from any page. @default any origin
   */
  origins?: readonly string[];
  /** Largest frame a client may send, in bytes; a larger one closes the connection with 1009. @default 65536 */
  maxPayloadBytes?: number;
  /** Connections at once; more are refused with HTTP 503. @default 1024 */
  maxConnections?: number;
  /** Subscriptions per connection; more are refused with an error frame. @default 64 */
  maxSubscriptions?: number;
  /**
   * Bytes the server holds unsent for one connection (ws's `bufferedAmount`) before its
   * subscriptions stop taking messages; the messages wait in each subscription's mailbox.
   * @default 1048576
   */
  maxBufferedBytes?: number;
  /**
   * Messages each subscription's mailbox holds for a connection whose socket buffer is full. When
   * one is full too, the connection is a slow consumer: it is closed with code 4008.
   * @default 256
   */
  queue?: number;
  /**
   * What a full mailbox does with the message it has no room for, before the connection is closed:
   * `drop-oldest` or `drop-newest`. Never `block` or `fail`: one slow browser must not hold back or
   * fail the job's publishers. @default 'drop-newest'
   */
  overflow?: Extract<OverflowPolicy, 'drop-oldest' | 'drop-newest'>;
  /** Publishes and requests of one connection in flight at once; past it the gateway stops reading its socket. @default 64 */
  maxInFlight?: number;
  /** How long a closed slow consumer may take to read up to its close frame, and a refused upgrade its refusal, before the socket is destroyed. @default 2000 */
  closeGraceMs?: number;
  /** Ping interval; a connection that missed its pong is terminated. 0 turns pings off. @default 30000 */
  pingIntervalMs?: number;
  /**
   * Where refused connections (403 and 5xx) and callback failures are logged: one line per reason
   * every 10 s at most, saying how many more were refused for it meanwhile. @default console
   */
  logger?: Logger;
}

export interface ResolvedGatewayOptions {
  readonly bus: Bus;
  readonly port: number;
  readonly host: string;
  readonly path: string;
  readonly clientPath: string;
  readonly authenticate: (request: GatewayAuthRequest) => Promise<GatewayIdentity | undefined>;
  readonly authTimeoutMs: number;
  readonly origins: ReadonlySet<string> | undefined;
  readonly maxPayloadBytes: number;
  readonly maxConnections: number;
  readonly maxSubscriptions: number;
  readonly maxBufferedBytes: number;
  readonly queue: number;
  readonly overflow: 'drop-oldest' | 'drop-newest';
  readonly maxInFlight: number;
  readonly closeGraceMs: number;
  readonly pingIntervalMs: number;
  readonly logger: Logger;
}

export const DEFAULT_WEBSOCKET_GATEWAY_OPTIONS = Object.freeze({
  port: 7430,
  host: '127.0.0.1',
  path: '/ws',
  clientPath: '/sluice-ws.js',
  maxPayloadBytes: 64 * 1024,
  maxConnections: 1024,
  maxSubscriptions: 64,
  maxBufferedBytes: 1024 * 1024,
  queue: 256,
  overflow: 'drop-newest',
  maxInFlight: 64,
  closeGraceMs: 2000,
  pingIntervalMs: 30_000,
  authTimeoutMs: 10_000,
} as const);

/** The longest delay a Node timer keeps (a longer one fires at once). */
const MAX_TIMER_MS = 2 ** 31 - 1;

const gatewayKeys = optionKeys<keyof WebSocketGatewayOptions>({
  bus: true,
  port: true,
  host: true,
  path: true,
  clientPath: true,
  tokens: true,
  authenticate: true,
  authTimeoutMs: true,
  auth: true,
  permissions: true,
  origins: true,
  maxPayloadBytes: true,
  maxConnections: true,
  maxSubscriptions: true,
  maxBufferedBytes: true,
  queue: true,
  overflow: true,
  maxInFlight: true,
  closeGraceMs: true,
  pingIntervalMs: true,
  logger: true,
});

const O = 'websocketGateway';

export function resolveGatewayOptions(options: WebSocketGatewayOptions): ResolvedGatewayOptions {
  optionsObject(O, options);
  knownKeys(O, options, gatewayKeys);
  const d = DEFAULT_WEBSOCKET_GATEWAY_OPTIONS;
  const bus = options.bus;
  if (typeof bus !== 'object' || bus === null || typeof (bus as Bus).client !== 'function') {
    throw new OptionsError(`${O}.bus`, 'must be a Bus (runtime.bus)', bus);
  }
  const port = intOption(`${O}.port`, options.port, d.port, 0);
  if (port > 65_535) throw new OptionsError(`${O}.port`, 'must be a port number, 0 to 65535', port);
  const host = options.host ?? d.host;
  if (typeof host !== 'string' || host.length === 0) {
    throw new OptionsError(`${O}.host`, 'must be a host name or an IP address', host);
  }
  const path = pathOption(`${O}.path`, options.path, d.path);
  const clientPath = pathOption(`${O}.clientPath`, options.clientPath, d.clientPath);
  if (clientPath === path) throw new OptionsError(`${O}.clientPath`, `must differ from ${O}.path`, clientPath);
  const overflow = oneOf(`${O}.overflow`, options.overflow, ['drop-oldest', 'drop-newest'] as const, d.overflow);
  const authTimeoutMs = intOption(`${O}.authTimeoutMs`, options.authTimeoutMs, d.authTimeoutMs, 1);
  if (authTimeoutMs > MAX_TIMER_MS) {
    throw new OptionsError(`${O}.authTimeoutMs`, `must be an integer from 1 to ${MAX_TIMER_MS}`, authTimeoutMs);
  }
  if (options.authTimeoutMs !== undefined && options.authenticate === undefined) {
    throw new OptionsError(`${O}.authTimeoutMs`, "bounds the 'authenticate' callback; give it with one", authTimeoutMs);
  }
  return {
    bus,
    port,
    host,
    path,
    clientPath,
    authenticate: resolveAuth(options, host),
    authTimeoutMs,
    origins: originsOption(options.origins),
    maxPayloadBytes: intOption(`${O}.maxPayloadBytes`, options.maxPayloadBytes, d.maxPayloadBytes, 64),
    maxConnections: intOption(`${O}.maxConnections`, options.maxConnections, d.maxConnections, 1),
    maxSubscriptions: intOption(`${O}.maxSubscriptions`, options.maxSubscriptions, d.maxSubscriptions, 1),
    maxBufferedBytes: intOption(`${O}.maxBufferedBytes`, options.maxBufferedBytes, d.maxBufferedBytes, 1),
    queue: intOption(`${O}.queue`, options.queue, d.queue, 1),
    overflow,
    maxInFlight: intOption(`${O}.maxInFlight`, options.maxInFlight, d.maxInFlight, 1),
    closeGraceMs: intOption(`${O}.closeGraceMs`, options.closeGraceMs, d.closeGraceMs, 0),
    pingIntervalMs: intOption(`${O}.pingIntervalMs`, options.pingIntervalMs, d.pingIntervalMs, 0),
    logger: options.logger ?? console,
  };
}

function pathOption(name: string, value: string | undefined, fallback: string): string {
  const path = value ?? fallback;
  if (typeof path !== 'string' || !/^\/[\w./~-]*$/.test(path)) {
    throw new OptionsError(name, "must be a URL path starting with '/', without query or spaces", path);
  }
  return path;
}

function originsOption(origins: readonly string[] | undefined): ReadonlySet<string> | undefined {
  if (origins === undefined) return undefined;
  if (!Array.isArray(origins)) throw new OptionsError(`${O}.origins`, 'must be an array of origins', origins);
  for (const [i, origin] of origins.entries()) {
    // An origin as browsers send it: no path, no trailing slash.
    if (typeof origin !== 'string' || !/^[a-z][a-z0-9+.-]*:\/\/[^/\s]+$/i.test(origin)) {
      throw new OptionsError(`${O}.origins[${i}]`, "must be an origin such as 'https://example.com:8443'", origin);
    }
  }
  return new Set(origins.map((o) => o.toLowerCase()));
}

/** One function for the three ways to authenticate, checked here so a bad setup fails at start. */
function resolveAuth(options: WebSocketGatewayOptions, host: string): ResolvedGatewayOptions['authenticate'] {
  const given = (['tokens', 'authenticate', 'auth'] as const).filter((k) => options[k] !== undefined);
  if (given.length !== 1) {
    throw new OptionsError(
      O,
      given.length === 0
        ? `give one of 'tokens', 'authenticate' or 'auth: false' (on a loopback host): connections need an identity`
        : `give only one of ${given.map((k) => `'${k}'`).join(', ')}`,
      given,
    );
  }
  if (options.permissions !== undefined && options.auth === undefined) {
    throw new OptionsError(
      `${O}.permissions`,
      "is for anonymous connections under 'auth: false'; give tokens or authenticate their own",
      '(permissions)',
    );
  }
  if (options.auth !== undefined) {
    if (options.auth !== false) throw new OptionsError(`${O}.auth`, 'may only be false', options.auth);
    if (!isLoopback(host)) {
      throw new OptionsError(`${O}.auth`, `may be false only on a loopback host, and host is '${host}'`, false);
    }
    const anonymous = identityOption({ name: 'anonymous', permissions: options.permissions }, `${O}.permissions`);
    return () => Promise.resolve(anonymous);
  }
  if (options.authenticate !== undefined) {
    const authenticate = options.authenticate;
    if (typeof authenticate !== 'function') {
      throw new OptionsError(`${O}.authenticate`, 'must be a function of the upgrade request', authenticate);
    }
    return async (request) => {
      const identity = await authenticate(request);
      if (identity === undefined || identity === false) return undefined;
      return identityOption(identity, `${O}.authenticate() result`);
    };
  }
  const tokens = options.tokens;
  if (!Array.isArray(tokens) || tokens.length === 0) {
    throw new OptionsError(`${O}.tokens`, 'must be a non-empty array of { token, name, permissions }', tokens);
  }
  const known = tokens.map((t, i) => {
    const name = `${O}.tokens[${i}]`;
    if (typeof t !== 'object' || t === null) throw new OptionsError(name, 'must be { token, name, permissions }', t);
    const token = t.token;
    if (typeof token !== 'string' || token.length < MIN_TOKEN_LENGTH || /\s/.test(token)) {
      // The value is never echoed: error messages end up in logs.
      throw new OptionsError(
        `${name}.token`,
        `must be a string of at least ${MIN_TOKEN_LENGTH} characters without white space`,
        typeof token === 'string' ? `(a string of ${token.length} characters)` : token,
      );
    }
    return { digest: digest(token), identity: identityOption(t, name) };
  });
  return (request) => {
    if (request.token === undefined) return Promise.resolve(undefined);
    const given = digest(request.token);
    // Every entry is compared, so the time taken says nothing about which one matched.
    let found: GatewayIdentity | undefined;
    for (const k of known) if (timingSafeEqual(k.digest, given)) found ??= k.identity;
    return Promise.resolve(found);
  };
}

/** An identity checked once: its permissions compile (a bad pattern is named now, not at first use). */
function identityOption(identity: GatewayIdentity, name: string): GatewayIdentity {
  optionsObject(name, identity);
  if (typeof identity.name !== 'string' || identity.name.length === 0 || identity.name.length > 256) {
    throw new OptionsError(`${name}.name`, 'must be a string of 1 to 256 characters', identity.name);
  }
  new PermissionChecker(identity.permissions, `${name}.permissions`);
  return { name: identity.name, permissions: identity.permissions };
}

function digest(token: string): Buffer {
  return createHash('sha256').update(token).digest();
}
