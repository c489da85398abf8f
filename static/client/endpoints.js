// Where a client connects: the WebSocket URL and the HTTP base of the same hub.

/**
 * Resolve `url` against `base` (the page's URL) to `{ws, http}`.
 *
 * Accepts `ws(s)://host/prefix/v1/ws`, `http(s)://host/prefix/`, a relative path such as
 * `v1/ws` (resolved against the page, so a hub mounted under a prefix works), an absolute
 * path such as `/v1/ws`, a URL object, or nothing (`v1/ws` next to the page). A URL whose
 * path ends in `/` names the hub's root: `v1/ws` is appended. `http` is the same hub's HTTP
 * base without a trailing slash (the WebSocket path minus `/v1/ws`), for `${http}/v1/...`.
 * Throws a TypeError naming the input when it is not a URL.
 */
export function endpoints(url, base) {
  let u;
  try {
    u = new URL(url ? String(url) : "v1/ws", base);
  } catch {
    throw new TypeError(`hubbub: not a hub URL: ${JSON.stringify(String(url))}`);
  }
  if (u.protocol === "http:") u.protocol = "ws:";
  if (u.protocol === "https:") u.protocol = "wss:";
  if (u.protocol !== "ws:" && u.protocol !== "wss:") {
    throw new TypeError(`hubbub: a hub URL is ws(s) or http(s), not ${u.protocol}`);
  }
  if (u.pathname.endsWith("/")) u.pathname += "v1/ws";
  u.hash = "";
  const http = new URL(u.href);
  http.protocol = u.protocol === "wss:" ? "https:" : "http:";
  http.pathname = u.pathname.replace(/\/v1\/ws$/, "") || "/";
  http.search = "";
  return { ws: u.href, http: http.href.replace(/\/$/, "") };
}
