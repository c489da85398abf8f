// The chat page (/): rooms, nickname, presence and messages over hubbub.js. Every URL is
// relative to the page, so the page also works when the hub is mounted under a path prefix.
// Open it as /#token=<jwt> (moved to sessionStorage, removed from the address bar) or paste
// a token when the hub asks; in dev mode no token is needed.
import { connect, State } from "./hubbub.js";

const $ = (id) => document.getElementById(id);
const store = {
  get: (k, d) => { try { return localStorage.getItem(k) ?? d; } catch { return d; } },
  set: (k, v) => { try { localStorage.setItem(k, v); } catch { /* private mode */ } },
  del: (k) => { try { localStorage.removeItem(k); } catch { /* private mode */ } },
};

// ---- settings: nickname, rooms, token --------------------------------------------------
const params = new URLSearchParams(location.hash.slice(1));
let token = params.get("token") || sessionStorage.getItem("hubbub.token") || null;
if (params.has("token")) {
  sessionStorage.setItem("hubbub.token", token);
  history.replaceState(null, "", location.pathname + location.search); // keep it out of the URL bar
}
// The nickname the user chose ("" = none: the page shows the name the hub knows for this
// session, see myName). Earlier versions stored a made-up "guest-xxxx" here: not a choice.
let chosen = store.get("hubbub.nick", "");
if (/^guest-[a-z0-9]{4}$/.test(chosen)) chosen = "";
if (!chosen) store.del("hubbub.nick");

const ROOM_RE = /^[A-Za-z0-9_.:-]{1,128}$/;
let roomNames = JSON.parse(store.get("hubbub.rooms", '["lobby"]')).filter((r) => ROOM_RE.test(r) && !/^\.+$/.test(r));
const fromUrl = params.get("room");
if (fromUrl && ROOM_RE.test(fromUrl) && !roomNames.includes(fromUrl)) roomNames.push(fromUrl);
if (!roomNames.length) roomNames = ["lobby"];
let current = fromUrl && ROOM_RE.test(fromUrl) ? fromUrl : store.get("hubbub.room", "lobby");
if (!roomNames.includes(current)) current = roomNames[0];

// ---- the client ------------------------------------------------------------------------
const client = connect(new URL("v1/ws", document.baseURI), {
  getToken: () => token,
  onState: showState,
  onError: (err) => {
    if (err.code === "unauthorized") $("token-box").hidden = false;
    const why = err.message && err.message !== err.code ? `${err.code}: ${err.message}` : err.code;
    system(current, err.closeCode ? `The hub closed the connection (${err.closeCode}, ${why}).` : why, "error");
  },
});
// For tests and curious people: every message as delivered by the client, in order.
const delivered = [];
window.hubbubChat = { client, rooms: () => rooms, delivered };

const rooms = new Map(); // name -> {sub, items: [], unread, members: [], cids: Set}
const nicks = new Map(); // session -> nickname, learned from messages and "nick" announcements
const pending = new Map(); // cid -> {room, el, item}: sent, not yet echoed by the hub
const mine = new Set(); // cids of this page's messages

function showState(state, info = {}) {
  const el = $("state");
  el.dataset.state = state;
  let text = state;
  if (state === State.RECONNECTING && info.delay !== undefined) text = "reconnecting…";
  if (state === State.CLOSED && info.code) text = `offline (${info.reason || info.code})`;
  if (state === State.CONNECTED && client && client.transport === "sse") text = "connected (SSE)";
  el.textContent = text;
  $("send").disabled = state === State.CLOSED;
  // Presence is only known while connected: dim the list meanwhile.
  $("who").classList.toggle("stale", state !== State.CONNECTED);
}

function openRoom(name) {
  if (rooms.has(name)) return;
  const r = { items: [], unread: 0, members: [], cids: new Set() };
  rooms.set(name, r);
  r.sub = client.subscribe(name, {
    history: 50,
    presence: true,
    onMessage: (m) => {
      delivered.push({ room: name, offset: m.offset, epoch: m.epoch, event: m.event, cid: m.data && m.data.cid });
      if (m.from && m.data && typeof m.data.nick === "string") {
        const said = m.data.nick.trim().slice(0, 32);
        if (said) nicks.set(m.from.session, said);
        else if (m.event === "nick") nicks.delete(m.from.session);
      }
      if (m.event === "nick") {
        if (name === current) renderWho();
        return;
      }
      addMessage(name, m);
    },
    onGap: (g) => system(name, g.to >= g.from
      ? `${g.to - g.from + 1} message(s) could not be recovered (${g.from}–${g.to})`
      : "the hub lost this room's history (restarted without persistence); continuing live", "gap"),
    onJoin: (m) => {
      // Tell newcomers who we are (guests have random ids); small rooms only.
      if (m.session !== client.session && r.members.length <= 20) setTimeout(() => announce(name), Math.random() * 500);
    },
    onPresence: (members) => {
      r.members = members;
      if (name === current) renderWho();
      showMyName();
    },
    onError: (err) => system(name, `${err.code}: ${err.message}`, "error"),
  });
  r.sub.ready.then(() => announce(name), () => {});
}

/** An ephemeral "nick" message: not stored, shown in the online list only. An empty nick
 * means "none chosen": the others show this session's public name or user id. */
function announce(name) {
  if (client.state !== State.CONNECTED || !rooms.has(name)) return;
  client.publish(name, { nick: chosen }, { event: "nick", ephemeral: true }).catch(() => {});
}
client.on("state", (s) => {
  if (s === State.CONNECTED) for (const name of rooms.keys()) announce(name);
  showMyName();
});

// ---- who am I: one name for the header, the nickname box, the online list and messages ---
/** This session's own presence member (it carries the token's public `name`), if known. */
function ownMember() {
  for (const r of rooms.values()) {
    const m = r.members.find((x) => x.session === client.session);
    if (m) return m;
  }
  return null;
}

/** The name the hub knows for this session: the token's public name, else the user id
 * (`welcome.user`: a guest id in dev mode). */
function hubName() {
  return (ownMember() && ownMember().name) || client.user || "";
}

/** What this page calls its user everywhere: the chosen nickname, else the hub's name. */
function myName() {
  return chosen || hubName();
}

function showMyName() {
  const name = myName();
  // Never overwrite what the user is typing.
  if (document.activeElement !== $("nick")) $("nick").value = name;
  $("room-meta").hidden = !name;
  $("me").textContent = name;
  $("me").title = client.user && client.user !== name ? `user ${client.user}` : "";
}

$("nick").addEventListener("change", () => {
  const typed = $("nick").value.trim().slice(0, 32);
  chosen = typed && typed !== hubName() ? typed : ""; // empty: back to the hub's name
  if (chosen) store.set("hubbub.nick", chosen);
  else store.del("hubbub.nick");
  $("nick").value = myName();
  showMyName();
  renderWho();
  for (const name of rooms.keys()) announce(name);
});

function closeRoom(name) {
  const r = rooms.get(name);
  if (!r) return;
  r.sub.unsubscribe();
  rooms.delete(name);
}

// ---- rendering -------------------------------------------------------------------------
function colour(s) {
  let h = 0;
  for (const c of s) h = (h * 31 + c.codePointAt(0)) >>> 0;
  return `hsl(${h % 360} 55% 48%)`;
}

function messageEl(item) {
  const li = document.createElement("li");
  if (item.system) {
    li.className = `system ${item.kind || ""}`;
    li.textContent = item.text;
    return li;
  }
  const d = item.data && typeof item.data === "object" ? item.data : { text: String(item.data) };
  const who = String(d.nick || (item.from && item.from.user) || "backend");
  li.className = "msg";
  if (item.pending) li.classList.add("pending");
  if (item.mine || (d.cid && mine.has(d.cid))) li.classList.add("mine");
  if (item.offset !== undefined) li.dataset.offset = item.offset;
  if (d.cid) li.dataset.cid = d.cid;
  const av = document.createElement("div");
  av.className = "avatar";
  av.style.background = colour(who);
  av.textContent = who.slice(0, 1).toUpperCase();
  const bubble = document.createElement("div");
  bubble.className = "bubble";
  const head = document.createElement("div");
  head.className = "head";
  const n = document.createElement("span");
  n.className = "nick";
  n.textContent = who;
  n.style.color = colour(who);
  const t = document.createElement("span");
  t.className = "time";
  t.textContent = item.pending ? "sending…" : new Date(item.ts || Date.now()).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  head.append(n, t);
  const text = document.createElement("div");
  text.className = "text";
  text.textContent = String(d.text ?? "");
  bubble.append(head, text);
  li.append(av, bubble);
  return li;
}

function append(name, item) {
  const r = rooms.get(name);
  if (!r) return null;
  r.items.push(item);
  if (r.items.length > 500) r.items.splice(0, r.items.length - 500);
  if (name !== current) {
    if (!item.system) r.unread++;
    renderRooms();
    return null;
  }
  const list = $("messages");
  const stick = list.scrollHeight - list.scrollTop - list.clientHeight < 60;
  const el = messageEl(item);
  list.append(el);
  if (stick || item.mine) list.scrollTop = list.scrollHeight;
  return el;
}

function addMessage(name, m) {
  const cid = m.data && m.data.cid;
  const r = rooms.get(name);
  // The client drops repeats by offset; a resend that the hub could not recognise (its
  // idempotency memory was lost with a restart) comes back with a new offset: drop it by cid.
  if (cid && r) {
    if (r.cids.has(cid)) return;
    r.cids.add(cid);
  }
  const p = cid && pending.get(cid);
  if (p) {
    pending.delete(cid);
    if (r) r.items = r.items.filter((i) => i !== p.item);
    if (p.el) p.el.remove();
  }
  append(name, m);
}

function system(name, text, kind = "") {
  append(rooms.has(name) ? name : current, { system: true, text, kind });
}

function renderRooms() {
  const ul = $("rooms");
  ul.replaceChildren();
  for (const name of roomNames) {
    const li = document.createElement("li");
    if (name === current) li.className = "current";
    const b = document.createElement("button");
    b.type = "button";
    b.dataset.room = name;
    b.append(`# ${name}`);
    const unread = rooms.get(name)?.unread || 0;
    if (unread) {
      const badge = document.createElement("span");
      badge.className = "badge";
      badge.textContent = unread;
      b.append(badge);
    }
    b.addEventListener("click", () => select(name));
    b.addEventListener("dblclick", () => leave(name));
    b.title = "double-click to leave";
    li.append(b);
    ul.append(li);
  }
}

function renderWho() {
  const r = rooms.get(current);
  const ul = $("who");
  ul.replaceChildren();
  const members = r ? r.members : [];
  const seen = new Set();
  for (const m of members) {
    if (seen.has(m.session)) continue;
    seen.add(m.session);
    const li = document.createElement("li");
    li.dataset.session = m.session;
    li.dataset.user = m.user;
    const self = m.session === client.session;
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = self ? myName() || m.user : nicks.get(m.session) || m.name || m.user;
    li.append(name);
    if (self) {
      const me = document.createElement("span");
      me.className = "me";
      me.textContent = "(you)";
      li.append(me);
    }
    ul.append(li);
  }
  $("who-count").textContent = members.length ? `· ${members.length}` : "";
}

function renderMessages() {
  const r = rooms.get(current);
  const list = $("messages");
  list.replaceChildren(...(r ? r.items.map(messageEl) : []));
  for (const p of pending.values()) if (p.room === current) p.el = list.querySelector(`[data-cid="${p.item.data.cid}"]`);
  list.scrollTop = list.scrollHeight;
}

function select(name) {
  current = name;
  store.set("hubbub.room", name);
  openRoom(name);
  rooms.get(name).unread = 0;
  $("room-title").textContent = `#${name}`;
  renderRooms();
  renderMessages();
  renderWho();
  $("text").focus();
}

function leave(name) {
  if (roomNames.length === 1) return;
  roomNames = roomNames.filter((r) => r !== name);
  store.set("hubbub.rooms", JSON.stringify(roomNames));
  closeRoom(name);
  if (current === name) select(roomNames[0]);
  else renderRooms();
}

// ---- forms ---------------------------------------------------------------------------
$("composer").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const text = $("text").value.trim();
  if (!text) return;
  $("text").value = "";
  const cid = `${Date.now().toString(36)}${Math.random().toString(36).slice(2, 8)}`;
  const data = { nick: myName(), text, cid };
  const room = current;
  mine.add(cid);
  const item = { data, pending: true, mine: true };
  const el = append(room, item);
  pending.set(cid, { room, el, item });
  client.publish(room, data, { key: cid }).catch((err) => {
    const p = pending.get(cid);
    if (p && p.el) p.el.querySelector(".time").textContent = `not sent: ${err.code}`;
  });
});

$("add-room").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const name = $("new-room").value.trim().replace(/^#/, "");
  if (!ROOM_RE.test(name) || /^\.+$/.test(name)) return;
  $("new-room").value = "";
  if (!roomNames.includes(name)) roomNames.push(name);
  store.set("hubbub.rooms", JSON.stringify(roomNames));
  select(name);
});

$("token-box").addEventListener("submit", (ev) => {
  ev.preventDefault();
  token = $("token").value.trim() || null;
  if (token) sessionStorage.setItem("hubbub.token", token);
  $("token-box").hidden = true;
  client.reconnect();
});

// Rooms are all subscribed (unread counts); the current one is shown.
for (const name of roomNames) openRoom(name);
select(current);
showMyName();
