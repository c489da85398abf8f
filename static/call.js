// call.js: a mesh video call over Hubbub signaling (PROTOCOL.md §6). An ES module, no build step.
//
//   import { Call } from "./static/call.js";
//   const call = new Call({ url: "v1/ws", room: "call:demo", token, onPeer, onState });
//   await call.start();            // camera + microphone, join the call room with presence
//   call.setMuted("audio", true);  // mute (track.enabled = false: no renegotiation)
//   call.send("hello");            // text to every peer over the data channels
//   call.hangUp();                 // "bye" to every peer, leave the room, stop the camera
//
// Rules (docs/webrtc.md):
// - one RTCPeerConnection per remote session (a mesh, at most HUB_SIGNAL_MAX_PEERS members);
// - the new arrival offers: members listed in our subscribe reply get an offer from us; members
//   who join later offer to us;
// - W3C perfect negotiation: the peer whose session id sorts first (bytewise) is polite; on glare
//   the polite peer rolls its offer back and answers, the impolite one ignores the other offer;
// - every connection carries a negotiated data channel "hubbub" (id 0), as the Python probe;
// - a connection whose ICE fails (or stays disconnected) restarts ICE;
// - when the hub connection drops, hubbub.js reconnects and gets a NEW session id. Peer
//   connections are kept: we re-offer on each of them from the new session, and the other side
//   recognises its connection by the DTLS fingerprint in the offer and rebinds it to our new id.
//   A peer that "leaves" while its media still flows is kept for LEAVE_GRACE_MS for that reason.

import { connect } from "./hubbub.js";

const CHANNEL = { label: "hubbub", id: 0 };
const LEAVE_GRACE_MS = 30000; // keep a connected peer this long after its session left
const DISCONNECTED_RESTART_MS = 2500; // ICE "disconnected" this long -> restart ICE
const ANSWER_TIMEOUT_MS = 10000; // an offer unanswered this long is made again

/** How people see a member in logs and labels: its public name, else its user id. Session ids
 * are for machines: they change on every reconnect. */
export function memberName(member) {
  return (member && (member.name || member.user)) || "someone";
}

/** The peer whose session id sorts first (bytewise; ids are ASCII base64url) is polite. */
export function isPolite(own, remote) {
  return own < remote;
}

/** The DTLS certificate fingerprints of an SDP ("sha-256 ab:cd:…", lower case): they name the
 * certificate of one RTCPeerConnection for its whole life. An SDP may list several (aiortc
 * offers sha-256, sha-384 and sha-512) and Chrome re-orders them in remoteDescription, so
 * compare them as sets (see sameCertificate). */
export function fingerprints(sdp) {
  const out = new Set();
  for (const m of String(sdp || "").matchAll(/^a=fingerprint:(.+)$/gm)) {
    out.add(m[1].trim().replace(/\s+/g, " ").toLowerCase());
  }
  return out;
}

/** true: same certificate; false: another one; null: cannot tell (no fingerprint). */
export function sameCertificate(sdpA, sdpB) {
  const a = fingerprints(sdpA);
  const b = fingerprints(sdpB);
  if (!a.size || !b.size) return null;
  for (const f of a) if (b.has(f)) return true;
  return false;
}

function candidateAddress(init) {
  const bits = String((init && init.candidate) || "").replace(/^candidate:/, "").split(/\s+/);
  return bits.length >= 5 ? bits[4] : null;
}

class Peer {
  constructor(call, session, member) {
    this.call = call;
    this.session = session; // the remote session id (changes when the remote reconnects)
    this.member = member || { session };
    this.polite = isPolite(call.session, session);
    this.makingOffer = false;
    this.ignoreOffer = false;
    this.settingRemoteAnswer = false;
    this.chain = Promise.resolve();
    this.early = []; // candidates that arrived before any remote description
    this.stream = new MediaStream();
    this.leftAt = 0; // when the remote session left (kept for LEAVE_GRACE_MS)
    this.closed = false;
    this.restarts = 0;
    this.rollbacks = 0; // glare resolved by yielding (polite side)
    this.ignored = 0; // colliding offers ignored (impolite side)
    this._disconnectTimer = null;
    this._answerTimer = null;
    this.pc = new RTCPeerConnection({ iceServers: call.iceServers });
    this.channel = this.pc.createDataChannel(CHANNEL.label, { negotiated: true, id: CHANNEL.id });
    this.channel.onmessage = (ev) => call._data(this, ev.data);
    this.channel.onopen = () => call._changed(this);
    this.channel.onclose = () => call._changed(this);
    const pc = this.pc;
    pc.ontrack = ({ track, streams }) => {
      const src = streams && streams[0];
      for (const t of src ? src.getTracks() : [track]) {
        if (!this.stream.getTracks().includes(t)) this.stream.addTrack(t);
      }
      track.onunmute = () => call._changed(this);
      call._changed(this);
    };
    pc.onicecandidate = ({ candidate }) => {
      const init = candidate ? candidate.toJSON() : null;
      if (init && !call._candidateAllowed(init)) return;
      if (init && !init.candidate) return; // Chrome's empty end-of-generation marker
      this.signal({ kind: "candidate", candidate: init });
    };
    pc.onnegotiationneeded = () => this.negotiate();
    pc.oniceconnectionstatechange = () => this._iceState();
    pc.onconnectionstatechange = () => {
      const s = pc.connectionState;
      if (this.leftAt && (s === "failed" || s === "closed" || s === "disconnected")) {
        call._drop(this); // its session left and its media stopped: it is gone
        return;
      }
      if (s === "failed") this.restartIce("connection failed");
      call._changed(this);
    };
  }

  get state() {
    return this.pc.connectionState;
  }

  /** The remote member's name for people (see memberName). */
  get name() {
    return memberName(this.member);
  }

  signal(data) {
    this.call._signal(this.session, data, this);
  }

  addLocalTracks() {
    const local = this.call.localStream;
    for (const track of local ? local.getTracks() : []) {
      if (this.pc.getSenders().some((s) => s.track === track)) continue;
      this.pc.addTrack(track, local);
    }
    // No camera (or microphone): still receive that kind from the others.
    for (const kind of ["audio", "video"]) {
      if (!this.pc.getTransceivers().some((t) => t.receiver.track.kind === kind)) {
        this.pc.addTransceiver(kind, { direction: "recvonly" });
      }
    }
  }

  /** Make and send an offer. Runs on the same queue as incoming signals, so an offer is never
   * made while a remote description is being applied (and vice versa); perfect negotiation's
   * collision check then only needs `makingOffer` and the signaling state. */
  negotiate({ force = false } = {}) {
    this.chain = this.chain.then(() => this._negotiate(force)).catch((err) => {
      this.call._log(`offer to ${this.name} failed: ${err}`, this.session);
    });
    return this.chain;
  }

  /** `force`: an offer of ours still unanswered is stale (it went to a session that is gone,
   * or was lost with the hub connection): roll it back and offer again. */
  async _negotiate(force = false) {
    if (this.closed) return;
    if (force && this.pc.signalingState === "have-local-offer") {
      await this.pc.setLocalDescription({ type: "rollback" });
    }
    if (this.pc.signalingState !== "stable") return;
    try {
      this.makingOffer = true;
      await this.pc.setLocalDescription();
      const desc = this.pc.localDescription;
      if (desc.type === "offer") {
        this.signal({ kind: "offer", sdp: desc.sdp });
        this._armAnswerTimer(desc.sdp);
      }
    } finally {
      this.makingOffer = false;
    }
  }

  /** An offer that gets no answer (lost with a hub connection, sent to a session that just
   * left, ignored by an impolite peer that then lost its own offer) would block this
   * connection's negotiation for good: after ANSWER_TIMEOUT_MS offer again. */
  _armAnswerTimer(sdp) {
    clearTimeout(this._answerTimer);
    this._answerTimer = setTimeout(() => {
      const local = this.pc.localDescription;
      if (this.closed || this.pc.signalingState !== "have-local-offer" || !local) return;
      if (local.sdp !== sdp) return;
      this.call._log(`no answer from ${this.name}; offering again`, this.session);
      this.negotiate({ force: true });
    }, ANSWER_TIMEOUT_MS);
  }

  /** Roll back an unanswered offer of ours (queued like every other step). */
  dropStaleOffer() {
    this.chain = this.chain.then(async () => {
      if (!this.closed && this.pc.signalingState === "have-local-offer") {
        await this.pc.setLocalDescription({ type: "rollback" });
      }
    }).catch((err) => this.call._log(`rollback with ${this.name} failed: ${err}`, this.session));
  }

  /** Our offer to session `to` was refused (`not_found`): if this connection has been rebound
   * to a new session meanwhile, offer to that one at once. */
  offerLost(to) {
    if (this.closed || this.session === to) return;
    this.negotiate({ force: true });
  }

  restartIce(why) {
    if (this.closed || this.leftAt) return; // a peer that left is dropped, not restarted
    this.restarts++;
    this.call._log(`ICE restart with ${this.name} (${why})`, this.session);
    this.pc.restartIce(); // fires negotiationneeded -> an offer with fresh ICE credentials
  }

  _iceState() {
    const s = this.pc.iceConnectionState;
    clearTimeout(this._disconnectTimer);
    if (this.leftAt && s !== "connected" && s !== "completed" && s !== "checking") {
      this.call._drop(this); // its session left and now its media stopped: it is gone
      return;
    }
    if (s === "failed") {
      this.restartIce("ICE failed");
    } else if (s === "disconnected") {
      this._disconnectTimer = setTimeout(() => {
        if (this.pc.iceConnectionState === "disconnected") this.restartIce("ICE disconnected");
      }, DISCONNECTED_RESTART_MS);
    }
    this.call._changed(this);
  }

  /** Handle one signal from the remote, in arrival order. */
  receive(data) {
    this.chain = this.chain.then(() => this._receive(data)).catch((err) => {
      this.call._log(`signal ${data.kind} from ${this.name} failed: ${err}`, this.session);
    });
    return this.chain;
  }

  async _receive(data) {
    const pc = this.pc;
    if (this.closed) return;
    if (data.kind === "offer" || data.kind === "answer") {
      const description = { type: data.kind, sdp: data.sdp };
      // W3C perfect negotiation (webrtc-pc §10.7 "Perfect negotiation example").
      const readyForOffer =
        !this.makingOffer && (pc.signalingState === "stable" || this.settingRemoteAnswer);
      const collision = description.type === "offer" && !readyForOffer;
      this.ignoreOffer = !this.polite && collision;
      if (this.ignoreOffer) {
        this.ignored++;
        return;
      }
      if (description.type === "answer" && pc.signalingState !== "have-local-offer") return;
      if (collision && pc.signalingState === "have-local-offer") {
        await pc.setLocalDescription({ type: "rollback" }); // glare: the polite peer yields
      }
      if (collision) this.rollbacks++;
      this.settingRemoteAnswer = description.type === "answer";
      try {
        await pc.setRemoteDescription(description);
      } finally {
        this.settingRemoteAnswer = false;
      }
      for (const init of this.early.splice(0)) {
        await this._addCandidate(init).catch((err) => this.call._log(`early candidate from ${this.name}: ${err}`, this.session));
      }
      if (description.type === "offer") {
        this.addLocalTracks(); // reuses the offered transceivers: no extra m-lines
        await pc.setLocalDescription();
        const desc = pc.localDescription;
        if (desc.type === "answer") this.signal({ kind: "answer", sdp: desc.sdp });
      }
    } else if (data.kind === "candidate") {
      const init = data.candidate;
      if (init && !this.call._candidateAllowed(init)) return;
      if (!pc.remoteDescription) {
        // Ahead of its description (a signal resent after rate_limited): apply it after.
        if (this.early.length < 100) this.early.push(init);
        return;
      }
      await this._addCandidate(init);
    } else if (data.kind === "bye") {
      this.call._drop(this);
    }
  }

  async _addCandidate(init) {
    try {
      await this.pc.addIceCandidate(init || null);
    } catch (err) {
      if (!this.ignoreOffer) throw err;
    }
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this._disconnectTimer);
    clearTimeout(this._answerTimer);
    try {
      this.channel.close();
    } catch {
      /* already closed */
    }
    this.pc.close();
    for (const t of this.stream.getTracks()) this.stream.removeTrack(t);
  }
}

/**
 * A call in one call room. Options:
 *   url, token, getToken   as hubbub.js connect(); the client is created here unless `client`
 *   room                   the call room (must match HUB_SIGNAL_ROOMS, default call:*)
 *   media                  getUserMedia constraints ({audio: true, video: true})
 *   localStream            use this stream instead of getUserMedia
 *   iceHosts               only use/accept ICE candidates on these addresses (tests: 127.0.0.1)
 *   signalRate             {rate, burst} pacing of outgoing signals (default 10/s, burst 20)
 *   onPeer(peer, event)    "add" | "change" | "remove"
 *   onState(state, info)   the hub connection state (hubbub.js State)
 *   onData(peer, text)     a data-channel message
 *   onError(err)
 *   onLog(text, session)   a line for people; `session`: the session id it is about, if any
 */
export class Call {
  constructor(opts) {
    this.opts = opts;
    this.room = opts.room;
    this.peers = new Map(); // remote session id -> Peer
    this.session = null;
    this.localStream = opts.localStream || null;
    this.iceServers = [];
    this.iceHosts = opts.iceHosts || [];
    this.client = opts.client || null;
    this.sub = null;
    this.ended = false;
    this.received = []; // data-channel messages, for pages and tests
    this._timer = null;
    this._connectedAs = null; // our session id when _connected() last ran
    this._outbox = []; // signals waiting for the pacer
    this._rate = { rate: 10, burst: 20, ...(opts.signalRate || {}) };
    this._tokens = this._rate.burst;
    this._tokensAt = performance.now();
    this._pumpTimer = null;
    this._seq = 0;
    this.signalRetries = 0; // signals resent after rate_limited
  }

  async start() {
    if (!this.localStream) this.localStream = await this._getMedia();
    if (!this.client) {
      const { url, token, getToken } = this.opts;
      this.client = connect(url || "v1/ws", { token, getToken, transport: "websocket" });
    }
    const c = this.client;
    c.on("welcome", (w) => this._welcome(w));
    c.on("state", (state, info) => {
      if (state === "connected") this._connected();
      this._call("onState", state, info);
    });
    c.on("signal", (f) => {
      if (f.room === this.room) this._onSignal(f);
    });
    c.on("ice_servers", (f) => this._iceServers(f.ice_servers));
    c.on("error", (err) => this._call("onError", err));
    if (c.welcome) this._welcome(c.welcome);
    this.sub = c.subscribe(this.room, {
      presence: true,
      onJoin: (m) => m.session !== this.session && this._log(`${memberName(m)} joined`, m.session),
      onLeave: (m) => this._left(m),
      onError: (err) => this._call("onError", err),
    });
    this._timer = setInterval(() => this._sweep(), 1000);
    await this.sub.ready; // rejects with room_full, forbidden, ...
    if (c.state === "connected") this._connected(); // the state event may come before or after
    return this;
  }

  /** Camera and microphone; without a camera, microphone only; without either, receive only.
   * A refused permission (NotAllowedError) is not papered over: it rejects. */
  async _getMedia() {
    const want = this.opts.media || { audio: true, video: true };
    const attempts = [want, { audio: want.audio, video: false }, null];
    for (const constraints of attempts) {
      if (!constraints) break;
      if (!constraints.audio && !constraints.video) continue;
      try {
        return await navigator.mediaDevices.getUserMedia(constraints);
      } catch (err) {
        if (err && err.name === "NotAllowedError") throw err;
        this._log(`getUserMedia(${JSON.stringify(constraints)}) failed: ${err && err.name}`);
      }
    }
    return new MediaStream(); // receive only
  }

  /** Mute or unmute our "audio" or "video" (no renegotiation: the track sends silence/black). */
  setMuted(kind, muted) {
    if (!this.localStream) return;
    for (const t of this.localStream.getTracks()) if (t.kind === kind) t.enabled = !muted;
  }

  isMuted(kind) {
    const t = this.localStream && this.localStream.getTracks().find((x) => x.kind === kind);
    return Boolean(t && !t.enabled);
  }

  /** Send text to every peer whose data channel is open; returns how many got it. */
  send(text) {
    let n = 0;
    for (const p of this.peers.values()) {
      if (p.channel.readyState === "open") {
        p.channel.send(text);
        n++;
      }
    }
    return n;
  }

  /** Leave the call: "bye" to every peer, close every connection, leave the room. */
  async hangUp() {
    if (this.ended) return;
    this.ended = true;
    clearInterval(this._timer);
    const byes = [];
    for (const p of this.peers.values()) {
      if (this.client && this.client.state === "connected") {
        byes.push(this.client.signal(this.room, p.session, { kind: "bye" }).catch(() => {}));
      }
    }
    await Promise.race([Promise.all(byes), new Promise((r) => setTimeout(r, 1000))]);
    for (const p of [...this.peers.values()]) this._drop(p);
    if (this.sub) await this.sub.unsubscribe().catch(() => {});
    if (this.localStream && !this.opts.localStream) {
      for (const t of this.localStream.getTracks()) t.stop();
    }
    if (this.client && !this.opts.client) this.client.close();
  }

  /** A snapshot for pages and tests. */
  stats() {
    return {
      session: this.session,
      hub: this.client ? this.client.state : null,
      peers: [...this.peers.values()].map((p) => ({
        session: p.session,
        user: p.member.user,
        polite: p.polite,
        connection: p.pc.connectionState,
        ice: p.pc.iceConnectionState,
        signaling: p.pc.signalingState,
        channel: p.channel.readyState,
        tracks: p.stream.getTracks().map((t) => t.kind),
        restarts: p.restarts,
        rollbacks: p.rollbacks,
        ignored: p.ignored,
        left: Boolean(p.leftAt),
      })),
      received: this.received.length,
      signalRetries: this.signalRetries,
    };
  }

  // ---- internals ----------------------------------------------------------------------------

  _call(name, ...args) {
    const fn = this.opts[name];
    if (typeof fn !== "function") return;
    try {
      fn(...args);
    } catch (e) {
      console.error(`call.js: ${name} failed`, e);
    }
  }

  _log(text, session = null) {
    this._call("onLog", text, session);
  }

  /** A session's name for people: its peer's member, else its presence member. */
  _nameOf(session) {
    const p = this.peers.get(session);
    if (p) return p.name;
    const m = this.sub && this.sub.members.get(session);
    return m ? memberName(m) : "a session that left";
  }

  _candidateAllowed(init) {
    if (!this.iceHosts.length) return true;
    return this.iceHosts.includes(candidateAddress(init));
  }

  _iceServers(list) {
    if (!Array.isArray(list)) return;
    this.iceServers = list;
    for (const p of this.peers.values()) {
      // Fresh TURN credentials for future ICE restarts (PROTOCOL §6 `ice_servers` frame).
      try {
        p.pc.setConfiguration({ ...p.pc.getConfiguration(), iceServers: list });
      } catch (err) {
        this._log(`setConfiguration failed: ${err}`);
      }
    }
  }

  _welcome(w) {
    if (Array.isArray(w.ice_servers)) this.iceServers = w.ice_servers;
    this.session = w.session;
  }

  /** Connected (first time or after a reconnect): the room is subscribed and `sub.members` is
   * the fresh presence list. */
  _connected() {
    if (this.ended || !this.sub || !this.sub.active || this._connectedAs === this.session) return;
    const members = [...this.sub.members.values()].filter((m) => m.session !== this.session);
    const reconnect = this._connectedAs !== null;
    this._connectedAs = this.session;
    const present = new Set(members.map((m) => m.session));
    if (reconnect) {
      // Our session id changed. Keep our connections: rebind those whose remote also changed
      // session (same user, unambiguous), then re-offer on each so the remote rebinds us.
      const orphans = [...this.peers.values()].filter((p) => !present.has(p.session));
      for (const p of orphans) {
        const same = members.filter((m) => m.user === p.member.user && !this.peers.has(m.session));
        if (same.length === 1) this._rebind(p, same[0].session, same[0]);
        else if (!p.leftAt) p.leftAt = Date.now();
      }
      for (const p of this.peers.values()) {
        p.polite = isPolite(this.session, p.session);
        if (present.has(p.session)) p.negotiate({ force: true });
      }
    }
    // New arrival: offer to every member we have no connection with.
    for (const m of members) {
      if (this.peers.has(m.session)) continue;
      const p = this._addPeer(m.session, m);
      p.addLocalTracks(); // -> negotiationneeded -> offer
    }
  }

  _addPeer(session, member) {
    const p = new Peer(this, session, member);
    this.peers.set(session, p);
    this._call("onPeer", p, "add");
    return p;
  }

  _rebind(peer, session, member) {
    this._log(`${memberName(member || peer.member)} reconnected (new session)`, `${peer.session} → ${session}`);
    this.peers.delete(peer.session);
    const stale = this.peers.get(session);
    if (stale && stale !== peer) this._drop(stale);
    peer.session = session;
    if (member) peer.member = member;
    peer.polite = isPolite(this.session, session);
    peer.leftAt = 0;
    this.peers.set(session, peer);
    this._changed(peer);
  }

  _onSignal(f) {
    const from = f.from && f.from.session;
    const data = f.data;
    if (!from || !data || this.ended) return;
    let peer = this.peers.get(from);
    if (!peer && data.kind === "offer") {
      // A renegotiation from a peer that reconnected (new session id) carries the DTLS
      // fingerprint of a connection we already have: rebind it instead of starting over.
      for (const p of this.peers.values()) {
        const remote = p.pc.remoteDescription;
        if (remote && sameCertificate(remote.sdp, data.sdp)) {
          const member = (this.sub && this.sub.members.get(from)) || { session: from, user: f.from.user };
          this._rebind(p, from, member);
          p.dropStaleOffer(); // an offer of ours to its old session will never be answered
          peer = p;
          break;
        }
      }
      if (!peer) {
        const member = (this.sub && this.sub.members.get(from)) || { session: from, user: f.from.user };
        peer = this._addPeer(from, member); // tracks are added when answering
      }
    }
    if (peer && (data.kind === "offer" || data.kind === "answer")) {
      // A description with another DTLS fingerprint comes from a NEW connection of that peer
      // (the Python probe replaces its connection instead of restarting ICE, also when it
      // answers our ICE restart). Chrome cannot apply a new fingerprint to an existing
      // connection: start over too. An offer is answered on the new connection; after an
      // answer we offer afresh from the new connection.
      const remote = peer.pc.remoteDescription;
      if (remote && sameCertificate(remote.sdp, data.sdp) === false) {
        this._log(`${peer.name} replaced its connection`, from);
        const member = peer.member;
        this._drop(peer);
        peer = this._addPeer(from, member);
        if (data.kind === "answer") {
          peer.addLocalTracks(); // -> negotiationneeded -> a fresh offer
          return;
        }
      }
    }
    if (peer) peer.receive(data);
  }

  _left(m) {
    const p = this.peers.get(m.session);
    if (!p) return;
    if (p.pc.connectionState === "connected") {
      p.leftAt = Date.now(); // maybe a reconnect: it will re-offer from its new session
      this._changed(p);
    } else {
      this._drop(p);
    }
  }

  _sweep() {
    const now = Date.now();
    for (const p of [...this.peers.values()]) {
      if (p.leftAt && now - p.leftAt > LEAVE_GRACE_MS) this._drop(p);
    }
  }

  _drop(peer) {
    if (this.peers.get(peer.session) === peer) this.peers.delete(peer.session);
    if (peer.closed) return;
    peer.close();
    this._call("onPeer", peer, "remove");
  }

  _changed(peer) {
    if (!peer.closed) this._call("onPeer", peer, "change");
  }

  _data(peer, text) {
    this.received.push({ from: peer.session, text: String(text) });
    if (this.received.length > 200) this.received.shift();
    this._call("onData", peer, text);
  }

  /** Queue a signal. Signals count against the hub's publish rate (HUB_CLIENT_PUBLISH_RATE,
   * default 20/s, burst 40) and a mesh's first seconds trickle many ICE candidates, so they
   * are paced here (token bucket, `signalRate`, default 10/s burst 20) and a `rate_limited`
   * refusal is retried a few times after a pause instead of losing the candidate. */
  _signal(to, data, peer = null) {
    // While the hub connection is down signals would leave from a session that no longer
    // exists; the offer made after the reconnect carries every gathered candidate anyway.
    if (!this.client || this.client.state !== "connected" || this.ended) return;
    this._outbox.push({ to, data, peer, tries: 0, seq: this._seq++ });
    this._pump();
  }

  _pump() {
    clearTimeout(this._pumpTimer);
    const { rate, burst } = this._rate;
    while (this._outbox.length) {
      const now = performance.now();
      this._tokens = Math.min(burst, this._tokens + ((now - this._tokensAt) / 1000) * rate);
      this._tokensAt = now;
      if (this._tokens < 1) {
        this._pumpTimer = setTimeout(() => this._pump(), Math.ceil(((1 - this._tokens) / rate) * 1000));
        return;
      }
      this._tokens -= 1;
      const item = this._outbox.shift();
      if (!this.client || this.client.state !== "connected" || this.ended) continue;
      this.client.signal(this.room, item.to, item.data).catch((err) => {
        if (err && err.code === "rate_limited" && item.tries++ < 5 && !this.ended) {
          this._tokens = 0; // the hub's budget is spent: back off, then resend in order
          this.signalRetries++;
          const at = this._outbox.findIndex((x) => x.seq > item.seq); // keep the order
          this._outbox.splice(at < 0 ? this._outbox.length : at, 0, item);
          clearTimeout(this._pumpTimer);
          this._pumpTimer = setTimeout(() => this._pump(), 1000);
        } else if (err && err.code === "not_found") {
          if (item.data.kind === "offer" && item.peer) item.peer.offerLost(item.to);
        } else if (err && err.code !== "disconnected") {
          const to = item.peer ? item.peer.name : this._nameOf(item.to);
          this._log(`signal ${item.data.kind} to ${to}: ${err.code || err}`, item.to);
        }
      });
    }
  }
}
