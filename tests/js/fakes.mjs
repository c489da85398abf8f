// Fakes for the browser client's unit tests: a manual clock, WebSocket and EventSource
// classes driven by the test, and fetch answers that stream text/event-stream bodies.

/** Let pending promise callbacks run (the client's async steps), without advancing time. */
export function flush() {
  return new Promise((resolve) => setImmediate(resolve));
}

/** A clock whose time moves only through tick(); timers fire in time order. */
export class FakeClock {
  constructor(start = 1_000_000) {
    this.t = start;
    this.timers = new Map();
    this.nextId = 1;
    this.setTimeout = (fn, ms) => {
      const id = this.nextId++;
      this.timers.set(id, { at: this.t + Math.max(0, Number(ms) || 0), fn });
      return id;
    };
    this.clearTimeout = (id) => {
      this.timers.delete(id);
    };
    this.now = () => this.t;
  }

  /** Advance `ms`, firing every timer that falls due (and letting promises settle). */
  async tick(ms) {
    const end = this.t + ms;
    await flush();
    for (;;) {
      let next = null;
      for (const [id, t] of this.timers) if (t.at <= end && (!next || t.at < next[1].at)) next = [id, t];
      if (!next) break;
      this.timers.delete(next[0]);
      this.t = Math.max(this.t, next[1].at);
      next[1].fn();
      await flush();
    }
    this.t = end;
    await flush();
  }
}

/** A WebSocket class whose instances the test opens, feeds and closes. */
export function fakeWebSockets() {
  const sockets = [];
  class FakeWebSocket {
    constructor(url) {
      this.url = url;
      this.readyState = 0;
      this.sent = [];
      this.closedWith = null;
      sockets.push(this);
    }

    send(text) {
      if (this.readyState !== 1) throw new Error("send on a socket that is not open");
      this.sent.push(JSON.parse(text));
    }

    close(code = 1000) {
      this.readyState = 3;
      this.closedWith = code;
    }

    // ---- the test's side ----
    open() {
      this.readyState = 1;
      if (this.onopen) this.onopen({});
    }

    receive(frame) {
      if (this.onmessage) this.onmessage({ data: typeof frame === "string" ? frame : JSON.stringify(frame) });
    }

    drop(code = 1006, reason = "") {
      this.readyState = 3;
      if (this.onclose) this.onclose({ code, reason });
    }

    frames(type) {
      return this.sent.filter((f) => !type || f.type === type);
    }

    last(type) {
      const all = this.frames(type);
      return all[all.length - 1];
    }
  }
  return { FakeWebSocket, sockets };
}

/** An EventSource class: the test dispatches named events, opens, errors and closes. */
export function fakeEventSources() {
  const sources = [];
  class FakeEventSource {
    static CONNECTING = 0;
    static OPEN = 1;
    static CLOSED = 2;

    constructor(url) {
      this.url = url;
      this.readyState = 0;
      this.listeners = new Map();
      this.lastEventId = "";
      sources.push(this);
    }

    addEventListener(name, fn) {
      if (!this.listeners.has(name)) this.listeners.set(name, []);
      this.listeners.get(name).push(fn);
    }

    close() {
      this.readyState = 2;
    }

    // ---- the test's side ----
    open() {
      this.readyState = 1;
      if (this.onopen) this.onopen({});
    }

    emit(name, data, id) {
      if (id !== undefined) this.lastEventId = id;
      const text = typeof data === "string" ? data : JSON.stringify(data);
      for (const fn of this.listeners.get(name) || []) fn({ type: name, data: text, lastEventId: this.lastEventId });
    }

    fail(readyState) {
      this.readyState = readyState;
      if (this.onerror) this.onerror({});
    }
  }
  return { FakeEventSource, sources };
}

/** A fetch Response-like object with a JSON body. */
export function jsonResponse(status, body) {
  return {
    status,
    ok: status >= 200 && status < 300,
    headers: new Headers({ "Content-Type": "application/json" }),
    body: null,
    json: async () => body,
  };
}

/** A streaming text/event-stream response; `push(text)` sends bytes, `end()` finishes. */
export function sseResponse() {
  let ctrl;
  const body = new ReadableStream({
    start(c) {
      ctrl = c;
    },
  });
  const enc = new TextEncoder();
  return {
    status: 200,
    ok: true,
    headers: new Headers({ "Content-Type": "text/event-stream" }),
    body,
    json: async () => ({}),
    push: (text) => ctrl.enqueue(enc.encode(text)),
    end: () => ctrl.close(),
  };
}
