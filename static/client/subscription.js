// One room subscription: its resume position, its members, and its callbacks.
import { callSafely } from "./platform.js";

/**
 * What the client knows about one subscribed room. `position` ({epoch, offset}) is the last
 * message seen: everything up to it was delivered or reported as a gap, and a reconnect
 * resumes after it (`since`). Messages at or before it in the same epoch are dropped; a hole
 * inside an epoch is reported through onGap with `synthetic: true`.
 */
export class Subscription {
  constructor(client, room, opts) {
    this._client = client;
    this.room = room;
    this._opts = opts;
    this.position = null; // {epoch, offset}: everything up to and including offset was seen
    this._cursor = null; // {epoch, offset, cursor} from the last reply
    this.members = new Map(); // session -> member (when presence: true)
    this.active = false; // subscribed on the current connection
    this.closed = false;
    this._retry = 0;
    this.ready = new Promise((res, rej) => {
      this._resolve = res;
      this._reject = rej;
    });
    this.ready.catch(() => {}); // observed through onError too; never an unhandled rejection
    if (opts.since && typeof opts.since === "object") this.position = { ...opts.since };
  }

  /** A cursor for `position`, when the hub issued one for exactly that position, else null. */
  get cursor() {
    const c = this._cursor;
    const p = this.position;
    if (c && p && c.epoch === p.epoch && c.offset === p.offset) return c.cursor;
    return null;
  }

  /** `since` to resume from: the cursor when it is current, else the position. */
  get since() {
    return this.cursor || (this.position ? { ...this.position } : null);
  }

  unsubscribe() {
    return this._client._unsubscribe(this);
  }

  _call(name, ...args) {
    const fn = this._opts[name];
    if (typeof fn === "function") callSafely(`${name} callback`, fn, ...args);
  }

  /** A stored or ephemeral message; returns true when delivered to the app. */
  _message(m) {
    if (typeof m.offset !== "number") {
      this._call("onMessage", m); // ephemeral: no position
      return true;
    }
    const p = this.position;
    if (p && p.epoch === m.epoch) {
      if (m.offset <= p.offset) return false; // seen already (defensive dedupe)
      if (m.offset > p.offset + 1) {
        // The hub promises no holes; report one rather than hide it.
        this._call("onGap", {
          room: this.room, epoch: m.epoch, from: p.offset + 1, to: m.offset - 1, synthetic: true,
        });
      }
    }
    this.position = { epoch: m.epoch, offset: m.offset };
    this._call("onMessage", m);
    return true;
  }

  _gap(g) {
    const p = this.position;
    // A gap about something already behind us (same epoch, to <= seen) changes nothing.
    if (p && p.epoch === g.epoch && g.to <= p.offset) return;
    this.position = { epoch: g.epoch, offset: g.to };
    this._call("onGap", { room: g.room, epoch: g.epoch, from: g.from, to: g.to });
  }

  /** The subscribe reply: its position (when newer than ours), cursor and presence list. */
  _reply(result) {
    if (result && typeof result.offset === "number" && result.epoch !== undefined) {
      const p = this.position;
      if (!p || p.epoch !== result.epoch || p.offset < result.offset) {
        this.position = { epoch: result.epoch, offset: result.offset };
      }
      if (result.cursor) {
        this._cursor = { epoch: result.epoch, offset: result.offset, cursor: result.cursor };
      }
    }
    if (Array.isArray(result && result.presence)) this._snapshot(result.presence);
    this.active = true;
    this._retry = 0;
    this._resolve(result);
  }

  /** A full member list: onLeave / onJoin for the differences, then onPresence. */
  _snapshot(list) {
    const next = new Map(list.map((m) => [m.session, m]));
    for (const [s, m] of this.members) if (!next.has(s)) this._call("onLeave", m);
    const old = this.members;
    this.members = next;
    for (const [s, m] of next) if (!old.has(s)) this._call("onJoin", m);
    this._call("onPresence", [...this.members.values()]);
  }

  _join(m) {
    const had = this.members.has(m.session);
    this.members.set(m.session, m);
    if (!had) this._call("onJoin", m);
    this._call("onPresence", [...this.members.values()]);
  }

  _leave(m) {
    if (!this.members.delete(m.session)) return;
    this._call("onLeave", m);
    this._call("onPresence", [...this.members.values()]);
  }

  /** The subscription is over (unsubscribed, refused, or ended by the hub). */
  _end() {
    this.closed = true;
    this.active = false;
  }
}
