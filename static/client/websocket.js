// The WebSocket transport (docs/PROTOCOL.md §3): open a socket for connection `gen` of the
// client `c` and wire its events.
import { HubbubError } from "./errors.js";
import { handleFrame } from "./frames.js";
import { startDeadline } from "./liveness.js";
import { lost, scheduleReconnect } from "./reconnect.js";

/** WebSocket readyState OPEN (the constant is not on every implementation). */
export const OPEN = 1;

/** Open the socket. The token goes in a first `auth` frame (browsers cannot set headers on a
 * WebSocket), or in `?token=` when the client learned that the hub needs it there. Without a
 * token the URL carries an empty `?token=`: "none to send", so a hub that needs one refuses at
 * once (4501) instead of waiting HUB_AUTH_TIMEOUT for an `auth` frame, a hub that admits
 * guests takes it as no token, and a `hubbub_token` cookie still wins (docs/PROTOCOL.md,
 * "Empty tokens"). Frames that are not JSON are ignored; a socket that never opened counts
 * towards the SSE fallback unless the browser is offline. */
export function openWebSocket(c, gen) {
  let url = c.url.ws;
  if (!c._token || c._tokenIn === "query") {
    url += (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(c._token || "");
  }
  let ws;
  try {
    ws = c._env.createWebSocket(url);
  } catch (e) {
    c._emit("error", new HubbubError("bad_request", `cannot open WebSocket: ${e}`));
    scheduleReconnect(c);
    return;
  }
  c._ws = ws;
  c._opened = false;
  startDeadline(c);
  ws.onopen = () => {
    if (gen !== c._gen) return;
    c._opened = true;
    c._everOpened = true;
    // The frame carries an id: a hub that admits guests welcomes a connection without a
    // token at once and answers a later `auth` with an error for that id (frames.js).
    if (c._token && c._tokenIn === "frame") {
      c._authId = c._requests.nextId();
      ws.send(JSON.stringify({ type: "auth", token: c._token, id: c._authId }));
    }
  };
  ws.onmessage = (ev) => {
    if (gen !== c._gen) return;
    let frame;
    try {
      frame = JSON.parse(ev.data);
    } catch {
      return;
    }
    if (frame && typeof frame === "object") handleFrame(c, frame);
  };
  ws.onclose = (ev) => {
    if (gen !== c._gen) return;
    if (!c._opened && !c._browserOffline()) c._wsFailures++;
    // Refused (4501) while the token rode in an auth frame: the hub may have refused something
    // the browser sent on its own (an empty hubbub_token cookie is refused at once, before any
    // frame). The next token (after a refusal: the one the page asks for) goes in ?token=,
    // which the hub reads when the cookie is empty.
    if (ev.code === 4501 && c._tokenIn === "frame") c._tokenIn = "query";
    lost(c, ev.code || 1006, ev.reason || "");
  };
  ws.onerror = () => {}; // always followed by close
}

/** Detach and close a socket the client no longer uses. */
export function closeWebSocket(ws) {
  ws.onopen = ws.onmessage = ws.onclose = null;
  try {
    ws.close(1000);
  } catch {
    /* already closed */
  }
}
