// The SSE transport (docs/PROTOCOL.md §4) for the fallback: one stream for every open room.
//
// EventSource can neither send an Authorization header nor receive events whose name it was
// not told in advance (publications carry their own `event:` name), so the stream is read
// with fetch() and parsed here. Same reconnect, backoff, `since` and dedupe rules as on the
// WebSocket.
import { CLOSE_TOKEN_EXPIRED, State } from "./errors.js";
import { authHeaders, httpCall } from "./http.js";
import { alive, startDeadline } from "./liveness.js";
import { lost } from "./reconnect.js";

/**
 * An incremental text/event-stream parser (the WHATWG rules that matter here): `feed()` any
 * piece of the stream; each complete event reaches `onEvent({event, data, id})`, where `id`
 * is the last event id of the stream so far, this block's included (or null), and `event`
 * defaults to "message". Comments and unknown fields are ignored; a block without data is not
 * dispatched, but its id still becomes `lastId`.
 */
export class SseParser {
  constructor(onEvent) {
    this._onEvent = onEvent;
    this._buf = "";
    this.lastId = null; // the id of the last complete event (block) that named one
    this._idBuf = null;
    this._reset();
  }

  _reset() {
    this._event = "message";
    this._data = [];
  }

  feed(text) {
    this._buf += text;
    for (;;) {
      const nl = this._buf.search(/\r\n|\r|\n/);
      if (nl < 0) return;
      // A CR at the very end may be the first half of CRLF: wait for the next piece.
      if (this._buf[nl] === "\r" && nl === this._buf.length - 1) return;
      const line = this._buf.slice(0, nl);
      this._buf = this._buf.slice(nl + (this._buf.startsWith("\r\n", nl) ? 2 : 1));
      this._line(line);
    }
  }

  _line(line) {
    if (line === "") {
      if (this._idBuf !== null) this.lastId = this._idBuf;
      if (this._data.length) this._onEvent({ event: this._event, data: this._data.join("\n"), id: this.lastId });
      this._reset();
      return;
    }
    if (line.startsWith(":")) return;
    const i = line.indexOf(":");
    const field = i < 0 ? line : line.slice(0, i);
    let v = i < 0 ? "" : line.slice(i + 1);
    if (v.startsWith(" ")) v = v.slice(1);
    if (field === "event") this._event = v;
    else if (field === "data") this._data.push(v);
    else if (field === "id" && !v.includes("\0")) this._idBuf = v;
  }
}

/** Open the stream for connection `gen` of client `c` (rooms, presence, since = cursor). */
export function openSse(c, gen) {
  const rooms = [...c._subs.values()].filter((s) => !s.closed);
  c._sseIdle = false;
  const ctrl = new AbortController();
  c._sse = ctrl;
  const q = new URLSearchParams();
  for (const s of rooms) q.append("room", s.room);
  if (rooms.some((s) => s._opts.presence)) q.set("presence", "1");
  if (c._sseCursor) q.set("since", c._sseCursor);
  else if (rooms.length === 1 && typeof rooms[0].since === "string") q.set("since", rooms[0].since);
  startDeadline(c);
  if (rooms.length === 0) {
    // Nothing to stream: publishing over HTTP still works; nothing to watch either.
    c._sseIdle = true;
    sseConnected(c, gen, rooms);
    return;
  }
  c._env
    .fetch(`${c.url.http}/v1/events?${q}`, { headers: authHeaders(c), signal: ctrl.signal, cache: "no-store" })
    .then(async (resp) => {
      if (gen !== c._gen) return;
      if (resp.status === 401 || resp.status === 403) {
        lost(c, resp.status === 401 ? 4501 : 4503, `HTTP ${resp.status}`);
        return;
      }
      const type = resp.headers.get("Content-Type") || "";
      if (!resp.ok || !resp.body || !type.startsWith("text/event-stream")) {
        lost(c, 4003, `HTTP ${resp.status} ${type}`);
        return;
      }
      // Connected once the stream's first block (retry + id) arrives.
      await readSse(c, resp.body, gen, () => sseConnected(c, gen, rooms));
      if (gen !== c._gen) return;
      // The hub says why a stream ends (an extension: event hub.disconnect {code, reason}).
      const d = c._disconnect;
      lost(c, (d && d.code) || 1006, (d && d.reason) || "stream ended");
    })
    .catch(() => {
      if (gen === c._gen) lost(c, 1006, "stream failed");
    });
}

async function sseConnected(c, gen, rooms) {
  c.transport = "sse";
  c.welcome = { ping_interval: 15, ping_timeout: 10, transport: "sse" };
  alive(c);
  c._liveSince = c._env.now();
  // History requested on first subscribe: fetched over HTTP (the stream itself starts live).
  for (const s of rooms) {
    if (!s.position && s._opts.history) {
      try {
        const h = await httpCall(c, "GET", `/v1/rooms/${encodeURIComponent(s.room)}/messages?limit=${s._opts.history}`);
        for (const m of h.messages) s._message(m);
      } catch (e) {
        c._emit("error", e);
      }
    }
    s.active = true;
    s._resolve({ room: s.room, transport: "sse" });
  }
  if (gen !== c._gen) return;
  c._setState(State.CONNECTED, { transport: "sse" });
  c._flush();
}

async function readSse(c, body, gen, onFirst) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  // The cursor moves when a block is complete, before its event is handled.
  const parser = new SseParser((ev) => {
    if (ev.id !== null) c._sseCursor = ev.id;
    sseEvent(c, ev.event, ev.data);
  });
  for (;;) {
    const { value, done } = await reader.read();
    if (done || gen !== c._gen) return;
    if (onFirst) {
      onFirst();
      onFirst = null;
    }
    alive(c);
    parser.feed(value);
    if (parser.lastId !== null) c._sseCursor = parser.lastId;
  }
}

/** One event of the stream: `name` is its `event:` field, `text` its data (JSON). */
export function sseEvent(c, name, text) {
  let f;
  try {
    f = JSON.parse(text);
  } catch {
    return;
  }
  if (!f || typeof f !== "object") return;
  if (name === "hub.expired") {
    lost(c, CLOSE_TOKEN_EXPIRED, "token expired");
    return;
  }
  if (name === "hub.disconnect") {
    c._disconnect = f; // acted upon when the stream ends
    return;
  }
  const sub = c._subs.get(f.room);
  if (!sub || sub.closed) return;
  if (name === "hub.gap") sub._gap(f);
  else if (name === "hub.join") sub._join(f);
  else if (name === "hub.leave") sub._leave(f);
  else if (name === "hub.presence" && Array.isArray(f.members)) sub._snapshot(f.members);
  else if (f.type === "message" || (!name.startsWith("hub.") && f.data !== undefined)) sub._message(f);
}
