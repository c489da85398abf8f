// The reconnect policy: which closes are terminal, and exponential backoff with full jitter
// between attempts (docs/browser-client.md, "Reconnect policy").
import { CLOSE_TOKEN_EXPIRED, HubbubError, isTerminal, State, terminalKind } from "./errors.js";

/**
 * Full jitter: a delay drawn uniformly from [0, min(max, base * 2^attempt)) ms.
 * `random` returns a number in [0, 1) (Math.random by default).
 */
export function jitterDelay({ base, max }, attempt, random = Math.random) {
  const ceiling = Math.min(max, base * 2 ** Math.min(Math.max(0, attempt), 30));
  return random() * ceiling;
}

/** Check `{base, max}` (milliseconds); a bad value throws a TypeError that names it. */
export function backoffOptions(given = {}) {
  const b = { base: 500, max: 30000, ...(given || {}) };
  for (const k of ["base", "max"]) {
    if (typeof b[k] !== "number" || !Number.isFinite(b[k]) || b[k] < 0) {
      throw new TypeError(`hubbub: backoff.${k} must be a number of milliseconds >= 0`);
    }
  }
  return b;
}

/**
 * Reconnect attempts of one client. `next()` gives the delay before the next attempt and
 * counts it; `lost(liveMs)` is told how long the connection that was just lost had been up:
 * one that lived longer than `stableAfter` ms starts the count over, so a hub that drops a
 * long-lived connection now and then is retried quickly, and one that refuses at once is
 * retried ever more slowly.
 */
export class ReconnectPolicy {
  constructor(options, { random = Math.random, stableAfter = 5000 } = {}) {
    Object.assign(this, backoffOptions(options));
    this.attempt = 0;
    this.stableAfter = stableAfter;
    this._random = random;
  }

  next() {
    const delay = jitterDelay(this, this.attempt, this._random);
    this.attempt++;
    return delay;
  }

  /** A delay for the `n`-th retry of something else (a room's subscribe) with this policy. */
  delayFor(n) {
    return jitterDelay(this, n, this._random);
  }

  lost(liveMs) {
    if (liveMs > this.stableAfter) this.attempt = 0;
  }

  reset() {
    this.attempt = 0;
  }
}

/** The current connection of client `c` is gone (close event, dead, SSE error): close codes
 * 4500-4999 end the client (state closed, the "error" event); anything else reconnects after
 * a backoff delay, the shortest one after 4004 (token expired). */
export function lost(c, code, reason) {
  const disc = c._disconnect;
  // On SSE, the next attempt after a loss tries the WebSocket once more.
  if (c._sse && c._mode === "auto") c._wsFailures = Math.max(0, (c.options.fallbackAfter ?? 3) - 1);
  c._drop(code);
  if (isTerminal(code)) {
    const why = (disc && disc.reason) || reason || `closed with ${code}`;
    c._terminal(new HubbubError(terminalKind(code), why, { closeCode: code }), code);
    return;
  }
  if (code === CLOSE_TOKEN_EXPIRED) c._policy.reset(); // new token right away
  scheduleReconnect(c, code, reason);
}

/** Schedule the next attempt of client `c` (state reconnecting, or offline when the browser
 * says so) and announce it through the "retry" event. */
export function scheduleReconnect(c, code, reason) {
  if (c._closedByUser) return;
  const now = c._env.now();
  if (c._liveSince) c._policy.lost(now - c._liveSince);
  c._liveSince = 0;
  const delay = c._policy.next();
  c._retryAt = now + delay;
  c._setState(c._browserOffline() ? State.OFFLINE : State.RECONNECTING, { code, reason, delay });
  c._emit("retry", { attempt: c._policy.attempt, delay, code, reason });
  c._timer = c._env.setTimeout(() => c._open(State.RECONNECTING), delay);
}
