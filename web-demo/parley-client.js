// parley-client.js: the Parley protocol v1 client, for browsers and Node.
//
// One ES module, no build step, no dependencies. The same file is the web demo's
// client (served at /parley-client.js) and the npm package @parley-chat/client
// (web-demo/package.json; types in parley-client.d.ts). It runs in any modern
// browser, in Node >= 22 (global WebSocket), and in older Node when given a
// WebSocket implementation: `new ParleyClient(url, { WebSocket })` with `ws`.
//
//   import { ParleyClient } from "@parley-chat/client";   // or "/parley-client.js"
//   const client = new ParleyClient("wss://example.com/v1/ws");
//   for await (const ev of client.stream("Hello!")) {   // this turn's events
//     if (ev.type === "response.delta") process.stdout.write(ev.text);
//   }
//   client.addEventListener("status", (e) => console.log(e.detail.state));
//
// What it does for you (see docs/client.md):
// - sends `hello`, resumes the session from the last `seq` it saw after any drop,
//   with jittered exponential backoff; drops events it has already seen (by seq)
//   and reconnects on a gap, so a conversation is never silently partial;
// - a heartbeat watchdog reconnects when nothing arrived for two heartbeat
//   intervals, judged by wall-clock time while its own timer ran on time, so a
//   throttled or frozen background tab never causes a false reconnect;
// - keeps session_id, resume_token, last_seq and the conversation in
//   sessionStorage (browsers), so a page reload mid-reply resumes that reply;
// - `recovered: false` replaces the conversation with the server's snapshot;
// - `send()` carries a client_msg_id that is reused on every retry, so a
//   resend after a reconnect never doubles a turn; honours `retry_after_ms`;
// - a close or error this version does not know (a newer server's) ends the
//   client with a ParleyError carrying that code, instead of reconnecting forever.
// - tools: `client.tool(name, {description, parameters}, handler, {approve})` declares a
//   tool and runs it when the model calls it (after an "approval" event's allow(), if asked);
//   calls still waiting survive a reload and are run or asked about again.

export const PROTOCOL = "parley.v1";

/** WebSocket close codes the server uses (docs/protocol.md). */
export const CloseCode = Object.freeze({
  NORMAL: 1000,
  GOING_AWAY: 1001,
  ABNORMAL: 1006,
  MESSAGE_TOO_BIG: 1009,
  INTERNAL_ERROR: 1011,
  SERVICE_RESTART: 1012,
  BAD_HANDSHAKE: 4000,
  UNAUTHORIZED: 4001,
  UNSUPPORTED_VERSION: 4002,
  SESSION_NOT_FOUND: 4004,
  HELLO_TIMEOUT: 4008,
  SLOW_CONSUMER: 4009,
  SESSION_LOST: 4010,
  POLICY_VIOLATION: 4029,
});

// Close codes after which reconnecting cannot help: the client stops ("failed").
const FATAL_CLOSE = new Map([
  [4000, "invalid_message"],
  [4002, "unsupported_version"],
  [4029, "rate_limited"],
]);

// Every 4xxx code this version knows; any other 4xxx close (a newer server's) is terminal.
const KNOWN_4XXX = new Set(Object.values(CloseCode).filter((c) => c >= 4000));

/** Message types the client sends (protocol v1; checked against the AsyncAPI document). */
export const CLIENT_TYPES = Object.freeze([
  "hello",
  "message.send",
  "response.cancel",
  "feedback",
  "ping",
  "tool.result", // tool calls (issue 17): a client tool's output, or a denial
  "tool.approve", // tool calls (issue 17): the person's decision on a server tool
]);

/** Server events that are logged: they carry `seq`, are replayed on resume. */
export const LOGGED_TYPES = Object.freeze([
  "message.accepted",
  "response.started",
  "response.delta",
  "response.completed",
  "feedback.recorded",
  // tool calls and reasoning (issue 17)
  "response.tool_call.delta",
  "response.tool_call",
  "tool.approval_requested",
  "tool.result.accepted",
  "response.reasoning.delta",
]);

/** Server events that are not logged (no `seq` of their own). */
export const EPHEMERAL_TYPES = Object.freeze([
  "session.ready",
  "session.snapshot",
  "heartbeat",
  "pong",
  "error",
  "message.duplicate", // its `accepted_seq` names the original message.accepted; not this frame's seq
  "tool.result.duplicate", // the same for a tool.result already accepted (issue 17)
]);

/** Every server event type this version knows; others arrive as the `event` event. */
export const SERVER_TYPES = Object.freeze([...LOGGED_TYPES, ...EPHEMERAL_TYPES]);

/** The wire's error codes this version knows (docs/protocol.md); an unknown one keeps its string. */
export const ERROR_CODES = Object.freeze([
  "invalid_message",
  "unsupported_version",
  "unauthorized",
  "forbidden",
  "session_not_found",
  "session_lost",
  "rate_limited",
  "busy",
  "payload_too_large",
  "upstream_unavailable",
  "upstream_timeout",
  "policy_refusal",
  "schema_validation_failed",
  "overloaded",
  "internal",
  "tool_timeout", // a response waited longer than the server allows for its tool results (issue 17)
]);

// Codes that refuse one request, not the session.
const REQUEST_ERRORS = new Set([
  "invalid_message",
  "payload_too_large",
  "rate_limited",
  "busy",
  "policy_refusal",
  "schema_validation_failed",
]);

const LOGGED = new Set(LOGGED_TYPES);
const EPHEMERAL = new Set(EPHEMERAL_TYPES);
const KNOWN_ERRORS = new Set(ERROR_CODES);

const STORAGE_VERSION = 1;

/** An error the server (or the client on its behalf) reported; `code` is the protocol error code. */
export class ParleyError extends Error {
  constructor(code, message, { retryable = false, retryAfterMs = null, ref = null, closeCode = null } = {}) {
    super(message || code);
    this.name = "ParleyError";
    this.code = code;
    this.retryable = retryable;
    this.retryAfterMs = retryAfterMs;
    this.ref = ref;
    this.closeCode = closeCode;
  }

  static fromEvent(ev) {
    return new ParleyError(ev.code, ev.message, {
      retryable: !!ev.retryable,
      retryAfterMs: ev.retry_after_ms ?? null,
      ref: ev.ref ?? null,
    });
  }
}

function defaultUrl() {
  const loc = globalThis.location;
  if (!loc || !loc.host) throw new Error("ParleyClient: no location; pass options.url");
  return `${loc.protocol === "https:" ? "wss" : "ws"}://${loc.host}/v1/ws`;
}

function defaultStorage() {
  try {
    return globalThis.sessionStorage ?? null;
  } catch {
    return null; // sandboxed iframes throw on access
  }
}

/** A random id that works in insecure contexts too (crypto.randomUUID needs https). */
export function randomId(prefix = "c") {
  const bytes = new Uint8Array(12);
  globalThis.crypto.getRandomValues(bytes);
  let s = "";
  for (const b of bytes) s += b.toString(16).padStart(2, "0");
  return `${prefix}_${s}`;
}

/**
 * Backoff delay for the given attempt (0-based): "equal jitter" exponential.
 * The cap grows initialMs * factor^attempt up to maxMs; the delay is uniformly
 * drawn from [cap/2, cap], so clients that dropped together spread out but
 * never retry instantly in a tight loop.
 */
export function backoffDelay(attempt, { initialMs = 500, maxMs = 15000, factor = 2 } = {}, random = Math.random) {
  const cap = Math.min(maxMs, initialMs * Math.pow(factor, Math.max(0, attempt)));
  return Math.round(cap / 2 + random() * (cap / 2));
}

/** A response still going: streaming, or ended with "tool_calls" and waiting for their results. */
function isOpen(turn) {
  return turn.finishReason == null || turn.finishReason === "tool_calls";
}

/** A tool declaration as the wire wants it: {name, description, parameters}. */
function toolSpec(t) {
  const spec = { name: t.name, parameters: t.parameters ?? { type: "object", properties: {} } };
  if (t.description) spec.description = t.description;
  return spec;
}

function byteLength(text) {
  return new TextEncoder().encode(text).length;
}

function cloneTurn(t) {
  if (!t) return t;
  const copy = { ...t, usage: t.usage ? { ...t.usage } : t.usage };
  if (t.toolCalls) copy.toolCalls = t.toolCalls.map((c) => ({ ...c })); // tool calls (issue 17)
  return copy;
}

/**
 * What `ParleyClient` dispatches (it is an EventTarget): `detail` is what `on()`
 * handlers get first (the wire event, or the status object), `turn` the updated
 * turn (message, started, delta, completed, feedback), `info` the error details.
 */
export class ParleyEvent extends Event {
  constructor(type, args) {
    super(type);
    this.detail = args[0];
    this.args = args;
    const second = args[1];
    this.turn = TURN_EVENTS.has(type) ? (second ?? null) : null;
    this.info = type === "error" ? (second ?? {}) : null;
  }
}

const TURN_EVENTS = new Set([
  "message",
  "started",
  "delta",
  "completed",
  "feedback",
  // tool calls and reasoning (issue 17)
  "tool_call_delta",
  "tool_call",
  "tool_result",
  "approval_requested",
  "approval",
  "tool_state",
  "reasoning",
]);

const NO_WEBSOCKET =
  "ParleyClient: this runtime has no WebSocket (Node < 22?). Pass an implementation: " +
  'new ParleyClient(url, { WebSocket }) with `import { WebSocket } from "ws"`';

// ================================================================= transports
// How bytes reach the server is the transports' business; everything above and below
// (outbox, resume, dedupe by seq, events, the public API) is the same whatever the
// transport. A transport is a small internal object:
//
//   open(opening)        start connecting; opening = {token, metadata, sessionId,
//                        resumeToken, lastSeq}; the server's session.ready (real or,
//                        over HTTP, made from the answers) arrives through the host
//   send(frame) -> bool  a client frame (message.send, tool.result, tool.approve,
//                        response.cancel, feedback, ping);
//                        false: not now (the outbox resends it after the next ready)
//   close(code, reason)  detach at once: no host callback after this
//
// and calls its host (callbacks the client binds to one connection attempt, so a late
// callback of an abandoned transport is ignored): frame(json), event(obj), alive(),
// answered(frame, body) and closed({code, reason}), with the WebSocket's close codes.

// What `options.transport` may say; "auto" starts with the WebSocket and falls back to SSE.
const TRANSPORT_OPTIONS = new Set(["auto", "websocket", "sse"]);

// Close codes that carry no word from the server: the path itself failed (an upgrade a
// proxy refused, a connection cut, a connect timeout). Only these count toward a fallback.
const PATH_FAILURE_CLOSE = new Set([0, 1002, 1005, 1006, 1015]);

/** The WebSocket: one socket, `hello` first, frames both ways (docs/protocol.md). */
class WebSocketTransport {
  constructor(client, host) {
    this.kind = "websocket";
    this._client = client;
    this._host = host;
    this._ws = null;
  }

  open(opening) {
    const host = this._host;
    let ws;
    try {
      ws = new this._client._WebSocket(this._client.url, PROTOCOL);
    } catch (err) {
      host.closed({ code: CloseCode.ABNORMAL, reason: String(err) });
      return;
    }
    this._ws = ws;
    ws.onopen = () => {
      const hello = { type: "hello", protocol: PROTOCOL };
      if (opening.token) hello.token = opening.token;
      if (opening.sessionId) {
        hello.session_id = opening.sessionId;
        if (opening.resumeToken) hello.resume_token = opening.resumeToken;
        hello.last_seq = opening.lastSeq;
      }
      if (opening.metadata) hello.metadata = opening.metadata;
      if (opening.tools) hello.tools = opening.tools;
      this.send(hello);
    };
    ws.onmessage = (e) => host.frame(e.data);
    ws.onclose = (e) => host.closed({ code: e.code, reason: e.reason });
    ws.onerror = () => {}; // a close event always follows
  }

  send(obj) {
    const ws = this._ws;
    if (!ws || ws.readyState !== 1) return false;
    try {
      ws.send(JSON.stringify(obj));
      return true;
    } catch {
      return false;
    }
  }

  close(code = 1000, reason = "") {
    const ws = this._ws;
    this._ws = null;
    if (!ws) return;
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    try {
      ws.close(code, reason);
    } catch {
      /* already closed */
    }
  }
}

/**
 * A server-sent events parser (the WHATWG EventSource rules), fed decoded text in chunks of
 * any size: lines end with CRLF, LF or CR (also when a CRLF is split between chunks), `data`
 * lines join with "\n", a blank line dispatches, comments (`: heartbeat`) are reported too.
 * `onEvent({type, data, id})` (type "message" when the event has no `event:` line);
 * `onComment(text)`. `lastEventId` and `retry` keep the stream's last values.
 */
export class SseParser {
  constructor(onEvent, onComment = () => {}) {
    this.onEvent = onEvent;
    this.onComment = onComment;
    this.lastEventId = "";
    this.retry = null;
    this._buf = "";
    this._data = [];
    this._type = "";
    this._started = false;
    this._afterCR = false; // the last chunk ended with CR: a LF starting the next one is the same break
  }

  push(text) {
    if (!text) return;
    if (!this._started) {
      this._started = true;
      if (text.charCodeAt(0) === 0xfeff) text = text.slice(1); // a byte order mark is not content
    }
    if (this._afterCR && text[0] === "\n") text = text.slice(1);
    this._afterCR = false;
    let buf = this._buf + text;
    let start = 0;
    for (;;) {
      let i = start;
      while (i < buf.length && buf[i] !== "\n" && buf[i] !== "\r") i++;
      if (i >= buf.length) break;
      const line = buf.slice(start, i);
      if (buf[i] === "\r") {
        if (i + 1 < buf.length) start = buf[i + 1] === "\n" ? i + 2 : i + 1;
        else {
          start = i + 1;
          this._afterCR = true;
        }
      } else start = i + 1;
      this._line(line);
    }
    this._buf = buf.slice(start);
  }

  /** The stream ended: an event without its blank line is dropped, as EventSource does. */
  end() {
    this._buf = "";
    this._data = [];
    this._type = "";
  }

  _line(line) {
    if (line === "") {
      if (this._data.length) {
        const ev = { type: this._type || "message", data: this._data.join("\n"), id: this.lastEventId };
        this._data = [];
        this._type = "";
        this.onEvent(ev);
      } else this._type = "";
      return;
    }
    if (line[0] === ":") {
      this.onComment(line.slice(line[1] === " " ? 2 : 1));
      return;
    }
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value[0] === " ") value = value.slice(1);
    if (field === "data") this._data.push(value);
    else if (field === "event") this._type = value;
    else if (field === "id") {
      if (!value.includes("\0")) this.lastEventId = value;
    } else if (field === "retry") {
      if (/^[0-9]+$/.test(value)) this.retry = Number(value);
    }
  }
}

// Refusals of the session itself (not of one request): the WebSocket closes with these codes,
// so over HTTP the transport closes with them too and the client reacts the same way.
const SESSION_CLOSE = new Map([
  ["invalid_message", CloseCode.BAD_HANDSHAKE],
  ["unauthorized", CloseCode.UNAUTHORIZED],
  ["unsupported_version", CloseCode.UNSUPPORTED_VERSION],
  ["session_not_found", CloseCode.SESSION_NOT_FOUND],
  ["session_lost", CloseCode.SESSION_LOST],
  ["rate_limited", CloseCode.POLICY_VIOLATION],
]);
// Of those, the ones that end the connection when a request (not the opening) gets them.
const SESSION_LEVEL = new Set(["unauthorized", "unsupported_version", "session_not_found", "session_lost"]);

/**
 * An HTTP error answer as the `error` event the WebSocket would have sent, or null when it
 * is not Parley's (no `{"error": {code, ...}}` body: a proxy or a server without the route).
 */
async function errorEventOf(res, ref = undefined) {
  let body = null;
  try {
    body = JSON.parse(await res.text());
  } catch {
    body = null;
  }
  const e = body && typeof body === "object" ? body.error : null;
  if (!e || typeof e !== "object" || typeof e.code !== "string") return null;
  const ev = { type: "error", code: e.code, message: e.message ?? e.code, retryable: !!e.retryable };
  let after = typeof e.retry_after_ms === "number" ? e.retry_after_ms : null;
  const header = res.headers?.get?.("retry-after");
  if (after == null && header && /^[0-9]+$/.test(header.trim())) after = Number(header.trim()) * 1000;
  if (after != null) ev.retry_after_ms = after;
  if (e.trace_id) ev.trace_id = e.trace_id;
  if (ref || e.ref) ev.ref = { ...(e.ref || {}), ...(ref || {}) };
  return ev;
}

// Client frames as HTTP requests: type -> (frame) => [path under /v1/sessions/{id}, body].
// A frame type without a route here is not sent (send() answers false) over HTTP.
const HTTP_ROUTES = {
  "message.send": ({ type, ...body }) => ["/messages", body],
  "response.cancel": ({ response_id }) => [`/responses/${encodeURIComponent(response_id)}/cancel`, {}],
  feedback: ({ type, ...body }) => ["/feedback", body],
  "tool.result": ({ type, ...body }) => ["/tool-results", body],
  "tool.approve": ({ type, ...body }) => ["/tool-approvals", body],
};

// The `ref` an error of each request names (as the WebSocket's error events do).
const refOf = (frame) => {
  const ref = { type: frame.type };
  if (frame.client_msg_id) ref.client_msg_id = frame.client_msg_id;
  if (frame.response_id) ref.response_id = frame.response_id;
  return ref;
};

/**
 * Server-sent events + POST (docs/http.md): `POST /v1/sessions` opens a session, `GET
 * .../events` with `Last-Event-ID` tails its log (replay, then live), and each client frame
 * is a POST. fetch() rather than EventSource, which cannot send the credentials headers
 * (`Parley-Resume-Token`, `Authorization`) nor choose its `Last-Event-ID`.
 */
class SseTransport {
  constructor(client, host) {
    this.kind = "sse";
    this._client = client;
    this._host = host;
    this._abort = new AbortController();
    this._closed = false;
    this._opening = null;
    this._sessionId = null;
    this._resumeToken = null;
  }

  open(opening) {
    this._opening = opening;
    this._run(opening).catch((err) => this._fail(CloseCode.ABNORMAL, String(err?.message ?? err)));
  }

  send(frame) {
    if (this._closed || !this._sessionId) return false;
    const route = HTTP_ROUTES[frame.type];
    if (!route) return false; // ping: the event stream's heartbeats prove liveness
    const [path, body] = route(frame);
    const headers = { "Content-Type": "application/json" };
    if (frame.type === "message.send") headers.Prefer = "respond-async"; // the events come on the stream
    this._post(frame, path, body, headers);
    return true;
  }

  close() {
    if (this._closed) return;
    this._closed = true;
    this._abort.abort();
  }

  // ---------------------------------------------------------------- internals

  _url(path) {
    return `${this._client.httpUrl}${path}`;
  }

  _headers(extra = {}) {
    const h = { ...extra };
    const token = this._opening?.token;
    if (token) h.Authorization = `Bearer ${token}`;
    if (this._resumeToken) h["Parley-Resume-Token"] = this._resumeToken;
    return h;
  }

  _fetch(path, init) {
    return this._client._fetch(this._url(path), { ...init, signal: this._abort.signal });
  }

  _fail(code, reason) {
    if (this._closed) return;
    this.close();
    this._host.closed({ code, reason });
  }

  /** An error answer to the opening: the close the WebSocket would have given. */
  async _refused(res) {
    const ev = await errorEventOf(res);
    if (this._closed) return;
    if (!ev) {
      this._fail(CloseCode.ABNORMAL, `HTTP ${res.status}`); // not Parley's answer: the path failed
      return;
    }
    this._host.event(ev);
    this._fail(SESSION_CLOSE.get(ev.code) ?? CloseCode.GOING_AWAY, ev.code);
  }

  async _run(opening) {
    const sessions = "/sessions";
    let resumed = !!opening.sessionId;
    this._sessionId = opening.sessionId;
    this._resumeToken = opening.resumeToken;
    if (!resumed) {
      const res = await this._fetch(sessions, {
        method: "POST",
        headers: this._headers({ "Content-Type": "application/json" }),
        body: JSON.stringify(opening.metadata ? { metadata: opening.metadata } : {}),
      });
      if (this._closed) return;
      if (!res.ok) return this._refused(res);
      const created = await res.json();
      if (this._closed) return;
      if (typeof created?.session_id !== "string") {
        this._fail(CloseCode.ABNORMAL, "POST /sessions: no session_id");
        return;
      }
      this._sessionId = created.session_id;
      this._resumeToken = created.resume_token ?? null;
    }
    const cursor = resumed ? opening.lastSeq : 0;
    const res = await this._fetch(`${sessions}/${encodeURIComponent(this._sessionId)}/events`, {
      method: "GET",
      headers: this._headers({ Accept: "text/event-stream", "Last-Event-ID": String(cursor) }),
    });
    if (this._closed) return;
    if (!res.ok) return this._refused(res);
    const type = res.headers?.get?.("content-type") ?? "";
    if (!type.startsWith("text/event-stream") || !res.body) {
      this._fail(CloseCode.ABNORMAL, `events: not an event stream (${type || "no content-type"})`);
      return;
    }
    // The stream is open: this is the HTTP API's session.ready. The log's newest seq is not
    // told, so the cursor stands for it: the outbox is resent at once, which client_msg_id
    // makes harmless (a repeated POST never starts a second turn).
    this._host.event({
      type: "session.ready",
      session_id: this._sessionId,
      resume_token: this._resumeToken,
      protocol: PROTOCOL,
      heartbeat_interval_ms: this._client.heartbeatIntervalMs,
      resumed,
      recovered: true,
      last_seq: cursor,
    });
    await this._read(res.body);
  }

  async _read(body) {
    const host = this._host;
    const parser = new SseParser(
      (ev) => !this._closed && host.frame(ev.data),
      () => !this._closed && host.alive(),
    );
    const reader = body.getReader();
    const decoder = new TextDecoder();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (this._closed) return;
        if (done) break;
        parser.push(typeof value === "string" ? value : decoder.decode(value, { stream: true }));
      }
    } catch (err) {
      this._fail(CloseCode.ABNORMAL, `event stream failed: ${err?.message ?? err}`);
      return;
    } finally {
      if (this._closed) reader.cancel().catch(() => {});
    }
    parser.end();
    this._fail(CloseCode.GOING_AWAY, "event stream ended"); // a server going away: resume elsewhere
  }

  async _post(frame, path, body, extraHeaders) {
    const where = `/sessions/${encodeURIComponent(this._sessionId)}${path}`;
    let res;
    try {
      res = await this._fetch(where, {
        method: "POST",
        headers: this._headers(extraHeaders),
        body: JSON.stringify(body),
      });
    } catch (err) {
      // No answer: whether it arrived is unknown. Start over; the resend is idempotent.
      this._fail(CloseCode.ABNORMAL, `POST ${path}: ${err?.message ?? err}`);
      return;
    }
    if (this._closed) return;
    if (res.ok) {
      let answer = null;
      try {
        answer = await res.json();
      } catch {
        answer = null;
      }
      if (!this._closed) this._host.answered(frame, answer);
      return;
    }
    const ev = await errorEventOf(res, refOf(frame));
    if (this._closed) return;
    if (!ev) {
      this._fail(CloseCode.ABNORMAL, `POST ${path}: HTTP ${res.status}`);
      return;
    }
    if (SESSION_LEVEL.has(ev.code)) {
      delete ev.ref; // about the session, as the WebSocket's error before its close
      this._host.event(ev);
      this._fail(SESSION_CLOSE.get(ev.code), ev.code);
      return;
    }
    this._host.event(ev);
  }
}

/** The HTTP API's base URL for a WebSocket URL: ws(s)://host/v1/ws -> http(s)://host/v1. */
function httpUrlOf(wsUrl) {
  const u = new URL(wsUrl);
  if (u.protocol === "ws:") u.protocol = "http:";
  else if (u.protocol === "wss:") u.protocol = "https:";
  u.search = "";
  u.hash = "";
  u.pathname = u.pathname.replace(/\/+$/, "").replace(/\/ws$/, "") || "/v1";
  return u.href.replace(/\/+$/, "");
}

// ============================================================= end of transports

export class ParleyClient extends EventTarget {
  /**
   * `new ParleyClient(url?, options?)` or `new ParleyClient(options?)`.
   * @param {string|object} [urlOrOptions]    ws URL, or the options (with `url`)
   * @param {object} [options]
   * @param {string} [options.url]            ws URL; default ws(s)://<location.host>/v1/ws
   * @param {function} [options.WebSocket]    WebSocket implementation; default globalThis.WebSocket
   * @param {string|function} [options.token] bearer token, or a (possibly async) function returning one
   * @param {object} [options.metadata]       hello.metadata (flat scalars: tenant_id, trace_id, ...)
   * @param {Storage|null} [options.storage]  where state is kept; default sessionStorage, null = nowhere
   * @param {string} [options.storageKey]     default "parley:" + url
   * @param {object} [options.backoff]        {initialMs: 500, maxMs: 15000, factor: 2}
   * @param {number} [options.heartbeatMisses]  silent heartbeat intervals before reconnecting (2)
   * @param {number} [options.connectTimeoutMs] time allowed from opening to session.ready (10000)
   * @param {number} [options.maxFrameBytes]  refuse to send frames larger than this (65536)
   * @param {number} [options.maxSendRetries] retryable send errors before send() rejects (8)
   * @param {string} [options.profile]        default profile for send()
   * @param {string} [options.transport]      "auto" (default): WebSocket, falling back to SSE + POST
   *                                          when it fails before session.ready; "websocket"; "sse"
   * @param {number} [options.fallbackAfter]  WebSocket attempts failing before session.ready, in a
   *                                          row, after which "auto" switches transport (2)
   * @param {string} [options.httpUrl]        the HTTP API's base; default the url's, /v1/ws -> /v1
   * @param {function} [options.fetch]        fetch implementation for SSE + POST; default globalThis.fetch
   */
  constructor(urlOrOptions = {}, maybeOptions = {}) {
    super();
    const options = typeof urlOrOptions === "string" ? { ...maybeOptions, url: urlOrOptions } : urlOrOptions;
    // ---- transport choice (see "transports" above)
    const transport = options.transport ?? "auto";
    if (!TRANSPORT_OPTIONS.has(transport)) {
      throw new TypeError(`ParleyClient: transport must be "auto", "websocket" or "sse", not ${JSON.stringify(transport)}`);
    }
    this._WebSocket = options.WebSocket ?? globalThis.WebSocket;
    if (transport !== "sse" && typeof this._WebSocket !== "function") throw new TypeError(NO_WEBSOCKET);
    const fetchImpl = options.fetch ?? globalThis.fetch;
    this._fetch = typeof fetchImpl === "function" ? (url, init) => fetchImpl(url, init) : null;
    if (transport === "sse" && !this._fetch) throw new TypeError("ParleyClient: transport \"sse\" needs fetch()");
    // "auto" without fetch can only use the WebSocket.
    this._transportMode = transport === "auto" && !this._fetch ? "websocket" : transport;
    this._transportKind = transport === "sse" ? "sse" : "websocket"; // the one the next attempt uses
    this._pathFailures = 0; // attempts in a row that failed before session.ready on this transport
    this.url = options.url ?? defaultUrl();
    this.httpUrl = (options.httpUrl ?? httpUrlOf(this.url)).replace(/\/+$/, "");
    // ---- end of transport choice
    this.options = {
      token: options.token ?? null,
      metadata: options.metadata ?? null,
      storageKey: options.storageKey ?? `parley:${this.url}`,
      backoff: { initialMs: 500, maxMs: 15000, factor: 2, ...(options.backoff || {}) },
      heartbeatMisses: options.heartbeatMisses ?? 2,
      connectTimeoutMs: options.connectTimeoutMs ?? 10000,
      catchUpTimeoutMs: options.catchUpTimeoutMs ?? 3000,
      stableAfterMs: options.stableAfterMs ?? 5000,
      maxFrameBytes: options.maxFrameBytes ?? 65536,
      maxSendRetries: options.maxSendRetries ?? 8,
      profile: options.profile ?? null,
      fallbackAfter: Math.max(1, options.fallbackAfter ?? 2),
    };
    // Injection points, used by tests (fake sockets and clocks) and exotic hosts.
    this._storage = options.storage === undefined ? defaultStorage() : options.storage;
    this._random = options.random ?? Math.random;
    this._now = options.now ?? (() => Date.now());
    const timers = options.timers ?? globalThis;
    this._setTimeout = (fn, ms) => timers.setTimeout(fn, ms);
    this._clearTimeout = (id) => timers.clearTimeout(id);
    this._env = options.window === undefined ? (typeof window !== "undefined" ? window : null) : options.window;

    // Session state (persisted).
    this.sessionId = null;
    this.resumeToken = null;
    this.lastSeq = 0;
    this._turns = [];
    this._pending = []; // message sends, in order: {clientMsgId, content, extra, resolve, reject, ...}

    // Connection state.
    this.heartbeatIntervalMs = 15000;
    this.status = { state: "idle" };
    this._transport = null; // the current connection attempt's transport (WebSocket or SSE + POST)
    this._provenTransport = null; // the last transport that reached session.ready
    this._gen = 0; // bumps on every connection attempt; stale callbacks compare and bail out
    this._readyGen = 0; // gen of the socket that got session.ready
    this._attempt = 0;
    this._everReady = false;
    this._closedByUser = true;
    this._failed = null;
    this._timers = {};
    this._retryAfterUntil = 0;
    this._cancels = new Map(); // response_id -> {sentGen, waiters: [resolve]}
    this._feedback = new Map(); // response_id -> {frame, sentGen, waiters: [{resolve, reject}]}
    this._readyWaiters = [];
    this._listeners = new Map();
    this._resynced = false;
    this.stats = {
      connects: 0,
      resumes: 0,
      reconnects: 0,
      duplicatesDropped: 0,
      gaps: 0,
      snapshots: 0,
      transportSwitches: 0,
    };

    // Tool calls (issue 17): registered tools, answers not yet accepted, calls this page is handling.
    this._tools = new Map(); // name -> {spec, handler, approve}
    this._toolOutbox = new Map(); // call_id -> {frame, responseId, sentGen}: tool.result / tool.approve
    this._handling = new Set(); // call_ids run or asked about in this page (not again on a resume)
    this._approvals = new Map(); // call_id -> the open ToolApproval
    this._helloToolNames = new Set(); // the tools this connection's hello declared

    this._restore();
    this._bindEnvironment();
  }

  // ------------------------------------------------------------------ events

  // Two ways to listen, to the same events: the EventTarget API
  // (`addEventListener("delta", (e) => e.detail / e.turn)`), and `on(type, (event, extra) => ...)`,
  // which returns its own unsubscribe function and has a "*" wildcard.

  /** Subscribe to an event; returns a function that unsubscribes. Handler gets (event, extra). */
  on(type, fn) {
    if (!this._listeners.has(type)) this._listeners.set(type, new Set());
    this._listeners.get(type).add(fn);
    return () => this.off(type, fn);
  }

  off(type, fn) {
    this._listeners.get(type)?.delete(fn);
  }

  once(type, fn) {
    const off = this.on(type, (...args) => {
      off();
      fn(...args);
    });
    return off;
  }

  _emit(type, ...args) {
    try {
      this.dispatchEvent(new ParleyEvent(type, args));
    } catch (err) {
      globalThis.console?.error?.("parley listener failed", type, err);
    }
    for (const key of [type, "*"]) {
      const set = this._listeners.get(key);
      if (!set) continue;
      for (const fn of [...set]) {
        try {
          key === "*" ? fn(type, ...args) : fn(...args);
        } catch (err) {
          // A listener's bug must not break the protocol state machine.
          globalThis.console?.error?.("parley listener failed", type, err);
        }
      }
    }
  }

  // ----------------------------------------------------------------- getters

  /** The conversation: [{role, id, content, finishReason, ...}], copies (mutate freely). */
  get turns() {
    return this._turns.map(cloneTurn);
  }

  /** One turn by id (message_id or response_id), a copy, or null. */
  turn(id) {
    return cloneTurn(this._turns.find((t) => t.id === id) ?? null);
  }

  /** Sends not yet accepted by the server: [{clientMsgId, content}] (they survive a reload). */
  get outbox() {
    return this._pending.filter((p) => !p.messageId).map((p) => ({ clientMsgId: p.clientMsgId, content: p.content }));
  }

  /** The response_id of the reply currently streaming (or waiting for tool results), or null. */
  get activeResponseId() {
    for (let i = this._turns.length - 1; i >= 0; i--) {
      const t = this._turns[i];
      if (t.role === "assistant") return isOpen(t) ? t.id : null;
    }
    return null;
  }

  get state() {
    return this.status.state;
  }

  // ------------------------------------------------------------- public API

  /** Open the connection (idempotent). Resolves with session.ready; rejects if the client fails. */
  connect() {
    if (this._failed) return Promise.reject(this._failed);
    const p = new Promise((resolve, reject) => this._readyWaiters.push({ resolve, reject }));
    if (this._closedByUser) {
      this._closedByUser = false;
      this._open();
    } else if (this.status.state === "connected" && this._lastReady) {
      this._settleReady(this._lastReady);
    }
    return p;
  }

  /** Close the connection and stop reconnecting; state stays stored, connect() resumes. */
  close() {
    this._closedByUser = true;
    this._clearAllTimers();
    this._abandonSocket(1000, "client closed");
    this._saveNow();
    this._setStatus("closed", {});
  }

  /**
   * Send a user turn. Resolves when its reply completes, with the assistant turn
   * ({id, content, finishReason, usage, ttftMs, latencyMs, traceId, error, ...});
   * a reply that ends with finishReason "interrupted" resolves too (check it).
   * Rejects with a ParleyError for a non-retryable refusal. Queued while offline;
   * every (re)send uses the same client_msg_id, so it never doubles a turn.
   * @param {string} content
   * A reply that asks for client tools (finish_reason "tool_calls") is not the end: the
   * promise resolves with the continuation that follows the last result.
   * @param {string} content
   * @param {object} [opts] {clientMsgId, profile, responseFormat, metadata, tools, toolChoice}
   */
  send(content, opts = {}) {
    if (typeof content !== "string" || content.length === 0) {
      return Promise.reject(new ParleyError("invalid_message", "content must be a non-empty string"));
    }
    if (this._failed) return Promise.reject(this._failed);
    const clientMsgId = opts.clientMsgId ?? randomId("m");
    const extra = {};
    const profile = opts.profile ?? this.options.profile;
    if (profile) extra.profile = profile;
    if (opts.responseFormat) extra.response_format = opts.responseFormat;
    if (opts.metadata) extra.metadata = opts.metadata;
    if (opts.tools && opts.tools.length) extra.tools = opts.tools.map(toolSpec); // this turn only (issue 17)
    if (opts.toolChoice) extra.tool_choice = opts.toolChoice;
    const frame = { type: "message.send", client_msg_id: clientMsgId, content, ...extra };
    if (byteLength(JSON.stringify(frame)) > this.options.maxFrameBytes) {
      return Promise.reject(
        new ParleyError("payload_too_large", `message is larger than ${this.options.maxFrameBytes} bytes`),
      );
    }
    const existing = this._pending.find((p) => p.clientMsgId === clientMsgId);
    if (existing) return existing.promise;
    const entry = this._newPending(clientMsgId, content, extra);
    this._pending.push(entry);
    this._saveSoon();
    if (this._closedByUser) this.connect().catch(() => {});
    else this._flush();
    return entry.promise;
  }

  /**
   * Stop a response (default: the active one). Idempotent; resolves with the
   * response's completed turn (finishReason "cancelled" unless it finished first),
   * or null when nothing is running.
   */
  cancel(responseId = this.activeResponseId) {
    if (!responseId) return Promise.resolve(null);
    const t = this._turns.find((x) => x.id === responseId);
    if (t && !isOpen(t)) return Promise.resolve(cloneTurn(t));
    let c = this._cancels.get(responseId);
    if (!c) {
      c = { sentGen: 0, waiters: [] };
      this._cancels.set(responseId, c);
    }
    const p = new Promise((resolve) => c.waiters.push(resolve));
    this._flush();
    return p;
  }

  /**
   * Rate a response "up" or "down", optionally with a comment and tags. The last
   * rating wins; resolves when the server logged it (feedback.recorded).
   */
  feedback(responseId, rating, { comment, tags } = {}) {
    if (typeof rating === "number" && rating !== 0 && Number.isFinite(rating)) rating = rating > 0 ? "up" : "down";
    if (rating !== "up" && rating !== "down") {
      return Promise.reject(new ParleyError("invalid_message", 'rating must be "up" or "down" (or +1 / -1)'));
    }
    const frame = { type: "feedback", response_id: responseId, rating };
    if (comment) frame.comment = comment;
    if (tags && tags.length) frame.tags = tags;
    const prev = this._feedback.get(responseId);
    const fb = { frame, sentGen: 0, wasSent: false, waiters: prev ? prev.waiters : [] };
    this._feedback.set(responseId, fb);
    const p = new Promise((resolve, reject) => fb.waiters.push({ resolve, reject }));
    if (this._closedByUser) this.connect().catch(() => {});
    else this._flush();
    return p;
  }

  /**
   * Send a user turn and iterate its events as they arrive:
   * `for await (const ev of client.stream("Hi")) { ... }` yields this turn's
   * `message.accepted` (or `message.duplicate`), `response.started`,
   * `response.delta`s and `response.completed`, as on the wire; a reply that calls
   * tools goes on through its calls, their results and the continuation (tool calls,
   * issue 17: `response.tool_call(.delta)`, `tool.result.accepted`, ...). The stream also
   * has `text`, `responseId`, `clientMsgId`, `done` (the send() promise),
   * `cancel()` and `feedback(rating, {comment, tags})`. A refusal is thrown by
   * the loop. Leaving the loop early does not stop the reply: call `cancel()`.
   * @param {string} content
   * @param {object} [opts] as for send()
   * @returns {TurnStream}
   */
  stream(content, opts = {}) {
    return new TurnStream(this, content, opts);
  }

  /** Forget the session (and its stored state) and start a new one. */
  reset() {
    const err = new ParleyError("reset", "the session was reset");
    for (const p of this._pending.splice(0)) p.reject(err);
    for (const fb of this._feedback.values()) fb.waiters.forEach((w) => w.reject(err));
    this._feedback.clear();
    for (const c of this._cancels.values()) c.waiters.forEach((w) => w(null));
    this._cancels.clear();
    this._forgetSession();
    this._emit("conversation", { reason: "reset" });
    if (!this._closedByUser) {
      this._abandonSocket(1000, "reset");
      this._attempt = 0;
      this._open();
    }
  }

  // ------------------------------------------------------------ persistence

  _restore() {
    if (!this._storage) return;
    let raw;
    try {
      raw = JSON.parse(this._storage.getItem(this.options.storageKey) || "null");
    } catch {
      raw = null;
    }
    if (!raw || raw.v !== STORAGE_VERSION || typeof raw.session_id !== "string") return;
    this.sessionId = raw.session_id;
    this.resumeToken = raw.resume_token ?? null;
    this.lastSeq = Number.isInteger(raw.last_seq) && raw.last_seq >= 0 ? raw.last_seq : 0;
    if (this._transportMode === "auto" && (raw.transport === "websocket" || raw.transport === "sse")) {
      this._transportKind = this._provenTransport = raw.transport; // the one that worked in this tab
    }
    this._turns = Array.isArray(raw.turns) ? raw.turns : [];
    if (!Array.isArray(raw.turns)) this.lastSeq = 0; // no transcript stored: replay everything
    for (const m of raw.outbox || []) {
      // Unacknowledged sends survive a reload and are resent with the same id.
      const entry = this._newPending(m.client_msg_id, m.content, m.extra || {});
      entry.promise.catch(() => {});
      this._pending.push(entry);
    }
    this._restoreTools(raw); // issue 17
  }

  _snapshotState(withTurns) {
    return JSON.stringify({
      v: STORAGE_VERSION,
      session_id: this.sessionId,
      resume_token: this.resumeToken,
      last_seq: withTurns ? this.lastSeq : 0,
      turns: withTurns ? this._turns : undefined,
      transport: this._transportMode === "auto" ? (this._provenTransport ?? undefined) : undefined,
      outbox: this._pending
        .filter((p) => !p.messageId)
        .map((p) => ({ client_msg_id: p.clientMsgId, content: p.content, extra: p.extra })),
      tool_outbox: [...this._toolOutbox.values()].map((r) => ({ frame: r.frame, response_id: r.responseId })),
    });
  }

  _saveSoon() {
    if (this._timers.save != null) return;
    this._timers.save = this._setTimeout(() => {
      this._timers.save = null;
      this._saveNow();
    }, 100);
  }

  _saveNow() {
    if (this._timers.save != null) {
      this._clearTimeout(this._timers.save);
      this._timers.save = null;
    }
    const s = this._storage;
    if (!s) return;
    const key = this.options.storageKey;
    try {
      if (!this.sessionId) {
        s.removeItem(key);
        return;
      }
      // last_seq and turns are written together, so a reload always sees a consistent pair.
      s.setItem(key, this._snapshotState(true));
    } catch {
      try {
        s.setItem(key, this._snapshotState(false)); // over quota: keep ids, replay from 0
      } catch {
        /* storage unavailable: resume within this page still works */
      }
    }
  }

  _forgetSession() {
    this.sessionId = null;
    this.resumeToken = null;
    this.lastSeq = 0;
    this._turns = [];
    this._forgetTools();
    this._saveNow();
  }

  // -------------------------------------------------------------- connection

  _open() {
    this._clearTimer("reconnect");
    this._stopWatchdog();
    const gen = ++this._gen;
    this._caughtUp = false;
    this._awaitingSnapshot = false;
    this._setStatus(this._everReady ? "reconnecting" : "connecting", { attempt: this._attempt });
    const token = this.options.token;
    Promise.resolve(typeof token === "function" ? token() : token).then(
      (tok) => this._openSocket(gen, tok),
      (err) => {
        if (gen !== this._gen) return;
        this._emit("error", { type: "error", code: "unauthorized", message: String(err), retryable: true }, {});
        this._scheduleReconnect({ code: 0, reason: "token provider failed" });
      },
    );
  }

  _openSocket(gen, token) {
    if (gen !== this._gen || this._closedByUser) return;
    // What the transport opens with: a WebSocket's hello; over HTTP, POST /sessions (when
    // there is no session yet) and the event stream from the same seq cursor.
    const opening = {
      token: token || null,
      metadata: this.options.metadata,
      sessionId: this.sessionId,
      resumeToken: this.sessionId ? this.resumeToken : null,
      lastSeq: this.sessionId ? this.lastSeq : 0,
    };
    this._helloLastSeq = opening.lastSeq;
    // Tool calls (issue 17): a WebSocket's hello declares the session's tools; over HTTP every
    // turn carries them instead (_turnTools), since opening a session there takes no tools.
    if (this._transportKind === "sse") {
      this._helloToolNames = new Set();
    } else {
      this._declareTools(opening);
    }
    // The host: the transport's way in, bound to this attempt (a stale transport's calls are ignored).
    const host = {
      frame: (data) => this._onFrame(gen, data),
      event: (ev) => this._onEvent(gen, ev),
      alive: () => {
        if (gen === this._gen) this._lastRx = this._now();
      },
      answered: (frame, body) => {
        if (gen === this._gen) this._onAnswered(frame, body);
      },
      closed: (info) => this._onClose(gen, info),
    };
    const transport =
      this._transportKind === "sse" ? new SseTransport(this, host) : new WebSocketTransport(this, host);
    this._transport = transport;
    this._heard = false; // anything from the server on this attempt (then a failure is not the path's)
    this._connError = null;
    this._openedAt = this._now();
    this._lastRx = this._openedAt;
    this._pingSentAt = 0;
    this._startWatchdog(gen);
    transport.open(opening);
  }

  /** Detach from the current transport at once (its late events are ignored) and close it. */
  _abandonSocket(code = 1000, reason = "") {
    const t = this._transport;
    this._transport = null;
    this._gen++;
    this._stopWatchdog();
    this._clearTimer("catchUp");
    t?.close(code, reason);
  }

  /** Treat the current socket as dead now (watchdog, gap, offline) and reconnect. */
  _drop(reason) {
    if (this._closedByUser) return;
    this._abandonSocket(4000, reason.slice(0, 100));
    this._afterDisconnect({ code: 0, reason });
  }

  _onClose(gen, { code, reason }) {
    if (gen !== this._gen) return;
    this._transport = null; // closed by the other side (or by itself, over HTTP)
    this._gen++;
    this._stopWatchdog();
    this._clearTimer("catchUp");
    if (this._closedByUser) return;
    this._afterDisconnect({ code, reason });
  }

  _afterDisconnect({ code, reason }) {
    const wasReady = this.status.state === "connected";
    this._countPathFailure(wasReady, code);
    // Whatever was sent on the dead socket must be sent again on the next one.
    for (const p of this._pending) if (!p.messageId) p.sentGen = 0;
    for (const c of this._cancels.values()) c.sentGen = 0;
    for (const fb of this._feedback.values()) fb.sentGen = 0;
    for (const r of this._toolOutbox.values()) r.sentGen = 0;
    this._saveNow();
    this._emit("disconnect", { code, reason, wasReady });

    if (code === CloseCode.BAD_HANDSHAKE && this._helloLastSeq > 0 && !this._resynced) {
      // Our resume point was refused (e.g. the log is behind the seq we hold after a store
      // restore): our copy cannot be trusted. Rebuild the conversation from seq 0, once.
      this._resynced = true;
      this._turns = [];
      this.lastSeq = 0;
      this._saveNow();
      this._emit("conversation", { reason: "resync" });
      this._scheduleReconnect({ code, reason: "resync" });
      return;
    }
    if (FATAL_CLOSE.has(code) || (code === CloseCode.UNAUTHORIZED && typeof this.options.token !== "function")) {
      const errCode = FATAL_CLOSE.get(code) ?? "unauthorized";
      this._fail(new ParleyError(errCode, reason || `connection closed (${code})`, { closeCode: code }));
      return;
    }
    if (code >= 4000 && code <= 4999 && !KNOWN_4XXX.has(code)) {
      // A newer server's close code (e.g. for a session whose state was lost): reconnecting
      // would loop. End with the error the server sent just before, or one naming the code.
      const last = this._connError;
      const err = last
        ? ParleyError.fromEvent(last)
        : new ParleyError(`close_${code}`, reason || `connection closed (${code})`);
      err.closeCode = code;
      this._fail(err);
      return;
    }
    if (code === CloseCode.SESSION_NOT_FOUND || code === CloseCode.SESSION_LOST) {
      // The session expired, is unknown, or its state was lost by the store (session_lost, told
      // just before by an error event): start a new one, keep the unsent outbox.
      const why = code === CloseCode.SESSION_LOST ? "session_lost" : "session_not_found";
      this._forgetSession();
      for (const p of this._pending) {
        p.messageId = null;
        p.responseId = null;
      }
      this._emit("conversation", { reason: why });
      this._emit("reset", { reason: why });
      this._attempt = 0;
      this._open();
      return;
    }
    if (code === CloseCode.MESSAGE_TOO_BIG) {
      // A frame we sent was too big; fail the sends that were in flight rather than loop.
      const err = new ParleyError("payload_too_large", "a message was larger than the server accepts");
      for (const p of [...this._pending]) {
        if (!p.messageId && p.wasSent) this._settlePending(p, null, err);
      }
    }
    if (this._readyAt && this._now() - this._readyAt >= this.options.stableAfterMs) this._attempt = 0;
    this._scheduleReconnect({ code, reason });
  }

  // ---- transport fallback ("auto"): which transport the next attempt uses

  /**
   * Count an attempt that ended before session.ready with no word from the server (an upgrade
   * a proxy refused, a connection cut, a connect timeout); after `fallbackAfter` in a row,
   * "auto" switches to the other transport for the next attempt (after the usual backoff, so
   * a server that is simply down is not hammered by alternating transports).
   */
  _countPathFailure(wasReady, code) {
    const offline = this._env?.navigator?.onLine === false; // no transport would have done better
    if (wasReady || this._heard || !PATH_FAILURE_CLOSE.has(code) || offline) {
      if (!offline) this._pathFailures = 0;
      return;
    }
    this._pathFailures += 1;
    if (this._transportMode !== "auto" || this._pathFailures < this.options.fallbackAfter) return;
    const previous = this._transportKind;
    this._transportKind = previous === "websocket" ? "sse" : "websocket";
    this._pathFailures = 0;
    this.stats.transportSwitches += 1;
    this._emit("transport", {
      transport: this._transportKind,
      previous,
      reason: `${previous} failed ${this.options.fallbackAfter} times in a row before session.ready`,
    });
  }

  /** The transport in use (or being tried): "websocket" or "sse". */
  get transport() {
    return this._transportKind;
  }

  // ---- end of transport fallback

  _scheduleReconnect({ code, reason }) {
    this._clearTimer("reconnect");
    let delay = backoffDelay(this._attempt, this.options.backoff, this._random);
    const now = this._now();
    if (this._retryAfterUntil > now) delay = Math.max(delay, this._retryAfterUntil - now);
    this._attempt += 1;
    this.stats.reconnects += 1;
    const offline = this._env?.navigator?.onLine === false;
    this._setStatus("reconnecting", {
      attempt: this._attempt,
      retryInMs: delay,
      retryAt: now + delay,
      code,
      reason,
      offline,
    });
    this._timers.reconnect = this._setTimeout(() => {
      this._timers.reconnect = null;
      if (!this._closedByUser) this._open();
    }, delay);
  }

  _fail(err) {
    this._failed = err;
    this._closedByUser = true;
    this._clearAllTimers();
    this._abandonSocket(1000, "failed");
    this._setStatus("failed", { code: err.closeCode, reason: err.message, error: err });
    this._emit("error", { type: "error", code: err.code, message: err.message, retryable: false }, { fatal: true });
    for (const w of this._readyWaiters.splice(0)) w.reject(err);
    for (const p of this._pending.splice(0)) p.reject(err);
    for (const fb of this._feedback.values()) fb.waiters.forEach((w) => w.reject(err));
    this._feedback.clear();
    this._saveNow();
  }

  _settleReady(ev) {
    for (const w of this._readyWaiters.splice(0)) w.resolve(ev);
  }

  // ------------------------------------------------------------ environment

  _bindEnvironment() {
    const env = this._env;
    if (!env || typeof env.addEventListener !== "function") return;
    env.addEventListener("online", () => {
      // The network is back: retry now instead of waiting out the backoff.
      if (this._closedByUser) return;
      if (this.status.state === "reconnecting" && this._timers.reconnect != null) {
        this._attempt = 0;
        this._open();
      } else if (this.status.state === "connected") {
        this._ping();
      }
    });
    env.addEventListener("offline", () => {
      // The socket cannot survive this; waiting for the watchdog would only delay the resume.
      if (this._closedByUser || !this._transport) return;
      this._drop("offline");
    });
    env.addEventListener("pagehide", () => this._saveNow());
    const wake = () => {
      // After a hidden/frozen period judge liveness afresh, and probe.
      this._watchBase = this._now();
      this._lastTick = this._now();
      if (this.status.state === "connected") this._ping();
      else if (this.status.state === "reconnecting" && this._timers.reconnect != null && !this._closedByUser) {
        this._open();
      }
    };
    const doc = env.document;
    if (doc && typeof doc.addEventListener === "function") {
      doc.addEventListener("visibilitychange", () => {
        if (doc.visibilityState === "visible") wake();
        else this._saveNow();
      });
      doc.addEventListener("resume", wake);
    }
    env.addEventListener("pageshow", (e) => {
      if (e.persisted) wake(); // back from the bfcache
    });
  }

  // --------------------------------------------------------------- watchdog

  _startWatchdog(gen) {
    this._stopWatchdog();
    const now = this._now();
    this._watchBase = now;
    this._lastTick = now;
    const tick = () => {
      this._timers.watchdog = null;
      if (gen !== this._gen) return;
      const t = this._now();
      const tickMs = this._tickMs();
      if (t - this._lastTick > tickMs * 2 + 1000) {
        // Our own timer ran late: the tab was throttled or frozen, so silence
        // measured across that gap says nothing. Start a fresh window and probe.
        this._watchBase = t;
        if (this._readyGen === gen) this._ping();
      }
      this._lastTick = t;
      const since = Math.max(this._lastRx, this._watchBase);
      if (this._readyGen !== gen) {
        if (t - Math.max(this._openedAt ?? t, this._watchBase) > this.options.connectTimeoutMs) {
          this._drop("connect timeout");
          return;
        }
      } else {
        const hb = this.heartbeatIntervalMs;
        const silent = t - since;
        if (silent > this.options.heartbeatMisses * hb) {
          this._drop("heartbeat timeout");
          return;
        }
        if (silent > hb && this._pingSentAt < since) this._ping();
      }
      this._timers.watchdog = this._setTimeout(tick, this._tickMs());
    };
    this._timers.watchdog = this._setTimeout(tick, this._tickMs());
  }

  _tickMs() {
    return Math.max(50, Math.min(1000, Math.floor(this.heartbeatIntervalMs / 4)));
  }

  _stopWatchdog() {
    this._clearTimer("watchdog");
  }

  _ping() {
    if (this._transport && this._readyGen === this._gen) {
      this._pingSentAt = this._now();
      this._sendFrame({ type: "ping", nonce: randomId("p") });
    }
  }

  // ----------------------------------------------------------------- frames

  _sendFrame(obj) {
    return this._transport ? this._transport.send(obj) : false;
  }

  _onFrame(gen, data) {
    if (gen !== this._gen) return;
    let ev;
    try {
      ev = JSON.parse(typeof data === "string" ? data : new TextDecoder().decode(data));
    } catch {
      this._lastRx = this._now();
      return; // not ours to interpret; the server never sends this
    }
    this._onEvent(gen, ev);
  }

  /** One server event, from whichever transport. */
  _onEvent(gen, ev) {
    if (gen !== this._gen) return;
    this._heard = true;
    this._lastRx = this._now();
    if (!ev || typeof ev !== "object" || typeof ev.type !== "string") return;
    if (LOGGED.has(ev.type) || (!EPHEMERAL.has(ev.type) && typeof ev.seq === "number")) {
      if (this._readyGen !== gen) return; // logged events only make sense after session.ready
      this._onLogged(ev);
      return;
    }
    switch (ev.type) {
      case "session.ready":
        this._onReady(gen, ev);
        break;
      case "session.snapshot":
        this._onSnapshot(ev);
        break;
      case "heartbeat":
        this._emit("heartbeat", ev);
        this._markCaughtUp();
        break;
      case "pong":
        this._emit("pong", ev);
        break;
      case "error":
        this._onError(ev);
        break;
      case "message.duplicate":
        this._onDuplicate(ev);
        break;
      case "tool.result.duplicate":
        this._onToolDuplicate(ev); // issue 17
        break;
      default:
        this._emit("event", ev);
    }
  }

  _onReady(gen, ev) {
    const newSession = ev.session_id !== this.sessionId;
    if (newSession && (this._turns.length || this.lastSeq)) {
      this._turns = [];
      this._forgetTools();
      this.lastSeq = 0;
      for (const p of this._pending) {
        p.messageId = null; // accepted by a session that is gone: send again in this one
        p.responseId = null;
      }
      this._emit("conversation", { reason: "new_session" });
    }
    if (!newSession && ev.resumed && ev.recovered && typeof ev.last_seq === "number" && ev.last_seq < this.lastSeq) {
      // The server's log is behind what we hold: our copy cannot be trusted. Rebuild from 0 once.
      if (!this._resynced) {
        this._resynced = true;
        this._turns = [];
        this.lastSeq = 0;
        this._emit("conversation", { reason: "resync" });
        this._drop("log behind client");
        return;
      }
    }
    if (!this._helloLastSeq) this._resynced = false; // a from-zero resume worked: allow a future resync
    this.sessionId = ev.session_id;
    this.resumeToken = ev.resume_token ?? this.resumeToken;
    if (ev.heartbeat_interval_ms > 0) this.heartbeatIntervalMs = ev.heartbeat_interval_ms;
    this._readyGen = gen;
    this._pathFailures = 0;
    this._provenTransport = this._transportKind; // "auto" starts with it after a reload
    this._readyAt = this._now();
    this._lastReady = ev;
    this._everReady = true;
    this._readyLastSeq = typeof ev.last_seq === "number" ? ev.last_seq : 0;
    this._awaitingSnapshot = !!ev.resumed && ev.recovered === false;
    this.stats.connects += 1;
    if (ev.resumed) this.stats.resumes += 1;
    this._saveNow();
    this._setStatus("connected", { resumed: !!ev.resumed, recovered: ev.recovered !== false });
    this._settleReady(ev);
    this._emit("ready", ev);
    this._clearTimer("catchUp");
    this._timers.catchUp = this._setTimeout(() => {
      this._timers.catchUp = null;
      this._markCaughtUp(true);
    }, this.options.catchUpTimeoutMs);
    this._maybeCaughtUp();
  }

  _onSnapshot(ev) {
    // recovered:false: the log no longer holds our gap. Replace, never merge.
    const turns = (ev.turns || [])
      .filter((t) => t.role === "assistant" || t.role === "user")
      .map((t) =>
        t.role === "assistant"
          ? { role: "assistant", id: t.id, content: t.content ?? "", finishReason: t.finish_reason ?? "stop" }
          : { role: "user", id: t.id, content: t.content ?? "" },
      );
    if (ev.in_flight) {
      turns.push({ role: "assistant", id: ev.in_flight.id, content: ev.in_flight.content ?? "", finishReason: null });
    }
    this._snapshotTools(ev, turns); // tool calls, results and reasoning (issue 17)
    this._turns = turns;
    this.lastSeq = typeof ev.last_seq === "number" ? ev.last_seq : this.lastSeq;
    this._awaitingSnapshot = false;
    this.stats.snapshots += 1;
    // Sends whose reply the snapshot shows finished can be settled now.
    for (const p of [...this._pending]) {
      const t = p.responseId && this._lastOfChain(p.responseId);
      if (t && !isOpen(t)) this._settlePending(p, t, null);
    }
    this._saveNow();
    if (this.status.state === "connected" && this.status.recovered !== false) {
      // Over SSE the opening cannot say the log lost our gap; the snapshot itself does.
      this._setStatus("connected", { resumed: true, recovered: false });
    }
    this._emit("snapshot", ev);
    this._emit("conversation", { reason: "snapshot" });
    this._maybeCaughtUp();
  }

  _onLogged(ev) {
    const seq = ev.seq;
    if (typeof seq !== "number" || seq <= this.lastSeq) {
      this.stats.duplicatesDropped += 1;
      return;
    }
    if (seq !== this.lastSeq + 1) {
      // A hole: never show a silently partial conversation. Resume from what we have.
      this.stats.gaps += 1;
      this._emit("gap", { expected: this.lastSeq + 1, got: seq });
      this._drop(`gap: expected seq ${this.lastSeq + 1}, got ${seq}`);
      return;
    }
    this.lastSeq = seq;
    this._apply(ev);
    this._saveSoon();
    this._maybeCaughtUp();
  }

  _apply(ev) {
    switch (ev.type) {
      case "message.accepted": {
        const p = this._pending.find((x) => x.clientMsgId === ev.client_msg_id);
        let turn = this._turns.find((t) => t.id === ev.message_id);
        if (!turn) {
          turn = { role: "user", id: ev.message_id, clientMsgId: ev.client_msg_id, content: ev.content, seq: ev.seq };
          this._turns.push(turn);
        }
        if (p) p.messageId = ev.message_id;
        this._emit("message", ev, cloneTurn(turn), { own: !!p });
        break;
      }
      case "response.started": {
        let turn = this._turns.find((t) => t.id === ev.response_id);
        if (!turn) {
          turn = { role: "assistant", id: ev.response_id, content: "", finishReason: null };
          this._turns.push(turn);
        }
        Object.assign(turn, { inReplyTo: ev.in_reply_to, traceId: ev.trace_id, profile: ev.profile });
        if (ev.continues) this._continued(turn, ev.continues); // after tool results (issue 17)
        const p = this._pending.find(
          (x) =>
            x.messageId === ev.in_reply_to ||
            x.clientMsgId === ev.in_reply_to ||
            (ev.continues && x.responseId === ev.continues),
        );
        if (p) p.responseId = ev.response_id;
        this._emit("started", ev, cloneTurn(turn));
        break;
      }
      case "response.delta": {
        let turn = this._turns.find((t) => t.id === ev.response_id);
        if (!turn) {
          turn = { role: "assistant", id: ev.response_id, content: "", finishReason: null };
          this._turns.push(turn);
        }
        turn.content += ev.text;
        this._emit("delta", ev, cloneTurn(turn));
        break;
      }
      case "response.completed": {
        let turn = this._turns.find((t) => t.id === ev.response_id);
        if (!turn) {
          turn = { role: "assistant", id: ev.response_id, content: "", finishReason: null };
          this._turns.push(turn);
        }
        Object.assign(turn, {
          finishReason: ev.finish_reason,
          usage: ev.usage ?? null,
          ttftMs: ev.ttft_ms ?? null,
          latencyMs: ev.latency_ms ?? null,
          error: ev.error ?? null,
        });
        if (ev.output !== undefined) turn.output = ev.output;
        if (ev.finish_reason === "tool_calls") {
          // Not the end: it waits for its tool results, then a continuation follows (issue 17).
          this._emit("completed", ev, cloneTurn(turn));
          this._flush(); // results held until the response asked for them may go now
          break;
        }
        this._abandonCalls(turn);
        const c = this._cancels.get(ev.response_id);
        if (c) {
          this._cancels.delete(ev.response_id);
          c.waiters.forEach((w) => w(cloneTurn(turn)));
        }
        const p = this._pending.find((x) => x.responseId === ev.response_id);
        if (p) this._settlePending(p, turn, null);
        this._emit("completed", ev, cloneTurn(turn));
        this._flush(); // the next queued message may go now
        break;
      }
      case "feedback.recorded": {
        const turn = this._turns.find((t) => t.id === ev.response_id);
        if (turn) turn.rating = ev.rating;
        const fb = this._feedback.get(ev.response_id);
        if (fb && fb.frame.rating === ev.rating && fb.wasSent) {
          this._feedback.delete(ev.response_id);
          fb.waiters.forEach((w) => w.resolve(ev));
        }
        this._emit("feedback", ev, cloneTurn(turn ?? null));
        break;
      }
      case "response.tool_call.delta":
      case "response.tool_call":
      case "tool.approval_requested":
      case "tool.result.accepted":
      case "response.reasoning.delta":
        this._applyTool(ev); // issue 17: the tool block below
        break;
      default:
        this._emit("event", ev); // a newer server's logged event: seq consumed, content ignored
    }
  }

  /**
   * A 2xx to a request sent over HTTP (SSE + POST). Its events come on the event stream; a
   * message's answer names its response (the first turn's, for a repeated client_msg_id), so a
   * send whose reply the log already showed finished settles now, as with message.duplicate.
   */
  _onAnswered(frame, body) {
    if (frame.type === "tool.result" && body?.outcome === "duplicate") {
      // The HTTP API answers what the WebSocket says as tool.result.duplicate.
      const { call_id, response_id, accepted_seq } = body;
      this._onToolDuplicate({ type: "tool.result.duplicate", call_id, response_id, accepted_seq });
      return;
    }
    if (frame.type !== "message.send" || typeof body?.response_id !== "string") return;
    const p = this._pending.find((x) => x.clientMsgId === frame.client_msg_id);
    if (!p) return;
    p.responseId = p.responseId ?? body.response_id;
    // The stream may already be past this response: a tool_calls end is not the reply's end.
    const t = this._lastOfChain(p.responseId);
    if (t) p.responseId = t.id;
    if (t && !isOpen(t)) this._settlePending(p, t, null);
  }

  _onDuplicate(ev) {
    const p = this._pending.find((x) => x.clientMsgId === ev.client_msg_id);
    if (p) {
      p.messageId = ev.message_id ?? p.messageId;
      p.responseId = ev.response_id ?? p.responseId;
      const t = p.responseId && this._lastOfChain(p.responseId);
      if (t) p.responseId = t.id;
      if (t && !isOpen(t)) this._settlePending(p, t, null);
    }
    this._emit("duplicate", ev);
    this._flush();
  }

  _onError(ev) {
    let ref = ev.ref || {};
    if (!ref.type || ref.type === "hello") this._connError = ev; // the close that follows means this
    if (!ref.type && REQUEST_ERRORS.has(ev.code)) {
      // Some refusals come without a ref (the frame budget refuses before reading the frame).
      // Messages go one at a time, so the one sent and not yet accepted is the frame refused.
      const p = this._pending.find((x) => !x.messageId && x.wasSent && x.sentGen === this._gen);
      if (p) ref = { type: "message.send", client_msg_id: p.clientMsgId };
    }
    const now = this._now();
    const info = { retryInMs: null, willRetry: false };
    if (ref.type === "message.send" && ref.client_msg_id) {
      const p = this._pending.find((x) => x.clientMsgId === ref.client_msg_id);
      if (p) {
        info.clientMsgId = p.clientMsgId;
        if (ev.retryable && p.retries < this.options.maxSendRetries) {
          p.retries += 1;
          p.sentGen = 0;
          const wait = ev.retry_after_ms ?? backoffDelay(p.retries - 1, this.options.backoff, this._random);
          p.notBefore = now + wait;
          info.retryInMs = wait;
          info.retryAt = now + wait;
          info.willRetry = true;
          this._scheduleFlush(wait);
        } else {
          this._settlePending(p, null, ParleyError.fromEvent(ev));
        }
      }
    } else if (ref.type === "feedback" && ref.response_id) {
      const fb = this._feedback.get(ref.response_id);
      if (fb && !ev.retryable) {
        this._feedback.delete(ref.response_id);
        fb.waiters.forEach((w) => w.reject(ParleyError.fromEvent(ev)));
      } else if (fb) {
        fb.sentGen = 0;
        const wait = ev.retry_after_ms ?? 1000;
        info.retryInMs = wait;
        info.willRetry = true;
        this._scheduleFlush(wait);
      }
    } else if ((ref.type === "tool.result" || ref.type === "tool.approve") && ref.call_id) {
      this._onToolRefused(ev, ref, info); // issue 17
    } else if (ref.type === "response.cancel") {
      // Cancelling something that is not running is not a failure.
      const id = ref.response_id;
      const c = id && this._cancels.get(id);
      if (c && !ev.retryable) {
        this._cancels.delete(id);
        c.waiters.forEach((w) => w(this.turn(id)));
      }
    } else if (!ev.retryable && !KNOWN_ERRORS.has(ev.code) && (!ref.type || ref.type === "hello")) {
      // A connection-level error this version does not know (a newer server's): terminal.
      this._emit("error", ev, info);
      this._fail(ParleyError.fromEvent(ev));
      return;
    } else if (ev.retry_after_ms) {
      // Connection-level (e.g. overloaded at hello): the next reconnect waits at least this long.
      this._retryAfterUntil = now + ev.retry_after_ms;
      info.retryInMs = ev.retry_after_ms;
      info.retryAt = now + ev.retry_after_ms;
      info.willRetry = true;
    }
    this._emit("error", ev, info);
    this._flush();
  }

  // ============================================================ tool calls (issue 17)
  //
  // A call is logged (`response.tool_call`); a response that needs client results ends with
  // finish_reason "tool_calls" and waits; each result is logged once (`tool.result.accepted`);
  // the last one starts the continuation (`response.started{continues}`). Pending calls live in
  // the turns (stored like the rest), so a reload rebuilds them and, once the replay is done,
  // runs the handler or asks for approval again. Results are idempotent by call_id, so sending
  // one twice is safe (the server answers tool.result.duplicate).

  /**
   * Register a tool the model may call; it is declared in hello.tools (and in message.send.tools
   * until the next connection's hello carries it). `handler(args, call)` returns the output
   * (a string or any JSON value, or a promise of one); a throw is sent as an error result.
   * With `{approve: true}` each call first emits "approval" and waits for allow() or deny().
   * Returns a function that unregisters the tool.
   */
  tool(name, spec = {}, handler = null, { approve = false } = {}) {
    if (typeof name !== "string" || !name) throw new TypeError("tool(): name must be a non-empty string");
    if (handler != null && typeof handler !== "function") throw new TypeError("tool(): handler must be a function");
    const entry = { spec: toolSpec({ ...spec, name }), handler, approve: !!approve };
    this._tools.set(name, entry);
    this._dispatchCalls(); // a call that was waiting for this tool (e.g. registered after a reload)
    return () => {
      if (this._tools.get(name) === entry) this._tools.delete(name);
    };
  }

  /** Answer a client call yourself (a tool without a handler); safe to repeat. */
  toolResult(callId, output, { isError = false } = {}) {
    const found = this._findCall(callId);
    if (found && (found.call.state === "done" || found.call.state === "abandoned")) return;
    this._answer(found?.turn.id ?? null, callId, output, isError);
  }

  /** Client calls still waiting for a result, and server calls waiting for approval or their result. */
  get pendingCalls() {
    const out = [];
    for (const t of this._turns) {
      if (t.role !== "assistant" || !t.toolCalls) continue;
      for (const c of t.toolCalls) {
        if (c.state !== "done" && c.state !== "abandoned" && c.state !== "streaming") {
          out.push({ ...c, responseId: t.id });
        }
      }
    }
    return out;
  }

  /** The approvals waiting for the person (the same objects the "approval" event carried). */
  get approvals() {
    return [...this._approvals.values()];
  }

  _forgetTools() {
    for (const id of [...this._toolOutbox.keys(), ...this._approvals.keys()]) this._settleCall(id);
    this._handling.clear();
  }

  _declareTools(hello) {
    const specs = [...this._tools.values()].map((t) => t.spec);
    this._helloToolNames = new Set(specs.map((s) => s.name));
    if (specs.length) hello.tools = specs;
  }

  /** Tools registered after this connection's hello go with each turn (never a name twice). */
  _turnTools(frame) {
    const have = new Set([...(frame.tools || []).map((t) => t.name), ...this._helloToolNames]);
    const extra = [...this._tools.values()].map((t) => t.spec).filter((s) => !have.has(s.name));
    if (extra.length) frame.tools = [...(frame.tools || []), ...extra];
  }

  _assistantTurn(responseId) {
    let turn = this._turns.find((t) => t.id === responseId);
    if (!turn) {
      turn = { role: "assistant", id: responseId, content: "", finishReason: null };
      this._turns.push(turn);
    }
    return turn;
  }

  _callIn(turn, callId, name) {
    turn.toolCalls ??= [];
    let call = turn.toolCalls.find((c) => c.callId === callId);
    if (!call) {
      call = { callId, name: name ?? "", arguments: null, argumentsText: "", server: false, state: "streaming" };
      turn.toolCalls.push(call);
    }
    return call;
  }

  _findCall(callId) {
    for (const turn of this._turns) {
      const call = turn.toolCalls?.find((c) => c.callId === callId);
      if (call) return { turn, call };
    }
    return null;
  }

  _applyTool(ev) {
    const turn = this._assistantTurn(ev.response_id);
    switch (ev.type) {
      case "response.reasoning.delta":
        turn.reasoning = (turn.reasoning ?? "") + (ev.text ?? "");
        this._emit("reasoning", ev, cloneTurn(turn));
        return;
      case "response.tool_call.delta": {
        const call = this._callIn(turn, ev.call_id, ev.name);
        call.argumentsText += ev.arguments_delta ?? "";
        this._emit("tool_call_delta", ev, cloneTurn(turn));
        return;
      }
      case "response.tool_call": {
        const call = this._callIn(turn, ev.call_id, ev.name);
        const args = ev.arguments ?? {};
        Object.assign(call, { name: ev.name, arguments: args, argumentsText: JSON.stringify(args), server: !!ev.server });
        if (call.state === "streaming") call.state = call.server ? "running" : "pending";
        this._emit("tool_call", ev, cloneTurn(turn));
        this._dispatchCalls();
        return;
      }
      case "tool.approval_requested": {
        const call = this._callIn(turn, ev.call_id, ev.name);
        Object.assign(call, { server: true, approvalRequested: true });
        if (ev.arguments) call.arguments = ev.arguments;
        if (call.state !== "done") call.state = "approval";
        this._emit("approval_requested", ev, cloneTurn(turn));
        this._dispatchCalls();
        return;
      }
      case "tool.result.accepted": {
        const found = this._findCall(ev.call_id);
        const owner = found?.turn ?? turn;
        const call = found?.call ?? this._callIn(turn, ev.call_id, ev.name);
        Object.assign(call, { state: "done", output: ev.output, isError: !!ev.is_error });
        this._settleCall(ev.call_id);
        this._emit("tool_result", ev, cloneTurn(owner));
        return;
      }
    }
  }

  /** A continuation started: cancels follow the chain, so cancel() of a waiting reply still stops it. */
  _continued(turn, previousId) {
    turn.continues = previousId;
    const c = this._cancels.get(previousId);
    if (c) {
      this._cancels.delete(previousId);
      c.sentGen = 0;
      this._cancels.set(turn.id, c);
    }
  }

  /** The newest response of a chain of continuations starting at responseId. */
  _lastOfChain(responseId) {
    let t = this._turns.find((x) => x.id === responseId);
    for (let i = 0; t && i < this._turns.length; i++) {
      const next = this._turns.find((x) => x.continues === t.id);
      if (!next) break;
      t = next;
    }
    return t ?? null;
  }

  /** The response ended for good (cancelled, timed out, failed): its open calls need no answer. */
  _abandonCalls(turn) {
    for (const call of turn.toolCalls ?? []) {
      if (call.state === "done" || call.state === "abandoned") continue;
      call.state = "abandoned";
      this._settleCall(call.callId);
    }
  }

  _settleCall(callId) {
    if (this._toolOutbox.delete(callId)) this._saveSoon();
    this._handling.delete(callId);
    const a = this._approvals.get(callId);
    if (a) {
      this._approvals.delete(callId);
      a.open = false;
    }
  }

  /** Run or ask about every pending call this page is not handling yet; only once caught up. */
  _dispatchCalls() {
    if (!this._caughtUp) return;
    for (const turn of this._turns) {
      if (turn.role !== "assistant" || !turn.toolCalls || !isOpen(turn)) continue;
      for (const call of turn.toolCalls) {
        if (call.state === "streaming" || call.state === "done" || call.state === "abandoned") continue;
        if (this._handling.has(call.callId) || this._toolOutbox.has(call.callId)) continue;
        if (call.server) {
          if (call.approvalRequested) {
            this._handling.add(call.callId);
            this._ask(turn, call, true);
          }
          continue;
        }
        const tool = this._tools.get(call.name);
        if (!tool || (!tool.handler && !tool.approve)) continue; // answered by the app: toolResult()
        this._handling.add(call.callId);
        if (tool.approve) this._ask(turn, call, false);
        else this._runTool(turn, call, tool);
      }
    }
  }

  _ask(turn, call, server) {
    call.state = "approval";
    const approval = new ToolApproval(this, turn.id, call, server);
    this._approvals.set(call.callId, approval);
    this._emit("approval", approval, cloneTurn(turn));
  }

  /** allow()/deny() of a ToolApproval. */
  _decide(approval, allowed) {
    if (!approval.open) return Promise.resolve();
    approval.open = false;
    approval.decision = allowed ? "allowed" : "denied";
    this._approvals.delete(approval.callId);
    const found = this._findCall(approval.callId);
    if (!found || found.call.state === "done" || found.call.state === "abandoned") return Promise.resolve();
    const { turn, call } = found;
    if (approval.server) {
      call.state = "running"; // the server runs it (or logs the denial as its result)
      const frame = { type: "tool.approve", call_id: call.callId, approved: allowed };
      this._toolOutbox.set(call.callId, { frame, responseId: turn.id, sentGen: 0, approve: true });
      this._emit("tool_state", { callId: call.callId, state: call.state }, cloneTurn(turn));
      this._saveSoon();
      this._flush();
      return Promise.resolve();
    }
    if (!allowed) {
      this._answer(turn.id, call.callId, "denied by the user", true);
      return Promise.resolve();
    }
    const tool = this._tools.get(call.name);
    if (!tool?.handler) {
      this._answer(turn.id, call.callId, `tool ${call.name} is not available in this client`, true);
      return Promise.resolve();
    }
    return this._runTool(turn, call, tool);
  }

  _runTool(turn, call, tool) {
    call.state = "running";
    this._emit("tool_state", { callId: call.callId, state: call.state }, cloneTurn(turn));
    const info = { callId: call.callId, responseId: turn.id, name: call.name };
    return Promise.resolve()
      .then(() => tool.handler(call.arguments ?? {}, info))
      .then(
        (output) => [output, false],
        (err) => [String(err?.message || err || "the tool failed"), true],
      )
      .then(([output, isError]) => {
        const found = this._findCall(info.callId);
        if (found && (found.call.state === "done" || found.call.state === "abandoned")) return;
        this._answer(info.responseId, info.callId, output, isError);
      });
  }

  /** Queue a tool.result; it is (re)sent until accepted, after the response asked for results. */
  _answer(responseId, callId, output, isError) {
    let frame = { type: "tool.result", call_id: callId, output: toolOutput(output) };
    if (isError) frame.is_error = true;
    const size = byteLength(JSON.stringify(frame));
    if (size > this.options.maxFrameBytes) {
      const why = `the tool's output is ${size} bytes, more than the ${this.options.maxFrameBytes} a frame may carry`;
      frame = { type: "tool.result", call_id: callId, output: why, is_error: true };
    }
    this._toolOutbox.set(callId, { frame, responseId, sentGen: 0 });
    const found = this._findCall(callId);
    if (found && found.call.state !== "done") {
      found.call.state = "sent";
      this._emit("tool_state", { callId, state: "sent" }, cloneTurn(found.turn));
    }
    this._saveSoon();
    this._flush();
  }

  _flushTools(gen) {
    for (const r of this._toolOutbox.values()) {
      if (r.sentGen === gen) continue;
      const t = r.responseId && this._turns.find((x) => x.id === r.responseId);
      if (!r.approve && t && t.finishReason == null) continue; // results go once the response asked for them
      if (this._sendFrame(r.frame)) r.sentGen = gen;
    }
  }

  _onToolDuplicate(ev) {
    // Already accepted (its tool.result.accepted is in the log): nothing to resend.
    if (this._toolOutbox.delete(ev.call_id)) this._saveSoon();
    this._emit("tool_duplicate", ev);
  }

  _onToolRefused(ev, ref, info) {
    info.callId = ref.call_id;
    const r = this._toolOutbox.get(ref.call_id);
    if (!r) return;
    if (ev.retryable) {
      r.sentGen = 0;
      const wait = ev.retry_after_ms ?? 1000;
      info.retryInMs = wait;
      info.willRetry = true;
      this._scheduleFlush(wait);
    } else {
      this._toolOutbox.delete(ref.call_id); // unknown or finished call: the server will never take it
      this._saveSoon();
    }
  }

  _restoreTools(raw) {
    for (const r of raw.tool_outbox || []) {
      const id = r?.frame?.call_id;
      if (typeof id !== "string") continue;
      this._toolOutbox.set(id, {
        frame: r.frame,
        responseId: r.response_id ?? null,
        sentGen: 0,
        approve: r.frame.type === "tool.approve",
      });
    }
    // What this page was doing with a call (asking, running) died with it: start over once caught up.
    for (const t of this._turns) {
      for (const c of t.toolCalls ?? []) {
        if (c.state !== "approval" && c.state !== "running" && c.state !== "sent") continue;
        if (c.server) c.state = c.approvalRequested && !this._toolOutbox.has(c.callId) ? "approval" : "running";
        else c.state = this._toolOutbox.has(c.callId) ? "sent" : "pending";
      }
    }
  }

  /** A snapshot's calls (`tool_calls` on assistant turns) and results (`tool` turns). */
  _snapshotTools(ev, turns) {
    const source = [...(ev.turns || []), ...(ev.in_flight ? [ev.in_flight] : [])];
    const results = new Map();
    for (const t of source) if (t.role === "tool") results.set(t.id, t);
    for (const t of source) {
      if (t.role !== "assistant") continue;
      const turn = turns.find((x) => x.id === t.id && x.role === "assistant");
      if (!turn) continue;
      if (t.continues) turn.continues = t.continues;
      if (t.reasoning) turn.reasoning = t.reasoning;
      if (!Array.isArray(t.tool_calls) || !t.tool_calls.length) continue;
      turn.toolCalls = t.tool_calls.map((c) => {
        const call = {
          callId: c.call_id,
          name: c.name,
          arguments: c.arguments ?? {},
          argumentsText: JSON.stringify(c.arguments ?? {}),
          server: !!c.server,
          state: c.server ? "running" : "pending",
        };
        const res = results.get(c.call_id);
        if (res) Object.assign(call, { state: "done", output: res.output ?? res.content, isError: !!res.is_error });
        else if (!isOpen(turn)) call.state = "abandoned";
        return call;
      });
    }
    for (const id of [...this._toolOutbox.keys()]) if (results.has(id)) this._toolOutbox.delete(id);
  }

  // ----------------------------------------------------------------- outbox

  _newPending(clientMsgId, content, extra) {
    const entry = {
      clientMsgId,
      content,
      extra,
      messageId: null,
      responseId: null,
      sentGen: 0,
      wasSent: false,
      retries: 0,
      notBefore: 0,
    };
    entry.promise = new Promise((resolve, reject) => {
      entry.resolve = resolve;
      entry.reject = reject;
    });
    entry.promise.clientMsgId = clientMsgId;
    return entry;
  }

  _settlePending(p, turn, err) {
    const i = this._pending.indexOf(p);
    if (i >= 0) this._pending.splice(i, 1);
    if (err) p.reject(err);
    else p.resolve(cloneTurn(turn));
    this._saveSoon();
    this._flush();
  }

  _maybeCaughtUp() {
    if (!this._caughtUp && !this._awaitingSnapshot && this.lastSeq >= (this._readyLastSeq ?? 0)) this._markCaughtUp();
  }

  /** Replay after session.ready is done: now the outbox can be (re)sent without needless duplicates. */
  _markCaughtUp(force = false) {
    if (this._caughtUp || this._readyGen !== this._gen) return;
    if (this._awaitingSnapshot && !force) return;
    this._caughtUp = true;
    this._clearTimer("catchUp");
    this._dispatchCalls(); // pending tool calls, rebuilt from the log, are run or asked about again (issue 17)
    this._flush();
  }

  _scheduleFlush(ms) {
    this._clearTimer("flush");
    this._timers.flush = this._setTimeout(() => {
      this._timers.flush = null;
      this._flush();
    }, Math.max(0, ms));
  }

  _flush() {
    if (!this._transport || this._readyGen !== this._gen || !this._caughtUp) return;
    const gen = this._gen;
    for (const [id, c] of this._cancels) {
      if (c.sentGen !== gen && this._sendFrame({ type: "response.cancel", response_id: id })) c.sentGen = gen;
    }
    for (const fb of this._feedback.values()) {
      if (fb.sentGen !== gen && this._sendFrame(fb.frame)) {
        fb.sentGen = gen;
        fb.wasSent = true;
      }
    }
    this._flushTools(gen); // issue 17
    // Messages go one at a time, in order: the next only after the previous reply completed.
    const p = this._pending[0];
    if (!p || p.messageId || p.sentGen === gen) return;
    if (this.activeResponseId) return;
    const wait = p.notBefore - this._now();
    if (wait > 0) {
      this._scheduleFlush(wait);
      return;
    }
    const frame = { type: "message.send", client_msg_id: p.clientMsgId, content: p.content, ...p.extra };
    this._turnTools(frame); // issue 17
    if (this._sendFrame(frame)) {
      p.sentGen = gen;
      p.wasSent = true;
    }
  }

  // ------------------------------------------------------------------ misc

  _setStatus(state, details) {
    this.status = { state, sessionId: this.sessionId, transport: this._transportKind, ...details };
    this._emit("status", { ...this.status });
  }

  _clearTimer(name) {
    if (this._timers[name] != null) {
      this._clearTimeout(this._timers[name]);
      this._timers[name] = null;
    }
  }

  _clearAllTimers() {
    for (const name of Object.keys(this._timers)) if (name !== "save") this._clearTimer(name);
  }
}

// ------------------------------------------------------------ tool calls (issue 17)

/** A tool's output as the wire carries it: a string or a JSON value (undefined: ""). */
function toolOutput(value) {
  if (value === undefined) return "";
  if (typeof value === "string") return value;
  try {
    const json = JSON.stringify(value);
    return json === undefined ? String(value) : JSON.parse(json);
  } catch {
    return String(value);
  }
}

/**
 * A call waiting for the person's decision (the "approval" event): a client tool registered
 * with {approve: true}, or a server tool that asked (tool.approval_requested). allow() runs the
 * handler (client) or sends tool.approve{approved: true} (server); deny() sends
 * tool.result{is_error: true, output: "denied by the user"} (client) or tool.approve{approved: false}.
 */
export class ToolApproval {
  constructor(client, responseId, call, server) {
    this.client = client;
    this.responseId = responseId;
    this.callId = call.callId;
    this.name = call.name;
    this.arguments = call.arguments ?? {};
    this.server = server;
    this.open = true; // false once decided, answered elsewhere, or the response ended
    this.decision = null; // "allowed" | "denied" once decided here
  }

  allow() {
    return this.client._decide(this, true);
  }

  /** The same as allow() (the name server-tool code tends to use). */
  approve() {
    return this.allow();
  }

  deny() {
    return this.client._decide(this, false);
  }
}

/**
 * One turn's events as an async iterator (what `client.stream()` returns).
 * Events are queued from the moment the message is sent, so none is missed
 * between iterations.
 */
export class TurnStream {
  constructor(client, content, opts = {}) {
    this.client = client;
    this.responseId = null;
    this.messageId = null;
    this.text = "";
    this.turn = null; // the assistant turn, once completed
    this.responseIds = []; // every response of this turn: one, plus a continuation per round of tool results
    this._queue = [];
    this._wake = null;
    this._ended = false;
    this._error = null;
    this._cancelWanted = false;
    this._offs = [];
    this.done = client.send(content, opts);
    this.clientMsgId = this.done.clientMsgId;
    const own = client._pending.find((p) => p.clientMsgId === this.clientMsgId) ?? null;
    const push = (ev) => {
      this._queue.push(ev);
      this._poke();
    };
    const listen = (type, fn) => this._offs.push(client.on(type, fn));
    listen("message", (ev) => {
      if (ev.client_msg_id !== this.clientMsgId) return;
      this.messageId = ev.message_id;
      push(ev);
    });
    const mine = (id) => this.responseIds.includes(id);
    const follow = (id) => {
      if (!mine(id)) this.responseIds.push(id);
      this.responseId = id;
    };
    listen("duplicate", (ev) => {
      if (ev.client_msg_id !== this.clientMsgId) return;
      this.messageId = ev.message_id;
      follow(ev.response_id);
      const t = client._lastOfChain(ev.response_id);
      if (t) {
        follow(t.id);
        this.text = t.content;
      }
      push(ev);
    });
    listen("started", (ev) => {
      const continuation = ev.continues && mine(ev.continues); // after tool results (issue 17)
      if (!continuation && ev.in_reply_to !== this.messageId && own?.responseId !== ev.response_id) return;
      follow(ev.response_id);
      this.text = "";
      push(ev);
      if (this._cancelWanted) client.cancel(ev.response_id);
    });
    listen("delta", (ev, turn) => {
      if (ev.response_id !== this.responseId) return;
      this.text = turn.content;
      push(ev);
    });
    listen("completed", (ev, turn) => {
      if (!mine(ev.response_id)) return;
      if (ev.response_id === this.responseId) this.text = turn.content;
      push(ev);
    });
    // tool calls and reasoning (issue 17): the wire events of this turn's responses
    for (const type of ["tool_call_delta", "tool_call", "approval_requested", "tool_result", "reasoning"]) {
      listen(type, (ev) => {
        if (mine(ev.response_id)) push(ev);
      });
    }
    listen("conversation", () => {
      // A snapshot replaced the conversation: the text may have jumped.
      const t = this.responseId && client.turn(this.responseId);
      if (t) this.text = t.content;
    });
    this.done.then(
      (turn) => {
        this.turn = turn;
        if (turn?.id) follow(turn.id);
        this.text = turn?.content ?? this.text;
        this._end(null);
      },
      (err) => this._end(err),
    );
  }

  _poke() {
    const wake = this._wake;
    this._wake = null;
    wake?.();
  }

  _end(err) {
    if (this._ended) return;
    this._ended = true;
    this._error = err;
    for (const off of this._offs.splice(0)) off();
    this._poke();
  }

  async next() {
    for (;;) {
      if (this._queue.length) return { value: this._queue.shift(), done: false };
      if (this._ended) {
        if (this._error) {
          const err = this._error;
          this._error = null;
          throw err;
        }
        return { value: undefined, done: true };
      }
      await new Promise((resolve) => (this._wake = resolve));
    }
  }

  /** Stop listening (a `break` out of the loop); the reply itself goes on: see cancel(). */
  async return() {
    for (const off of this._offs.splice(0)) off();
    this._ended = true;
    this._queue = [];
    this.done.catch(() => {});
    return { value: undefined, done: true };
  }

  [Symbol.asyncIterator]() {
    return this;
  }

  /** Stop the reply; the loop goes on to its response.completed (finish_reason "cancelled"). */
  cancel() {
    this._cancelWanted = true;
    return this.responseId ? this.client.cancel(this.responseId) : Promise.resolve(null);
  }

  /** Rate the reply ("up"/"down" or +1/-1); resolves once the server logged it. */
  feedback(rating, opts = {}) {
    if (!this.responseId) return Promise.reject(new ParleyError("invalid_message", "the reply has not started"));
    return this.client.feedback(this.responseId, rating, opts);
  }
}

export default ParleyClient;
