// Frames from the hub on a WebSocket (docs/PROTOCOL.md §3), routed to the client `c`.
import { State, frameError } from "./errors.js";
import { resubscribeAll, unsolicitedError } from "./rooms.js";
import { alive, armDeadTimer } from "./liveness.js";
import { expiring } from "./tokens.js";

/** Handle one parsed frame. Unknown types reach listeners of an event of the same name. */
export function handleFrame(c, f) {
  alive(c);
  const sub = typeof f.room === "string" ? c._subs.get(f.room) : undefined;
  const open = sub && !sub.closed;
  switch (f.type) {
    case "welcome":
      welcome(c, f);
      return;
    case "reply":
    case "error":
      if (f.type === "error" && c._authId !== null && f.id === c._authId) {
        authRefused(c);
      } else if (!c._requests.settle(f) && f.type === "error" && (f.id === null || f.id === undefined)) {
        unsolicitedError(c, frameError(f), f.room || (f.details && f.details.room));
      } // else: the answer to a request that already timed out
      return;
    case "message":
      if (open) sub._message(f);
      return;
    case "gap":
      if (open) sub._gap(f);
      return;
    case "join":
      if (open) sub._join(f);
      return;
    case "leave":
      if (open) sub._leave(f);
      return;
    case "ping":
      if (c._ws) c._send({ type: "pong" });
      return;
    case "expiring":
      c._emit("expiring", f);
      expiring(c, f);
      return;
    case "disconnect":
      c._disconnect = f; // its reason explains the close that follows
      return;
    case "signal":
      if (sub) sub._call("onSignal", f);
      c._emit("signal", f);
      return;
    default:
      c._emit(f.type, f); // pong, ice_servers, and whatever newer hubs send
  }
}

function welcome(c, f) {
  const now = c._env.now();
  c.welcome = f;
  c.session = f.session;
  c.user = f.user;
  c.transport = "websocket";
  c._liveSince = now;
  alive(c);
  armDeadTimer(c, Math.min(c._deadline - now + 20, 5000));
  c._emit("welcome", f);
  resubscribeAll(c, c._gen);
}

/** The hub welcomed us as a guest before it read our `auth` frame, and refused that frame:
 * reconnect at once with the token in the query (docs/PROTOCOL.md, clarifications). */
function authRefused(c) {
  c._authId = null;
  c._tokenIn = "query";
  c._drop(1000);
  c._policy.reset();
  c._open(State.RECONNECTING);
}
