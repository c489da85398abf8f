// An SSE stream read with the browser's own EventSource (docs/PROTOCOL.md §4), as the events
// page does: named events, the last event id, and the hub's hub.expired / hub.disconnect.
// (The client in client.js reads SSE with fetch() instead: it needs an Authorization header
// and events of any name.)

/** The hub's own event names (PROTOCOL.md §4). */
export const HUB_EVENTS = ["hub.gap", "hub.join", "hub.leave", "hub.presence", "hub.expired", "hub.disconnect"];

/** The stream URL, relative to the page (so a hub under a path prefix works):
 * `v1/events?room=a&room=b[&presence=1][&since=…][&token=…]`. EventSource cannot send an
 * Authorization header, so a token rides in the query. Throws a TypeError without rooms. */
export function streamUrl({ rooms = [], presence = false, since = "", token = "" } = {}) {
  const q = new URLSearchParams();
  for (const room of rooms) if (room) q.append("room", room);
  if (!q.has("room")) throw new TypeError("a stream needs at least one room");
  if (presence) q.set("presence", "1");
  if (since) q.set("since", since);
  if (token) q.set("token", token);
  return `v1/events?${q}`;
}

/** A comma-separated list as trimmed, non-empty names. */
export function splitNames(text) {
  return String(text || "").split(",").map((s) => s.trim()).filter(Boolean);
}

/**
 * One EventSource and what the page shows of it. Callbacks:
 *   onState(state, detail)   "connecting", "open", "reconnecting" (the browser retries by
 *                            itself, resending Last-Event-ID), "closed" (detail says why)
 *   onEvent(name, {data, id}) every event listened to: "message", the hub.* events and
 *                            `names`; `id` is the event's own id ("" when it carried none)
 *   onResume(lastId)         the stream ended in a way a new one should resume from lastId
 *                            (token expired, or disconnected with reconnect: false)
 * `EventSource` defaults to the browser's class (tests pass a fake).
 */
export class EventStream {
  constructor({ url, names = [], since = "", EventSource, onState, onEvent, onResume } = {}) {
    this.url = url;
    this.names = [...new Set(["message", ...HUB_EVENTS, ...names])];
    this.lastId = since || "";
    this._ES = EventSource || globalThis.EventSource;
    this._onState = onState || (() => {});
    this._onEvent = onEvent || (() => {});
    this._onResume = onResume || (() => {});
    this.source = null;
  }

  open() {
    this.close("connecting");
    const ES = this._ES;
    const es = new ES(this.url);
    this.source = es;
    es.onopen = () => {
      if (this.source === es) this._onState("open", "");
    };
    es.onerror = () => {
      if (this.source !== es) return;
      // CLOSED: a non-200 answer (401, 403, 400): EventSource gives up for good.
      if (es.readyState === (ES.CLOSED ?? 2)) this.close("closed", "refused (check token and rooms)");
      else this._onState("reconnecting", "");
    };
    for (const name of this.names) es.addEventListener(name, (e) => this._event(es, name, e));
  }

  /** Close the stream (if any) and report `state`. */
  close(state = "closed", detail = "") {
    if (this.source) {
      this.source.close();
      this.source = null;
    }
    this._onState(state, detail);
  }

  _event(es, name, e) {
    if (this.source !== es) return;
    // An event carries an id of its own only when lastEventId moved (ids never repeat).
    const id = e.lastEventId && e.lastEventId !== this.lastId ? e.lastEventId : "";
    if (e.lastEventId) this.lastId = e.lastEventId;
    this._onEvent(name, { data: e.data, id });
    if (name === "hub.expired") {
      // A new stream needs a fresh token and since=<last event id>.
      this.close("closed", "token expired: paste a fresh token and connect");
      this._onResume(this.lastId);
    } else if (name === "hub.disconnect") {
      let info = {};
      try {
        info = JSON.parse(e.data) || {};
      } catch {
        /* not JSON: keep the stream */
      }
      if (info.reconnect === false) {
        this.close("closed", info.reason || "disconnected by the server");
        this._onResume(this.lastId);
      }
    }
  }
}
