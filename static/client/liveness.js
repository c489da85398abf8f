// Liveness: the heartbeat deadline of a connection, and page life (a laptop lid, a background
// tab, the network going away and coming back).
import { State } from "./errors.js";
import { lost } from "./reconnect.js";

/** Listen to the page's online/offline/focus/pageshow/visibilitychange events for client
 * `c` (nothing outside a browser). Returns a function that stops listening. */
export function watchPage(c) {
  const win = c._env.window;
  const doc = c._env.document;
  const onWake = () => wake(c);
  const onOnline = () => wake(c, true);
  const onOffline = () => {
    if (c.state === State.RECONNECTING) c._setState(State.OFFLINE);
  };
  const pairs = [];
  if (win && typeof win.addEventListener === "function") {
    pairs.push([win, "online", onOnline], [win, "offline", onOffline], [win, "focus", onWake], [win, "pageshow", onWake]);
    if (doc && typeof doc.addEventListener === "function") pairs.push([doc, "visibilitychange", onWake]);
  }
  for (const [target, name, fn] of pairs) target.addEventListener(name, fn);
  return () => {
    for (const [target, name, fn] of pairs) target.removeEventListener(name, fn);
  };
}

/** Something suggests we might have been asleep: check liveness; retry now if offline, or if
 * the backoff timer was throttled past its time in the background. */
export function wake(c, online = false) {
  if (c._closedByUser || c.state === State.CLOSED) return;
  const doc = c._env.document;
  if (doc && doc.visibilityState === "hidden" && !online) return;
  if (c.state === State.CONNECTED || c.state === State.CONNECTING) {
    checkDead(c);
  } else if (c._ws || c._sse) {
    // an attempt is under way
  } else if (c.state === State.OFFLINE || (online && c.state === State.RECONNECTING)) {
    c._policy.reset();
    c._open(State.RECONNECTING);
  } else if (c.state === State.RECONNECTING && c._retryAt && c._env.now() >= c._retryAt) {
    c._open(State.RECONNECTING);
  }
}

/** (Re)arm the dead-connection check of client `c` in `ms` (at least 50). */
export function armDeadTimer(c, ms) {
  c._env.clearTimeout(c._deadTimer);
  c._deadTimer = c._env.setTimeout(() => checkDead(c), Math.max(50, ms));
}

/** Dead connection: no frame for ping_interval + ping_timeout (or no welcome in time). */
export function checkDead(c) {
  if ((!c._ws && !c._sse) || c._sseIdle) return;
  const now = c._env.now();
  if (now >= c._deadline) {
    if (c._ws && !c._opened) c._wsFailures++;
    lost(c, 4002, "no frame from the server in time");
    return;
  }
  // Timers are throttled in background tabs; wake() re-checks on visibility/online too.
  armDeadTimer(c, Math.min(c._deadline - now + 20, 5000));
}

/** A frame (or stream data) arrived: the deadline moves to now + ping_interval + timeout. */
export function alive(c) {
  c._lastFrame = c._env.now();
  if (c.welcome) {
    const w = c.welcome;
    c._deadline = c._lastFrame + ((w.ping_interval ?? 25) + (w.ping_timeout ?? 10)) * 1000;
  }
}

/** Start the clock for a new socket or stream: `connectTimeout` ms to the first sign of life. */
export function startDeadline(c) {
  const connectTimeout = c.options.connectTimeout ?? 15000;
  c._lastFrame = c._env.now();
  c._deadline = c._lastFrame + connectTimeout;
  armDeadTimer(c, connectTimeout);
}
