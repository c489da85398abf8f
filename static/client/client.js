// The client: public API, connection life cycle, reconnects. The pieces it coordinates live
// in the sibling modules (transports, request book, rooms, frames, tokens).
import { endpoints } from "./endpoints.js";
import { HubbubError, State } from "./errors.js";
import { httpRequest } from "./http.js";
import { baseUrl, callSafely, platform } from "./platform.js";
import { randomKey, Requests } from "./requests.js";
import { sendSubscribe, unsubscribe } from "./rooms.js";
import { openSse } from "./sse.js";
import { Subscription } from "./subscription.js";
import { closeWebSocket, OPEN, openWebSocket } from "./websocket.js";
import { watchPage } from "./liveness.js";
import { backoffOptions, ReconnectPolicy, scheduleReconnect } from "./reconnect.js";

const MODES = ["auto", "websocket", "sse"];

function checkOptions(options) {
  if (!options || typeof options !== "object") throw new TypeError("hubbub: options must be an object");
  const mode = options.transport || "auto";
  if (!MODES.includes(mode)) throw new TypeError(`hubbub: transport must be one of ${MODES.join(", ")}`);
  const tokenIn = options.tokenIn || "frame";
  if (tokenIn !== "frame" && tokenIn !== "query") throw new TypeError('hubbub: tokenIn must be "frame" or "query"');
  return { mode, tokenIn };
}

/** A connection to a hub; made by connect() (hubbub.js documents the options). Bad options
 * throw a TypeError naming the option. */
export class Client {
  constructor(url, options = {}) {
    const { mode, tokenIn } = checkOptions(options);
    this.options = options;
    this._env = platform(options);
    this.url = endpoints(url, baseUrl(this._env));
    this.state = null;
    this.session = null; // the hub's session id on the current connection
    this.user = null;
    this.transport = null; // "websocket" | "sse" once connected
    this.welcome = null;
    this._subs = new Map(); // room -> Subscription
    this._requests = new Requests(this._env, { timeout: options.requestTimeout, maxQueue: options.maxQueue });
    this._policy = new ReconnectPolicy(backoffOptions(options.backoff), { random: this._env.random });
    this._gen = 0; // connection generation; stale sockets and streams are ignored
    this._ws = null;
    this._sse = null;
    this._wsFailures = 0; // WebSocket attempts that never opened (for the SSE fallback)
    this._everOpened = false;
    this._timer = null;
    this._deadTimer = null;
    this._lastFrame = 0;
    this._deadline = 0;
    this._liveSince = 0;
    this._listeners = new Map();
    this._token = options.token || null;
    this._mode = mode;
    this._tokenIn = tokenIn; // "frame" (auth frame) or "query" (?token=)
    this._authId = null;
    this._unwatch = watchPage(this);
    this._open(State.CONNECTING);
  }

  // ---- public API -----------------------------------------------------------------------

  /** Listen to "state" (state, info), "error" (err), "welcome" (frame), "retry" ({attempt,
   * delay, code, reason}: a reconnect is scheduled), "signal" (frame), "ice_servers" (frame),
   * "expiring" (frame). Returns a function that removes the listener. */
  on(event, fn) {
    if (typeof fn !== "function") throw new TypeError("hubbub: on() needs a function");
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event).add(fn);
    return () => this._listeners.get(event).delete(fn);
  }

  /** Subscribe to `room`. Options: onMessage, onJoin, onLeave, onPresence(members), onGap,
   * onError, onSignal, since (position or cursor), history (N), presence (bool).
   * Returns a Subscription: .position, .cursor, .since, .members, .ready, .unsubscribe(). */
  subscribe(room, opts = {}) {
    if (typeof room !== "string" || !room) throw new HubbubError("bad_request", "room must be a non-empty string");
    if (this._subs.has(room)) {
      throw new HubbubError("conflict", `already subscribed to ${room}`);
    }
    const sub = new Subscription(this, room, opts || {});
    this._subs.set(room, sub);
    if (this._canSend()) sendSubscribe(this, sub);
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
    const k = key || (ephemeral ? undefined : randomKey());
    if (k !== undefined) frame.key = k;
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
    this._policy.reset();
    this._open(this.state === State.CLOSED || !this.state ? State.CONNECTING : State.RECONNECTING);
  }

  /** Close for good: no reconnect; pending and queued requests reject with "closed". */
  close() {
    this._closedByUser = true;
    this._terminal(new HubbubError("closed", "client closed"), 1000);
    this._unwatch();
  }

  // ---- events ---------------------------------------------------------------------------

  _emit(event, ...args) {
    const opt = { state: "onState", error: "onError", welcome: "onWelcome" }[event];
    const fns = [...(this._listeners.get(event) || [])];
    if (opt && typeof this.options[opt] === "function") fns.unshift(this.options[opt]);
    for (const fn of fns) callSafely(`${event} listener`, fn, ...args);
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

  /** Start connection attempt `++_gen`: a token from getToken(), then a socket or stream. */
  async _open(state) {
    if (this._closedByUser) return;
    const gen = ++this._gen;
    this._env.clearTimeout(this._timer);
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
        scheduleReconnect(this);
        return;
      }
      if (gen !== this._gen || this._closedByUser) return;
    }
    if (this._useSse()) openSse(this, gen);
    else openWebSocket(this, gen);
  }

  _browserOffline() {
    const nav = this._env.navigator;
    return Boolean(nav) && nav.onLine === false;
  }

  /** Forget the current connection; requests in flight go back to the queue or reject. */
  _drop(code) {
    this._teardown();
    for (const sub of this._subs.values()) sub.active = false;
    this._requests.requeueInflight(code);
  }

  _teardown() {
    this._env.clearTimeout(this._deadTimer);
    this._env.clearTimeout(this._refreshTimer);
    this._env.clearTimeout(this._timer);
    this._gen++;
    const ws = this._ws;
    this._ws = null;
    if (ws) closeWebSocket(ws);
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
    this._requests.failAll(err);
    for (const sub of this._subs.values()) {
      sub.active = false;
      sub._reject(err);
    }
    this._setState(State.CLOSED, { code, reason: err.message, error: err });
    if (!this._closedByUser) this._emit("error", err);
  }

  // ---- sending --------------------------------------------------------------------------

  _canSend() {
    return Boolean(this._ws && this.welcome && this._ws.readyState === OPEN);
  }

  _send(frame) {
    this._ws.send(JSON.stringify(frame));
  }

  /** Send `frame` with a fresh id; `r.resolve`/`r.reject` get the reply or error. */
  _sendNow(frame, r) {
    this._send(this._requests.track(frame, r));
  }

  /** A request that waits for a connection (queued) and survives reconnects when `resend`. */
  _request(frame, { resend }) {
    if (this.state === State.CLOSED) return Promise.reject(new HubbubError("closed", "client is closed"));
    const now = this.state === State.CONNECTED && (this._canSend() || this._sse);
    return this._requests.add(frame, { resend }, now ? (r) => this._dispatch(r) : null);
  }

  _dispatch(r) {
    if (this._sse) httpRequest(this, r);
    else this._sendNow(r.frame, r);
  }

  /** Send everything queued, in order (after the rooms are resubscribed). */
  _flush() {
    for (const r of this._requests.takeQueue()) this._dispatch(r);
  }

  _unsubscribe(sub) {
    return unsubscribe(this, sub);
  }

  /** The set of rooms changed on SSE: open a new stream (resuming with the last event id). */
  _sseRestart() {
    if (this._closedByUser || this.state === State.CLOSED) return;
    this._drop(1000);
    this._open(this.state || State.CONNECTING);
  }
}
