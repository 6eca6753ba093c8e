// A TypeScript program written against @parley-chat/client's declarations; tests/test_client_js.py
// compiles it with tsc --strict in a scratch project that installed the packed tarball. It is
// type-checked only, never run. The @ts-expect-error lines must stay errors: the types are not `any`.

import ParleyDefault, {
  CLIENT_TYPES,
  ParleyClient,
  ParleyError,
  SseParser,
  type AssistantTurn,
  type ParleyEvent,
  type ResponseCompletedEvent,
  type TurnEvent,
} from "@parley-chat/client";

async function main(): Promise<void> {
  const client = new ParleyClient("ws://127.0.0.1:8000/v1/ws", { storage: null, token: async () => "jwt" });
  const same: ParleyClient = new ParleyDefault({ url: "ws://127.0.0.1:8000/v1/ws" });
  same.close();
  const sse = new ParleyClient({ url: "ws://127.0.0.1:8000/v1/ws", transport: "sse", fetch, WebSocket: null });
  const auto = new ParleyClient({ transport: "auto", fallbackAfter: 3, httpUrl: "http://127.0.0.1:8000/v1" });
  const kind: "websocket" | "sse" = sse.transport;
  auto.on("transport", (t) => console.log(t.previous, "->", t.transport, t.reason, auto.httpUrl, kind));
  console.log(auto.status.transport, auto.stats.transportSwitches);
  const parser = new SseParser((ev) => console.log(ev.type, ev.data, ev.id), (c) => console.log(c));
  parser.push("data: x\n\n");
  // @ts-expect-error: no such transport
  new ParleyClient({ transport: "long-polling" });

  const ready = await client.connect();
  const sessionId: string = ready.session_id;

  const turn = client.stream("Hello", { profile: "default" });
  let text = "";
  for await (const ev of turn) {
    const typed: TurnEvent = ev;
    if (ev.type === "response.delta") text += ev.text;
    if (ev.type === "response.tool_call") console.log(ev.name, ev.arguments, ev.server);
    if (ev.type === "tool.result.accepted") console.log(ev.call_id, ev.output, ev.is_error);
    if (ev.type === "response.completed") {
      const done: ResponseCompletedEvent = ev;
      console.log(done.finish_reason, done.usage.output_tokens, typed.type);
    }
  }
  const reply: AssistantTurn = await turn.done;
  console.log(reply.finishReason, reply.usage?.input_tokens, turn.responseId, text, sessionId);
  const recorded = await turn.feedback(+1, { comment: "good" });
  console.log(recorded.rating === "up");
  await client.feedback(reply.id, "down", { tags: ["tone"] });

  const p = client.send("again");
  const cid: string = p.clientMsgId;
  await client.cancel();
  console.log(cid, (await p).content);

  client.addEventListener("delta", (e: ParleyEvent<"delta">) => {
    console.log(e.detail.text, e.turn?.content);
  });
  const off = client.on("completed", (ev, t) => console.log(ev.finish_reason, t.content));
  off();
  client.on("status", (s) => console.log(s.state === "failed" ? s.error?.code : s.state));

  // tools (issue 17)
  const offTool = client.tool<{ theme: "light" | "dark" }>(
    "set_theme",
    { description: "Switch the theme", parameters: { type: "object", properties: { theme: { enum: ["light", "dark"] } } } },
    (args, call) => {
      console.log(call.callId, call.responseId);
      return { theme: args.theme };
    },
    { approve: true },
  );
  offTool();
  client.on("approval", (approval, t) => {
    console.log(approval.name, approval.arguments, approval.open, t.toolCalls?.[0]?.state);
    void (approval.server ? approval.approve() : approval.deny());
  });
  client.on("reasoning", (ev, t) => console.log(ev.text, t.reasoning));
  client.on("tool_result", (ev, t) => console.log(ev.output, t.continues));
  client.toolResult("call_1", { ok: true }, { isError: false });
  for (const c of client.pendingCalls) console.log(c.callId, c.state, c.responseId, c.argumentsText);
  await client.send("pick", { tools: [{ name: "pick", parameters: { type: "object" } }], toolChoice: { name: "pick" } });
  const usage = reply.usage?.reasoning_tokens ?? 0;
  console.log(usage, turn.responseIds.length);

  try {
    await client.send("x");
  } catch (err) {
    if (err instanceof ParleyError) console.log(err.code, err.retryable, err.retryAfterMs, err.closeCode);
  }
  console.log(CLIENT_TYPES.includes("hello"));

  // @ts-expect-error: a rating is "up" | "down" or a number
  await client.feedback(reply.id, "meh");
  // @ts-expect-error: no such event
  client.on("deltas", () => {});
  // @ts-expect-error: a tool's options are {approve}
  client.tool("x", {}, null, { ask: true });
  // @ts-expect-error: toolChoice is "auto" | "none" | "required" | {name}
  client.send("x", { toolChoice: "always" });
  // @ts-expect-error: text is a string
  const n: number = turn.text;
  console.log(n);
}

void main;
