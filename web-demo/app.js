// The Parley demo chat: a thin view over ParleyClient.
// All user and model text goes through textContent; nothing is ever parsed as HTML.

import { ParleyClient } from "./parley-client.js";

const $ = (sel, root = document) => root.querySelector(sel);

const wsUrl = (() => {
  const u = new URL("v1/ws", document.baseURI);
  u.protocol = u.protocol === "https:" ? "wss:" : "ws:";
  u.hash = "";
  u.search = "";
  return u.href;
})();

// ------------------------------------------------------------ sign-in token
// With auth on, the server wants a JWT in hello.token. The page takes one from its URL
// (`/#token=...`, removed from the address bar at once) or from the sign-in field that
// appears when the server says "unauthorized"; it is kept for this tab only.
const TOKEN_KEY = "parley:demo-token";
let token = null;
let needSignIn = false; // the server refused our token (or the lack of one): wait for a new one
let tokenWaiter = null; // resolves the client's pending token request after a sign-in

function takeTokenFromUrl() {
  const params = new URLSearchParams(location.hash.slice(1));
  const t = params.get("token");
  if (!t) return null;
  params.delete("token");
  const rest = params.toString();
  history.replaceState(null, "", location.pathname + location.search + (rest ? `#${rest}` : ""));
  return t.trim() || null;
}

function storedToken() {
  try {
    return sessionStorage.getItem(TOKEN_KEY);
  } catch {
    return null;
  }
}

function rememberToken(t) {
  token = t;
  try {
    if (t) sessionStorage.setItem(TOKEN_KEY, t);
    else sessionStorage.removeItem(TOKEN_KEY);
  } catch {
    /* storage unavailable: the token lives in this page only */
  }
}

rememberToken(takeTokenFromUrl() || storedToken());

// Asked before every connection attempt. Without auth a null token is fine; once the server
// refused, the next attempt waits here until the user signs in (no pointless reconnect loop).
function tokenProvider() {
  if (!needSignIn) return token;
  return new Promise((resolve) => {
    tokenWaiter = resolve;
  });
}

const client = new ParleyClient({
  url: wsUrl,
  token: tokenProvider,
  metadata: { client: "web-demo" },
  transport: transportOption(), // see "transport" below
});
// Handy for debugging and for tests (window.parley.status, .turns, .stats).
window.parley = client;

const els = {
  log: $("#log"),
  empty: $("#empty"),
  status: $("#status"),
  statusText: $("#status .status-text"),
  notice: $("#notice"),
  noticeText: $("#notice .notice-text"),
  noticeClose: $("#notice .notice-close"),
  form: $("#composer-form"),
  composer: $("#composer"),
  send: $("#send"),
  stop: $("#stop"),
  newChat: $("#new-chat"),
  signin: $("#signin"),
  signinToken: $("#signin-token"),
  tplUser: $("#tpl-user"),
  tplAssistant: $("#tpl-assistant"),
};

// ------------------------------------------------------------ human errors

const ERROR_TEXT = {
  tool_timeout: "The reply waited too long for a tool's answer.",
  rate_limited: "You are sending messages too quickly.",
  busy: "A reply is still being written. Wait for it to finish, or press Stop.",
  overloaded: "The server is very busy right now.",
  upstream_unavailable: "The AI service is unavailable right now.",
  upstream_timeout: "The AI service took too long to answer.",
  payload_too_large: "That message is too long to send.",
  policy_refusal: "The assistant cannot help with that request.",
  schema_validation_failed: "The reply did not come back in the expected format.",
  invalid_message: "The server could not accept that request.",
  unauthorized: "You are not signed in, or your sign-in has expired. Paste a token below to sign in.",
  forbidden: "You do not have access to this conversation.",
  session_not_found: "Your previous conversation has expired, so a new one was started.",
  unsupported_version: "This page is out of date. Reload it to continue.",
  internal: "Something went wrong on the server.",
};

function humanError(code, fallback) {
  return ERROR_TEXT[code] || fallback || "Something went wrong.";
}

const FINISH_BADGE = {
  cancelled: "Stopped",
  length: "Cut short: the reply reached its length limit",
  interrupted: "Interrupted: the server lost this reply",
  content_filter: "Withheld by the content filter",
  error: "The reply failed",
};

const FAILED_FINISH = new Set(["error", "interrupted"]);

const FINISH_STATE = {
  tool_calls: "tools", // waiting for tool results; the continuation is the next reply (issue 17)
  stop: "done",
  cancelled: "stopped",
  length: "length",
  interrupted: "interrupted",
  content_filter: "filtered",
  error: "error",
};

// ------------------------------------------------------------ countdowns

// One ticking display per element; purely cosmetic (no logic waits on it).
function countdown(el, deadline, render) {
  clearInterval(el._countdown);
  const draw = () => {
    const left = Math.max(0, Math.ceil((deadline - Date.now()) / 1000));
    el.textContent = render(left);
    if (left <= 0) clearInterval(el._countdown);
  };
  draw();
  el._countdown = setInterval(draw, 250);
}

function stopCountdown(el) {
  clearInterval(el._countdown);
}

// ------------------------------------------------------------ notice

function showNotice(text, { retryAt = null, kind = "error" } = {}) {
  els.notice.hidden = false;
  els.notice.dataset.kind = kind;
  if (retryAt) {
    countdown(els.noticeText, retryAt, (s) => (s > 0 ? `${text} Retrying in ${s} s…` : `${text} Retrying now…`));
  } else {
    stopCountdown(els.noticeText);
    els.noticeText.textContent = text;
  }
}

function hideNotice() {
  stopCountdown(els.noticeText);
  els.notice.hidden = true;
  els.noticeText.textContent = "";
}

els.noticeClose.addEventListener("click", hideNotice);

// ------------------------------------------------------------ status

function renderStatus(st) {
  let state = st.state;
  let text;
  switch (st.state) {
    case "idle":
    case "connecting":
      state = "connecting";
      text = "Connecting…";
      stopCountdown(els.statusText);
      break;
    case "connected":
      state = st.resumed ? "resumed" : "connected";
      text = st.resumed ? (st.recovered ? "Connected (resumed)" : "Connected (restored)") : "Connected";
      stopCountdown(els.statusText);
      break;
    case "reconnecting": {
      const prefix = st.offline ? "Offline." : "Connection lost.";
      if (st.retryAt) {
        countdown(els.statusText, st.retryAt, (s) =>
          s > 0 ? `${prefix} Reconnecting in ${s} s…` : `${prefix} Reconnecting…`,
        );
        text = null;
      } else {
        stopCountdown(els.statusText);
        text = "Reconnecting…";
      }
      break;
    }
    case "failed":
      stopCountdown(els.statusText);
      text = `Disconnected: ${humanError(st.error?.code, st.reason)}`;
      break;
    case "closed":
      stopCountdown(els.statusText);
      text = "Disconnected";
      break;
    default:
      text = st.state;
  }
  if (needSignIn && st.state !== "connected") {
    stopCountdown(els.statusText);
    state = "signin";
    text = "Not signed in";
  }
  els.status.dataset.state = state;
  if (text !== null) els.statusText.textContent = text;
  updateControls();
}

// ------------------------------------------------------------ messages

const nodes = new Map(); // turn id (or client_msg_id while pending) -> element

function nearBottom() {
  const el = els.log;
  return el.scrollHeight - el.scrollTop - el.clientHeight < 80;
}

// Follow the conversation while the reader is at the bottom; leave them alone if they scrolled up.
function keepScrolled(fn) {
  const stick = nearBottom();
  fn();
  if (stick) els.log.scrollTop = els.log.scrollHeight;
}

// The log shows the conversation in its log order, then the messages still waiting to be sent
// (offline, or while the server is down). A turn that arrives goes before the first waiting
// message, so You1, Reply1, You2, Reply2 reads the same now as after a reload.
function appendNode(el, pending = false) {
  els.empty.hidden = true;
  const firstWaiting = pending ? null : els.log.querySelector('.msg.user[data-state="pending"]');
  if (firstWaiting && firstWaiting !== el) els.log.insertBefore(el, firstWaiting);
  else els.log.append(el);
}

function userNode(turn) {
  let el = nodes.get(turn.id) || (turn.clientMsgId && nodes.get(turn.clientMsgId));
  if (!el) {
    el = els.tplUser.content.firstElementChild.cloneNode(true);
    appendNode(el, !!turn.pending);
  }
  nodes.set(turn.id, el);
  el.dataset.id = turn.id;
  if (turn.clientMsgId) el.dataset.clientMsgId = turn.clientMsgId;
  $(".text", el).textContent = turn.content;
  el.dataset.state = turn.pending ? "pending" : "sent";
  const badge = $(".badge", el);
  badge.hidden = !turn.pending;
  badge.textContent = turn.pending ? "Sending…" : "";
  return el;
}

function addDetail(dl, label, value) {
  const dt = document.createElement("dt");
  dt.textContent = label;
  const dd = document.createElement("dd");
  dd.textContent = value;
  dl.append(dt, dd);
}

function assistantNode(turn) {
  let el = nodes.get(turn.id);
  if (!el) {
    el = els.tplAssistant.content.firstElementChild.cloneNode(true);
    el.dataset.responseId = turn.id;
    wireAssistant(el, turn.id);
    appendNode(el);
    nodes.set(turn.id, el);
  }
  $(".text", el).textContent = turn.content;
  renderTools(el, turn); // tool calls, results and reasoning (issue 17)
  const waiting = turn.finishReason === "tool_calls"; // not the end: its continuation follows
  const done = turn.finishReason != null && !waiting;
  el.dataset.state = turn.finishReason != null ? FINISH_STATE[turn.finishReason] || "done" : "streaming";
  el.dataset.finishReason = turn.finishReason ?? "";
  el.setAttribute("aria-busy", String(!done && !waiting));

  const badge = $(".badge", el);
  let badgeText = done ? FINISH_BADGE[turn.finishReason] || "" : "";
  if (done && turn.error && turn.finishReason !== "cancelled") {
    badgeText = `${badgeText}. ${humanError(turn.error.code, turn.error.message)}`.replace(/^\. /, "");
  }
  badge.textContent = badgeText;
  badge.hidden = !badgeText;

  $(".actions", el).hidden = !done;
  $(".retry", el).hidden = !(done && (turn.finishReason === "interrupted" || turn.error?.retryable));
  // a reply that failed is not something to rate: offer Retry, not thumbs
  const failed = done && FAILED_FINISH.has(turn.finishReason);
  $(".feedback", el).hidden = failed;
  if (failed) $(".comment", el).hidden = true;

  const rating = turn.rating ?? null;
  $(".fb.up", el).setAttribute("aria-pressed", String(rating === "up"));
  $(".fb.down", el).setAttribute("aria-pressed", String(rating === "down"));
  el.dataset.rating = rating ?? "";

  const dl = $(".meta dl", el);
  dl.replaceChildren();
  addDetail(dl, "Response id", turn.id);
  if (turn.traceId) addDetail(dl, "Trace id", turn.traceId);
  if (turn.profile) addDetail(dl, "Profile", turn.profile);
  if (turn.usage) addDetail(dl, "Tokens", `${turn.usage.input_tokens} in / ${turn.usage.output_tokens} out`);
  if (turn.ttftMs != null) addDetail(dl, "Time to first token", `${turn.ttftMs} ms`);
  if (turn.latencyMs != null) addDetail(dl, "Total time", `${(turn.latencyMs / 1000).toFixed(2)} s`);
  if (done && !turn.traceId) addDetail(dl, "Note", "restored from a snapshot; some details are unavailable");
  return el;
}

function renderTurn(turn) {
  keepScrolled(() => (turn.role === "user" ? userNode(turn) : assistantNode(turn)));
  updateControls();
}

function renderOutbox() {
  for (const m of client.outbox) {
    if (!nodes.has(m.clientMsgId)) {
      const el = userNode({ id: m.clientMsgId, clientMsgId: m.clientMsgId, content: m.content, pending: true });
      nodes.set(m.clientMsgId, el);
    }
  }
}

function renderAll() {
  for (const el of nodes.values()) el.remove();
  nodes.clear();
  for (const turn of client.turns) renderTurn(turn);
  renderOutbox();
  els.empty.hidden = nodes.size > 0;
  updateControls();
}

function lastUserContentBefore(responseId) {
  const turns = client.turns;
  const i = turns.findIndex((t) => t.id === responseId);
  for (let j = (i < 0 ? turns.length : i) - 1; j >= 0; j--) if (turns[j].role === "user") return turns[j].content;
  return null;
}

function wireAssistant(el, responseId) {
  const fbStatus = $(".fb-status", el);
  const commentForm = $(".comment", el);
  const commentInput = $("input", commentForm);
  let lastRating = null;

  const rate = (rating, comment) => {
    lastRating = rating;
    fbStatus.textContent = "Saving…";
    client.feedback(responseId, rating, comment ? { comment } : {}).then(
      () => {
        fbStatus.textContent = comment ? "Thanks for the comment." : "Thanks for the feedback.";
        el.dataset.feedbackRecorded = rating;
      },
      (err) => {
        fbStatus.textContent = `Feedback not saved: ${humanError(err.code, err.message)}`;
      },
    );
  };

  for (const [sel, rating] of [[".fb.up", "up"], [".fb.down", "down"]]) {
    $(sel, el).addEventListener("click", () => {
      rate(rating);
      commentForm.hidden = false;
      commentInput.focus();
    });
  }
  commentForm.addEventListener("submit", (e) => {
    e.preventDefault();
    const text = commentInput.value.trim();
    if (!text || !lastRating) return;
    rate(lastRating, text);
    commentForm.hidden = true;
  });
  $(".retry", el).addEventListener("click", () => {
    const content = lastUserContentBefore(responseId);
    if (content) sendText(content);
  });
}

// ------------------------------------------------------------ tool calls (issue 17)
// One page tool, set_theme, that the model may call (try `/tool set_theme {"theme": "dark"}`
// with the echo model). Each call shows as a card in the reply; a call waiting for the person
// has Allow / Deny. The card is drawn from the client's turn model, which survives a reload:
// the client asks again once the log is replayed (the "approval" event), so the card comes back.

const THEME_KEY = "parley:demo-theme";
const approvals = new Map(); // call_id -> ToolApproval (the "approval" event's)

function applyTheme(theme) {
  if (theme !== "light" && theme !== "dark") return;
  document.documentElement.dataset.theme = theme;
  try {
    sessionStorage.setItem(THEME_KEY, theme);
  } catch {
    /* storage unavailable: the theme lasts as long as the page */
  }
}

try {
  applyTheme(sessionStorage.getItem(THEME_KEY));
} catch {
  /* no storage */
}

client.tool(
  "set_theme",
  {
    description: "Switch this page between the light and the dark theme.",
    parameters: {
      type: "object",
      properties: { theme: { type: "string", enum: ["light", "dark"] } },
      required: ["theme"],
      additionalProperties: false,
    },
  },
  ({ theme }) => {
    if (theme !== "light" && theme !== "dark") throw new Error(`unknown theme ${JSON.stringify(theme)}`);
    applyTheme(theme);
    return { theme };
  },
  { approve: true },
);

const CALL_STATUS = {
  streaming: "Writing the call…",
  pending: "Waiting…",
  approval: "Needs your approval",
  running: "Running…",
  sent: "Sending the result…",
  abandoned: "Not run: the reply ended first",
};

function outputText(output) {
  return typeof output === "string" ? output : JSON.stringify(output);
}

function callStatus(call) {
  if (call.state === "done") {
    if (!call.isError) return "Done";
    return outputText(call.output) === "denied by the user" ? "Denied" : "Failed";
  }
  if (call.server && call.state === "running") return "Running on the server…";
  return CALL_STATUS[call.state] || call.state;
}

function describeCall(call) {
  const args = call.arguments ?? {};
  if (call.name === "set_theme" && typeof args.theme === "string") {
    return `The assistant wants to switch this page to the ${args.theme} theme.`;
  }
  return `The assistant wants to run ${call.name}.`;
}

function callCard(call) {
  const card = document.createElement("div");
  card.className = "tool-call";
  card.setAttribute("data-testid", "tool-call");
  card.dataset.callId = call.callId;
  card.dataset.state = call.state;
  if (call.state === "done") card.dataset.outcome = call.isError ? "error" : "ok";

  const head = document.createElement("div");
  head.className = "tool-head";
  const name = document.createElement("span");
  name.className = "tool-name";
  name.textContent = call.server ? `${call.name} (server)` : call.name;
  const args = document.createElement("code");
  args.className = "tool-args";
  args.setAttribute("data-testid", "tool-args");
  args.textContent = call.arguments ? JSON.stringify(call.arguments) : call.argumentsText;
  const status = document.createElement("span");
  status.className = "tool-status";
  status.setAttribute("data-testid", "tool-status");
  status.textContent = callStatus(call);
  head.append(name, args, status);
  card.append(head);

  if (call.state === "approval") {
    const box = document.createElement("div");
    box.className = "tool-approval";
    box.setAttribute("role", "group");
    box.setAttribute("aria-label", `Approve ${call.name}`);
    const why = document.createElement("p");
    why.textContent = describeCall(call);
    const allow = document.createElement("button");
    allow.type = "button";
    allow.textContent = "Allow";
    allow.setAttribute("data-testid", "tool-allow");
    const deny = document.createElement("button");
    deny.type = "button";
    deny.className = "secondary";
    deny.textContent = "Deny";
    deny.setAttribute("data-testid", "tool-deny");
    const approval = approvals.get(call.callId);
    // Before the replay after a reload is done the client has not asked yet: wait for it.
    allow.disabled = deny.disabled = !approval?.open;
    allow.addEventListener("click", () => decide(call.callId, true));
    deny.addEventListener("click", () => decide(call.callId, false));
    box.append(why, allow, deny);
    card.append(box);
  }
  if (call.state === "done") {
    const result = document.createElement("div");
    result.className = "tool-result";
    result.setAttribute("data-testid", "tool-result");
    result.textContent = outputText(call.output);
    card.append(result);
  }
  return card;
}

function decide(callId, allowed) {
  const approval = approvals.get(callId);
  if (!approval || !approval.open) return;
  approvals.delete(callId);
  (allowed ? approval.allow() : approval.deny()).catch((err) => showNotice(humanError(err.code, err.message)));
}

/** The calls, their results and the reasoning (collapsed) of one assistant turn. */
function renderTools(el, turn) {
  const tools = $(".tools", el);
  const calls = turn.toolCalls ?? [];
  tools.hidden = calls.length === 0;
  tools.replaceChildren(...calls.map(callCard));
  for (const call of calls) if (call.state === "done" || call.state === "abandoned") approvals.delete(call.callId);
  const reasoning = $(".reasoning", el);
  reasoning.hidden = !turn.reasoning;
  $(".reasoning-text", el).textContent = turn.reasoning ?? "";
}

// ------------------------------------------------------------ controls

function updateControls() {
  const active = client.activeResponseId;
  els.stop.disabled = !active || els.stop.dataset.stopping === active;
  els.stop.textContent = els.stop.dataset.stopping === active && active ? "Stopping…" : "Stop";
  const failed = client.state === "failed";
  els.send.disabled = failed;
  els.composer.disabled = failed;
}

// "Too long" says the limit and gives the text back, so the user can shorten it.
function tooLongText(err, text) {
  const limit = /(\d+) (characters|bytes)/.exec(err.message || "");
  const size = limit && limit[2] === "bytes" ? new TextEncoder().encode(text).length : text.length;
  const unit = limit ? limit[2] : "characters";
  const fmt = (n) => Number(n).toLocaleString("en");
  const what = limit ? `the limit is ${fmt(limit[1])} ${unit}, this one has ${fmt(size)}` : err.message;
  return `That message is too long to send: ${what}. Shorten it and send again.`;
}

function giveBack(id, text, err) {
  const el = id && nodes.get(id);
  if (el) {
    el.remove();
    nodes.delete(id);
  }
  els.empty.hidden = nodes.size > 0;
  if (!els.composer.value) els.composer.value = text; // never overwrite what was typed since
  showNotice(tooLongText(err, text));
  els.composer.focus();
}

function sendText(text) {
  hideNotice();
  const promise = client.send(text);
  const id = promise.clientMsgId;
  if (id && !nodes.has(id) && !client.turns.some((t) => t.clientMsgId === id)) {
    nodes.set(id, userNode({ id, clientMsgId: id, content: text, pending: true }));
  }
  els.log.scrollTop = els.log.scrollHeight; // the sender wants to see the answer: follow it
  promise.catch((err) => {
    if (err.code === "payload_too_large") {
      giveBack(id, text, err);
      return;
    }
    const el = id && nodes.get(id);
    if (el && el.dataset.state === "pending") {
      el.dataset.state = "failed";
      const badge = $(".badge", el);
      badge.hidden = false;
      badge.textContent = `Not sent: ${humanError(err.code, err.message)}`;
    }
    if (err.code !== "reset") showNotice(humanError(err.code, err.message));
  });
  updateControls();
}

els.form.addEventListener("submit", (e) => {
  e.preventDefault();
  const text = els.composer.value;
  if (!text.trim()) return;
  els.composer.value = "";
  sendText(text);
  els.composer.focus();
});

els.composer.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing && !e.altKey && !e.ctrlKey && !e.metaKey) {
    e.preventDefault();
    els.form.requestSubmit();
  }
});

els.stop.addEventListener("click", () => {
  const id = client.activeResponseId;
  if (!id) return;
  els.stop.dataset.stopping = id;
  updateControls();
  client.cancel(id).finally(() => {
    delete els.stop.dataset.stopping;
    updateControls();
  });
});

els.newChat.addEventListener("click", () => {
  hideNotice();
  client.reset();
  els.composer.focus();
});

// ------------------------------------------------------------ sign-in

function askForSignIn() {
  needSignIn = true;
  rememberToken(null);
  els.signin.hidden = false;
  renderStatus(client.status);
  els.signinToken.focus();
}

els.signin.addEventListener("submit", (e) => {
  e.preventDefault();
  const t = els.signinToken.value.trim();
  if (!t) return;
  els.signinToken.value = "";
  rememberToken(t);
  needSignIn = false;
  els.signin.hidden = true;
  hideNotice();
  if (tokenWaiter) {
    const resolve = tokenWaiter;
    tokenWaiter = null;
    resolve(t); // the client's connection attempt was waiting for this
  } else {
    client.close(); // waiting out a backoff: connect now instead
    client.connect().catch(() => {});
  }
  els.composer.focus();
});

// ------------------------------------------------------------ transport
// Which way this page reaches the server: a WebSocket, or SSE (server-sent events for what the
// server says, HTTP POST for what we send) when WebSockets are blocked on the way; the client
// ("auto", its default) falls back by itself. `?transport=sse` or `?transport=websocket` in the
// page's address forces one, to try it out.
const transportEl = $("#transport");
const TRANSPORT_LABEL = { websocket: "WebSocket", sse: "SSE" };
const TRANSPORT_TITLE = {
  websocket: "Connected over a WebSocket",
  sse: "Connected over server-sent events and HTTP POST (no WebSocket)",
};

function transportOption() {
  const asked = new URLSearchParams(location.search).get("transport");
  return ["auto", "websocket", "sse"].includes(asked) ? asked : "auto";
}

function renderTransport(st) {
  const kind = client.transport;
  transportEl.textContent = TRANSPORT_LABEL[kind] ?? kind;
  transportEl.dataset.transport = kind;
  transportEl.title = TRANSPORT_TITLE[kind] ?? "";
  transportEl.hidden = st.state !== "connected"; // what is being tried meanwhile is not news
}

client.on("status", renderTransport);

// ------------------------------------------------------------ client events

client.on("status", (st) => {
  renderStatus(st);
  if (st.state === "connected") {
    if (els.notice.dataset.kind === "connection") hideNotice();
  }
});
client.on("conversation", renderAll);
client.on("message", (_ev, turn) => renderTurn(turn));
client.on("started", (_ev, turn) => renderTurn(turn));
client.on("delta", (_ev, turn) => renderTurn(turn));
client.on("completed", (_ev, turn) => renderTurn(turn));
client.on("feedback", (_ev, turn) => turn && renderTurn(turn));
client.on("reset", () => showNotice(humanError("session_not_found"), { kind: "info" }));
// tool calls and reasoning (issue 17)
for (const type of ["tool_call_delta", "tool_call", "approval_requested", "tool_result", "tool_state", "reasoning"]) {
  client.on(type, (_ev, turn) => renderTurn(turn));
}
client.on("approval", (approval, turn) => {
  approvals.set(approval.callId, approval);
  renderTurn(turn);
});
client.on("error", (ev, info = {}) => {
  if (ev.code === "unauthorized") askForSignIn();
  if (info.fatal) return; // shown in the status line
  const text = humanError(ev.code, ev.message);
  if (info.willRetry && info.retryAt) showNotice(text, { retryAt: info.retryAt, kind: "connection" });
  else showNotice(text);
});

renderAll();
renderStatus(client.status);
client.connect().catch(() => {});
els.composer.focus();
