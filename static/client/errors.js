// Connection states, the error type, and the close-code rules (docs/PROTOCOL.md §3).

/** Connection states reported through `onState` / the "state" event. */
export const State = Object.freeze({
  CONNECTING: "connecting", // first attempt
  CONNECTED: "connected", // welcome received, rooms resubscribed
  RECONNECTING: "reconnecting", // lost; waiting for the next attempt or attempting
  OFFLINE: "offline", // lost and the browser says it is offline; retried when it comes back
  CLOSED: "closed", // terminal (4500-4999) or client.close(): no automatic reconnect
});

/** An error from the hub (an `error` frame or HTTP error body) or from the client itself.
 *
 * Client-side codes (never sent by the hub):
 *   "closed"       the client was closed (client.close() or a terminal close code)
 *   "timeout"      no answer within the request timeout
 *   "queue_full"   too many requests queued while disconnected
 *   "disconnected" the connection was lost while a non-resendable request was in flight
 */
export class HubbubError extends Error {
  constructor(code, message, { temporary = false, details = null, closeCode = null } = {}) {
    super(message || code);
    this.name = "HubbubError";
    this.code = code; // bad_request, unauthorized, forbidden, ..., or a client code above
    this.temporary = temporary; // retrying the same thing later may succeed
    this.details = details;
    this.closeCode = closeCode; // set when the error comes from a WebSocket close
  }
}

/** The HubbubError carried by an `error` frame. */
export function frameError(f) {
  return new HubbubError(f.code, f.message, { temporary: Boolean(f.temporary), details: f.details });
}

/** Close codes 4500-4999 end the connection for good: no automatic reconnect. */
export const isTerminal = (code) => code >= 4500 && code <= 4999;

/** Close code for an expired token: reconnect at once with a fresh token. */
export const CLOSE_TOKEN_EXPIRED = 4004;

/** Error code a terminal close code maps to. */
export function terminalKind(code) {
  return { 4501: "unauthorized", 4503: "forbidden" }[code] || "closed";
}
