// hubbub.js: the Hubbub browser client (PROTOCOL.md §3 WebSocket, §4 SSE, §5 HTTP).
//
// An ES module with no build step and no dependencies:
//
//   import { connect } from "/static/hubbub.js";
//   const client = connect("/v1/ws", { getToken: async () => myToken });
//   const sub = client.subscribe("lobby", { history: 50, presence: true,
//                                           onMessage: (m) => show(m), onGap: (g) => warn(g) });
//   await client.publish("lobby", { text: "hi" });
//
// Guarantees (see docs/browser-client.md):
// - every stored message of a subscribed room reaches onMessage at most once and in offset
//   order; what was lost (history trimmed, broker restarted) is reported through onGap;
// - the client reconnects with exponential backoff and full jitter after close codes
//   4000-4499 and network loss, and never after 4500-4999 (terminal, reported via onError);
// - on reconnect every room is resubscribed with `since` = the last position seen;
// - publishes made while not connected are QUEUED and sent after the rooms are resubscribed;
//   each carries an idempotency `key` so a resend after a lost reply is not published twice.

const VERSION = "1";

/** Connection states reported through `onState` / the "state" event. */
export const State = Object.freeze({
  CONNECTING: "connecting", // first attempt
  CONNECTED: "connected", // welcome received, rooms resubscribed
  RECONNECTING: "reconnecting", // lost; waiting for the next attempt or attempting
  OFFLINE: "offline", // lost and the browser says it is offline; retried when it comes back
  CLOSED: "closed", // terminal (4500-4999) or client.close(): no automatic reconnect
});

/** An error from the hub (an `error` frame) or from the client itself. */
export class HubbubError extends Error {
  constructor(code, message, { temporary = false, details = null, closeCode = null } = {}) {
    super(message || code);
    this.name = "HubbubError";
    this.code = code; // bad_request, unauthorized, forbidden, ..., or client codes below
    this.temporary = temporary; // retrying the same thing later may succeed
    this.details = details;
    this.closeCode = closeCode; // set when the error comes from a WebSocket close
  }
}

// Client-side error codes (never sent by the hub):
//   "closed"       the client was closed (client.close() or a terminal close code)
//   "timeout"      no answer within the request timeout
//   "queue_full"   too many requests queued while disconnected
//   "disconnected" the connection was lost while a non-resendable request was in flight

const TERMINAL = (code) => code >= 4500 && code <= 4999;
const CLOSE_TOKEN_EXPIRED = 4004;

function randomKey() {
  const b = new Uint8Array(12);
  crypto.getRandomValues(b);
  return "k" + Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

/** Resolve `url` to {ws, http}: accepts ws(s)://…/v1/ws, http(s)://host, "/v1/ws" or nothing. */
function endpoints(url) {
  const base = typeof location !== "undefined" ? location.href : "http://127.0.0.1/";
  const u = new URL(url || "/v1/ws", base);
  if (u.protocol === "http:") u.protocol = "ws:";
  if (u.protocol === "https:") u.protocol = "wss:";
  if (u.pathname === "/" || u.pathname === "") u.pathname = "/v1/ws";
  const http = new URL(u.href);
  http.protocol = u.protocol === "wss:" ? "https:" : "http:";
  http.pathname = u.pathname.replace(/\/v1\/ws$/, "") || "/";
  http.search = "";
  http.hash = "";
  return { ws: u.href, http: http.href.replace(/\/$/, "") };
}

/**
 * Open a client. Options:
 *   token        a JWT string (or nothing in dev mode)
 *   getToken     async () => token: called before each connect, on `expiring` and after 4004
 *   transport    "auto" (default: WebSocket, SSE + HTTP when WebSocket never connects),
 *                "websocket" or "sse"
 *   onState      (state, info) => void
 *   onError      (HubbubError) => void: terminal closes, error frames without a request
 *   backoff      {base: 500, max: 30000} ms; delay = random(0, min(max, base * 2^attempt))
 *   requestTimeout  ms before a request (publish, history, …) rejects with "timeout" (30000)
 *   maxQueue     requests queued while disconnected before "queue_full" (1000)
 *   connectTimeout  ms from opening a socket to `welcome` (15000)
 *   fallbackAfter   failed WebSocket attempts (never opened) before "auto" switches to SSE (3)
 */
export function connect(url, options = {}) {
  return new Client(url, options);
}

class Subscription {
  constructor(client, room, opts) {
    this._client = client;
    this.room = room;
    this._opts = opts;
    this.position = null; // {epoch, offset}: everything up to and including offset was seen
    this._cursor = null; // {epoch, offset, cursor} from the last reply
    this.members = new Map(); // session -> member (when presence: true)
    this.active = false; // subscribed on the current connection
    this.closed = false;
    this._retry = 0;
    this.ready = new Promise((res, rej) => {
      this._resolve = res;
      this._reject = rej;
    });
    this.ready.catch(() => {}); // observed through onError too; never an unhandled rejection
  }

  /** A cursor for `position`, when the hub issued one for exactly that position, else null. */
  get cursor() {
    const c = this._cursor;
    const p = this.position;
    if (c && p && c.epoch === p.epoch && c.offset === p.offset) return c.cursor;
    return null;
  }

  /** `since` to resume from: the cursor when it is current, else the position. */
  get since() {
    return this.cursor || (this.position ? { ...this.position } : null);
  }

  unsubscribe() {
    return this._client._unsubscribe(this);
  }

  _call(name, ...args) {
    const fn = this._opts[name];
    if (typeof fn !== "function") return;
    try {
      fn(...args);
    } catch (e) {
      console.error(`hubbub: ${name} callback failed`, e);
    }
  }

  /** A stored or ephemeral message; returns true when delivered to the app. */
  _message(m) {
    if (typeof m.offset !== "number") {
      this._call("onMessage", m); // ephemeral: no position
      return true;
    }
    const p = this.position;
    if (p && p.epoch === m.epoch) {
      if (m.offset <= p.offset) return false; // seen already (defensive dedupe)
      if (m.offset > p.offset + 1) {
        // The hub promises no holes; report one rather than hide it.
        this._call("onGap", {
          room: this.room, epoch: m.epoch, from: p.offset + 1, to: m.offset - 1, synthetic: true,
        });
      }
    }
    this.position = { epoch: m.epoch, offset: m.offset };
    this._call("onMessage", m);
    return true;
  }

  _gap(g) {
    const p = this.position;
    // A gap about something already behind us (same epoch, to <= seen) changes nothing.
    if (p && p.epoch === g.epoch && g.to <= p.offset) return;
    this.position = { epoch: g.epoch, offset: g.to };
    this._call("onGap", { room: g.room, epoch: g.epoch, from: g.from, to: g.to });
  }

  _reply(result) {
    if (result && typeof result.offset === "number" && result.epoch !== undefined) {
      const p = this.position;
      if (!p || p.epoch !== result.epoch || p.offset < result.offset) {
        this.position = { epoch: result.epoch, offset: result.offset };
      }
      if (result.cursor) {
        this._cursor = { epoch: result.epoch, offset: result.offset, cursor: result.cursor };
      }
    }
    if (Array.isArray(result && result.presence)) this._snapshot(result.presence);
    this.active = true;
    this._retry = 0;
    this._resolve(result);
  }

  _snapshot(list) {
    const next = new Map(list.map((m) => [m.session, m]));
    for (const [s, m] of this.members) if (!next.has(s)) this._call("onLeave", m);
    const old = this.members;
    this.members = next;
    for (const [s, m] of next) if (!old.has(s)) this._call("onJoin", m);
    this._call("onPresence", [...this.members.values()]);
  }

  _join(m) {
    const had = this.members.has(m.session);
    this.members.set(m.session, m);
    if (!had) this._call("onJoin", m);
    this._call("onPresence", [...this.members.values()]);
  }

  _leave(m) {
    if (!this.members.delete(m.session)) return;
    this._call("onLeave", m);
    this._call("onPresence", [...this.members.values()]);
  }
}

class Client {
  constructor(url, options) {
    this.options = options;
    this.url = endpoints(url);
    this.state = null;
    this.session = null; // the hub's session id on the current connection
    this.user = null;
    this.transport = null; // "websocket" | "sse" once connected
    this.welcome = null;
    this._subs = new Map(); // room -> Subscription
    this._pending = new Map(); // id -> request
    this._queue = []; // requests waiting for a connection
    this._nextId = 1;
    this._gen = 0; // connection generation; stale sockets are ignored
    this._ws = null;
    this._sse = null;
    this._attempt = 0;
    this._wsFailures = 0; // WebSocket attempts that never opened (for the SSE fallback)
    this._everOpened = false;
    this._timer = null;
    this._deadTimer = null;
    this._lastFrame = 0;
    this._liveSince = 0;
    this._listeners = new Map();
    this._token = options.token || null;
    this._mode = options.transport || "auto";
    this._tokenIn = options.tokenIn || "frame"; // "frame" (auth frame) or "query" (?token=)
    this._authId = null;
    this._backoff = { base: 500, max: 30000, ...(options.backoff || {}) };
    this._onWake = () => this._wake();
    this._onOnline = () => this._wake(true);
    this._onOffline = () => {
      if (this.state === State.RECONNECTING) this._setState(State.OFFLINE);
    };
    if (typeof window !== "undefined") {
      window.addEventListener("online", this._onOnline);
      window.addEventListener("offline", this._onOffline);
      window.addEventListener("focus", this._onWake);
      window.addEventListener("pageshow", this._onWake);
      document.addEventListener("visibilitychange", this._onWake);
    }
    this._open(State.CONNECTING);
  }

  // ---- public API -----------------------------------------------------------------------

  /** Listen to "state" (state, info), "error" (err), "welcome" (frame), "retry" ({attempt,
   * delay, code, reason}: a reconnect is scheduled), "signal" (frame), "ice_servers" (frame),
   * "expiring" (frame). Returns a function that removes the listener. */
  on(event, fn) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event).add(fn);
    return () => this._listeners.get(event).delete(fn);
  }

  /** Subscribe to `room`. Options: onMessage, onJoin, onLeave, onPresence(members), onGap,
   * onError, onSignal, since (position or cursor), history (N), presence (bool).
   * Returns a Subscription: .position, .cursor, .since, .members, .ready, .unsubscribe(). */
  subscribe(room, opts = {}) {
    if (this._subs.has(room)) {
      throw new HubbubError("conflict", `already subscribed to ${room}`);
    }
    const sub = new Subscription(this, room, opts);
    if (opts.since && typeof opts.since === "object") sub.position = { ...opts.since };
    this._subs.set(room, sub);
    if (this._canSend()) this._sendSubscribe(sub);
    else if (this._sse && this.state !== State.CLOSED) this._sseRestart();
    if (this.state === State.CLOSED) {
      sub._reject(new HubbubError("closed", "client is closed"));
    }
    return sub;
  }

  /** Publish `data` to `room`. Resolves to {room, offset, epoch, cursor} (ephemeral:
   * {room, ephemeral: true}); rejects with a HubbubError carrying `code` and `temporary`. */
  publish(room, data, { event, ephemeral, key } = {}) {
    const frame = { type: "publish", room, data };
    if (event !== undefined) frame.event = event;
    if (ephemeral) frame.ephemeral = true;
    // A key makes a resend after a lost reply safe (the hub remembers keys for 5 minutes).
    frame.key = key || (ephemeral ? undefined : randomKey());
    if (frame.key === undefined) delete frame.key;
    return this._request(frame, { resend: !ephemeral || Boolean(key) });
  }

  /** The same object as GET /v1/rooms/{room}/messages: {messages, cursor, epoch, more, complete}. */
  history(room, { since, limit } = {}) {
    const frame = { type: "history", room };
    if (since !== undefined && since !== null) frame.since = since;
    if (limit !== undefined) frame.limit = limit;
    return this._request(frame, { resend: true });
  }

  /** {members, users, sessions} of `room`. */
  presence(room) {
    return this._request({ type: "presence", room }, { resend: true });
  }

  /** WebRTC signaling (§6) to session `to` in call room `room`. */
  signal(room, to, data) {
    return this._request({ type: "signal", room, to, data }, { resend: false });
  }

  /** Reconnect now (e.g. after a terminal close, once the token was fixed). */
  reconnect() {
    if (this._closedByUser) return;
    this._drop(1000);
    this._attempt = 0;
    this._open(this.state === State.CLOSED || !this.state ? State.CONNECTING : State.RECONNECTING);
  }

  /** Close for good: no reconnect; pending and queued requests reject with "closed". */
  close() {
    this._closedByUser = true;
    this._terminal(new HubbubError("closed", "client closed"), 1000);
    if (typeof window !== "undefined") {
      window.removeEventListener("online", this._onOnline);
      window.removeEventListener("offline", this._onOffline);
      window.removeEventListener("focus", this._onWake);
      window.removeEventListener("pageshow", this._onWake);
      document.removeEventListener("visibilitychange", this._onWake);
    }
  }

  // ---- events ---------------------------------------------------------------------------

  _emit(event, ...args) {
    const opt = { state: "onState", error: "onError", welcome: "onWelcome" }[event];
    const fns = [...(this._listeners.get(event) || [])];
    if (opt && typeof this.options[opt] === "function") fns.unshift(this.options[opt]);
    for (const fn of fns) {
      try {
        fn(...args);
      } catch (e) {
        console.error(`hubbub: ${event} listener failed`, e);
      }
    }
  }

  _setState(state, info = {}) {
    if (this.state === state) return;
    this.state = state;
    this._emit("state", state, info);
  }

  // ---- connection life cycle ------------------------------------------------------------

  _useSse() {
    if (this._mode === "sse") return true;
    if (this._mode !== "auto" || this._everOpened) return false;
    return this._wsFailures >= (this.options.fallbackAfter ?? 3);
  }

  async _open(state) {
    if (this._closedByUser) return;
    const gen = ++this._gen;
    clearTimeout(this._timer);
    // Still offline: keep saying so while trying anyway (navigator.onLine can be wrong).
    if (state === State.RECONNECTING && this.state === State.OFFLINE && this._browserOffline()) {
      state = State.OFFLINE;
    }
    this._setState(state);
    if (typeof this.options.getToken === "function") {
      try {
        this._token = (await this.options.getToken()) || null;
      } catch (e) {
        if (gen !== this._gen) return;
        this._emit("error", new HubbubError("unauthorized", `getToken failed: ${e}`, { temporary: true }));
        this._scheduleReconnect();
        return;
      }
      if (gen !== this._gen || this._closedByUser) return;
    }
    if (this._useSse()) {
      this._openSse(gen);
      return;
    }
    let ws;
    let url = this.url.ws;
    if (this._token && this._tokenIn === "query") {
      url += (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(this._token);
    }
    try {
      ws = new WebSocket(url);
    } catch (e) {
      this._emit("error", new HubbubError("bad_request", `cannot open WebSocket: ${e}`));
      this._scheduleReconnect();
      return;
    }
    this._ws = ws;
    this._opened = false;
    this._lastFrame = Date.now();
    const connectTimeout = this.options.connectTimeout ?? 15000;
    this._deadline = this._lastFrame + connectTimeout;
    this._armDeadTimer(connectTimeout);
    ws.onopen = () => {
      if (gen !== this._gen) return;
      this._opened = true;
      this._everOpened = true;
      // Browsers cannot set headers: the token goes in the first frame, not in the URL. The
      // frame carries an id: a hub that admits guests welcomes a connection without a token
      // at once and answers a later `auth` with an error for that id; then the token goes in
      // the query from the next connection on (docs/PROTOCOL.md, clarifications).
      if (this._token && this._tokenIn === "frame") {
        this._authId = this._nextId++;
        ws.send(JSON.stringify({ type: "auth", token: this._token, id: this._authId }));
      }
    };
    ws.onmessage = (ev) => {
      if (gen !== this._gen) return;
      let frame;
      try {
        frame = JSON.parse(ev.data);
      } catch {
        return;
      }
      this._frame(frame);
    };
    ws.onclose = (ev) => {
      if (gen !== this._gen) return;
      // A WebSocket that never opened counts towards the SSE fallback, unless we are offline.
      if (!this._opened && !this._browserOffline()) this._wsFailures++;
      this._lost(ev.code || 1006, ev.reason || "");
    };
    ws.onerror = () => {}; // always followed by close
  }

  /** Something suggests we might have been asleep: check liveness, retry now if offline. */
  _wake(online = false) {
    if (this._closedByUser || this.state === State.CLOSED) return;
    if (typeof document !== "undefined" && document.visibilityState === "hidden" && !online) return;
    if (this.state === State.CONNECTED || this.state === State.CONNECTING) {
      this._checkDead();
    } else if (this._ws || this._sse) {
      // an attempt is under way
    } else if (this.state === State.OFFLINE || (online && this.state === State.RECONNECTING)) {
      this._attempt = 0;
      this._open(State.RECONNECTING);
    } else if (this.state === State.RECONNECTING && this._retryAt && Date.now() >= this._retryAt) {
      this._open(State.RECONNECTING); // the backoff timer was throttled in the background
    }
  }

  _browserOffline() {
    return typeof navigator !== "undefined" && navigator.onLine === false;
  }

  _armDeadTimer(ms) {
    clearTimeout(this._deadTimer);
    this._deadTimer = setTimeout(() => this._checkDead(), Math.max(50, ms));
  }

  /** Dead connection: no frame for ping_interval + ping_timeout (or no welcome in time). */
  _checkDead() {
    if ((!this._ws && !this._sse) || this._sseIdle) return;
    const now = Date.now();
    if (now >= this._deadline) {
      if (this._ws && !this._opened) this._wsFailures++;
      this._lost(4002, "no frame from the server in time");
      return;
    }
    // Timers are throttled in background tabs; _wake() re-checks on visibility/online too.
    this._armDeadTimer(Math.min(this._deadline - now + 20, 5000));
  }

  _alive() {
    this._lastFrame = Date.now();
    if (this.welcome) {
      const w = this.welcome;
      this._deadline = this._lastFrame + ((w.ping_interval ?? 25) + (w.ping_timeout ?? 10)) * 1000;
    }
  }

  /** The current connection is gone (close event, dead, SSE error). */
  _lost(code, reason) {
    const disc = this._disconnect;
    // On SSE, the next attempt after a loss tries the WebSocket once more.
    if (this._sse && this._mode === "auto") this._wsFailures = Math.max(0, (this.options.fallbackAfter ?? 3) - 1);
    this._drop(code);
    if (TERMINAL(code)) {
      const why = (disc && disc.reason) || reason || `closed with ${code}`;
      const kind = { 4501: "unauthorized", 4503: "forbidden" }[code] || "closed";
      const err = new HubbubError(kind, why, { closeCode: code });
      this._terminal(err, code);
      return;
    }
    if (code === CLOSE_TOKEN_EXPIRED) this._attempt = 0; // new token right away
    this._scheduleReconnect(code, reason);
  }

  /** Forget the current connection; requests in flight go back to the queue or reject. */
  _drop(code) {
    this._teardown();
    for (const sub of this._subs.values()) sub.active = false;
    // Requests in flight: resendable ones go back to the front of the queue, in order.
    const inflight = [...this._pending.values()].sort((a, b) => a.id - b.id);
    this._pending.clear();
    const requeue = [];
    for (const r of inflight) {
      if (r.resend) requeue.push(r);
      else r.reject(new HubbubError("disconnected", "connection lost", { temporary: true, closeCode: code }));
    }
    this._queue = requeue.concat(this._queue);
  }

  _teardown() {
    clearTimeout(this._deadTimer);
    clearTimeout(this._refreshTimer);
    clearTimeout(this._timer);
    this._gen++;
    const ws = this._ws;
    this._ws = null;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = null;
      try {
        ws.close(1000);
      } catch {
        /* already closed */
      }
    }
    if (this._sse) {
      this._sse.abort();
      this._sse = null;
    }
    this.welcome = null;
    this._authId = null;
    this._disconnect = null;
    this.session = null;
  }

  _terminal(err, code) {
    this._teardown();
    for (const r of this._pending.values()) r.reject(err);
    for (const r of this._queue) r.reject(err);
    this._pending.clear();
    this._queue = [];
    for (const sub of this._subs.values()) {
      sub.active = false;
      sub._reject(err);
    }
    this._setState(State.CLOSED, { code, reason: err.message, error: err });
    if (!this._closedByUser) this._emit("error", err);
  }

  _scheduleReconnect(code, reason) {
    if (this._closedByUser) return;
    if (this._liveSince && Date.now() - this._liveSince > 5000) this._attempt = 0;
    this._liveSince = 0;
    const { base, max } = this._backoff;
    const ceiling = Math.min(max, base * 2 ** Math.min(this._attempt, 30));
    const delay = Math.random() * ceiling; // full jitter
    this._attempt++;
    this._retryAt = Date.now() + delay;
    this._setState(this._browserOffline() ? State.OFFLINE : State.RECONNECTING, { code, reason, delay });
    this._emit("retry", { attempt: this._attempt, delay, code, reason });
    this._timer = setTimeout(() => this._open(State.RECONNECTING), delay);
  }

  // ---- frames ---------------------------------------------------------------------------

  _canSend() {
    return Boolean(this._ws && this.welcome && this._ws.readyState === 1);
  }

  _send(frame) {
    this._ws.send(JSON.stringify(frame));
  }

  _frame(f) {
    this._alive();
    switch (f.type) {
      case "welcome":
        return this._welcome(f);
      case "reply":
      case "error":
        if (f.type === "error" && f.id === this._authId && this._authId !== null) {
          // Welcomed as a guest before our auth frame was read: reconnect with ?token=.
          this._authId = null;
          this._tokenIn = "query";
          this._drop(1000);
          this._attempt = 0;
          this._open(State.RECONNECTING);
          return;
        }
        if (f.id !== null && f.id !== undefined && this._pending.has(f.id)) {
          const r = this._pending.get(f.id);
          this._pending.delete(f.id);
          clearTimeout(r.timer);
          if (f.type === "reply") r.resolve(f.result);
          else r.reject(new HubbubError(f.code, f.message, { temporary: Boolean(f.temporary), details: f.details }));
        } else if (f.type === "error" && (f.id === null || f.id === undefined)) {
          this._unsolicitedError(f);
        } // else: the answer to a request that already timed out
        return;
      case "message": {
        const sub = this._subs.get(f.room);
        if (sub && !sub.closed) sub._message(f);
        return;
      }
      case "gap": {
        const sub = this._subs.get(f.room);
        if (sub && !sub.closed) sub._gap(f);
        return;
      }
      case "join":
      case "leave": {
        const sub = this._subs.get(f.room);
        if (sub && !sub.closed) (f.type === "join" ? sub._join(f) : sub._leave(f));
        return;
      }
      case "ping":
        if (this._ws) this._send({ type: "pong" });
        return;
      case "expiring":
        this._emit("expiring", f);
        this._expiring(f);
        return;
      case "disconnect":
        this._disconnect = f;
        return;
      case "signal": {
        const sub = this._subs.get(f.room);
        if (sub) sub._call("onSignal", f);
        this._emit("signal", f);
        return;
      }
      default:
        this._emit(f.type, f); // pong, ice_servers, and whatever newer hubs send
    }
  }

  _unsolicitedError(f) {
    const err = new HubbubError(f.code, f.message, { temporary: Boolean(f.temporary), details: f.details });
    const room = f.room || (f.details && f.details.room);
    const sub = room && this._subs.get(room);
    if (sub && f.code === "forbidden") {
      // A refresh took away this room's grant: the hub ended the subscription.
      this._subs.delete(room);
      sub.closed = true;
      sub.active = false;
      sub._call("onError", err);
    }
    this._emit("error", err);
  }

  _welcome(f) {
    this.welcome = f;
    this.session = f.session;
    this.user = f.user;
    this.transport = "websocket";
    this._liveSince = Date.now();
    this._alive();
    this._armDeadTimer(Math.min(this._deadline - Date.now() + 20, 5000));
    this._emit("welcome", f);
    this._resubscribeAll(this._gen);
  }

  async _resubscribeAll(gen) {
    const subs = [...this._subs.values()].filter((s) => !s.closed);
    await Promise.all(subs.map((s) => this._sendSubscribe(s)));
    if (gen !== this._gen) return;
    this._setState(State.CONNECTED, { session: this.session, transport: this.transport });
    this._flush();
  }

  /** Subscribe `sub` on the current connection. Resolves when settled (never rejects). */
  _sendSubscribe(sub) {
    const gen = this._gen;
    const frame = { type: "subscribe", room: sub.room };
    const since = sub.since ?? sub._opts.since;
    if (since !== undefined && since !== null) frame.since = since;
    else if (sub._opts.history) frame.history = sub._opts.history;
    if (sub._opts.presence) frame.presence = true;
    return new Promise((done) => {
      this._sendNow(frame, {
        resolve: (result) => {
          if (!sub.closed) sub._reply(result);
          done();
        },
        reject: (err) => {
          done();
          if (gen !== this._gen || sub.closed) return;
          if (err.temporary || err.code === "timeout") {
            // Broker down or similar: try this room again on this connection.
            const delay = Math.random() * Math.min(this._backoff.max, this._backoff.base * 2 ** sub._retry++);
            setTimeout(() => {
              if (gen === this._gen && !sub.closed && this._canSend()) this._sendSubscribe(sub);
            }, delay);
            return;
          }
          this._subs.delete(sub.room);
          sub.closed = true;
          sub._reject(err);
          sub._call("onError", err);
          this._emit("error", err);
        },
      });
    });
  }

  _unsubscribe(sub) {
    if (sub.closed) return Promise.resolve({});
    sub.closed = true;
    sub.active = false;
    if (this._subs.get(sub.room) === sub) this._subs.delete(sub.room);
    sub._reject(new HubbubError("closed", "unsubscribed"));
    if (this._sse) {
      this._sseRestart();
      return Promise.resolve({});
    }
    if (!this._canSend()) return Promise.resolve({});
    return new Promise((resolve) => {
      this._sendNow({ type: "unsubscribe", room: sub.room }, { resolve, reject: () => resolve({}) });
    });
  }

  /** `expiring {in}`: get a token and send `refresh`. The hub announces expiry
   * min(60, remaining) s ahead, so a token living under a minute is "expiring" again at once:
   * one refresh at a time, and a refresh within 5 s of the last one waits for half of `in`. */
  _expiring(f) {
    if (typeof this.options.getToken !== "function" || this._refreshing) return;
    const since = Date.now() - (this._lastRefresh || 0);
    const wait = since < 5000 ? Math.max(0, (Number(f.in) || 0) * 500) : 0;
    clearTimeout(this._refreshTimer);
    const gen = this._gen;
    this._refreshTimer = setTimeout(() => gen === this._gen && this._refresh(), wait);
  }

  _refresh() {
    if (typeof this.options.getToken !== "function" || !this._canSend() || this._refreshing) return;
    const gen = this._gen;
    this._refreshing = true;
    this._lastRefresh = Date.now();
    Promise.resolve()
      .then(() => this.options.getToken())
      .then((token) => {
        if (!token || gen !== this._gen) return;
        this._token = token;
        return new Promise((resolve, reject) => this._sendNow({ type: "refresh", token }, { resolve, reject }));
      })
      .catch((e) => {
        if (gen !== this._gen) return; // the connection went; the next one gets a token anyway
        this._emit("error", e instanceof HubbubError ? e : new HubbubError("unauthorized", String(e), { temporary: true }));
      })
      .finally(() => {
        this._refreshing = false;
      });
  }

  /** A request that waits for a connection (queued) and survives reconnects when `resend`. */
  _request(frame, { resend }) {
    return new Promise((resolve, reject) => {
      if (this.state === State.CLOSED) {
        reject(new HubbubError("closed", "client is closed"));
        return;
      }
      const r = { frame, resend, id: 0, timer: null };
      r.resolve = (v) => {
        clearTimeout(r.timer);
        resolve(v);
      };
      r.reject = (e) => {
        clearTimeout(r.timer);
        reject(e);
      };
      const timeout = this.options.requestTimeout ?? 30000;
      if (timeout > 0) {
        r.timer = setTimeout(() => {
          if (this._pending.get(r.id) === r) this._pending.delete(r.id);
          const i = this._queue.indexOf(r);
          if (i >= 0) this._queue.splice(i, 1);
          reject(new HubbubError("timeout", `no answer to ${frame.type} within ${timeout} ms`, { temporary: true }));
        }, timeout);
      }
      if (this.state === State.CONNECTED && (this._canSend() || this._sse)) {
        this._dispatch(r);
      } else if (this._queue.length >= (this.options.maxQueue ?? 1000)) {
        r.reject(new HubbubError("queue_full", "too many requests while disconnected", { temporary: true }));
      } else {
        this._queue.push(r);
      }
    });
  }

  _dispatch(r) {
    if (this._sse) this._httpRequest(r);
    else this._sendNow(r.frame, r);
  }

  /** Send `frame` with a fresh id; `r.resolve`/`r.reject` get the reply or error. Internal
   * requests (subscribe, unsubscribe, refresh) have no timeout: a dead connection is detected
   * by the heartbeat and they are redone on the next connection. */
  _sendNow(frame, r) {
    const id = this._nextId++;
    r.id = id;
    this._pending.set(id, r);
    this._send({ ...frame, id });
  }

  _flush() {
    const q = this._queue;
    this._queue = [];
    for (const r of q) this._dispatch(r);
  }

  // ---- SSE + HTTP fallback (§4, §5) --------------------------------------------------------
  //
  // EventSource can neither send an Authorization header nor receive events whose name it was
  // not told in advance (publications carry their own `event:` name), so the stream is read
  // with fetch() and parsed here. Same reconnect, backoff, `since` and dedupe rules.

  _headers() {
    const h = {};
    if (this._token) h.Authorization = `Bearer ${this._token}`;
    return h;
  }

  /** The set of rooms changed: open a new stream (resuming with the last event id). */
  _sseRestart() {
    if (this._closedByUser || this.state === State.CLOSED) return;
    this._drop(1000);
    this._open(this.state || State.CONNECTING);
  }

  _openSse(gen) {
    const rooms = [...this._subs.values()].filter((s) => !s.closed);
    this._sseIdle = false;
    const ctrl = new AbortController();
    this._sse = ctrl;
    const q = new URLSearchParams();
    for (const s of rooms) q.append("room", s.room);
    if (rooms.some((s) => s._opts.presence)) q.set("presence", "1");
    if (this._sseCursor) q.set("since", this._sseCursor);
    else if (rooms.length === 1 && rooms[0].since && typeof rooms[0].since === "string") q.set("since", rooms[0].since);
    this._lastFrame = Date.now();
    this._deadline = this._lastFrame + (this.options.connectTimeout ?? 15000);
    this._armDeadTimer(this.options.connectTimeout ?? 15000);
    if (rooms.length === 0) {
      // Nothing to stream: publishing over HTTP still works; nothing to watch either.
      this._sseIdle = true;
      this._sseConnected(gen, rooms);
      return;
    }
    fetch(`${this.url.http}/v1/events?${q}`, { headers: this._headers(), signal: ctrl.signal, cache: "no-store" })
      .then(async (resp) => {
        if (gen !== this._gen) return;
        if (resp.status === 401 || resp.status === 403) {
          this._lost(resp.status === 401 ? 4501 : 4503, `HTTP ${resp.status}`);
          return;
        }
        const type = resp.headers.get("Content-Type") || "";
        if (!resp.ok || !resp.body || !type.startsWith("text/event-stream")) {
          this._lost(4003, `HTTP ${resp.status} ${type}`);
          return;
        }
        // Connected once the stream's first block (retry + id) arrives.
        await this._readSse(resp.body, gen, () => this._sseConnected(gen, rooms));
        if (gen !== this._gen) return;
        // The hub says why a stream ends (an extension: event hub.disconnect {code, reason}).
        const d = this._disconnect;
        this._lost((d && d.code) || 1006, (d && d.reason) || "stream ended");
      })
      .catch(() => {
        if (gen === this._gen) this._lost(1006, "stream failed");
      });
  }

  async _sseConnected(gen, rooms) {
    this.transport = "sse";
    this.welcome = { ping_interval: 15, ping_timeout: 10, transport: "sse" };
    this._alive();
    this._liveSince = Date.now();
    // History requested on first subscribe: fetched over HTTP (the stream itself starts live).
    for (const s of rooms) {
      if (!s.position && s._opts.history) {
        try {
          const h = await this._http("GET", `/v1/rooms/${encodeURIComponent(s.room)}/messages?limit=${s._opts.history}`);
          for (const m of h.messages) s._message(m);
        } catch (e) {
          this._emit("error", e);
        }
      }
      s.active = true;
      s._resolve({ room: s.room, transport: "sse" });
    }
    if (gen !== this._gen) return;
    this._setState(State.CONNECTED, { transport: "sse" });
    this._flush();
  }

  async _readSse(body, gen, onFirst) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = "";
    let ev = { event: "message", data: [], id: null };
    for (;;) {
      const { value, done } = await reader.read();
      if (done || gen !== this._gen) return;
      if (onFirst) {
        onFirst();
        onFirst = null;
      }
      this._alive();
      buf += value;
      let nl;
      while ((nl = buf.search(/\r\n|\r|\n/)) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + (buf[nl] === "\r" && buf[nl + 1] === "\n" ? 2 : 1));
        if (line === "") {
          if (ev.id !== null) this._sseCursor = ev.id;
          if (ev.data.length) this._sseEvent(ev.event, ev.data.join("\n"));
          ev = { event: "message", data: [], id: null };
        } else if (!line.startsWith(":")) {
          const i = line.indexOf(":");
          const field = i < 0 ? line : line.slice(0, i);
          let v = i < 0 ? "" : line.slice(i + 1);
          if (v.startsWith(" ")) v = v.slice(1);
          if (field === "event") ev.event = v;
          else if (field === "data") ev.data.push(v);
          else if (field === "id") ev.id = v;
        }
      }
    }
  }

  _sseEvent(name, text) {
    let f;
    try {
      f = JSON.parse(text);
    } catch {
      return;
    }
    const sub = this._subs.get(f.room);
    if (name === "hub.expired") {
      this._lost(CLOSE_TOKEN_EXPIRED, "token expired");
      return;
    }
    if (name === "hub.disconnect") {
      this._disconnect = f; // acted upon when the stream ends
      return;
    }
    if (!sub || sub.closed) return;
    if (name === "hub.gap") sub._gap(f);
    else if (name === "hub.join") sub._join(f);
    else if (name === "hub.leave") sub._leave(f);
    else if (name === "hub.presence" && Array.isArray(f.members)) sub._snapshot(f.members);
    else if (f.type === "message" || (!name.startsWith("hub.") && f.data !== undefined)) sub._message(f);
  }

  async _http(method, path, body, headers = {}) {
    const resp = await fetch(`${this.url.http}${path}`, {
      method,
      headers: { ...this._headers(), ...(body ? { "Content-Type": "application/json" } : {}), ...headers },
      body: body ? JSON.stringify(body) : undefined,
    });
    const json = await resp.json().catch(() => ({}));
    if (!resp.ok) {
      const e = json.error || {};
      const temporary = resp.status === 429 || resp.status === 503;
      throw new HubbubError(e.code || "internal", e.message || `HTTP ${resp.status}`, { temporary, details: e.details });
    }
    return json;
  }

  _httpRequest(r) {
    const f = r.frame;
    const room = encodeURIComponent(f.room);
    let p;
    if (f.type === "publish") {
      const body = { data: f.data };
      if (f.event !== undefined) body.event = f.event;
      if (f.ephemeral) body.ephemeral = true;
      p = this._http("POST", `/v1/rooms/${room}/messages`, body, f.key ? { "Idempotency-Key": f.key } : {});
    } else if (f.type === "history") {
      const q = new URLSearchParams();
      if (f.since !== undefined) q.set("since", typeof f.since === "object" ? String(f.since.offset) : f.since);
      if (f.limit !== undefined) q.set("limit", String(f.limit));
      p = this._http("GET", `/v1/rooms/${room}/messages?${q}`);
    } else if (f.type === "presence") {
      p = this._http("GET", `/v1/rooms/${room}/presence`);
    } else {
      p = Promise.reject(new HubbubError("bad_request", `${f.type} needs a WebSocket`));
    }
    p.then(r.resolve, (e) => {
      if (e instanceof HubbubError) r.reject(e);
      else if (r.resend) this._queue.push(r); // network error: retry after reconnect
      else r.reject(new HubbubError("disconnected", String(e), { temporary: true }));
    });
  }
}

export { VERSION };
