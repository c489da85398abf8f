// Token refresh on a live connection: `expiring` → getToken() → `refresh` frame.
import { HubbubError } from "./errors.js";

/** `expiring {in}`: get a token and send `refresh`. The hub announces expiry
 * min(60, remaining) s ahead, so a token living under a minute is "expiring" again at once:
 * one refresh at a time, and a refresh within 5 s of the last one waits for half of `in`. */
export function expiring(c, f) {
  if (typeof c.options.getToken !== "function" || c._refreshing) return;
  const since = c._env.now() - (c._lastRefresh || 0);
  const wait = since < 5000 ? Math.max(0, (Number(f.in) || 0) * 500) : 0;
  c._env.clearTimeout(c._refreshTimer);
  const gen = c._gen;
  c._refreshTimer = c._env.setTimeout(() => gen === c._gen && refresh(c), wait);
}

/** Get a fresh token and send it as a `refresh` frame; failures reach the "error" event
 * (temporary: the hub closes with 4004 at expiry and the reconnect gets a token anyway). */
export function refresh(c) {
  if (typeof c.options.getToken !== "function" || !c._canSend() || c._refreshing) return;
  const gen = c._gen;
  c._refreshing = true;
  c._lastRefresh = c._env.now();
  Promise.resolve()
    .then(() => c.options.getToken())
    .then((token) => {
      if (!token || gen !== c._gen) return undefined;
      c._token = token;
      return new Promise((resolve, reject) => c._sendNow({ type: "refresh", token }, { resolve, reject }));
    })
    .catch((e) => {
      if (gen !== c._gen) return; // the connection went; the next one gets a token anyway
      c._emit("error", e instanceof HubbubError ? e : new HubbubError("unauthorized", String(e), { temporary: true }));
    })
    .finally(() => {
      c._refreshing = false;
    });
}
