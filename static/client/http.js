// The HTTP API (docs/PROTOCOL.md §5) for the SSE fallback: requests the WebSocket would have
// carried as frames, and history fetched for rooms subscribed with `history: N`.
import { HubbubError } from "./errors.js";

/** Authorization for the client's current token (none in dev mode). */
export function authHeaders(c) {
  return c._token ? { Authorization: `Bearer ${c._token}` } : {};
}

/** `method` `${c.url.http}${path}` with JSON `body`; resolves to the JSON answer, rejects with
 * the hub's error as a HubbubError (429 and 503 are temporary), or with whatever fetch threw
 * when the network failed. */
export async function httpCall(c, method, path, body, headers = {}) {
  const resp = await c._env.fetch(`${c.url.http}${path}`, {
    method,
    headers: { ...authHeaders(c), ...(body ? { "Content-Type": "application/json" } : {}), ...headers },
    body: body ? JSON.stringify(body) : undefined,
  });
  const json = await resp.json().catch(() => ({}));
  if (!resp.ok) {
    const e = (json && json.error) || {};
    const temporary = resp.status === 429 || resp.status === 503;
    throw new HubbubError(e.code || "internal", e.message || `HTTP ${resp.status}`, { temporary, details: e.details });
  }
  return json;
}

/** Carry out request `r` (publish, history, presence) over HTTP. A network failure puts a
 * resendable request back in the queue for the next connection. */
export function httpRequest(c, r) {
  const f = r.frame;
  const room = encodeURIComponent(f.room);
  let p;
  if (f.type === "publish") {
    const body = { data: f.data };
    if (f.event !== undefined) body.event = f.event;
    if (f.ephemeral) body.ephemeral = true;
    p = httpCall(c, "POST", `/v1/rooms/${room}/messages`, body, f.key ? { "Idempotency-Key": f.key } : {});
  } else if (f.type === "history") {
    const q = new URLSearchParams();
    if (f.since !== undefined) q.set("since", typeof f.since === "object" ? String(f.since.offset) : f.since);
    if (f.limit !== undefined) q.set("limit", String(f.limit));
    p = httpCall(c, "GET", `/v1/rooms/${room}/messages?${q}`);
  } else if (f.type === "presence") {
    p = httpCall(c, "GET", `/v1/rooms/${room}/presence`);
  } else {
    p = Promise.reject(new HubbubError("bad_request", `${f.type} needs a WebSocket`));
  }
  p.then(r.resolve, (e) => {
    if (e instanceof HubbubError) r.reject(e);
    else if (r.resend) c._requests.queue.push(r); // network error: retry after reconnect
    else r.reject(new HubbubError("disconnected", String(e), { temporary: true }));
  });
}
