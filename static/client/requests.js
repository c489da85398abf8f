// Requests waiting for an answer (pending, by frame id) or for a connection (queued).
import { HubbubError, frameError } from "./errors.js";

/** A random idempotency key: "k" + 24 hex digits. */
export function randomKey() {
  const b = new Uint8Array(12);
  globalThis.crypto.getRandomValues(b);
  return "k" + Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

function count(name, value, fallback) {
  const v = value ?? fallback;
  if (typeof v !== "number" || !(v >= 0)) {
    throw new TypeError(`hubbub: ${name} must be a number >= 0`);
  }
  return v;
}

/**
 * The request book of one client. A request `r` is `{frame, resend, id, resolve, reject,
 * timer}`: `resend` says it may be sent again on the next connection when the answer was lost.
 *
 * - `add()` makes a request with a timeout (`timeout` ms, 0: none) and either hands it to
 *   `dispatch` at once or queues it (at most `maxQueue`, else it rejects with `queue_full`).
 * - `track(frame, r)` gives `frame` a fresh id and waits for the answer with that id;
 *   `settle(f)` routes a `reply`/`error` frame to it.
 * - `requeueInflight()` (connection lost): resendable requests in flight go back to the front
 *   of the queue in their original order; the others reject with `disconnected`.
 */
export class Requests {
  constructor(clock, { timeout, maxQueue } = {}) {
    this._clock = clock;
    this.timeout = count("requestTimeout", timeout, 30000);
    this.maxQueue = count("maxQueue", maxQueue, 1000);
    this.pending = new Map(); // id -> request
    this.queue = []; // requests waiting for a connection, in order
    this._nextId = 1;
  }

  nextId() {
    return this._nextId++;
  }

  /** A promise of the answer to `frame`; `dispatch(r)` sends it now, or null: queue it. */
  add(frame, { resend }, dispatch) {
    return new Promise((resolve, reject) => {
      const r = { frame, resend, id: 0, timer: null };
      r.resolve = (v) => {
        this._clock.clearTimeout(r.timer);
        resolve(v);
      };
      r.reject = (e) => {
        this._clock.clearTimeout(r.timer);
        reject(e);
      };
      if (this.timeout > 0) {
        r.timer = this._clock.setTimeout(() => {
          this._forget(r);
          const msg = `no answer to ${frame.type} within ${this.timeout} ms`;
          reject(new HubbubError("timeout", msg, { temporary: true }));
        }, this.timeout);
      }
      if (dispatch) dispatch(r);
      else this.hold(r);
    });
  }

  /** Queue `r` until the next connection (rejects it with `queue_full` past `maxQueue`). */
  hold(r) {
    if (this.queue.length >= this.maxQueue) {
      r.reject(new HubbubError("queue_full", "too many requests while disconnected", { temporary: true }));
    } else {
      this.queue.push(r);
    }
  }

  /** `frame` with a fresh id; the answer with that id goes to `r.resolve` / `r.reject`.
   * Requests without a timer (subscribe, refresh) rely on the heartbeat instead. */
  track(frame, r) {
    r.id = this.nextId();
    this.pending.set(r.id, r);
    return { ...frame, id: r.id };
  }

  /** Route a `reply` or `error` frame to its request; false when no request waits for it. */
  settle(f) {
    if (f.id === null || f.id === undefined || !this.pending.has(f.id)) return false;
    const r = this.pending.get(f.id);
    this.pending.delete(f.id);
    this._clock.clearTimeout(r.timer);
    if (f.type === "reply") r.resolve(f.result);
    else r.reject(frameError(f));
    return true;
  }

  /** The connection is gone: resendable requests in flight are queued first, in id order;
   * the others reject with `disconnected` (they may or may not have been carried out). */
  requeueInflight(closeCode) {
    const inflight = [...this.pending.values()].sort((a, b) => a.id - b.id);
    this.pending.clear();
    const again = [];
    for (const r of inflight) {
      if (r.resend) again.push(r);
      else r.reject(new HubbubError("disconnected", "connection lost", { temporary: true, closeCode }));
    }
    this.queue = again.concat(this.queue);
  }

  /** Everything queued, in order; the queue is empty afterwards. */
  takeQueue() {
    const q = this.queue;
    this.queue = [];
    return q;
  }

  /** Reject every pending and queued request with `err`. */
  failAll(err) {
    const all = [...this.pending.values(), ...this.queue];
    this.pending.clear();
    this.queue = [];
    for (const r of all) r.reject(err);
  }

  _forget(r) {
    if (this.pending.get(r.id) === r) this.pending.delete(r.id);
    const i = this.queue.indexOf(r);
    if (i >= 0) this.queue.splice(i, 1);
  }
}
