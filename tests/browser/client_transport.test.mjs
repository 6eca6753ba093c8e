// Unit tests of parley-client.js's transports: the SSE parser, SSE + POST against a scripted
// fake fetch, the "auto" fallback from the WebSocket, and resume across the switch.
// Run with `node --test tests/browser/` (tests/browser/test_client_unit.py does).
// A fake fetch, a fake WebSocket and a fake clock make every step deterministic: no network.

import assert from "node:assert/strict";
import { test } from "node:test";

import { FakeClock, FakeStorage, fakeWebSocket } from "./fakes.mjs";

import { ParleyClient, ParleyError, SseParser } from "../../web-demo/parley-client.js";

// ------------------------------------------------------------------ fakes

const abortError = () => new DOMException("The operation was aborted.", "AbortError");

/** A scripted server behind fetch(): every request waits until the test answers it. */
class FakeHttp {
  constructor() {
    this.requests = [];
  }

  fetch = (url, init = {}) => {
    const u = new URL(url);
    const req = {
      url,
      path: u.pathname,
      query: u.search,
      method: init.method ?? "GET",
      headers: { ...(init.headers || {}) },
      body: init.body ? JSON.parse(init.body) : undefined,
      answered: false,
      aborted: false,
    };
    this.requests.push(req);
    return new Promise((resolve, reject) => {
      const signal = init.signal;
      signal?.addEventListener("abort", () => {
        req.aborted = true;
        if (!req.answered) reject(abortError());
        try {
          req.controller?.error(abortError());
        } catch {
          /* already closed */
        }
      });
      req.respond = (status, body, headers = {}) => {
        req.answered = true;
        const text = typeof body === "string" ? body : JSON.stringify(body);
        resolve(new Response(text, { status, headers: { "content-type": "application/json", ...headers } }));
      };
      req.fail = (err = new TypeError("fetch failed")) => {
        req.answered = true;
        reject(err);
      };
      /** Answer 200 text/event-stream; returns the server's end of the stream. */
      req.stream = () => {
        req.answered = true;
        const enc = new TextEncoder();
        const body = new ReadableStream({ start: (c) => (req.controller = c) });
        resolve(new Response(body, { status: 200, headers: { "content-type": "text/event-stream" } }));
        const s = {
          raw: (text) => req.controller.enqueue(enc.encode(text)),
          event: (obj) => s.raw(`${obj.seq != null ? `id: ${obj.seq}\n` : ""}event: ${obj.type}\ndata: ${JSON.stringify(obj)}\n\n`),
          comment: (text = "heartbeat") => s.raw(`: ${text}\n\n`),
          end: () => req.controller.close(),
          fail: () => req.controller.error(new TypeError("network error")),
        };
        return s;
      };
    });
  };

  /** The oldest unanswered request for `method path` (a path ending, e.g. "/events"). */
  take(method, pathEnd) {
    const req = this.requests.find((r) => !r.answered && !r.aborted && r.method === method && r.path.endsWith(pathEnd));
    assert.ok(req, `no pending ${method} …${pathEnd}; requests: ${this.requests.map((r) => `${r.method} ${r.path}`).join(", ")}`);
    return req;
  }

  all(method, pathEnd) {
    return this.requests.filter((r) => r.method === method && r.path.endsWith(pathEnd));
  }
}

/** `transport: "default"` leaves the option out (the client's own default). */
function makeEnv({ transport = "sse", storage = new FakeStorage(), clock = new FakeClock(), ...rest } = {}) {
  const sockets = [];
  const FakeWebSocket = fakeWebSocket(sockets);
  const http = new FakeHttp();
  const client = new ParleyClient({
    url: "ws://test/v1/ws",
    ...(transport === "default" ? {} : { transport }),
    WebSocket: FakeWebSocket,
    fetch: http.fetch,
    storage,
    random: () => 0,
    now: clock.now,
    timers: clock,
    window: null,
    ...rest,
  });
  return { client, http, sockets, clock, storage, lastSocket: () => sockets[sockets.length - 1] };
}

/** Let promise chains and stream reads run (no timers involved: the clock is fake). */
async function settle(rounds = 8) {
  for (let i = 0; i < rounds; i++) await new Promise((r) => setImmediate(r));
}

/** Answer POST /v1/sessions and open the event stream; returns the stream. */
async function openSse(env, { sessionId = "s1", resumeToken = "r1", create = true } = {}) {
  await settle();
  if (create) {
    env.http.take("POST", "/v1/sessions").respond(201, { session_id: sessionId, resume_token: resumeToken });
    await settle();
  }
  const stream = env.http.take("GET", `/v1/sessions/${sessionId}/events`).stream();
  await settle();
  return stream;
}

function conversation(cmid, { text = ["Hello ", "world "], base = 0, finish = "stop", rid = "r1", mid = "m1" } = {}) {
  const evs = [
    { seq: base + 1, type: "message.accepted", client_msg_id: cmid, message_id: mid, content: "hi" },
    { seq: base + 2, type: "response.started", response_id: rid, in_reply_to: mid, profile: "default@1", trace_id: "t1" },
  ];
  text.forEach((t, i) => evs.push({ seq: base + 3 + i, type: "response.delta", response_id: rid, text: t }));
  if (finish) {
    evs.push({
      seq: base + 3 + text.length,
      type: "response.completed",
      response_id: rid,
      finish_reason: finish,
      usage: { input_tokens: 1, output_tokens: text.length },
    });
  }
  return evs;
}

const job = (rid = "r1") => ({ session_id: "s1", response_id: rid, status: "queued" });

// ------------------------------------------------------------------ the SSE parser

function parseAll(chunks) {
  const events = [];
  const comments = [];
  const p = new SseParser((ev) => events.push(ev), (c) => comments.push(c));
  for (const c of chunks) p.push(c);
  p.end();
  return { events, comments, parser: p };
}

test("the SSE parser gives the same events whatever the chunk boundaries", () => {
  const text =
    'id: 1\nevent: response.delta\ndata: {"seq":1,"text":"a"}\n\n: heartbeat\n\nid: 2\nevent: response.completed\ndata: {"seq":2}\n\n';
  const whole = parseAll([text]);
  assert.deepEqual(whole.events, [
    { type: "response.delta", data: '{"seq":1,"text":"a"}', id: "1" },
    { type: "response.completed", data: '{"seq":2}', id: "2" },
  ]);
  assert.deepEqual(whole.comments, ["heartbeat"]);
  for (let size = 1; size <= 7; size++) {
    const chunks = [];
    for (let i = 0; i < text.length; i += size) chunks.push(text.slice(i, i + size));
    const split = parseAll(chunks);
    assert.deepEqual(split.events, whole.events, `chunks of ${size}`);
    assert.deepEqual(split.comments, whole.comments, `chunks of ${size}`);
  }
});

test("the SSE parser takes CRLF and lone CR line ends, also a CRLF split between chunks", () => {
  const expected = [
    { type: "a", data: "1", id: "7" },
    { type: "b", data: "2", id: "7" },
  ];
  assert.deepEqual(parseAll(["id: 7\r\nevent: a\r\ndata: 1\r\n\r\nevent: b\r\ndata: 2\r\n\r\n"]).events, expected);
  assert.deepEqual(parseAll(["id: 7\revent: a\rdata: 1\r\revent: b\rdata: 2\r\r"]).events, expected);
  // a CR at a chunk's end and the LF opening the next are one line end, not an empty line
  assert.deepEqual(parseAll(["id: 7\r", "\nevent: a\r", "\ndata: 1\r", "\n\r", "\nevent: b\r\ndata: 2\r", "\n\r\n"]).events, expected);
});

test("the SSE parser joins multi-line data, ignores comments and unknown fields, and keeps retry", () => {
  const { events, comments, parser } = parseAll([
    "\uFEFFdata: first\ndata:second\ndata\n\n",
    ":no space\n",
    "foo: bar\nretry: 3000\nretry: soon\n",
    "event: only-a-type\n\n", // no data: nothing dispatched
    "data: after\n\n",
    "data: never finished\n", // no blank line before the end: dropped
  ]);
  assert.deepEqual(events, [
    { type: "message", data: "first\nsecond\n", id: "" },
    { type: "message", data: "after", id: "" },
  ]);
  assert.deepEqual(comments, ["no space"]);
  assert.equal(parser.retry, 3000);
});

test("the SSE parser keeps the last id across events and refuses an id with NUL", () => {
  const { events } = parseAll(["id: 5\ndata: a\n\ndata: b\n\nid: x\0y\ndata: c\n\nid\ndata: d\n\n"]);
  assert.deepEqual(
    events.map((e) => [e.data, e.id]),
    [
      ["a", "5"],
      ["b", "5"],
      ["c", "5"],
      ["d", ""],
    ],
  );
});

test("multi-byte characters split between network chunks arrive whole", async () => {
  const env = makeEnv();
  env.client.connect();
  const s = await openSse(env);
  const p = env.client.send("hi");
  await settle();
  env.http.take("POST", "/messages").respond(202, job());
  const evs = conversation(p.clientMsgId, { text: ["héllo ✓ "] });
  const bytes = new TextEncoder().encode(evs.map((e) => `id: ${e.seq}\nevent: ${e.type}\ndata: ${JSON.stringify(e)}\n\n`).join(""));
  const cut = bytes.indexOf(0xc3) + 1; // inside "é"
  const req = env.http.all("GET", "/events")[0];
  req.controller.enqueue(bytes.slice(0, cut));
  req.controller.enqueue(bytes.slice(cut));
  assert.equal((await p).content, "héllo ✓ ");
  void s;
});

// ------------------------------------------------------------------ SSE + POST

test("sse opens a session with POST /v1/sessions, then tails its events with the token in a header", async () => {
  const env = makeEnv({ metadata: { client: "test" } });
  const readyP = env.client.connect();
  await settle();
  const create = env.http.take("POST", "/v1/sessions");
  assert.equal(create.url, "http://test/v1/sessions");
  assert.deepEqual(create.body, { metadata: { client: "test" } });
  create.respond(201, { session_id: "s1", resume_token: "r1" });
  await settle();
  const events = env.http.take("GET", "/v1/sessions/s1/events");
  assert.equal(events.headers["Last-Event-ID"], "0");
  assert.equal(events.headers["Parley-Resume-Token"], "r1");
  assert.equal(events.headers.Accept, "text/event-stream");
  assert.equal(events.query, "", "no token or cursor in the URL");
  events.stream();
  const ready = await readyP;
  assert.equal(ready.session_id, "s1");
  assert.equal(env.client.state, "connected");
  assert.equal(env.client.status.transport, "sse");
  assert.equal(env.client.transport, "sse");
  assert.equal(env.sockets.length, 0, "no WebSocket is ever opened");
  assert.equal(JSON.parse(env.storage.getItem("parley:ws://test/v1/ws")).resume_token, "r1");
});

test("the outbox goes over POST with Prefer: respond-async and the reply arrives on the event stream", async () => {
  const env = makeEnv({ profile: "fast" });
  env.client.connect();
  const s = await openSse(env);
  const deltas = [];
  env.client.on("delta", (_ev, turn) => deltas.push(turn.content));
  const p = env.client.send("hi", { responseFormat: { type: "text" } });
  await settle();
  const post = env.http.take("POST", "/v1/sessions/s1/messages");
  assert.deepEqual(post.body, {
    client_msg_id: p.clientMsgId,
    content: "hi",
    profile: "fast",
    response_format: { type: "text" },
  });
  assert.equal(post.headers.Prefer, "respond-async");
  assert.equal(post.headers["Parley-Resume-Token"], "r1");
  post.respond(202, job(), { location: "/v1/sessions/s1/responses/r1" });
  for (const ev of conversation(p.clientMsgId)) s.event(ev);
  s.comment();
  const reply = await p;
  assert.equal(reply.content, "Hello world ");
  assert.deepEqual(deltas, ["Hello ", "Hello world "]);
  assert.equal(env.client.lastSeq, 5);
  assert.equal(env.http.all("POST", "/messages").length, 1);
});

test("messages go one at a time over POST too: the second after the first reply completed", async () => {
  const env = makeEnv();
  env.client.connect();
  const s = await openSse(env);
  const p1 = env.client.send("one");
  const p2 = env.client.send("two");
  await settle();
  env.http.take("POST", "/messages").respond(202, job());
  await settle();
  assert.equal(env.http.all("POST", "/messages").length, 1);
  for (const ev of conversation(p1.clientMsgId)) s.event(ev);
  await settle();
  const second = env.http.take("POST", "/messages");
  assert.equal(second.body.client_msg_id, p2.clientMsgId);
  await p1;
});

test("a stream cut mid-reply resumes with Last-Event-ID, drops the overlap by seq and finishes the reply", async () => {
  const env = makeEnv();
  env.client.connect();
  const s1 = await openSse(env);
  const p = env.client.send("hi");
  await settle();
  env.http.take("POST", "/messages").respond(202, job());
  const evs = conversation(p.clientMsgId, { text: ["a ", "b ", "c "] });
  for (const ev of evs.slice(0, 4)) s1.event(ev); // accepted, started, "a ", "b "
  await settle();
  s1.fail();
  await settle();
  assert.equal(env.client.state, "reconnecting");
  env.clock.advance(250);
  const s2 = await openSse(env, { create: false });
  const resume = env.http.all("GET", "/events")[1];
  assert.equal(resume.headers["Last-Event-ID"], "4");
  assert.equal(env.http.all("POST", "/v1/sessions").length, 1, "the same session, not a new one");
  assert.equal(env.client.status.resumed, true);
  for (const ev of evs.slice(2)) s2.event(ev); // the server replays from 3 on: 3 and 4 again
  const reply = await p;
  assert.equal(reply.content, "a b c ");
  assert.equal(env.client.stats.duplicatesDropped, 2);
  assert.equal(env.http.all("POST", "/messages").length, 1, "an accepted message is not sent again");
});

test("an event stream that ends (server going away) resumes from the last seq", async () => {
  const env = makeEnv();
  env.client.connect();
  const s1 = await openSse(env);
  s1.event({ seq: 1, type: "feedback.recorded", response_id: "r0", rating: "up" });
  s1.end(); // close() keeps queued chunks: they are read first
  await settle();
  assert.equal(env.client.state, "reconnecting");
  assert.equal(env.client.status.code, 1001);
  env.clock.advance(250);
  await openSse(env, { create: false });
  assert.equal(env.http.all("GET", "/events")[1].headers["Last-Event-ID"], "1");
});

test("a send whose POST got no answer is resent with the same client_msg_id after the reconnect", async () => {
  const env = makeEnv();
  env.client.connect();
  await openSse(env);
  const p = env.client.send("hi");
  await settle();
  env.http.take("POST", "/messages").fail(); // the network ate it: did the server get it? unknown
  await settle();
  assert.equal(env.client.state, "reconnecting");
  assert.ok(env.http.all("GET", "/events")[0].aborted, "the old event stream is closed");
  env.clock.advance(250);
  const s2 = await openSse(env, { create: false });
  const again = env.http.take("POST", "/messages");
  assert.equal(again.body.client_msg_id, p.clientMsgId);
  again.respond(202, job()); // the first did arrive: the server answers the first turn's job
  for (const ev of conversation(p.clientMsgId)) s2.event(ev);
  assert.equal((await p).id, "r1");
  assert.equal(env.client.turns.filter((t) => t.role === "user").length, 1);
});

test("a resend answered with an already finished turn settles the send at once", async () => {
  const env = makeEnv();
  env.client.connect();
  const s1 = await openSse(env);
  const p = env.client.send("hi");
  await settle();
  env.http.take("POST", "/messages").fail();
  await settle();
  env.clock.advance(250);
  const s2 = await openSse(env, { create: false });
  // the replay shows the turn, but an accept we missed would not stop the resend: simulate a
  // message.accepted we never saw by replaying only the response
  const evs = conversation(p.clientMsgId).slice(1).map((e) => ({ ...e, seq: e.seq - 1 }));
  for (const ev of evs) s2.event(ev);
  const post = env.http.take("POST", "/messages");
  post.respond(202, { session_id: "s1", response_id: "r1", status: "completed" });
  const reply = await p;
  assert.equal(reply.id, "r1");
  assert.equal(reply.finishReason, "stop");
  void s1;
});

test("cancel() is a POST to .../responses/{id}/cancel and resolves when the stream shows the end", async () => {
  const env = makeEnv();
  env.client.connect();
  const s = await openSse(env);
  const p = env.client.send("hi");
  await settle();
  env.http.take("POST", "/messages").respond(202, job());
  const evs = conversation(p.clientMsgId, { finish: null });
  for (const ev of evs) s.event(ev);
  await settle();
  const c = env.client.cancel();
  await settle();
  const post = env.http.take("POST", "/v1/sessions/s1/responses/r1/cancel");
  post.respond(200, { response_id: "r1", outcome: "cancelling" });
  s.event({ seq: 5, type: "response.completed", response_id: "r1", finish_reason: "cancelled", usage: {} });
  assert.equal((await c).finishReason, "cancelled");
  assert.equal((await p).finishReason, "cancelled");
});

test("feedback() is a POST to .../feedback and resolves on the logged feedback.recorded", async () => {
  const env = makeEnv();
  env.client.connect();
  const s = await openSse(env);
  const f = env.client.feedback("r1", "down", { comment: "meh", tags: ["tone"] });
  await settle();
  const post = env.http.take("POST", "/v1/sessions/s1/feedback");
  assert.deepEqual(post.body, { response_id: "r1", rating: "down", comment: "meh", tags: ["tone"] });
  post.respond(200, { response_id: "r1", rating: "down", seq: 1 });
  s.event({ seq: 1, type: "feedback.recorded", response_id: "r1", rating: "down" });
  assert.equal((await f).rating, "down");
});

/** A turn whose first response calls `calls` and ends with finish_reason "tool_calls". */
function toolCallTurn(cmid, calls, { rid = "r1" } = {}) {
  const evs = [
    { type: "message.accepted", client_msg_id: cmid, message_id: "m1", content: "/tool" },
    { type: "response.started", response_id: rid, in_reply_to: "m1", profile: "default@1", trace_id: "t1" },
    ...calls.map((c) => ({ type: "response.tool_call", response_id: rid, server: false, ...c })),
    { type: "response.completed", response_id: rid, finish_reason: "tool_calls", usage: { input_tokens: 1, output_tokens: 1 } },
  ];
  return evs.map((e, i) => ({ ...e, seq: i + 1 }));
}

test("a tool result is a POST to .../tool-results; the continuation on the stream settles the reply", async () => {
  const env = makeEnv();
  env.client.tool("add", { parameters: { type: "object" } }, ({ a, b }) => a + b);
  env.client.connect();
  const s = await openSse(env);
  const p = env.client.send("/tool add");
  await settle();
  const send = env.http.take("POST", "/messages");
  assert.deepEqual(send.body.tools.map((t) => t.name), ["add"], "no hello over HTTP: the turn declares its tools");
  const evs = toolCallTurn(p.clientMsgId, [{ call_id: "c1", name: "add", arguments: { a: 1, b: 2 } }]);
  for (const ev of evs) s.event(ev);
  await settle();
  send.respond(202, job()); // answered after the stream showed r1 end with tool_calls: not the reply's end
  await settle();
  const post = env.http.take("POST", "/v1/sessions/s1/tool-results");
  assert.deepEqual(post.body, { call_id: "c1", output: 3 });
  assert.equal(post.headers["Parley-Resume-Token"], "r1");
  post.respond(200, { call_id: "c1", outcome: "accepted" });
  let seq = evs.length;
  s.event({ seq: ++seq, type: "tool.result.accepted", response_id: "r1", call_id: "c1", output: 3, is_error: false });
  s.event({ seq: ++seq, type: "response.started", response_id: "r2", in_reply_to: "m1", profile: "default@1", trace_id: "t2", continues: "r1" });
  s.event({ seq: ++seq, type: "response.delta", response_id: "r2", text: "Three." });
  s.event({ seq: ++seq, type: "response.completed", response_id: "r2", finish_reason: "stop", usage: {} });
  const reply = await p;
  assert.equal(reply.id, "r2");
  assert.equal(reply.content, "Three.");
});

test("a duplicate answer to a tool result is handled as tool.result.duplicate: never sent again", async () => {
  const env = makeEnv();
  env.client.connect();
  const s = await openSse(env);
  const dups = [];
  env.client.on("tool_duplicate", (ev) => dups.push(ev));
  env.client.toolResult("c1", "x");
  await settle();
  const post = env.http.take("POST", "/v1/sessions/s1/tool-results");
  assert.deepEqual(post.body, { call_id: "c1", output: "x" });
  post.respond(200, { call_id: "c1", outcome: "duplicate", response_id: "r1", accepted_seq: 7 });
  await settle();
  assert.deepEqual(dups, [{ type: "tool.result.duplicate", call_id: "c1", response_id: "r1", accepted_seq: 7 }]);
  s.end(); // the stream ends: the client resumes, and its outbox has nothing left to send
  await settle();
  env.clock.advance(1000);
  await openSse(env, { create: false });
  await settle();
  assert.equal(env.http.all("POST", "/tool-results").length, 1);
});

test("approving a server tool call is a POST to .../tool-approvals", async () => {
  const env = makeEnv();
  const asked = [];
  env.client.on("approval", (a) => asked.push(a));
  env.client.connect();
  const s = await openSse(env);
  const p = env.client.send("what time is it?");
  await settle();
  env.http.take("POST", "/messages").respond(202, job());
  const evs = toolCallTurn(p.clientMsgId, []).slice(0, 2);
  evs.push({ seq: 3, type: "response.tool_call", response_id: "r1", call_id: "s1", name: "clock", arguments: {}, server: true });
  evs.push({ seq: 4, type: "tool.approval_requested", response_id: "r1", call_id: "s1", name: "clock", arguments: {} });
  for (const ev of evs) s.event(ev);
  await settle();
  assert.equal(asked.length, 1);
  await asked[0].approve();
  await settle();
  const post = env.http.take("POST", "/v1/sessions/s1/tool-approvals");
  assert.deepEqual(post.body, { call_id: "s1", approved: true });
  post.respond(200, { call_id: "s1", approved: true });
});

test("no ping goes over HTTP: the event stream's heartbeat comments keep the watchdog quiet", async () => {
  const env = makeEnv();
  env.client.connect();
  const s = await openSse(env);
  env.client.heartbeatIntervalMs = 1000;
  for (let i = 0; i < 10; i++) {
    env.clock.advance(900);
    s.comment();
    await settle(2);
  }
  assert.equal(env.client.state, "connected");
  env.clock.advance(2300);
  assert.equal(env.client.state, "reconnecting", "two silent intervals: resume elsewhere");
  assert.equal(env.client.status.reason, "heartbeat timeout");
  assert.deepEqual(
    env.http.requests.map((r) => `${r.method} ${r.path}`),
    ["POST /v1/sessions", "GET /v1/sessions/s1/events"],
  );
});

test("a cursor past the log's retention: the snapshot replaces the conversation and the status says so", async () => {
  const storage = new FakeStorage();
  storage.setItem(
    "parley:ws://test/v1/ws",
    JSON.stringify({ v: 1, session_id: "s1", resume_token: "r1", last_seq: 3, turns: [{ role: "user", id: "m0", content: "old" }], outbox: [] }),
  );
  const env = makeEnv({ storage });
  env.client.connect();
  const s = await openSse(env, { create: false });
  assert.equal(env.client.status.recovered, true);
  s.event({ type: "session.snapshot", last_seq: 40, turns: [{ role: "user", id: "m1", content: "hi" }], in_flight: { role: "assistant", id: "r1", content: "a b " } });
  s.event({ seq: 41, type: "response.delta", response_id: "r1", text: "c " });
  await settle();
  assert.deepEqual(env.client.turns.map((t) => [t.id, t.content]), [["m1", "hi"], ["r1", "a b c "]]);
  assert.equal(env.client.lastSeq, 41);
  assert.equal(env.client.status.state, "connected");
  assert.equal(env.client.status.recovered, false);
});

test("with a token every request carries Authorization: Bearer, never the URL", async () => {
  const env = makeEnv({ token: async () => "jwt-1" });
  env.client.connect();
  await settle();
  const create = env.http.take("POST", "/v1/sessions");
  assert.equal(create.headers.Authorization, "Bearer jwt-1");
  create.respond(201, { session_id: "s1", resume_token: "r1" });
  await settle();
  const events = env.http.take("GET", "/events");
  assert.equal(events.headers.Authorization, "Bearer jwt-1");
  events.stream();
  await settle();
  env.client.send("hi");
  await settle();
  const post = env.http.take("POST", "/messages");
  assert.equal(post.headers.Authorization, "Bearer jwt-1");
  for (const r of env.http.requests) assert.ok(!r.url.includes("jwt-1") && !r.url.includes("r1"), r.url);
});

// ------------------------------------------------------------------ error bodies -> ParleyError codes

const errorBody = (code, retryable, extra = {}) => ({
  error: { code, message: `${code}!`, retryable, trace_id: "tr1", ...extra },
});

test("a 409 busy with retry_after_ms is retried after that wait with the same client_msg_id", async () => {
  const env = makeEnv();
  env.client.connect();
  await openSse(env);
  const errors = [];
  env.client.on("error", (ev, info) => errors.push([ev.code, ev.ref, info.willRetry, info.retryInMs]));
  const p = env.client.send("hi");
  await settle();
  env.http.take("POST", "/messages").respond(409, errorBody("busy", true, { retry_after_ms: 1500 }), { "retry-after": "2" });
  await settle();
  assert.deepEqual(errors, [["busy", { type: "message.send", client_msg_id: p.clientMsgId }, true, 1500]]);
  env.clock.advance(1499);
  await settle();
  assert.equal(env.http.all("POST", "/messages").length, 1);
  env.clock.advance(1);
  await settle();
  assert.equal(env.http.take("POST", "/messages").body.client_msg_id, p.clientMsgId);
});

test("a 429 whose body has no retry_after_ms waits for its Retry-After header", async () => {
  const env = makeEnv();
  env.client.connect();
  await openSse(env);
  const p = env.client.send("hi");
  await settle();
  env.http.take("POST", "/messages").respond(429, errorBody("rate_limited", true), { "retry-after": "3" });
  await settle();
  env.clock.advance(2999);
  await settle();
  assert.equal(env.http.all("POST", "/messages").length, 1);
  env.clock.advance(1);
  await settle();
  assert.equal(env.http.take("POST", "/messages").body.client_msg_id, p.clientMsgId);
});

test("a non-retryable refusal (413, 422) rejects send() with a ParleyError of the wire's code", async () => {
  for (const [status, code] of [
    [413, "payload_too_large"],
    [422, "policy_refusal"],
    [400, "invalid_message"],
  ]) {
    const env = makeEnv();
    env.client.connect();
    await openSse(env);
    const p = env.client.send("hi");
    await settle();
    env.http.take("POST", "/messages").respond(status, errorBody(code, false));
    await assert.rejects(p, (err) => err instanceof ParleyError && err.code === code && err.message === `${code}!`);
    assert.equal(env.client.state, "connected", `${status} refuses one request, not the session`);
  }
});

test("a refused feedback rejects with its code; a cancel refused is not a failure", async () => {
  const env = makeEnv();
  env.client.connect();
  const s = await openSse(env);
  const f = env.client.feedback("r9", "up");
  await settle();
  env.http.take("POST", "/feedback").respond(400, errorBody("invalid_message", false));
  await assert.rejects(f, (err) => err.code === "invalid_message");
  const p = env.client.send("hi");
  await settle();
  env.http.take("POST", "/messages").respond(202, job());
  for (const ev of conversation(p.clientMsgId, { finish: null })) s.event(ev);
  await settle();
  const c = env.client.cancel("r1");
  await settle();
  env.http.take("POST", "/cancel").respond(400, errorBody("invalid_message", false));
  assert.equal((await c).id, "r1");
});

test("404 session_not_found on the event stream starts a new session and keeps the outbox", async () => {
  const storage = new FakeStorage();
  storage.setItem(
    "parley:ws://test/v1/ws",
    JSON.stringify({ v: 1, session_id: "old", resume_token: "rt", last_seq: 7, turns: [], outbox: [] }),
  );
  const env = makeEnv({ storage });
  const resets = [];
  env.client.on("reset", (r) => resets.push(r.reason));
  env.client.connect();
  const p = env.client.send("still here");
  await settle();
  const gone = env.http.take("GET", "/v1/sessions/old/events");
  assert.equal(gone.headers["Last-Event-ID"], "7");
  gone.respond(404, errorBody("session_not_found", false));
  await settle();
  assert.deepEqual(resets, ["session_not_found"]);
  await openSse(env, { sessionId: "s2", resumeToken: "r2" });
  assert.equal(env.client.sessionId, "s2");
  const post = env.http.take("POST", "/v1/sessions/s2/messages");
  assert.equal(post.body.client_msg_id, p.clientMsgId);
  assert.equal(post.headers["Parley-Resume-Token"], "r2");
});

test("410 session_lost on a POST ends the connection and starts a new session", async () => {
  const env = makeEnv();
  env.client.connect();
  await openSse(env);
  const resets = [];
  env.client.on("reset", (r) => resets.push(r.reason));
  const p = env.client.send("hi");
  await settle();
  env.http.take("POST", "/messages").respond(410, errorBody("session_lost", false));
  await settle();
  assert.deepEqual(resets, ["session_lost"]);
  await openSse(env, { sessionId: "s2" });
  assert.equal(env.http.take("POST", "/v1/sessions/s2/messages").body.client_msg_id, p.clientMsgId);
});

test("401 with a fixed token fails the client with unauthorized, as a WebSocket close 4001 does", async () => {
  const env = makeEnv({ token: "bad" });
  const readyP = env.client.connect();
  await settle();
  env.http.take("POST", "/v1/sessions").respond(401, errorBody("unauthorized", false), { "www-authenticate": "Bearer" });
  await assert.rejects(readyP, (err) => err instanceof ParleyError && err.code === "unauthorized" && err.closeCode === 4001);
  assert.equal(env.client.state, "failed");
});

test("503 overloaded at the opening waits its retry_after_ms before the next attempt", async () => {
  const env = makeEnv();
  env.client.connect();
  await settle();
  env.http.take("POST", "/v1/sessions").respond(503, errorBody("overloaded", true, { retry_after_ms: 4000 }), { "retry-after": "4" });
  await settle();
  assert.equal(env.client.state, "reconnecting");
  assert.equal(env.client.status.retryInMs, 4000);
  env.clock.advance(3999);
  await settle();
  assert.equal(env.http.all("POST", "/v1/sessions").length, 1);
  env.clock.advance(1);
  await settle();
  assert.equal(env.http.all("POST", "/v1/sessions").length, 2);
});

test("an error answer that is not Parley's (a proxy's page) is a failed path: reconnect, nothing rejected", async () => {
  const env = makeEnv();
  env.client.connect();
  await openSse(env);
  const p = env.client.send("hi");
  let settled = false;
  p.then(
    () => (settled = true),
    () => (settled = true),
  );
  await settle();
  env.http.take("POST", "/messages").respond(502, "<html>Bad gateway</html>", { "content-type": "text/html" });
  await settle();
  assert.equal(env.client.state, "reconnecting");
  assert.equal(env.client.status.code, 1006);
  assert.equal(settled, false);
});

test("an unknown error code at the opening (a newer server's) is terminal and keeps its code", async () => {
  const env = makeEnv();
  const readyP = env.client.connect();
  await settle();
  env.http.take("POST", "/v1/sessions").respond(451, errorBody("region_blocked", false));
  await assert.rejects(readyP, (err) => err.code === "region_blocked");
  assert.equal(env.client.state, "failed");
});

// ------------------------------------------------------------------ "auto": WebSocket first, then SSE

test("auto falls back to SSE when the WebSocket upgrade is refused twice in a row", async () => {
  const env = makeEnv({ transport: "default" }); // auto
  const switches = [];
  env.client.on("transport", (t) => switches.push(t));
  const readyP = env.client.connect();
  await settle();
  assert.equal(env.client.transport, "websocket");
  env.lastSocket().drop(1006); // a proxy answered 403 to the upgrade: the browser says 1006
  env.clock.advance(250);
  await settle();
  assert.equal(env.sockets.length, 2, "one refusal is not enough: it may be a blip");
  assert.equal(env.http.requests.length, 0);
  env.lastSocket().drop(1006);
  assert.deepEqual(switches.map((t) => [t.previous, t.transport]), [["websocket", "sse"]]);
  assert.equal(env.client.status.transport, "sse");
  env.clock.advance(500);
  await openSse(env);
  assert.equal((await readyP).session_id, "s1");
  assert.equal(env.sockets.length, 2, "no more WebSocket attempts");
  assert.equal(env.client.stats.transportSwitches, 1);
});

test("auto falls back when the socket opens but dies before session.ready, repeatedly", async () => {
  const env = makeEnv({ transport: "auto", fallbackAfter: 3 });
  env.client.connect();
  for (let i = 0; i < 3; i++) {
    await settle();
    const ws = env.lastSocket();
    ws.accept();
    assert.equal(ws.frames("hello").length, 1);
    ws.drop(1006); // a proxy that cuts upgraded connections
    env.clock.advance(env.client.status.retryInMs);
  }
  assert.equal(env.sockets.length, 3);
  assert.equal(env.client.transport, "sse");
  await openSse(env);
  assert.equal(env.client.state, "connected");
});

test("auto does not fall back when the server answered (close codes, drops after ready, a connect that works)", async () => {
  const env = makeEnv({ transport: "auto" });
  env.client.connect();
  await settle();
  env.lastSocket().drop(1006);
  env.clock.advance(250);
  await settle();
  let ws = env.lastSocket();
  ws.accept();
  ws.push({ type: "error", code: "overloaded", message: "busy", retryable: true });
  ws.drop(1001); // the server said why: the path works
  env.clock.advance(env.client.status.retryInMs);
  await settle();
  env.lastSocket().drop(1006);
  env.clock.advance(env.client.status.retryInMs);
  await settle();
  ws = env.lastSocket();
  ws.accept();
  ws.push({ type: "error", code: "internal", message: "oops", retryable: true });
  ws.drop(1006); // no close frame, but the server spoke first: the path works
  env.clock.advance(env.client.status.retryInMs);
  await settle();
  env.lastSocket().drop(1006);
  env.clock.advance(env.client.status.retryInMs);
  await settle();
  ws = env.lastSocket();
  ws.accept();
  ws.push({ type: "session.ready", session_id: "s1", resume_token: "r1", heartbeat_interval_ms: 1000, resumed: false, recovered: true, last_seq: 0 });
  ws.drop(1006); // after session.ready: an ordinary drop, resumed on the same transport
  env.clock.advance(env.client.status.retryInMs);
  await settle();
  assert.equal(env.client.transport, "websocket");
  assert.equal(env.http.requests.length, 0);
  assert.equal(env.client.stats.transportSwitches, 0);
});

test("resume works across the switch: same session, same seq cursor, the same send settles", async () => {
  const storage = new FakeStorage();
  const env = makeEnv({ transport: "auto", storage });
  env.client.connect();
  await settle();
  const ws = env.lastSocket();
  ws.accept();
  ws.push({ type: "session.ready", session_id: "s1", resume_token: "r1", heartbeat_interval_ms: 1000, resumed: false, recovered: true, last_seq: 0 });
  const p = env.client.send("hi");
  const later = env.client.send("and then");
  assert.equal(ws.frames("message.send").length, 1);
  const evs = conversation(p.clientMsgId, { text: ["a ", "b ", "c "] });
  for (const ev of evs.slice(0, 3)) ws.push(ev); // accepted, started, "a "
  ws.drop(1006); // then the network changes: WebSockets are blocked from now on
  for (let i = 0; i < 2; i++) {
    env.clock.advance(env.client.status.retryInMs);
    await settle();
    env.lastSocket().drop(1006);
  }
  assert.equal(env.client.transport, "sse");
  env.clock.advance(env.client.status.retryInMs);
  const s = await openSse(env, { create: false });
  const get = env.http.all("GET", "/events")[0];
  assert.equal(get.headers["Last-Event-ID"], "3", "the cursor the WebSocket left off at");
  assert.equal(get.headers["Parley-Resume-Token"], "r1");
  assert.equal(env.http.all("POST", "/v1/sessions").length, 0, "the same session");
  for (const ev of evs.slice(3)) s.event(ev);
  assert.equal((await p).content, "a b c ");
  await settle();
  const post = env.http.take("POST", "/v1/sessions/s1/messages");
  assert.equal(post.body.content, "and then");
  post.respond(202, job("r2"));
  for (const ev of conversation(later.clientMsgId, { base: 6, rid: "r2", mid: "m2", text: ["ok "] })) s.event(ev);
  assert.equal((await later).content, "ok ");
  assert.equal(env.client.turns.length, 4);
  assert.equal(JSON.parse(storage.getItem("parley:ws://test/v1/ws")).transport, "sse");
});

test("after a reload auto starts with the transport that worked in this tab", async () => {
  const storage = new FakeStorage();
  const env1 = makeEnv({ transport: "auto", storage });
  env1.client.connect();
  for (let i = 0; i < 2; i++) {
    await settle();
    env1.lastSocket().drop(1006);
    env1.clock.advance(env1.client.status.retryInMs);
  }
  await openSse(env1);
  env1.client.close();

  const env2 = makeEnv({ transport: "auto", storage });
  env2.client.connect();
  await openSse(env2, { create: false });
  assert.equal(env2.sockets.length, 0, "no WebSocket attempt that is known to fail");
  assert.equal(env2.client.status.resumed, true);
});

test("transport: 'websocket' never falls back; 'sse' never opens a WebSocket, and needs none", async () => {
  const env = makeEnv({ transport: "websocket" });
  env.client.connect();
  for (let i = 0; i < 5; i++) {
    await settle();
    env.lastSocket().drop(1006);
    env.clock.advance(env.client.status.retryInMs);
  }
  assert.equal(env.http.requests.length, 0);
  assert.equal(env.client.transport, "websocket");

  const sseOnly = new ParleyClient({
    url: "ws://test/v1/ws",
    transport: "sse",
    WebSocket: null,
    fetch: () => new Promise(() => {}),
    storage: null,
    window: null,
  });
  assert.equal(sseOnly.transport, "sse");
  assert.equal(sseOnly.httpUrl, "http://test/v1");
  assert.throws(() => new ParleyClient({ url: "ws://x/v1/ws", transport: "smoke-signals" }), TypeError);
});

test("the HTTP base follows the WebSocket URL (scheme, host and prefix) unless httpUrl is given", () => {
  const make = (url, extra = {}) => new ParleyClient({ url, transport: "sse", fetch: () => {}, storage: null, window: null, ...extra });
  assert.equal(make("wss://chat.example.com/parley/v1/ws").httpUrl, "https://chat.example.com/parley/v1");
  assert.equal(make("ws://127.0.0.1:8000/v1/ws?x=1").httpUrl, "http://127.0.0.1:8000/v1");
  assert.equal(make("ws://h/v1/ws", { httpUrl: "https://api.example.com/v1/" }).httpUrl, "https://api.example.com/v1");
});

// ------------------------------------------------------------------ real fetch, real socket

test("over a real socket with Node's own fetch: the stream is read as it comes and closing aborts it", async () => {
  const { createServer } = await import("node:http");
  const seen = [];
  let stream = null;
  let streamClosed = null;
  const closed = new Promise((r) => (streamClosed = r));
  const server = createServer((req, res) => {
    let body = "";
    req.on("data", (c) => (body += c));
    req.on("end", () => {
      seen.push({ method: req.method, url: req.url, headers: req.headers, body: body ? JSON.parse(body) : null });
      if (req.method === "POST" && req.url === "/v1/sessions") {
        res.writeHead(201, { "content-type": "application/json" });
        res.end(JSON.stringify({ session_id: "s1", resume_token: "r1" }));
      } else if (req.method === "GET" && req.url === "/v1/sessions/s1/events") {
        res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache" });
        res.write(": hello\n\n");
        stream = res;
        res.on("close", () => streamClosed());
      } else if (req.method === "POST" && req.url === "/v1/sessions/s1/messages") {
        res.writeHead(202, { "content-type": "application/json", location: "/v1/sessions/s1/responses/r1" });
        res.end(JSON.stringify({ session_id: "s1", response_id: "r1", status: "queued" }));
        const cmid = seen.at(-1).body.client_msg_id;
        const frames = conversation(cmid, { text: ["real ", "socket "] })
          .map((e) => `id: ${e.seq}\r\nevent: ${e.type}\r\ndata: ${JSON.stringify(e)}\r\n\r\n`)
          .join("");
        stream.write(frames.slice(0, 37)); // an event cut in two writes
        setImmediate(() => stream.write(frames.slice(37)));
      } else {
        res.writeHead(404).end();
      }
    });
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  const { port } = server.address();
  const client = new ParleyClient({ url: `ws://127.0.0.1:${port}/v1/ws`, transport: "sse", storage: null, window: null });
  try {
    await client.connect();
    assert.equal(client.transport, "sse");
    const reply = await client.send("hi");
    assert.equal(reply.content, "real socket ");
    assert.equal(seen[1].headers["last-event-id"], "0");
    assert.equal(seen[1].headers["parley-resume-token"], "r1");
    assert.equal(seen[2].headers.prefer, "respond-async");
    client.close();
    await closed; // the server saw the event stream go away
  } finally {
    client.close();
    server.closeAllConnections?.();
    await new Promise((r) => server.close(r));
  }
});
