// The JS client in Node against a real `parley serve` (tests/test_client_js.py starts it).
// Environment: PARLEY_URL (the server's ws URL), PARLEY_CLIENT (the module to import: a path, or
// "@parley-chat/client" when run inside a scratch project that installed the npm package), and
// PARLEY_WS (optional: a module whose WebSocket export is handed to the client, e.g. the `ws`
// package for Node 20; without it the client uses the global WebSocket of Node >= 22).
// A TCP proxy in this process stands between client and server, so a test can cut the connection.

import assert from "node:assert/strict";
import net from "node:net";
import { after, before, test } from "node:test";

const { ParleyClient, ParleyError } = await import(process.env.PARLEY_CLIENT);
const WebSocketImpl = process.env.PARLEY_WS ? (await import(process.env.PARLEY_WS)).WebSocket : undefined;
const target = new URL(process.env.PARLEY_URL);

/** A loopback TCP proxy to the server; cut() kills every connection through it (an abrupt network loss). */
class Proxy {
  constructor() {
    this.sockets = new Set();
    this.server = net.createServer((down) => {
      const up = net.connect(Number(target.port), target.hostname);
      for (const s of [down, up]) {
        this.sockets.add(s);
        s.on("close", () => this.sockets.delete(s));
        s.on("error", () => {});
      }
      down.pipe(up);
      up.pipe(down);
    });
  }
  listen() {
    return new Promise((resolve) => this.server.listen(0, "127.0.0.1", resolve));
  }
  get url() {
    return `ws://127.0.0.1:${this.server.address().port}${target.pathname}`;
  }
  cut() {
    for (const s of this.sockets) s.destroy();
  }
  close() {
    this.cut();
    return new Promise((resolve) => this.server.close(resolve));
  }
}

const proxy = new Proxy();
before(() => proxy.listen());
after(() => proxy.close());

function client(url = proxy.url) {
  const opts = { storage: null, backoff: { initialMs: 50, maxMs: 500 } };
  if (WebSocketImpl) opts.WebSocket = WebSocketImpl;
  return new ParleyClient(url, opts);
}

/** The uninterrupted reply to a one-turn conversation (the echo model is deterministic). */
async function reference(content) {
  const c = client(target.href);
  try {
    return (await c.send(content)).content;
  } finally {
    c.close();
  }
}

test("a turn streams over a real server: accepted, started, deltas, completed", async () => {
  const c = client();
  try {
    const types = [];
    const turn = c.stream("hello from node");
    for await (const ev of turn) types.push(ev.type);
    assert.deepEqual(types.slice(0, 2), ["message.accepted", "response.started"]);
    assert.equal(types.at(-1), "response.completed");
    assert.ok(types.filter((t) => t === "response.delta").length >= 1);
    const done = await turn.done;
    assert.equal(done.finishReason, "stop");
    assert.equal(turn.text, done.content);
    assert.equal(turn.text, await reference("hello from node"));
  } finally {
    c.close();
  }
});

test("a cut connection mid-reply is resumed: the same text, no gap, no duplicate", async () => {
  const expected = await reference("cut me off");
  const c = client();
  try {
    let deltas = 0;
    const turn = c.stream("cut me off");
    for await (const ev of turn) {
      if (ev.type === "response.delta" && ++deltas === 3) proxy.cut();
    }
    assert.equal(turn.text, expected);
    assert.equal((await turn.done).finishReason, "stop");
    assert.ok(c.stats.resumes >= 1, "resumed at least once");
    assert.equal(c.stats.gaps, 0);
  } finally {
    c.close();
  }
});

test("a message sent while cut off goes out after the resume, once", async () => {
  const c = client();
  try {
    await c.connect();
    await c.send("first");
    proxy.cut();
    const reply = await c.send("sent while cut off");
    assert.equal(reply.finishReason, "stop");
    const users = c.turns.filter((t) => t.role === "user" && t.content === "sent while cut off");
    assert.equal(users.length, 1);
  } finally {
    c.close();
  }
});

test("cancel() stops a streaming reply with finish_reason cancelled", async () => {
  const c = client();
  try {
    const turn = c.stream("please stop");
    let last = null;
    for await (const ev of turn) {
      if (ev.type === "response.delta" && last?.type !== "response.delta") await turn.cancel();
      last = ev;
    }
    assert.equal(last.type, "response.completed");
    assert.equal(last.finish_reason, "cancelled");
  } finally {
    c.close();
  }
});

test("feedback is logged by the server and the turn carries the rating", async () => {
  const c = client();
  try {
    const turn = c.stream("rate this");
    for await (const _ of turn);
    const recorded = await turn.feedback(+1, { comment: "from node" });
    assert.equal(recorded.type, "feedback.recorded");
    assert.equal(recorded.rating, "up");
    assert.equal(typeof recorded.seq, "number");
    assert.equal(c.turn(turn.responseId).rating, "up");
  } finally {
    c.close();
  }
});

test("EventTarget listeners see the status and the deltas", async () => {
  const c = client();
  try {
    const states = [];
    let deltas = 0;
    c.addEventListener("status", (e) => states.push(e.detail.state));
    c.addEventListener("delta", (e) => {
      assert.equal(e.turn.id, e.detail.response_id);
      deltas += 1;
    });
    await c.send("events please");
    assert.ok(deltas >= 1);
    assert.deepEqual(states.slice(0, 2), ["connecting", "connected"]);
  } finally {
    c.close();
  }
});

test("a refusal rejects with a ParleyError carrying the wire code", async () => {
  const c = client();
  try {
    await assert.rejects(c.send("x", { profile: "no-such-profile" }), (e) => {
      assert.ok(e instanceof ParleyError);
      assert.equal(typeof e.code, "string");
      assert.equal(e.retryable, false);
      return true;
    });
  } finally {
    c.close();
  }
});
