// hubbub.js: the Hubbub browser client (PROTOCOL.md §3 WebSocket, §4 SSE, §5 HTTP).
//
// An ES module with no build step and no dependencies. This file is the entry point; the
// client itself is in ./client/ (one small module per concern, see docs/browser-client.md):
//
//   import { connect } from "./static/hubbub.js";   // relative: works under a path prefix
//   const client = connect("v1/ws", { getToken: async () => myToken });
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

import { Client } from "./client/client.js";

export { HubbubError, State } from "./client/errors.js";

const VERSION = "1";

/**
 * Open a client. `url` is the hub's WebSocket URL, absolute or relative to the page
 * (default "v1/ws": the hub that served the page, also under a path prefix). Options:
 *   token        a JWT string (or nothing in dev mode)
 *   getToken     async () => token: called before each connect, on `expiring` and after 4004
 *   transport    "auto" (default: WebSocket, SSE + HTTP when WebSocket never connects),
 *                "websocket" or "sse"
 *   tokenIn      "frame" (default: a first `auth` frame) or "query" (?token=)
 *   onState      (state, info) => void
 *   onError      (HubbubError) => void: terminal closes, error frames without a request
 *   backoff      {base: 500, max: 30000} ms; delay = random(0, min(max, base * 2^attempt))
 *   requestTimeout  ms before a request (publish, history, …) rejects with "timeout" (30000)
 *   maxQueue     requests queued while disconnected before "queue_full" (1000)
 *   connectTimeout  ms from opening a socket to `welcome` (15000)
 *   fallbackAfter   failed WebSocket attempts (never opened) before "auto" switches to SSE (3)
 * For tests and other environments: WebSocket (a class), fetch, clock ({setTimeout,
 * clearTimeout, now}), random, window, document, navigator (null: none).
 * Invalid options throw a TypeError that names the option.
 */
export function connect(url, options = {}) {
  return new Client(url, options);
}

export { VERSION };
