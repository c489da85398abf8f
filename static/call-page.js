// The call page (/call): a video call in one room over call.js. URLs are relative to the
// page, so it also works when the hub is mounted under a path prefix.
//
// URL: call?room=call:demo[&autojoin=1][&ice=loopback][&media=audio|none]#token=JWT  (the token stays in the
// fragment: never sent to the server in a request line, removed from the URL bar at once).

import { Call, memberName } from "./call.js";

const $ = (id) => document.getElementById(id);
const query = new URLSearchParams(location.search);
const frag = new URLSearchParams(location.hash.slice(1));
const room = query.get("room") || "call:demo";
let token = frag.get("token") || sessionStorage.getItem("hubbub.token") || null;
if (frag.has("token")) {
  sessionStorage.setItem("hubbub.token", token);
  history.replaceState(null, "", location.pathname + location.search);
}
$("room-name").textContent = room;
$("hint-room").textContent = room;
$("hint-link").textContent = new URL(`?room=${encodeURIComponent(room).replace(/%3A/gi, ":")}`, location.href).href;
let call = null;
const tiles = new Map(); // session | "me" -> tile element

/** A line in the log. Lines name people; the session id they are about (if any) is kept as
 * the line's tooltip, for whoever debugs a call. */
function log(text, session = null) {
  console.info(`[call] ${text}${session ? ` [${session}]` : ""}`);
  const li = document.createElement("li");
  li.textContent = `${new Date().toLocaleTimeString()} ${text}`;
  if (session) li.title = `session ${session}`;
  $("log").append(li);
  while ($("log").children.length > 50) $("log").firstChild.remove();
  $("log").scrollTop = $("log").scrollHeight;
}

function notice(text) {
  $("notice").hidden = !text;
  $("notice").textContent = text || "";
}

function tile(key, title, stream, { me = false } = {}) {
  let el = tiles.get(key);
  if (!el) {
    el = document.createElement("div");
    el.className = "tile" + (me ? " me" : "");
    el.dataset.key = key;
    el.innerHTML = '<video autoplay playsinline></video><div class="avatar-big"></div>' +
      '<div class="label"><span class="who"></span><span class="pill"></span></div>';
    const video = el.querySelector("video");
    video.muted = me; // never play our own microphone back
    video.addEventListener("resize", () => el.classList.toggle("has-video", video.videoWidth > 0));
    video.addEventListener("playing", () => el.classList.toggle("has-video", video.videoWidth > 0));
    tiles.set(key, el);
    if (me) $("tiles").prepend(el);
    else $("tiles").append(el);
  }
  el.querySelector(".who").textContent = title;
  el.querySelector(".avatar-big").textContent = (title || "?").slice(0, 1).toUpperCase();
  const video = el.querySelector("video");
  if (stream && video.srcObject !== stream) {
    video.srcObject = stream;
    video.play().catch(() => {});
  }
  return el;
}

function renderPeer(peer, event) {
  const key = peer.tileKey || (peer.tileKey = "p" + Math.random().toString(36).slice(2));
  if (event === "remove") {
    const el = tiles.get(key);
    if (el) el.remove();
    tiles.delete(key);
    log(`${memberName(peer.member)} left the call`, peer.session);
  } else {
    const name = memberName(peer.member);
    const el = tile(key, name, peer.stream);
    el.dataset.conn = peer.state;
    el.dataset.session = peer.session;
    const bits = [peer.state];
    if (peer.leftAt) bits.push("reconnecting");
    el.querySelector(".pill").textContent = bits.join(" · ");
  }
  $("count").textContent = `${call ? call.peers.size + 1 : 0} in call`;
}

function renderMe() {
  if (!call) return;
  const el = tile("me", "You", call.localStream, { me: true });
  const bits = [];
  if (call.isMuted("audio")) bits.push("mic off");
  if (call.isMuted("video")) bits.push("camera off");
  const pill = el.querySelector(".pill");
  pill.textContent = bits.join(" · ");
  pill.classList.toggle("muted", bits.length > 0);
  $("mic").setAttribute("aria-pressed", String(call.isMuted("audio")));
  $("mic").textContent = call.isMuted("audio") ? "Unmute mic" : "Mute mic";
  $("cam").setAttribute("aria-pressed", String(call.isMuted("video")));
  $("cam").textContent = call.isMuted("video") ? "Camera on" : "Camera off";
}

function setJoined(joined) {
  $("hint").hidden = joined; // the empty stage explains itself until a call starts
  $("join").disabled = joined;
  $("mic").disabled = $("cam").disabled = $("hangup").disabled = !joined;
}

async function join() {
  notice("");
  setJoined(true);
  call = new Call({
    url: new URL("v1/ws", document.baseURI),
    room,
    getToken: async () => token,
    iceHosts: query.get("ice") === "loopback" ? ["127.0.0.1"] : [],
    media: { audio: query.get("media") !== "none", video: !["audio", "none"].includes(query.get("media")) },
    onPeer: renderPeer,
    onState: (state, info) => {
      $("state").dataset.state = state;
      $("state").textContent = state;
      if (state === "reconnecting") log(`hub connection lost (${info.code || "network"}); media continues`);
      if (state === "closed" && info.code === 4501) {
        $("token-box").hidden = false;
        notice("The hub refused the token.");
      }
    },
    onData: (peer, text) => log(`${memberName(peer.member)}: ${text}`, peer.session),
    onError: (err) => {
      if (err.code === "room_full") notice("This call is full.");
      else if (err.code === "forbidden") notice(`Not allowed: ${err.message}`);
      log(`error ${err.code}: ${err.message}`);
    },
    onLog: log,
  });
  window.hubbubCall = call;
  try {
    await call.start();
    renderMe();
    const me = call.sub.members.get(call.session) || { user: call.client.user };
    log(`joined ${room} as ${memberName(me)}`, call.session);
  } catch (err) {
    const msg = err && err.name === "NotAllowedError" ? "Camera/microphone permission denied." : `${err.code || err.name || "error"}: ${err.message || err}`;
    notice(`Could not join: ${msg}`);
    await call.hangUp().catch(() => {});
    for (const el of tiles.values()) el.remove();
    tiles.clear();
    setJoined(false);
    window.hubbubJoinError = err.code || err.name || String(err);
  }
}

async function hangUp() {
  if (!call) return;
  const c = call;
  call = null;
  await c.hangUp();
  for (const el of tiles.values()) el.remove();
  tiles.clear();
  setJoined(false);
  $("state").dataset.state = "closed";
  $("state").textContent = "not joined";
  $("count").textContent = "";
  log("hung up");
}

$("join").addEventListener("click", join);
$("hangup").addEventListener("click", hangUp);
$("mic").addEventListener("click", () => { call.setMuted("audio", !call.isMuted("audio")); renderMe(); });
$("cam").addEventListener("click", () => { call.setMuted("video", !call.isMuted("video")); renderMe(); });
$("say-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const text = $("say").value.trim();
  if (!text || !call) return;
  const n = call.send(text);
  log(`you → ${n} peer(s): ${text}`);
  $("say").value = "";
});
$("token-box").addEventListener("submit", (ev) => {
  ev.preventDefault();
  token = $("token").value.trim() || null;
  sessionStorage.setItem("hubbub.token", token || "");
  $("token-box").hidden = true;
  if (call) hangUp().then(join);
  else join();
});
window.addEventListener("pagehide", () => { if (call) call.hangUp(); });
if (query.get("autojoin") === "1") join();
