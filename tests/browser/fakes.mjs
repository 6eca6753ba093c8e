// Fakes shared by the JS client's node unit tests (client_unit.test.mjs, client_transport.test.mjs):
// a clock whose timers fire only when a test advances it, a Storage, and a scripted WebSocket.

export class FakeClock {
  constructor() {
    this.t = 1_700_000_000_000;
    this.nextId = 1;
    this.timers = new Map();
  }
  now = () => this.t;
  setTimeout = (fn, ms) => {
    const id = this.nextId++;
    this.timers.set(id, { at: this.t + Math.max(0, ms), fn });
    return id;
  };
  clearTimeout = (id) => {
    this.timers.delete(id);
  };
  /** Advance time, firing due timers in order (timers they schedule fire too, if due). */
  advance(ms) {
    const end = this.t + ms;
    for (;;) {
      let next = null;
      for (const [id, tm] of this.timers) if (tm.at <= end && (!next || tm.at < next[1].at)) next = [id, tm];
      if (!next) break;
      this.timers.delete(next[0]);
      this.t = Math.max(this.t, next[1].at);
      next[1].fn();
    }
    this.t = end;
  }
  /** Jump the wall clock without running timers (a frozen or throttled tab). */
  jump(ms) {
    this.t += ms;
  }
}

export class FakeStorage {
  constructor() {
    this.map = new Map();
  }
  getItem(k) {
    return this.map.has(k) ? this.map.get(k) : null;
  }
  setItem(k, v) {
    this.map.set(k, String(v));
  }
  removeItem(k) {
    this.map.delete(k);
  }
}

/** A WebSocket class whose instances record themselves in ``sockets``; a test plays the server. */
export function fakeWebSocket(sockets) {
  return class FakeWebSocket {
    constructor(url, protocol) {
      this.url = url;
      this.protocol = protocol;
      this.readyState = 0;
      this.sent = [];
      this.closedByClient = null;
      sockets.push(this);
    }
    send(data) {
      if (this.readyState !== 1) throw new Error("not open");
      this.sent.push(JSON.parse(data));
    }
    close(code, reason) {
      this.closedByClient = { code, reason };
      this.readyState = 3;
    }
    // server side
    accept() {
      this.readyState = 1;
      this.onopen?.({});
    }
    push(obj) {
      this.onmessage?.({ data: JSON.stringify(obj) });
    }
    drop(code = 1006, reason = "") {
      this.readyState = 3;
      this.onclose?.({ code, reason });
    }
    frames(type) {
      return this.sent.filter((f) => f.type === type);
    }
  };
}
