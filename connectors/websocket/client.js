// The browser client of the Sluice WebSocket gateway: plain ESM, no build step. The gateway serves
// it (at /sluice-ws.js by default); a page imports it from there:
//
//   import { connect } from 'http://127.0.0.1:7430/sluice-ws.js';
//   const conn = await connect({ token });
//   conn.subscribe('views.>', (msg) => show(msg.data));
//
// The wire protocol is in docs/websocket.md.

/** The path the gateway serving this module accepts WebSockets on (filled in as it serves it). */
const GATEWAY_PATH = '/ws';
const PROTOCOL = 'sluice.v1';
const BEARER_PREFIX = 'sluice.bearer.';

/** An error the gateway sent back (an `err` frame), or a connection that failed. */
export class GatewayError extends Error {
  constructor(frame) {
    super(frame.message);
    this.name = 'GatewayError';
    /** A Sluice error code, such as 'SLUICE_ERR_PERMISSION' or 'SLUICE_ERR_SUBJECT'. */
    this.code = frame.code;
    this.subject = frame.subject;
    this.rule = frame.rule;
    this.field = frame.field;
  }
}

/**
 * Opens a connection and resolves once the gateway greeted it. `url` defaults to the gateway this
 * module was served by. `token` goes in the WebSocket protocols list (a browser cannot set an
 * Authorization header), base64url-encoded after 'sluice.bearer.'.
 */
export function connect(options = {}) {
  const url = options.url ?? defaultUrl();
  const protocols = [PROTOCOL];
  if (options.token !== undefined) protocols.push(BEARER_PREFIX + base64url(options.token));
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, protocols);
    let conn;
    ws.addEventListener('message', function first(event) {
      const frame = JSON.parse(event.data);
      if (frame.op !== 'hello') return;
      ws.removeEventListener('message', first);
      conn = new Connection(ws, frame, options.onError);
      resolve(conn);
    });
    ws.addEventListener('close', (event) => {
      if (conn !== undefined) return;
      // The browser hides the HTTP status of a refused upgrade: 401 (token), 403 (origin), 503 (full).
      reject(
        new GatewayError({
          code: 'SLUICE_ERR_CONNECTOR',
          message: `connection to ${url} refused or failed (close ${event.code}${event.reason ? `: ${event.reason}` : ''}); the gateway logs why`,
        }),
      );
    });
  });
}

function defaultUrl() {
  const here = new URL(import.meta.url);
  return `${here.protocol === 'https:' ? 'wss:' : 'ws:'}//${here.host}${GATEWAY_PATH}`;
}

function base64url(text) {
  let binary = '';
  for (const byte of new TextEncoder().encode(text)) binary += String.fromCharCode(byte);
  return btoa(binary).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

class Connection {
  #ws;
  #subs = new Map();
  #pending = new Map();
  #nextId = 1;
  #onError;

  constructor(ws, hello, onError) {
    this.#ws = ws;
    this.#onError = onError ?? ((error) => console.error('sluice gateway:', error));
    /** The identity the gateway gave this connection. */
    this.name = hello.name;
    this.maxPayloadBytes = hello.maxPayloadBytes;
    /** Resolves with `{ code, reason }` once the connection is closed, by either side. */
    this.closed = new Promise((resolve) => {
      ws.addEventListener('close', (event) => {
        const error = new GatewayError({
          code: 'SLUICE_ERR_CLOSED',
          message: `the connection closed (${event.code}${event.reason ? `: ${event.reason}` : ''})`,
        });
        for (const { reject } of this.#pending.values()) reject(error);
        this.#pending.clear();
        resolve({ code: event.code, reason: event.reason });
      });
    });
    ws.addEventListener('message', (event) => this.#onFrame(JSON.parse(event.data)));
  }

  /**
   * Subscribes to `subject` (wildcards allowed); `onMessage` gets each message as
   * `{ subject, data, messageId, eventTime, key, headers, replyTo }`. The returned subscription's
   * `ready` resolves once the gateway accepted it, or rejects with a GatewayError (a denied subject).
   */
  subscribe(subject, onMessage, options = {}) {
    const sid = `s${this.#nextId++}`;
    const sub = {
      sid,
      subject,
      ready: this.#call(
        { op: 'sub', sid, subject, ...(options.queue === undefined ? {} : { queue: options.queue }) },
        sid,
      ),
      unsubscribe: () => {
        this.#subs.delete(sid);
        return this.#call({ op: 'unsub', sid }, sid);
      },
    };
    this.#subs.set(sid, onMessage);
    sub.ready.catch(() => this.#subs.delete(sid));
    return sub;
  }

  /** Publishes and resolves once the bus accepted the message; rejects with a GatewayError. */
  publish(subject, data, options = {}) {
    const id = this.#nextId++;
    return this.#call({ op: 'pub', id, subject, data, ...options }, id);
  }

  /** Sends a request and resolves with the first reply message. */
  request(subject, data, options = {}) {
    const id = this.#nextId++;
    return this.#call({ op: 'req', id, subject, data, ...options }, id);
  }

  /** Replies to a message that came with a `replyTo`. */
  respond(msg, data, options = {}) {
    return this.publish(msg.replyTo, data, options);
  }

  close() {
    this.#ws.close(1000, 'closed by the page');
    return this.closed;
  }

  #call(frame, key) {
    const text = JSON.stringify(frame);
    const size = new TextEncoder().encode(text).length;
    if (size > this.maxPayloadBytes) {
      // Sent anyway, the gateway would close the whole connection (1009).
      return Promise.reject(
        new GatewayError({
          code: 'SLUICE_ERR_MAX_PAYLOAD',
          message: `invalid frame for '${frame.subject}': its size ${size} bytes exceeds the gateway's limit of ${this.maxPayloadBytes} bytes`,
          subject: frame.subject,
        }),
      );
    }
    if (this.#ws.readyState !== WebSocket.OPEN) {
      // A closing or closed WebSocket drops what it is given, and no answer would ever come.
      return Promise.reject(
        new GatewayError({
          code: 'SLUICE_ERR_CLOSED',
          message: `the connection is closed: '${frame.op}' for '${frame.subject ?? frame.sid}' was not sent`,
          subject: frame.subject,
        }),
      );
    }
    return new Promise((resolve, reject) => {
      this.#pending.set(key, { resolve, reject });
      this.#ws.send(text);
    });
  }

  #onFrame(frame) {
    switch (frame.op) {
      case 'msg': {
        const onMessage = this.#subs.get(frame.sid);
        if (onMessage !== undefined) onMessage(frame);
        return;
      }
      case 'ack':
      case 'reply': {
        const key = frame.sid ?? frame.id;
        const waiting = this.#pending.get(key);
        this.#pending.delete(key);
        waiting?.resolve(frame.op === 'reply' ? frame : undefined);
        return;
      }
      case 'err': {
        const key = frame.sid ?? frame.id;
        const waiting = key === undefined ? undefined : this.#pending.get(key);
        const error = new GatewayError(frame);
        if (waiting === undefined) this.#onError(error);
        else {
          this.#pending.delete(key);
          waiting.reject(error);
        }
        return;
      }
    }
  }
}
