// Types of parley-client.js (the npm package @parley-chat/client), written by hand and
// checked by tsc in CI (tests/test_client_js.py compiles a consumer against them).

export declare const PROTOCOL: "parley.v1";

export declare const CloseCode: Readonly<{
  NORMAL: 1000;
  GOING_AWAY: 1001;
  ABNORMAL: 1006;
  MESSAGE_TOO_BIG: 1009;
  INTERNAL_ERROR: 1011;
  SERVICE_RESTART: 1012;
  BAD_HANDSHAKE: 4000;
  UNAUTHORIZED: 4001;
  UNSUPPORTED_VERSION: 4002;
  SESSION_NOT_FOUND: 4004;
  HELLO_TIMEOUT: 4008;
  SLOW_CONSUMER: 4009;
  SESSION_LOST: 4010;
  POLICY_VIOLATION: 4029;
}>;

export type ClientType =
  | "hello"
  | "message.send"
  | "response.cancel"
  | "feedback"
  | "ping"
  | "tool.result"
  | "tool.approve";
export type LoggedType =
  | "message.accepted"
  | "response.started"
  | "response.delta"
  | "response.completed"
  | "feedback.recorded"
  | "response.tool_call.delta"
  | "response.tool_call"
  | "tool.approval_requested"
  | "tool.result.accepted"
  | "response.reasoning.delta";
export type EphemeralType =
  | "session.ready"
  | "session.snapshot"
  | "heartbeat"
  | "pong"
  | "error"
  | "message.duplicate"
  | "tool.result.duplicate";

export declare const CLIENT_TYPES: readonly ClientType[];
export declare const LOGGED_TYPES: readonly LoggedType[];
export declare const EPHEMERAL_TYPES: readonly EphemeralType[];
export declare const SERVER_TYPES: readonly (LoggedType | EphemeralType)[];

/** The wire's error codes this version knows; a newer server may send others (kept as strings). */
export type KnownErrorCode =
  | "invalid_message"
  | "unsupported_version"
  | "unauthorized"
  | "forbidden"
  | "session_not_found"
  | "session_lost"
  | "rate_limited"
  | "busy"
  | "payload_too_large"
  | "upstream_unavailable"
  | "upstream_timeout"
  | "policy_refusal"
  | "schema_validation_failed"
  | "overloaded"
  | "internal"
  | "tool_timeout";
export type ErrorCode = KnownErrorCode | (string & {});
export declare const ERROR_CODES: readonly KnownErrorCode[];

/** "tool_calls": the response waits for client tool results; a continuation follows them. */
export type FinishReason =
  | "stop"
  | "length"
  | "cancelled"
  | "interrupted"
  | "content_filter"
  | "error"
  | "tool_calls";
export type Rating = "up" | "down";
export type Scalar = string | number | boolean | null;

// ------------------------------------------------------------------ server events, as on the wire

export interface Usage {
  input_tokens: number;
  output_tokens: number;
  /** part of output_tokens, when the model reports it */
  reasoning_tokens?: number | null;
}

export interface ErrorInfo {
  code: ErrorCode;
  message: string;
  retryable: boolean;
  retry_after_ms?: number;
}

export interface SessionReadyEvent {
  type: "session.ready";
  session_id: string;
  resume_token: string;
  protocol: string;
  heartbeat_interval_ms: number;
  resumed: boolean;
  recovered: boolean;
  last_seq: number;
}

export interface SnapshotToolCall {
  call_id: string;
  name: string;
  arguments: Record<string, unknown>;
  server?: boolean;
}

/** A "tool" turn is one call's result: `id` is the call_id. */
export interface SnapshotTurn {
  role: "user" | "assistant" | "tool";
  id: string;
  content: string;
  finish_reason?: FinishReason | null;
  tool_calls?: SnapshotToolCall[] | null;
  response_id?: string | null;
  name?: string | null;
  output?: unknown;
  is_error?: boolean | null;
}

export interface SessionSnapshotEvent {
  type: "session.snapshot";
  last_seq: number;
  turns: SnapshotTurn[];
  in_flight?: SnapshotTurn;
}

export interface MessageAcceptedEvent {
  seq: number;
  type: "message.accepted";
  client_msg_id: string;
  message_id: string;
  content: string;
}

export interface MessageDuplicateEvent {
  type: "message.duplicate";
  client_msg_id: string;
  message_id: string;
  response_id: string;
  accepted_seq: number;
}

export interface ResponseStartedEvent {
  seq: number;
  type: "response.started";
  response_id: string;
  in_reply_to: string;
  profile: string;
  trace_id: string;
  /** a continuation: the response whose tool results it follows */
  continues?: string | null;
}

export interface ResponseDeltaEvent {
  seq: number;
  type: "response.delta";
  response_id: string;
  text: string;
  ts?: number;
}

export interface ResponseCompletedEvent {
  seq: number;
  type: "response.completed";
  response_id: string;
  finish_reason: FinishReason;
  output?: unknown;
  usage: Usage;
  ttft_ms?: number;
  latency_ms?: number;
  error?: ErrorInfo;
}

// tool calls and reasoning (issue 17)

/** JSON Schema of a tool's arguments (an object schema). */
export type JsonSchema = Record<string, unknown>;

export interface ToolSpec {
  name: string;
  description?: string;
  parameters?: JsonSchema;
}

export type ToolChoice = "auto" | "none" | "required" | { name: string };

export interface ResponseToolCallDeltaEvent {
  seq: number;
  type: "response.tool_call.delta";
  response_id: string;
  call_id: string;
  name: string;
  arguments_delta: string;
}

export interface ResponseToolCallEvent {
  seq: number;
  type: "response.tool_call";
  response_id: string;
  call_id: string;
  name: string;
  arguments: Record<string, unknown>;
  /** true: Parley runs it (a server tool); false: this client answers with tool.result */
  server: boolean;
}

export interface ToolApprovalRequestedEvent {
  seq: number;
  type: "tool.approval_requested";
  response_id: string;
  call_id: string;
  name: string;
  arguments: Record<string, unknown>;
}

export interface ToolResultAcceptedEvent {
  seq: number;
  type: "tool.result.accepted";
  response_id: string;
  call_id: string;
  output: unknown;
  is_error: boolean;
}

export interface ToolResultDuplicateEvent {
  type: "tool.result.duplicate";
  call_id: string;
  response_id: string;
  accepted_seq: number;
}

export interface ResponseReasoningDeltaEvent {
  seq: number;
  type: "response.reasoning.delta";
  response_id: string;
  text: string;
}

export interface FeedbackRecordedEvent {
  seq: number;
  type: "feedback.recorded";
  response_id: string;
  rating: Rating;
}

export interface HeartbeatEvent {
  type: "heartbeat";
  ts: number;
  last_seq: number;
}

export interface PongEvent {
  type: "pong";
  nonce?: string;
}

export interface ErrorEvent {
  type: "error";
  code: ErrorCode;
  message: string;
  retryable: boolean;
  retry_after_ms?: number;
  ref?: { type?: string; client_msg_id?: string; response_id?: string; nonce?: string; call_id?: string };
}

export type ServerEvent =
  | SessionReadyEvent
  | SessionSnapshotEvent
  | MessageAcceptedEvent
  | MessageDuplicateEvent
  | ResponseStartedEvent
  | ResponseDeltaEvent
  | ResponseCompletedEvent
  | FeedbackRecordedEvent
  | ResponseToolCallDeltaEvent
  | ResponseToolCallEvent
  | ToolApprovalRequestedEvent
  | ToolResultAcceptedEvent
  | ToolResultDuplicateEvent
  | ResponseReasoningDeltaEvent
  | HeartbeatEvent
  | PongEvent
  | ErrorEvent;

/** What `stream()` yields: one turn's events (through its tool calls and continuations). */
export type TurnEvent =
  | MessageAcceptedEvent
  | MessageDuplicateEvent
  | ResponseStartedEvent
  | ResponseDeltaEvent
  | ResponseCompletedEvent
  | ResponseToolCallDeltaEvent
  | ResponseToolCallEvent
  | ToolApprovalRequestedEvent
  | ToolResultAcceptedEvent
  | ResponseReasoningDeltaEvent;

// ------------------------------------------------------------------ turns, status, errors

export interface UserTurn {
  role: "user";
  id: string;
  clientMsgId?: string;
  content: string;
}

/**
 * One tool call of an assistant turn. `state`: "streaming" (arguments arriving), "pending" (waiting
 * for this client), "approval" (waiting for the person), "running" (the handler, or the server,
 * is at it), "sent" (result sent, not yet logged), "done" (logged: `output`, `isError`),
 * "abandoned" (the response ended without it: cancelled, timed out).
 */
export interface ToolCallState {
  callId: string;
  name: string;
  /** the complete arguments, once `response.tool_call` arrived */
  arguments: Record<string, unknown> | null;
  /** the arguments' JSON text as streamed so far */
  argumentsText: string;
  server: boolean;
  approvalRequested?: boolean;
  state: "streaming" | "pending" | "approval" | "running" | "sent" | "done" | "abandoned";
  output?: unknown;
  isError?: boolean;
}

export interface AssistantTurn {
  role: "assistant";
  id: string;
  content: string;
  /** the calls this response made, in order */
  toolCalls?: ToolCallState[];
  /** the model's reasoning so far (profiles with reasoning = "stream") */
  reasoning?: string;
  /** the response whose tool results this continuation follows */
  continues?: string;
  /** null while streaming */
  finishReason: FinishReason | null;
  inReplyTo?: string;
  traceId?: string;
  profile?: string;
  usage?: Usage | null;
  ttftMs?: number | null;
  latencyMs?: number | null;
  error?: ErrorInfo | null;
  output?: unknown;
  rating?: Rating;
}

export type Turn = UserTurn | AssistantTurn;

export type ConnectionState = "idle" | "connecting" | "connected" | "reconnecting" | "failed" | "closed";

/** How the client reaches the server: the WebSocket, or server-sent events + POST (docs/http.md). */
export type Transport = "websocket" | "sse";
/** `options.transport`: "auto" (the default) starts with the WebSocket and falls back to "sse". */
export type TransportOption = "auto" | Transport;

export interface Status {
  state: ConnectionState;
  sessionId?: string | null;
  /** the transport in use, or being tried */
  transport?: Transport;
  resumed?: boolean;
  recovered?: boolean;
  attempt?: number;
  retryInMs?: number;
  retryAt?: number;
  offline?: boolean;
  code?: number | null;
  reason?: string;
  error?: ParleyError;
}

export interface ErrorDetails {
  willRetry?: boolean;
  retryInMs?: number | null;
  retryAt?: number;
  clientMsgId?: string;
  fatal?: boolean;
}

export interface Stats {
  connects: number;
  resumes: number;
  reconnects: number;
  duplicatesDropped: number;
  gaps: number;
  snapshots: number;
  /** times "auto" switched transport */
  transportSwitches: number;
}

export declare class ParleyError extends Error {
  constructor(
    code: ErrorCode,
    message?: string,
    options?: { retryable?: boolean; retryAfterMs?: number | null; ref?: object | null; closeCode?: number | null },
  );
  /** The wire's error code; a code this version does not know is kept as sent (e.g. "session_lost"),
   * and a close code it does not know reads "close_<code>". */
  code: ErrorCode;
  retryable: boolean;
  retryAfterMs: number | null;
  ref: object | null;
  closeCode: number | null;
  static fromEvent(ev: ErrorEvent): ParleyError;
}

// ------------------------------------------------------------------ the client

export type TokenProvider = string | (() => string | null | Promise<string | null>);

export interface StorageLike {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
}

export interface WebSocketLike {
  readonly readyState: number;
  onopen: ((ev: any) => any) | null;
  onmessage: ((ev: { data: any }) => any) | null;
  onclose: ((ev: { code: number; reason: string }) => any) | null;
  onerror: ((ev: any) => any) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

/** The part of fetch() the SSE transport uses (a streaming `body`, as browsers and Node >= 18 give). */
export type FetchLike = (
  url: string,
  init: { method: string; headers: Record<string, string>; body?: string; signal: AbortSignal },
) => Promise<Response>;

/** A server-sent events parser (the WHATWG EventSource rules) for text fed in chunks of any size. */
export declare class SseParser {
  constructor(onEvent: (ev: { type: string; data: string; id: string }) => void, onComment?: (text: string) => void);
  /** the stream's last `id:` ("" before any) */
  lastEventId: string;
  /** the stream's last valid `retry:` in ms, or null */
  retry: number | null;
  /** feed decoded text; complete events are dispatched at once */
  push(text: string): void;
  /** the stream ended: an event without its blank line is dropped */
  end(): void;
}

export interface ParleyClientOptions {
  /** default ws(s)://<location.host>/v1/ws in a browser; required elsewhere */
  url?: string;
  /** default globalThis.WebSocket (browsers, Node >= 22); pass `ws`'s WebSocket in older Node */
  WebSocket?: WebSocketConstructor | (abstract new (...args: any[]) => any) | null;
  /** "auto" (default): the WebSocket, falling back to SSE + POST when it fails before session.ready */
  transport?: TransportOption;
  /** WebSocket attempts in a row that fail before session.ready after which "auto" switches (2) */
  fallbackAfter?: number;
  /** the HTTP API's base URL; default the url's (ws(s)://host/v1/ws -> http(s)://host/v1) */
  httpUrl?: string;
  /** default globalThis.fetch */
  fetch?: FetchLike | typeof fetch;
  token?: TokenProvider;
  metadata?: Record<string, Scalar>;
  profile?: string;
  /** default sessionStorage; null keeps nothing (no resume across reloads) */
  storage?: StorageLike | null;
  storageKey?: string;
  backoff?: { initialMs?: number; maxMs?: number; factor?: number };
  heartbeatMisses?: number;
  connectTimeoutMs?: number;
  catchUpTimeoutMs?: number;
  stableAfterMs?: number;
  maxFrameBytes?: number;
  maxSendRetries?: number;
  /** injection points for tests */
  now?: () => number;
  timers?: { setTimeout(fn: () => void, ms: number): any; clearTimeout(id: any): void };
  random?: () => number;
  window?: any;
}

export interface SendOptions {
  clientMsgId?: string;
  profile?: string;
  responseFormat?: { type: "text" } | { type: "json_schema"; name?: string; schema: object };
  metadata?: Record<string, Scalar>;
  /** tools for this turn only (message.send.tools), answered with toolResult() or a registered handler */
  tools?: ToolSpec[];
  toolChoice?: ToolChoice;
}

/** What a tool handler gets besides its arguments. */
export interface ToolCallInfo {
  callId: string;
  responseId: string;
  name: string;
}

/** A tool's output: a string or any JSON value. */
export type ToolOutput = string | number | boolean | null | object | undefined;

export type ToolHandler<A = any> = (args: A, call: ToolCallInfo) => ToolOutput | Promise<ToolOutput>;

export interface ToolOptions {
  /** ask the person first: each call emits "approval" and waits for allow() or deny() */
  approve?: boolean;
}

/** A call waiting for the person's decision (the "approval" event). */
export declare class ToolApproval {
  readonly client: ParleyClient;
  readonly responseId: string;
  readonly callId: string;
  readonly name: string;
  readonly arguments: Record<string, unknown>;
  /** a server tool (decided with tool.approve) rather than one of this client's */
  readonly server: boolean;
  /** false once decided, answered elsewhere, or the response ended */
  open: boolean;
  decision: "allowed" | "denied" | null;
  /** client tool: run the handler and send its result; server tool: tool.approve{approved: true} */
  allow(): Promise<void>;
  approve(): Promise<void>;
  /** client tool: tool.result{is_error: true, output: "denied by the user"}; server: approved: false */
  deny(): Promise<void>;
}

export type PendingCall = ToolCallState & { responseId: string };

export type SendPromise = Promise<AssistantTurn> & { clientMsgId: string };

/** Handler arguments per event name, for `on()`; `ParleyEvent` carries the same for EventTarget listeners. */
export interface ParleyEventMap {
  status: [Status];
  ready: [SessionReadyEvent];
  message: [MessageAcceptedEvent, UserTurn, { own: boolean }];
  started: [ResponseStartedEvent, AssistantTurn];
  delta: [ResponseDeltaEvent, AssistantTurn];
  completed: [ResponseCompletedEvent, AssistantTurn];
  feedback: [FeedbackRecordedEvent, AssistantTurn | null];
  conversation: [{ reason: "snapshot" | "reset" | "new_session" | "session_not_found" | "session_lost" | "resync" }];
  snapshot: [SessionSnapshotEvent];
  reset: [{ reason: string }];
  error: [ErrorEvent, ErrorDetails];
  duplicate: [MessageDuplicateEvent];
  heartbeat: [HeartbeatEvent];
  pong: [PongEvent];
  disconnect: [{ code: number; reason: string; wasReady: boolean }];
  gap: [{ expected: number; got: number }];
  transport: [{ transport: Transport; previous: Transport; reason: string }];
  event: [{ type: string; [key: string]: unknown }];
  // tool calls and reasoning (issue 17)
  tool_call_delta: [ResponseToolCallDeltaEvent, AssistantTurn];
  tool_call: [ResponseToolCallEvent, AssistantTurn];
  approval_requested: [ToolApprovalRequestedEvent, AssistantTurn];
  tool_result: [ToolResultAcceptedEvent, AssistantTurn];
  tool_duplicate: [ToolResultDuplicateEvent];
  /** a call needs the person's decision: show it, then call allow() or deny() */
  approval: [ToolApproval, AssistantTurn];
  /** a call's local state changed (asked, running, sent) */
  tool_state: [{ callId: string; state: ToolCallState["state"] }, AssistantTurn];
  reasoning: [ResponseReasoningDeltaEvent, AssistantTurn];
}

export type ParleyEventName = keyof ParleyEventMap;

export declare class ParleyEvent<K extends ParleyEventName = ParleyEventName> extends Event {
  constructor(type: K, args: ParleyEventMap[K]);
  readonly type: K;
  /** the first handler argument: the wire event, or the status object */
  detail: ParleyEventMap[K][0];
  args: ParleyEventMap[K];
  /** the updated turn (message, started, delta, completed, feedback), else null */
  turn: Turn | null;
  /** for "error": willRetry, retryInMs, fatal, ... */
  info: ErrorDetails | null;
}

export declare class TurnStream implements AsyncIterableIterator<TurnEvent> {
  readonly client: ParleyClient;
  readonly clientMsgId: string;
  /** the send() promise: the assistant turn once the reply completed */
  readonly done: SendPromise;
  messageId: string | null;
  responseId: string | null;
  /** every response of this turn: the first, then one continuation per round of tool results */
  readonly responseIds: string[];
  /** the text so far of the newest response (the continuation's, after tool calls) */
  text: string;
  /** the assistant turn, once completed */
  turn: AssistantTurn | null;
  next(): Promise<IteratorResult<TurnEvent, undefined>>;
  return(): Promise<IteratorResult<TurnEvent, undefined>>;
  [Symbol.asyncIterator](): TurnStream;
  cancel(): Promise<AssistantTurn | null>;
  feedback(rating: Rating | number, opts?: { comment?: string; tags?: string[] }): Promise<FeedbackRecordedEvent>;
}

export declare class ParleyClient extends EventTarget {
  constructor(url: string, options?: ParleyClientOptions);
  constructor(options?: ParleyClientOptions);
  readonly url: string;
  /** the HTTP API's base URL (used by the SSE transport) */
  readonly httpUrl: string;
  /** the transport in use, or being tried */
  readonly transport: Transport;
  status: Status;
  readonly state: ConnectionState;
  sessionId: string | null;
  resumeToken: string | null;
  lastSeq: number;
  heartbeatIntervalMs: number;
  stats: Stats;
  readonly turns: Turn[];
  readonly outbox: { clientMsgId: string; content: string }[];
  readonly activeResponseId: string | null;
  /** calls still waiting (for this client's result, the person's decision, or a server tool) */
  readonly pendingCalls: PendingCall[];
  /** the approvals waiting for the person */
  readonly approvals: ToolApproval[];
  turn(id: string): Turn | null;
  /** register a tool (declared in hello.tools); returns a function that unregisters it */
  tool<A = any>(
    name: string,
    spec: { description?: string; parameters?: JsonSchema },
    handler: ToolHandler<A> | null,
    options?: ToolOptions,
  ): () => void;
  /** answer a client call yourself; safe to repeat (idempotent by call_id) */
  toolResult(callId: string, output: ToolOutput, opts?: { isError?: boolean }): void;

  connect(): Promise<SessionReadyEvent>;
  close(): void;
  send(content: string, opts?: SendOptions): SendPromise;
  stream(content: string, opts?: SendOptions): TurnStream;
  cancel(responseId?: string | null): Promise<AssistantTurn | null>;
  feedback(
    responseId: string,
    rating: Rating | number,
    opts?: { comment?: string; tags?: string[] },
  ): Promise<FeedbackRecordedEvent>;
  reset(): void;

  on<K extends ParleyEventName>(type: K, fn: (...args: ParleyEventMap[K]) => void): () => void;
  on(type: "*", fn: (type: ParleyEventName, ...args: unknown[]) => void): () => void;
  once<K extends ParleyEventName>(type: K, fn: (...args: ParleyEventMap[K]) => void): () => void;
  off(type: string, fn: (...args: any[]) => void): void;

  addEventListener<K extends ParleyEventName>(
    type: K,
    listener: (ev: ParleyEvent<K>) => void,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | AddEventListenerOptions,
  ): void;
  removeEventListener<K extends ParleyEventName>(
    type: K,
    listener: (ev: ParleyEvent<K>) => void,
    options?: boolean | EventListenerOptions,
  ): void;
  removeEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | EventListenerOptions,
  ): void;
}

/** "Equal jitter" exponential backoff: a delay in [cap/2, cap], cap = min(maxMs, initialMs * factor^attempt). */
export declare function backoffDelay(
  attempt: number,
  opts?: { initialMs?: number; maxMs?: number; factor?: number },
  random?: () => number,
): number;

/** A random id that works in insecure contexts too. */
export declare function randomId(prefix?: string): string;

export default ParleyClient;
