// Subscription bookkeeping on a connection: subscribe, resubscribe after a reconnect with
// `since`, unsubscribe, and rooms the hub ends. Functions of the client `c` (client.js).
import { HubbubError, State } from "./errors.js";

/** Subscribe `sub` on the current connection. Resolves when settled (never rejects). A
 * temporary refusal (broker down, timeout) is retried on this connection with backoff; a
 * final one ends the subscription (ready rejects, onError, the client's "error" event). */
export function sendSubscribe(c, sub) {
  const gen = c._gen;
  const frame = { type: "subscribe", room: sub.room };
  const since = sub.since ?? sub._opts.since;
  if (since !== undefined && since !== null) frame.since = since;
  else if (sub._opts.history) frame.history = sub._opts.history;
  if (sub._opts.presence) frame.presence = true;
  return new Promise((done) => {
    c._sendNow(frame, {
      resolve: (result) => {
        if (!sub.closed) sub._reply(result);
        done();
      },
      reject: (err) => {
        done();
        if (gen !== c._gen || sub.closed) return;
        if (err.temporary || err.code === "timeout") {
          const delay = c._policy.delayFor(sub._retry++);
          c._env.setTimeout(() => {
            if (gen === c._gen && !sub.closed && c._canSend()) sendSubscribe(c, sub);
          }, delay);
          return;
        }
        c._subs.delete(sub.room);
        sub._end();
        sub._reject(err);
        sub._call("onError", err);
        c._emit("error", err);
      },
    });
  });
}

/** After `welcome`: every open room again (with `since`), then CONNECTED and the queue. */
export async function resubscribeAll(c, gen) {
  const subs = [...c._subs.values()].filter((s) => !s.closed);
  await Promise.all(subs.map((s) => sendSubscribe(c, s)));
  if (gen !== c._gen) return;
  c._setState(State.CONNECTED, { session: c.session, transport: c.transport });
  c._flush();
}

/** End `sub` from the app's side; resolves to the hub's answer ({} when not connected). */
export function unsubscribe(c, sub) {
  if (sub.closed) return Promise.resolve({});
  sub._end();
  if (c._subs.get(sub.room) === sub) c._subs.delete(sub.room);
  sub._reject(new HubbubError("closed", "unsubscribed"));
  if (c._sse) {
    c._sseRestart();
    return Promise.resolve({});
  }
  if (!c._canSend()) return Promise.resolve({});
  return new Promise((resolve) => {
    c._sendNow({ type: "unsubscribe", room: sub.room }, { resolve, reject: () => resolve({}) });
  });
}

/** An `error` frame with no request id. `forbidden` naming a room: a token refresh took away
 * that room's grant and the hub ended the subscription. Always reaches the "error" event. */
export function unsolicitedError(c, err, room) {
  const sub = room && c._subs.get(room);
  if (sub && err.code === "forbidden") {
    c._subs.delete(room);
    sub._end();
    sub._call("onError", err);
  }
  c._emit("error", err);
}
