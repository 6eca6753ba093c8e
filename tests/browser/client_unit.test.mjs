// Unit tests of web-demo/parley-client.js: reconnect, resume, dedupe, watchdog, outbox.
// Run with `node --test tests/browser/` (tests/browser/test_client_unit.py does).
// A fake WebSocket and a fake clock make every step deterministic: no network, no sleeps.

import assert from "node:assert/strict";
import { test } from "node:test";

import { FakeClock, FakeStorage, fakeWebSocket } from "./fakes.mjs";

import {
  backoffDelay,
  CLIENT_TYPES,
  ParleyClient,
  ParleyError,
  ParleyEvent,
  SERVER_TYPES,
} from "../../web-demo/parley-client.js";

// ------------------------------------------------------------------ fakes

function makeEnv({ random = () => 0.5, storage = new FakeStorage(), clock = new FakeClock(), ...rest } = {}) {
  const sockets = [];
  const FakeWebSocket = fakeWebSocket(sockets);
  const client = new ParleyClient({
    url: "ws://test/v1/ws",
    transport: "websocket", // these tests are about the core over a WebSocket; "auto" has its own file
    WebSocket: FakeWebSocket,
    storage,
    random,
    now: clock.now,
    timers: clock,
    window: null,
    ...rest,
  });
  return { client, sockets, clock, storage, last: () => sockets[sockets.length - 1] };
}

const tick = () => new Promise((r) => setImmediate(r));

const READY = (over = {}) => ({
  type: "session.ready",
  session_id: "s1",
  resume_token: "r1",
  protocol: "parley.v1",
  heartbeat_interval_ms: 1000,
  resumed: false,
  recovered: true,
  last_seq: 0,
  ...over,
});

/** Open the current socket and hand it session.ready; returns the socket. */
async function ready(env, over) {
  await tick();
  const ws = env.last();
  ws.accept();
  ws.push(READY(over));
  return ws;
}

function conversation(cmid, { text = ["Hello ", "world "], base = 0, finish = "stop" } = {}) {
  const evs = [
    { seq: base + 1, type: "message.accepted", client_msg_id: cmid, message_id: "m1", content: "hi" },
    { seq: base + 2, type: "response.started", response_id: "r1", in_reply_to: "m1", profile: "default@1", trace_id: "t1" },
  ];
  text.forEach((t, i) => evs.push({ seq: base + 3 + i, type: "response.delta", response_id: "r1", text: t }));
  if (finish) {
    evs.push({
      seq: base + 3 + text.length,
      type: "response.completed",
      response_id: "r1",
      finish_reason: finish,
      usage: { input_tokens: 1, output_tokens: text.length },
      ttft_ms: 5,
      latency_ms: 10,
    });
  }
  return evs;
}

// ------------------------------------------------------------------ tests

test("backoff grows exponentially, is capped, and jitters within [cap/2, cap]", () => {
  const opts = { initialMs: 500, maxMs: 15000, factor: 2 };
  assert.equal(backoffDelay(0, opts, () => 0), 250);
  assert.equal(backoffDelay(0, opts, () => 1), 500);
  assert.equal(backoffDelay(3, opts, () => 1), 4000);
  assert.equal(backoffDelay(20, opts, () => 1), 15000);
  assert.equal(backoffDelay(20, opts, () => 0), 7500);
});

test("a new session sends hello with the subprotocol and stores the session", async () => {
  const env = makeEnv();
  const readyP = env.client.connect();
  const ws = await ready(env);
  assert.equal(ws.protocol, "parley.v1");
  assert.deepEqual(ws.sent[0], { type: "hello", protocol: "parley.v1" });
  const ev = await readyP;
  assert.equal(ev.session_id, "s1");
  assert.equal(env.client.state, "connected");
  const stored = JSON.parse(env.storage.getItem("parley:ws://test/v1/ws"));
  assert.equal(stored.session_id, "s1");
  assert.equal(stored.resume_token, "r1");
  assert.equal(stored.last_seq, 0);
});

test("send() resolves with the completed reply and the text is assembled from deltas", async () => {
  const env = makeEnv();
  env.client.connect();
  const ws = await ready(env);
  const deltas = [];
  env.client.on("delta", (ev, turn) => deltas.push(turn.content));
  const p = env.client.send("hi");
  const sent = ws.frames("message.send");
  assert.equal(sent.length, 1);
  assert.equal(sent[0].client_msg_id, p.clientMsgId);
  for (const ev of conversation(p.clientMsgId)) ws.push(ev);
  const reply = await p;
  assert.equal(reply.content, "Hello world ");
  assert.equal(reply.finishReason, "stop");
  assert.equal(reply.traceId, "t1");
  assert.deepEqual(deltas, ["Hello ", "Hello world "]);
  assert.equal(env.client.lastSeq, 5);
});

test("events with an already seen seq are dropped, so replayed text is never doubled", async () => {
  const env = makeEnv();
  env.client.connect();
  const ws = await ready(env);
  const p = env.client.send("hi");
  const evs = conversation(p.clientMsgId, { finish: null });
  for (const ev of evs) ws.push(ev);
  for (const ev of evs) ws.push(ev); // the same events again (e.g. an overlapping replay)
  assert.equal(env.client.turn("r1").content, "Hello world ");
  assert.equal(env.client.stats.duplicatesDropped, evs.length);
  assert.equal(env.client.turns.filter((t) => t.role === "user").length, 1);
});

test("a drop reconnects with jittered backoff and resumes from the last seq", async () => {
  const env = makeEnv({ random: () => 1 });
  env.client.connect();
  const ws1 = await ready(env);
  const p = env.client.send("hi");
  const evs = conversation(p.clientMsgId, { text: ["a ", "b ", "c "] });
  for (const ev of evs.slice(0, 3)) ws1.push(ev); // accepted, started, "a "
  const statuses = [];
  env.client.on("status", (s) => statuses.push(s));
  ws1.drop(1006);
  assert.equal(env.client.state, "reconnecting");
  assert.equal(statuses.at(-1).retryInMs, 500); // attempt 0, random=1 -> full cap
  assert.equal(env.sockets.length, 1);
  env.clock.advance(499);
  await tick();
  assert.equal(env.sockets.length, 1, "no reconnect before the backoff delay");
  env.clock.advance(1);
  await tick();
  assert.equal(env.sockets.length, 2);
  const ws2 = env.last();
  ws2.accept();
  assert.deepEqual(ws2.sent[0], { type: "hello", protocol: "parley.v1", session_id: "s1", resume_token: "r1", last_seq: 3 });
  ws2.push(READY({ resumed: true, last_seq: 4, resume_token: "r2" }));
  assert.equal(env.client.status.resumed, true);
  for (const ev of evs.slice(3)) ws2.push(ev); // "b ", "c ", completed
  const reply = await p;
  assert.equal(reply.content, "a b c ");
  assert.equal(env.client.resumeToken, "r2");
  assert.equal(ws2.frames("message.send").length, 0, "an accepted message is not sent again");
});

test("consecutive failed attempts back off exponentially", async () => {
  const env = makeEnv({ random: () => 1 });
  env.client.connect();
  await tick();
  const delays = [];
  env.client.on("status", (s) => s.state === "reconnecting" && s.retryInMs && delays.push(s.retryInMs));
  for (let i = 0; i < 6; i++) {
    env.last().drop(1006);
    env.clock.advance(env.client.status.retryInMs);
    await tick();
  }
  assert.deepEqual(delays, [500, 1000, 2000, 4000, 8000, 15000]);
});

test("a gap in seq drops the socket and resumes from the last contiguous seq", async () => {
  const env = makeEnv({ random: () => 0 });
  env.client.connect();
  const ws1 = await ready(env);
  const p = env.client.send("hi");
  const evs = conversation(p.clientMsgId, { text: ["a ", "b ", "c "] });
  ws1.push(evs[0]);
  ws1.push(evs[1]);
  ws1.push(evs[3]); // seq 4 arrives without seq 3
  assert.equal(env.client.stats.gaps, 1);
  assert.ok(ws1.closedByClient, "the gapped socket is closed");
  assert.equal(env.client.lastSeq, 2);
  assert.equal(env.client.turn("r1").content, "", "nothing after the gap was applied");
  env.clock.advance(250);
  await tick();
  const ws2 = env.last();
  ws2.accept();
  assert.equal(ws2.sent[0].last_seq, 2);
});

test("a message sent while disconnected is sent once connected, with the same client_msg_id", async () => {
  const env = makeEnv({ random: () => 0 });
  env.client.connect();
  const ws1 = await ready(env);
  ws1.drop(1012);
  const p = env.client.send("queued");
  env.clock.advance(250);
  const ws2 = await ready(env, { resumed: true });
  const sends = ws2.frames("message.send");
  assert.equal(sends.length, 1);
  assert.equal(sends[0].client_msg_id, p.clientMsgId);
  assert.equal(sends[0].content, "queued");
});

test("a send whose acceptance was lost is resent with the same id and a duplicate answer settles it", async () => {
  const env = makeEnv({ random: () => 0 });
  env.client.connect();
  const ws1 = await ready(env);
  const p = env.client.send("hi");
  const id1 = ws1.frames("message.send")[0].client_msg_id;
  ws1.drop(1006); // the server accepted and answered, but the socket died before we heard
  env.clock.advance(250);
  const ws2 = await ready(env, { resumed: true, last_seq: 0 });
  const resent = ws2.frames("message.send");
  assert.equal(resent.length, 1);
  assert.equal(resent[0].client_msg_id, id1, "a retry reuses the client_msg_id");
  // the server says: already accepted at seq 1; then the live log continues
  ws2.push({ type: "message.duplicate", client_msg_id: id1, message_id: "m1", response_id: "r1", seq: 1 });
  for (const ev of conversation(id1)) ws2.push(ev);
  const reply = await p;
  assert.equal(reply.id, "r1");
  assert.equal(env.client.turns.filter((t) => t.role === "user").length, 1);
});

test("the outbox waits for the replay to finish before resending, so a replayed accept prevents a resend", async () => {
  const env = makeEnv({ random: () => 0 });
  env.client.connect();
  const ws1 = await ready(env);
  const p = env.client.send("hi");
  const id = ws1.frames("message.send")[0].client_msg_id;
  ws1.drop(1006);
  env.clock.advance(250);
  const evs = conversation(id);
  const ws2 = await ready(env, { resumed: true, last_seq: evs.length });
  assert.equal(ws2.frames("message.send").length, 0, "not resent before the replay caught up");
  for (const ev of evs) ws2.push(ev);
  assert.equal(ws2.frames("message.send").length, 0, "the replay showed it was accepted");
  assert.equal((await p).content, "Hello world ");
});

test("the heartbeat watchdog reconnects after two silent intervals and pings after one", async () => {
  const env = makeEnv({ random: () => 0 });
  env.client.connect();
  const ws = await ready(env); // heartbeat_interval_ms: 1000
  env.clock.advance(900);
  ws.push({ type: "heartbeat", ts: 1, last_seq: 0 });
  env.clock.advance(1500);
  assert.equal(ws.frames("ping").length, 1, "a ping probes after one silent interval");
  assert.equal(env.client.state, "connected");
  env.clock.advance(750);
  assert.equal(env.client.state, "reconnecting", "two silent intervals: reconnect");
  assert.equal(env.client.status.reason, "heartbeat timeout");
  assert.ok(ws.closedByClient);
});

test("traffic keeps the watchdog quiet", async () => {
  const env = makeEnv();
  env.client.connect();
  const ws = await ready(env);
  for (let i = 0; i < 20; i++) {
    env.clock.advance(900);
    ws.push({ type: "heartbeat", ts: i, last_seq: 0 });
  }
  assert.equal(env.client.state, "connected");
  assert.equal(ws.frames("ping").length, 0);
});

test("a throttled or frozen tab (timer fires late) does not cause a false reconnect", async () => {
  const env = makeEnv();
  env.client.connect();
  const ws = await ready(env);
  env.clock.advance(250);
  env.clock.jump(60_000); // the tab was frozen for a minute: no timers ran
  env.clock.advance(250); // the watchdog finally runs, late
  assert.equal(env.client.state, "connected", "silence across a frozen period proves nothing");
  assert.equal(ws.frames("ping").length, 1, "it probes instead");
  ws.push({ type: "pong", nonce: ws.frames("ping")[0].nonce });
  env.clock.advance(1500);
  ws.push({ type: "heartbeat", ts: 2, last_seq: 0 });
  env.clock.advance(1500);
  assert.equal(env.client.state, "connected");
  env.clock.advance(1000);
  assert.equal(env.client.state, "reconnecting", "real silence is still detected afterwards");
});

test("recovered:false replaces the conversation with the snapshot and continues after its last_seq", async () => {
  const env = makeEnv({ random: () => 0 });
  env.client.connect();
  const ws1 = await ready(env);
  const p = env.client.send("hi");
  const evs = conversation(p.clientMsgId, { text: ["a ", "b "], finish: null });
  for (const ev of evs) ws1.push(ev);
  ws1.drop(1006);
  env.clock.advance(250);
  const conv = [];
  env.client.on("conversation", (c) => conv.push(c.reason));
  const ws2 = await ready(env, { resumed: true, recovered: false, last_seq: 40 });
  assert.equal(ws2.frames("message.send").length, 0, "nothing is sent before the snapshot arrives");
  ws2.push({
    type: "session.snapshot",
    last_seq: 40,
    turns: [{ role: "user", id: "m1", content: "hi" }],
    in_flight: { role: "assistant", id: "r1", content: "a b c d " },
  });
  assert.deepEqual(conv, ["snapshot"]);
  assert.equal(env.client.lastSeq, 40);
  assert.deepEqual(
    env.client.turns.map((t) => [t.role, t.id, t.content]),
    [
      ["user", "m1", "hi"],
      ["assistant", "r1", "a b c d "],
    ],
  );
  ws2.push({ seq: 40, type: "response.delta", response_id: "r1", text: "old " }); // not after the snapshot
  ws2.push({ seq: 41, type: "response.delta", response_id: "r1", text: "e " });
  ws2.push({ seq: 42, type: "response.completed", response_id: "r1", finish_reason: "stop", usage: {} });
  assert.equal((await p).content, "a b c d e ");
});

test("a page reload resumes from the stored seq with the stored conversation", async () => {
  const storage = new FakeStorage();
  const env1 = makeEnv({ storage });
  env1.client.connect();
  const ws1 = await ready(env1);
  const p = env1.client.send("hi");
  p.catch(() => {});
  for (const ev of conversation(p.clientMsgId, { text: ["a ", "b "], finish: null })) ws1.push(ev);
  env1.clock.advance(200); // the throttled save runs
  // "reload": a new client with the same storage
  const env2 = makeEnv({ storage });
  assert.equal(env2.client.lastSeq, 4);
  assert.equal(env2.client.turn("r1").content, "a b ");
  assert.equal(env2.client.activeResponseId, "r1");
  env2.client.connect();
  const ws2 = await ready(env2, { resumed: true, last_seq: 4 });
  assert.deepEqual(ws2.sent[0], { type: "hello", protocol: "parley.v1", session_id: "s1", resume_token: "r1", last_seq: 4 });
  ws2.push({ seq: 5, type: "response.delta", response_id: "r1", text: "c " });
  assert.equal(env2.client.turn("r1").content, "a b c ");
});

test("an unacknowledged send survives a reload and is resent with the same id", async () => {
  const storage = new FakeStorage();
  const env1 = makeEnv({ storage });
  env1.client.connect();
  await ready(env1);
  env1.client.send("lost?").catch(() => {});
  const id = env1.last().frames("message.send")[0].client_msg_id;
  env1.clock.advance(200);
  const env2 = makeEnv({ storage });
  assert.deepEqual(env2.client.outbox, [{ clientMsgId: id, content: "lost?" }]);
  env2.client.connect();
  const ws2 = await ready(env2, { resumed: true });
  assert.equal(ws2.frames("message.send")[0].client_msg_id, id);
});

test("close 4004 forgets the session and starts a new one, resending the outbox", async () => {
  const storage = new FakeStorage();
  storage.setItem(
    "parley:ws://test/v1/ws",
    JSON.stringify({ v: 1, session_id: "gone", resume_token: "x", last_seq: 9, turns: [{ role: "user", id: "m0", content: "old" }] }),
  );
  const env = makeEnv({ storage });
  const resets = [];
  env.client.on("reset", (r) => resets.push(r.reason));
  env.client.connect();
  await tick();
  env.last().accept();
  assert.equal(env.last().sent[0].session_id, "gone");
  const p = env.client.send("again");
  env.last().drop(4004, "session not found");
  assert.deepEqual(resets, ["session_not_found"]);
  assert.equal(env.client.turns.length, 0);
  const ws2 = await ready(env, { session_id: "s2" });
  assert.deepEqual(ws2.sent[0], { type: "hello", protocol: "parley.v1" });
  assert.equal(ws2.frames("message.send")[0].client_msg_id, p.clientMsgId);
});

test("fatal close codes stop reconnecting and reject pending sends", async () => {
  for (const code of [4000, 4002, 4029]) {
    const env = makeEnv();
    const readyP = env.client.connect();
    await tick();
    env.last().accept();
    const p = env.client.send("x");
    env.last().drop(code, "no");
    assert.equal(env.client.state, "failed");
    await assert.rejects(p, ParleyError);
    await assert.rejects(readyP, ParleyError);
    env.clock.advance(60_000);
    await tick();
    assert.equal(env.sockets.length, 1, `no reconnect after ${code}`);
  }
});

test("close codes 1012 (restart) and 4009 (slow consumer) reconnect and resume", async () => {
  for (const code of [1012, 4009, 4008, 1011]) {
    const env = makeEnv({ random: () => 0 });
    env.client.connect();
    await ready(env);
    env.last().drop(code);
    env.clock.advance(250);
    const ws2 = await ready(env, { resumed: true });
    assert.equal(ws2.sent[0].session_id, "s1", `resume after ${code}`);
    assert.equal(env.client.state, "connected");
  }
});

test("a retryable send error is retried after retry_after_ms with the same id", async () => {
  const env = makeEnv();
  env.client.connect();
  const ws = await ready(env, { heartbeat_interval_ms: 60_000 });
  const errors = [];
  env.client.on("error", (ev, info) => errors.push([ev.code, info]));
  const p = env.client.send("hi");
  ws.push({
    type: "error",
    code: "rate_limited",
    message: "slow down",
    retryable: true,
    retry_after_ms: 3000,
    ref: { type: "message.send", client_msg_id: p.clientMsgId },
  });
  assert.equal(errors[0][0], "rate_limited");
  assert.equal(errors[0][1].willRetry, true);
  assert.equal(errors[0][1].retryInMs, 3000);
  env.clock.advance(2999);
  assert.equal(ws.frames("message.send").length, 1);
  env.clock.advance(1);
  const sends = ws.frames("message.send");
  assert.equal(sends.length, 2);
  assert.equal(sends[1].client_msg_id, p.clientMsgId);
});

test("a non-retryable send error rejects send() with its code", async () => {
  const env = makeEnv();
  env.client.connect();
  const ws = await ready(env);
  const p = env.client.send("hi");
  ws.push({
    type: "error",
    code: "invalid_message",
    message: "content: too short",
    retryable: false,
    ref: { type: "message.send", client_msg_id: p.clientMsgId },
  });
  await assert.rejects(p, (err) => err.code === "invalid_message" && err.retryable === false);
});

test("a connection-level retry_after_ms delays the next reconnect at least that long", async () => {
  const env = makeEnv({ random: () => 0 });
  env.client.connect();
  const ws = await ready(env);
  ws.push({ type: "error", code: "overloaded", message: "busy", retryable: true, retry_after_ms: 7000 });
  ws.drop(1013);
  assert.equal(env.client.status.retryInMs, 7000);
  env.clock.advance(6999);
  await tick();
  assert.equal(env.sockets.length, 1);
  env.clock.advance(1);
  await tick();
  assert.equal(env.sockets.length, 2);
});

test("messages go one at a time: the second is sent after the first reply completes", async () => {
  const env = makeEnv();
  env.client.connect();
  const ws = await ready(env);
  const p1 = env.client.send("one");
  const p2 = env.client.send("two");
  assert.equal(ws.frames("message.send").length, 1);
  for (const ev of conversation(p1.clientMsgId)) ws.push(ev);
  await p1;
  const sends = ws.frames("message.send");
  assert.equal(sends.length, 2);
  assert.equal(sends[1].client_msg_id, p2.clientMsgId);
});

test("cancel() sends response.cancel, is resent after a reconnect, and resolves on completion", async () => {
  const env = makeEnv({ random: () => 0 });
  env.client.connect();
  const ws1 = await ready(env);
  const p = env.client.send("hi");
  const evs = conversation(p.clientMsgId, { text: ["a "], finish: null });
  for (const ev of evs) ws1.push(ev);
  const c = env.client.cancel();
  assert.deepEqual(ws1.frames("response.cancel"), [{ type: "response.cancel", response_id: "r1" }]);
  ws1.drop(1006);
  env.clock.advance(250);
  const ws2 = await ready(env, { resumed: true, last_seq: 3 });
  assert.equal(ws2.frames("response.cancel").length, 1, "an unconfirmed cancel is sent again");
  ws2.push({ seq: 4, type: "response.completed", response_id: "r1", finish_reason: "cancelled", usage: {} });
  assert.equal((await c).finishReason, "cancelled");
  assert.equal((await p).finishReason, "cancelled");
});

test("feedback() resolves when the server logged it; the last rating wins", async () => {
  const env = makeEnv();
  env.client.connect();
  const ws = await ready(env);
  const p = env.client.send("hi");
  for (const ev of conversation(p.clientMsgId)) ws.push(ev);
  await p;
  const f1 = env.client.feedback("r1", "up");
  const f2 = env.client.feedback("r1", "down", { comment: "meh", tags: ["tone"] });
  assert.deepEqual(ws.frames("feedback").at(-1), {
    type: "feedback",
    response_id: "r1",
    rating: "down",
    comment: "meh",
    tags: ["tone"],
  });
  ws.push({ seq: 6, type: "feedback.recorded", response_id: "r1", rating: "up" });
  ws.push({ seq: 7, type: "feedback.recorded", response_id: "r1", rating: "down" });
  assert.equal((await f1).rating, "down");
  assert.equal((await f2).rating, "down");
  assert.equal(env.client.turn("r1").rating, "down");
});

test("a frame larger than the limit is refused locally", async () => {
  const env = makeEnv({ maxFrameBytes: 100 });
  await assert.rejects(env.client.send("x".repeat(200)), (e) => e.code === "payload_too_large");
});

test("a refused resume point (close 4000 after a resume hello) rebuilds from seq 0 once, then fails", async () => {
  const env = makeEnv({ random: () => 0 });
  env.client.connect();
  const ws1 = await ready(env);
  const p = env.client.send("hi");
  for (const ev of conversation(p.clientMsgId)) ws1.push(ev);
  ws1.drop(1006);
  env.clock.advance(250);
  await tick();
  env.last().accept();
  assert.equal(env.last().sent[0].last_seq, 5);
  env.last().drop(4000, "invalid_message"); // the server's log is behind seq 5
  assert.equal(env.client.state, "reconnecting");
  assert.equal(env.client.turns.length, 0);
  env.clock.advance(env.client.status.retryInMs);
  await tick();
  env.last().accept();
  assert.equal(env.last().sent[0].last_seq, 0);
  env.last().drop(4000, "invalid_message");
  assert.equal(env.client.state, "failed");
});

// ------------------------------------------------------------------ the package API (issue 16)

test("the constructor takes (url, options) or (options) and throws at once without a WebSocket", () => {
  const env = makeEnv();
  const Fake = env.client._WebSocket;
  const byUrl = new ParleyClient("ws://a/v1/ws", { WebSocket: Fake, storage: null, window: null });
  assert.equal(byUrl.url, "ws://a/v1/ws");
  const byOptions = new ParleyClient({ url: "ws://b/v1/ws", WebSocket: Fake, storage: null, window: null });
  assert.equal(byOptions.url, "ws://b/v1/ws");
  const saved = globalThis.WebSocket;
  try {
    delete globalThis.WebSocket; // Node 20 has none; Node >= 22 and browsers do
    assert.throws(
      () => new ParleyClient("ws://c/v1/ws", { storage: null, window: null }),
      (e) => e instanceof TypeError && /no WebSocket/.test(e.message) && /"ws"/.test(e.message),
    );
  } finally {
    if (saved !== undefined) globalThis.WebSocket = saved;
  }
});

test("the client is an EventTarget: listeners get a ParleyEvent with detail and turn", async () => {
  const env = makeEnv();
  assert.ok(env.client instanceof EventTarget);
  const seen = [];
  env.client.addEventListener("delta", (e) => seen.push([e instanceof ParleyEvent, e.detail.text, e.turn.content]));
  const states = [];
  env.client.addEventListener("status", (e) => states.push(e.detail.state));
  env.client.connect();
  const ws = await ready(env);
  const p = env.client.send("hi");
  for (const ev of conversation(p.clientMsgId)) ws.push(ev);
  await p;
  assert.deepEqual(seen, [
    [true, "Hello ", "Hello "],
    [true, "world ", "Hello world "],
  ]);
  assert.deepEqual(states, ["connecting", "connected"]);
});

test("stream() yields this turn's events in order and ends with the reply", async () => {
  const env = makeEnv();
  env.client.connect();
  const ws = await ready(env);
  const turn = env.client.stream("hi");
  assert.equal(ws.frames("message.send")[0].client_msg_id, turn.clientMsgId);
  for (const ev of conversation(turn.clientMsgId)) ws.push(ev);
  const types = [];
  for await (const ev of turn) types.push(ev.type);
  assert.deepEqual(types, [
    "message.accepted",
    "response.started",
    "response.delta",
    "response.delta",
    "response.completed",
  ]);
  assert.equal(turn.text, "Hello world ");
  assert.equal(turn.responseId, "r1");
  assert.equal((await turn.done).finishReason, "stop");
});

test("a refused stream throws its ParleyError from the loop", async () => {
  const env = makeEnv();
  env.client.connect();
  const ws = await ready(env);
  const turn = env.client.stream("hi");
  ws.push({
    type: "error",
    code: "policy_refusal",
    message: "no",
    retryable: false,
    ref: { type: "message.send", client_msg_id: turn.clientMsgId },
  });
  await assert.rejects(
    (async () => {
      for await (const _ of turn);
    })(),
    (e) => e instanceof ParleyError && e.code === "policy_refusal",
  );
});

test("a stream cancelled before its reply started cancels the reply when it starts", async () => {
  const env = makeEnv();
  env.client.connect();
  const ws = await ready(env);
  const turn = env.client.stream("hi");
  await turn.cancel();
  assert.equal(ws.frames("response.cancel").length, 0);
  const [accepted, started] = conversation(turn.clientMsgId);
  ws.push(accepted);
  ws.push(started);
  assert.deepEqual(ws.frames("response.cancel"), [{ type: "response.cancel", response_id: "r1" }]);
});

test("feedback takes +1 / -1 as well as up / down", async () => {
  const env = makeEnv();
  env.client.connect();
  const ws = await ready(env);
  env.client.feedback("r1", +1);
  env.client.feedback("r2", -1);
  assert.deepEqual(
    ws.frames("feedback").map((f) => f.rating),
    ["up", "down"],
  );
  await assert.rejects(env.client.feedback("r3", 0), (e) => e.code === "invalid_message");
});

test("an unknown 4xxx close ends the client with a ParleyError naming it, without reconnecting", async () => {
  const env = makeEnv();
  const readyP = env.client.connect();
  await ready(env);
  await readyP;
  const p = env.client.send("x");
  env.last().drop(4321, "");
  assert.equal(env.client.state, "failed");
  await assert.rejects(p, (e) => e.code === "close_4321" && e.closeCode === 4321);
  env.clock.advance(60_000);
  await tick();
  assert.equal(env.sockets.length, 1);
});

test("an error code this version does not know (session_lost) is terminal and keeps its code", async () => {
  const env = makeEnv();
  env.client.connect();
  const ws = await ready(env);
  const p = env.client.send("x");
  const errors = [];
  env.client.on("error", (ev, info) => errors.push([ev.code, !!info.fatal]));
  ws.push({ type: "error", code: "session_lost", message: "gone", retryable: false });
  ws.drop(4011, "session_lost");
  assert.equal(env.client.state, "failed");
  await assert.rejects(p, (e) => e.code === "session_lost" && e.retryable === false);
  assert.deepEqual(errors[0], ["session_lost", false]);
  env.clock.advance(60_000);
  await tick();
  assert.equal(env.sockets.length, 1);
});

test("the exported type lists name every v1 message", () => {
  assert.deepEqual([...CLIENT_TYPES].sort(), [
    "feedback",
    "hello",
    "message.send",
    "ping",
    "response.cancel",
    "tool.approve",
    "tool.result",
  ]);
  assert.equal(new Set(SERVER_TYPES).size, 17);
});

test("a refusal without a ref is taken as the in-flight message's (the frame budget sends none)", async () => {
  const env = makeEnv();
  env.client.connect();
  const ws = await ready(env);
  const p = env.client.send("hi");
  ws.push({ type: "error", code: "invalid_message", message: "unknown profile", retryable: false });
  await assert.rejects(p, (e) => e.code === "invalid_message");
  const q = env.client.send("again");
  ws.push({ type: "error", code: "rate_limited", message: "slow down", retryable: true, retry_after_ms: 500 });
  env.clock.advance(500);
  const resent = ws.frames("message.send").filter((f) => f.client_msg_id === q.clientMsgId);
  assert.equal(resent.length, 2, "retried after retry_after_ms with the same id");
});

// ------------------------------------------------------------------ tool calls (issue 17)

const THEME = {
  description: "Switch the page between light and dark.",
  parameters: { type: "object", properties: { theme: { enum: ["light", "dark"] } }, required: ["theme"] },
};

/** The server's side of a turn whose first response calls tools and ends with finish_reason "tool_calls". */
function toolTurn(cmid, calls, { base = 0, rid = "r1", finish = true } = {}) {
  const evs = [
    { seq: base + 1, type: "message.accepted", client_msg_id: cmid, message_id: "m1", content: "/tool" },
    { seq: base + 2, type: "response.started", response_id: rid, in_reply_to: "m1", profile: "default@1", trace_id: "t1" },
  ];
  for (const c of calls) {
    const text = JSON.stringify(c.arguments);
    const half = Math.floor(text.length / 2);
    for (const piece of [text.slice(0, half), text.slice(half)]) {
      evs.push({ type: "response.tool_call.delta", response_id: rid, call_id: c.call_id, name: c.name, arguments_delta: piece });
    }
    evs.push({ type: "response.tool_call", response_id: rid, server: false, ...c });
  }
  if (finish) {
    evs.push({ type: "response.completed", response_id: rid, finish_reason: "tool_calls", usage: { input_tokens: 1, output_tokens: 1 } });
  }
  return evs.map((e, i) => ({ ...e, seq: base + 1 + i }));
}

/** The continuation after the results: accepted results, then a reply that ends with "stop". */
function continuation(base, results, { rid = "r2", prev = "r1", text = "Done." } = {}) {
  const evs = results.map((r) => ({ type: "tool.result.accepted", response_id: prev, is_error: false, ...r }));
  evs.push({ type: "response.started", response_id: rid, in_reply_to: "m1", profile: "default@1", trace_id: "t2", continues: prev });
  evs.push({ type: "response.delta", response_id: rid, text });
  evs.push({ type: "response.completed", response_id: rid, finish_reason: "stop", usage: { input_tokens: 2, output_tokens: 1 } });
  return evs.map((e, i) => ({ ...e, seq: base + 1 + i }));
}

const settle = async () => {
  for (let i = 0; i < 5; i++) await tick();
};

test("a tool round trip: declared in hello, run on the call, result sent after tool_calls, reply after the continuation", async () => {
  const env = makeEnv();
  const seen = [];
  env.client.tool("set_theme", THEME, (args, call) => {
    seen.push([args, call.callId]);
    return { theme: args.theme };
  });
  env.client.connect();
  const ws = await ready(env);
  assert.deepEqual(ws.sent[0].tools, [{ name: "set_theme", description: THEME.description, parameters: THEME.parameters }]);
  const p = env.client.send("/tool set_theme");
  assert.equal(ws.frames("message.send")[0].tools, undefined, "declared once, in hello");
  const evs = toolTurn(p.clientMsgId, [{ call_id: "call_1", name: "set_theme", arguments: { theme: "dark" } }]);
  for (const ev of evs.slice(0, -1)) ws.push(ev);
  await settle();
  assert.deepEqual(seen, [[{ theme: "dark" }, "call_1"]]);
  assert.equal(ws.frames("tool.result").length, 0, "held until the response asks for results");
  assert.equal(env.client.turn("r1").toolCalls[0].state, "sent");
  ws.push(evs[evs.length - 1]);
  assert.deepEqual(ws.frames("tool.result"), [{ type: "tool.result", call_id: "call_1", output: { theme: "dark" } }]);
  assert.equal(env.client.activeResponseId, "r1", "a response waiting for results is still active");
  for (const ev of continuation(evs.length, [{ call_id: "call_1", output: { theme: "dark" } }])) ws.push(ev);
  const reply = await p;
  assert.equal(reply.id, "r2");
  assert.equal(reply.continues, "r1");
  assert.equal(reply.content, "Done.");
  const call = env.client.turn("r1").toolCalls[0];
  assert.equal(call.state, "done");
  assert.deepEqual(call.output, { theme: "dark" });
  assert.equal(call.argumentsText, '{"theme":"dark"}');
  assert.deepEqual(env.client.pendingCalls, []);
});

test("two calls in one response are both answered, in one round, before the continuation", async () => {
  const env = makeEnv();
  env.client.tool("add", { parameters: { type: "object" } }, ({ a, b }) => a + b);
  env.client.connect();
  const ws = await ready(env);
  const p = env.client.send("sum twice");
  const calls = [
    { call_id: "c1", name: "add", arguments: { a: 1, b: 2 } },
    { call_id: "c2", name: "add", arguments: { a: 3, b: 4 } },
  ];
  const evs = toolTurn(p.clientMsgId, calls);
  for (const ev of evs) ws.push(ev);
  await settle();
  const results = ws.frames("tool.result");
  assert.deepEqual(results.map((r) => [r.call_id, r.output]).sort(), [["c1", 3], ["c2", 7]]);
  assert.deepEqual(env.client.pendingCalls.map((c) => c.state), ["sent", "sent"]);
  for (const ev of continuation(evs.length, [{ call_id: "c1", output: 3 }, { call_id: "c2", output: 7 }])) ws.push(ev);
  assert.equal((await p).content, "Done.");
});

test("approval: allow() runs the handler; deny() sends 'denied by the user' without running it", async () => {
  const env = makeEnv();
  let runs = 0;
  env.client.tool("set_theme", THEME, () => ++runs && "ok", { approve: true });
  const asked = [];
  env.client.on("approval", (a, turn) => asked.push([a, turn.id]));
  env.client.connect();
  const ws = await ready(env);
  const p = env.client.send("two themes");
  const calls = [
    { call_id: "c1", name: "set_theme", arguments: { theme: "dark" } },
    { call_id: "c2", name: "set_theme", arguments: { theme: "light" } },
  ];
  for (const ev of toolTurn(p.clientMsgId, calls)) ws.push(ev);
  await settle();
  assert.equal(asked.length, 2);
  assert.equal(runs, 0);
  assert.equal(ws.frames("tool.result").length, 0, "nothing is sent before the person decides");
  const [[first, rid], [second]] = asked;
  assert.equal(rid, "r1");
  assert.deepEqual([first.callId, first.name, first.arguments, first.server], ["c1", "set_theme", { theme: "dark" }, false]);
  assert.equal(env.client.approvals.length, 2);
  assert.equal(env.client.turn("r1").toolCalls[0].state, "approval");
  await first.allow();
  await second.deny();
  await second.deny(); // a second click changes nothing
  assert.equal(runs, 1);
  assert.deepEqual(ws.frames("tool.result"), [
    { type: "tool.result", call_id: "c1", output: "ok" },
    { type: "tool.result", call_id: "c2", output: "denied by the user", is_error: true },
  ]);
  assert.equal(first.decision, "allowed");
  assert.equal(second.decision, "denied");
  assert.equal(env.client.approvals.length, 0);
});

test("a handler that throws sends an error result with its message", async () => {
  const env = makeEnv();
  env.client.tool("boom", {}, async () => {
    throw new Error("the disk is full");
  });
  env.client.connect();
  const ws = await ready(env);
  const p = env.client.send("boom");
  for (const ev of toolTurn(p.clientMsgId, [{ call_id: "c1", name: "boom", arguments: {} }])) ws.push(ev);
  await settle();
  assert.deepEqual(ws.frames("tool.result"), [
    { type: "tool.result", call_id: "c1", output: "the disk is full", is_error: true },
  ]);
});

test("a reload while the approval is shown asks again once caught up, and allow() then answers", async () => {
  const storage = new FakeStorage();
  const env1 = makeEnv({ storage });
  env1.client.tool("set_theme", THEME, () => "old page", { approve: true });
  const asked1 = [];
  env1.client.on("approval", (a) => asked1.push(a));
  env1.client.connect();
  const ws1 = await ready(env1);
  const p = env1.client.send("/tool set_theme");
  p.catch(() => {});
  const evs = toolTurn(p.clientMsgId, [{ call_id: "c1", name: "set_theme", arguments: { theme: "dark" } }]);
  for (const ev of evs) ws1.push(ev);
  await settle();
  assert.equal(asked1.length, 1);
  env1.clock.advance(200); // the throttled save runs; then the page goes away undecided

  const env2 = makeEnv({ storage });
  let ran = null;
  env2.client.tool("set_theme", THEME, (args) => (ran = args.theme), { approve: true });
  const asked2 = [];
  env2.client.on("approval", (a) => asked2.push(a));
  assert.equal(env2.client.turn("r1").toolCalls[0].state, "pending", "stored with the conversation");
  env2.client.connect();
  const ws2 = await ready(env2, { resumed: true, last_seq: evs.length });
  assert.equal(ws2.sent[0].last_seq, evs.length);
  await settle();
  assert.equal(asked2.length, 1, "asked again after the reload");
  assert.equal(asked2[0].callId, "c1");
  await asked2[0].allow();
  assert.equal(ran, "dark");
  assert.deepEqual(ws2.frames("tool.result"), [{ type: "tool.result", call_id: "c1", output: "dark" }]);
});

test("pending calls are rebuilt from a replay from seq 0; answered ones are not run again", async () => {
  const env = makeEnv({ storage: null });
  const runs = [];
  env.client.tool("add", {}, ({ a, b }) => {
    runs.push(a + b);
    return a + b;
  });
  // the log of an earlier page: call c1 answered and continued; then a second turn whose call c2 waits
  const first = toolTurn("old-1", [{ call_id: "c1", name: "add", arguments: { a: 1, b: 1 } }]);
  const cont = continuation(first.length, [{ call_id: "c1", output: 2 }]);
  const second = toolTurn("old-2", [{ call_id: "c2", name: "add", arguments: { a: 2, b: 3 } }], {
    base: first.length + cont.length,
    rid: "r3",
  }).map((e) => (e.type === "message.accepted" ? { ...e, message_id: "m2" } : e.in_reply_to ? { ...e, in_reply_to: "m2" } : e));
  const log = [...first, ...cont, ...second];
  env.client.connect();
  const ws = await ready(env, { resumed: true, last_seq: log.length });
  for (const ev of log.slice(0, -1)) ws.push(ev);
  await settle();
  assert.deepEqual(runs, [], "nothing runs while the replay is still catching up");
  ws.push(log[log.length - 1]);
  await settle();
  assert.equal(env.client.lastSeq, log.length);
  assert.deepEqual(runs, [5], "only the call without a result runs");
  assert.deepEqual(ws.frames("tool.result"), [{ type: "tool.result", call_id: "c2", output: 5 }]);
});

test("a result is resent after a reconnect until logged; a duplicate answer settles it", async () => {
  const env = makeEnv();
  env.client.tool("add", {}, ({ a, b }) => a + b);
  env.client.connect();
  const ws1 = await ready(env);
  const p = env.client.send("add");
  p.catch(() => {});
  const evs = toolTurn(p.clientMsgId, [{ call_id: "c1", name: "add", arguments: { a: 1, b: 2 } }]);
  for (const ev of evs) ws1.push(ev);
  await settle();
  assert.equal(ws1.frames("tool.result").length, 1);
  ws1.drop(1006); // the result may or may not have arrived
  env.clock.advance(1000);
  const ws2 = await ready(env, { resumed: true, last_seq: evs.length });
  assert.deepEqual(ws2.frames("tool.result"), [{ type: "tool.result", call_id: "c1", output: 3 }]);
  const dups = [];
  env.client.on("tool_duplicate", (ev) => dups.push(ev.call_id));
  ws2.push({ type: "tool.result.duplicate", call_id: "c1", response_id: "r1", accepted_seq: evs.length + 1 });
  assert.deepEqual(dups, ["c1"]);
  ws2.drop(1006);
  env.clock.advance(1000);
  const ws3 = await ready(env, { resumed: true, last_seq: evs.length });
  assert.equal(ws3.frames("tool.result").length, 0, "not sent again once the server said it has it");
});

test("a refused result (unknown call) is dropped from the outbox and reported with its call_id", async () => {
  const env = makeEnv();
  env.client.connect();
  const ws = await ready(env);
  env.client.toolResult("nope", "x");
  assert.equal(ws.frames("tool.result").length, 1);
  const errors = [];
  env.client.on("error", (ev, info) => errors.push([ev.code, info.callId]));
  ws.push({ type: "error", code: "invalid_message", message: "unknown call", retryable: false, ref: { type: "tool.result", call_id: "nope" } });
  assert.deepEqual(errors, [["invalid_message", "nope"]]);
  ws.drop(1006);
  env.clock.advance(1000);
  const ws2 = await ready(env, { resumed: true });
  assert.equal(ws2.frames("tool.result").length, 0);
});

test("a server tool that asks for approval: approve() and deny() send tool.approve; its result settles it", async () => {
  const env = makeEnv();
  const asked = [];
  env.client.on("approval", (a) => asked.push(a));
  env.client.connect();
  const ws = await ready(env);
  const p = env.client.send("what time is it?");
  const base = toolTurn(p.clientMsgId, [], { finish: false });
  for (const ev of base) ws.push(ev);
  let seq = base.length;
  for (const id of ["s1", "s2"]) {
    ws.push({ seq: ++seq, type: "response.tool_call", response_id: "r1", call_id: id, name: "clock", arguments: { tz: "UTC" }, server: true });
    ws.push({ seq: ++seq, type: "tool.approval_requested", response_id: "r1", call_id: id, name: "clock", arguments: { tz: "UTC" } });
  }
  await settle();
  assert.deepEqual(asked.map((a) => [a.callId, a.server, a.name]), [["s1", true, "clock"], ["s2", true, "clock"]]);
  await asked[0].approve();
  await asked[1].deny();
  assert.deepEqual(ws.frames("tool.approve"), [
    { type: "tool.approve", call_id: "s1", approved: true },
    { type: "tool.approve", call_id: "s2", approved: false },
  ]);
  assert.equal(ws.frames("tool.result").length, 0, "a server tool's result is the server's");
  ws.push({ seq: ++seq, type: "tool.result.accepted", response_id: "r1", call_id: "s1", output: "12:00", is_error: false });
  const calls = env.client.turn("r1").toolCalls;
  assert.deepEqual(calls.map((c) => c.state), ["done", "running"]);
  assert.equal(calls[0].output, "12:00");
});

test("reasoning deltas build turn.reasoning and reach listeners and the stream", async () => {
  const env = makeEnv();
  const heard = [];
  env.client.on("reasoning", (ev, turn) => heard.push(turn.reasoning));
  env.client.connect();
  const ws = await ready(env);
  const turn = env.client.stream("think");
  const evs = conversation(turn.clientMsgId, { text: ["Yes."] });
  evs.splice(2, 0, { type: "response.reasoning.delta", response_id: "r1", text: "Let me " }, { type: "response.reasoning.delta", response_id: "r1", text: "think. " });
  for (const [i, ev] of evs.entries()) ws.push({ ...ev, seq: i + 1 });
  const types = [];
  for await (const ev of turn) types.push(ev.type);
  assert.deepEqual(heard, ["Let me ", "Let me think. "]);
  assert.equal(env.client.turn("r1").reasoning, "Let me think. ");
  assert.deepEqual(types.filter((t) => t.includes("reasoning")), ["response.reasoning.delta", "response.reasoning.delta"]);
  assert.equal(turn.text, "Yes.");
});

test("stream() goes on through tool calls and the continuation, and ends with the continuation's reply", async () => {
  const env = makeEnv();
  env.client.tool("add", {}, ({ a, b }) => a + b);
  env.client.connect();
  const ws = await ready(env);
  const turn = env.client.stream("add");
  const evs = toolTurn(turn.clientMsgId, [{ call_id: "c1", name: "add", arguments: { a: 1, b: 2 } }]);
  for (const ev of evs) ws.push(ev);
  await settle();
  for (const ev of continuation(evs.length, [{ call_id: "c1", output: 3 }], { text: "It is 3." })) ws.push(ev);
  const types = [];
  for await (const ev of turn) types.push(ev.type);
  assert.deepEqual(types, [
    "message.accepted",
    "response.started",
    "response.tool_call.delta",
    "response.tool_call.delta",
    "response.tool_call",
    "response.completed",
    "tool.result.accepted",
    "response.started",
    "response.delta",
    "response.completed",
  ]);
  assert.deepEqual(turn.responseIds, ["r1", "r2"]);
  assert.equal(turn.responseId, "r2");
  assert.equal(turn.text, "It is 3.");
  assert.equal((await turn.done).finishReason, "stop");
});

test("cancel() stops a response waiting for results: its calls are abandoned and the approval closes", async () => {
  const env = makeEnv();
  env.client.tool("set_theme", THEME, () => "ok", { approve: true });
  const asked = [];
  env.client.on("approval", (a) => asked.push(a));
  env.client.connect();
  const ws = await ready(env);
  const p = env.client.send("/tool set_theme");
  const evs = toolTurn(p.clientMsgId, [{ call_id: "c1", name: "set_theme", arguments: { theme: "dark" } }]);
  for (const ev of evs) ws.push(ev);
  await settle();
  const cancelled = env.client.cancel();
  assert.deepEqual(ws.frames("response.cancel"), [{ type: "response.cancel", response_id: "r1" }]);
  ws.push({ seq: evs.length + 1, type: "response.completed", response_id: "r1", finish_reason: "cancelled", usage: { input_tokens: 1, output_tokens: 1 } });
  assert.equal((await cancelled).finishReason, "cancelled");
  assert.equal((await p).finishReason, "cancelled");
  assert.equal(env.client.turn("r1").toolCalls[0].state, "abandoned");
  assert.equal(asked[0].open, false);
  await asked[0].allow(); // too late: nothing is sent
  assert.equal(ws.frames("tool.result").length, 0);
  assert.equal(env.client.activeResponseId, null);
});

test("a tool registered after hello goes with each turn, never twice; a turn's own tools and tool_choice are sent", async () => {
  const env = makeEnv();
  env.client.connect();
  const ws = await ready(env);
  assert.equal(ws.sent[0].tools, undefined);
  env.client.tool("late", { description: "registered after hello" }, () => "x");
  const p = env.client.send("hi", { tools: [{ name: "pick", parameters: { type: "object" } }], toolChoice: "required" });
  const frame = ws.frames("message.send")[0];
  assert.deepEqual(frame.tools.map((t) => t.name), ["pick", "late"]);
  assert.equal(frame.tool_choice, "required");
  for (const ev of conversation(p.clientMsgId)) ws.push(ev);
  await p;
  ws.drop(1006);
  env.clock.advance(1000);
  const ws2 = await ready(env, { resumed: true, last_seq: 5 });
  assert.deepEqual(ws2.sent[0].tools.map((t) => t.name), ["late"], "the next hello declares it");
  env.client.send("again");
  assert.equal(ws2.frames("message.send")[0].tools, undefined);
});

test("a snapshot rebuilds calls (tool_calls) and their results (tool turns); an unanswered one is run", async () => {
  const env = makeEnv();
  const runs = [];
  env.client.tool("add", {}, ({ a, b }) => runs.push(a + b) && a + b);
  env.client.connect();
  const ws = await ready(env, { resumed: true, recovered: false, last_seq: 9 });
  ws.push({
    type: "session.snapshot",
    last_seq: 9,
    turns: [
      { role: "user", id: "m1", content: "add" },
      { role: "assistant", id: "r1", content: "", finish_reason: "tool_calls", tool_calls: [{ call_id: "c1", name: "add", arguments: { a: 1, b: 1 } }] },
      { role: "tool", id: "c1", content: "2", response_id: "r1", name: "add", output: 2, is_error: false },
      { role: "assistant", id: "r2", content: "Two.", finish_reason: "tool_calls", tool_calls: [{ call_id: "c2", name: "add", arguments: { a: 2, b: 2 } }] },
    ],
  });
  await settle();
  const t1 = env.client.turn("r1");
  assert.deepEqual([t1.toolCalls[0].state, t1.toolCalls[0].output], ["done", 2]);
  assert.equal(env.client.turns.filter((t) => t.role === "tool").length, 0, "results live on their calls");
  assert.deepEqual(runs, [4]);
  assert.deepEqual(ws.frames("tool.result"), [{ type: "tool.result", call_id: "c2", output: 4 }]);
});
