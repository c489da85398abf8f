// The events page (/events): watch SSE streams with the browser's own EventSource.
// Prefill from the URL: events?rooms=a,b&presence=1&events=chat&since=…&connect=1#token=<jwt>
// (the token rides in the fragment, which never reaches the server or its logs).
import { EventStream, splitNames, streamUrl } from "./client/eventsource.js";

const $ = (id) => document.getElementById(id);
const MAX_ROWS = 2000;
let stream = null;
let count = 0;

function setState(state, detail) {
  const el = $("state");
  el.dataset.state = state;
  el.textContent = detail ? `${state}: ${detail}` : state;
  $("connect").disabled = state !== "closed";
  $("disconnect").disabled = state === "closed";
}

function pretty(data) {
  try {
    return JSON.stringify(JSON.parse(data), null, 1).replace(/\n\s*/g, " ");
  } catch {
    return data;
  }
}

function show(name, { data, id }) {
  if (stream) $("last-id").textContent = stream.lastId || "—";
  const li = document.createElement("li");
  li.className = "ev";
  li.dataset.event = name;
  if (id) li.dataset.id = id;
  const cells = [["time", new Date().toLocaleTimeString()], ["name", name], ["id", id || "—"], ["data", pretty(data)]];
  for (const [cls, text] of cells) {
    const span = document.createElement("span");
    span.className = cls;
    span.textContent = text; // never innerHTML: data comes from publishers
    if (cls === "id" && id) span.title = id;
    if (cls === "data") span.dataset.raw = data;
    li.append(span);
  }
  const list = $("events");
  const main = list.parentElement;
  const atBottom = main.scrollHeight - main.scrollTop - main.clientHeight < 40;
  list.append(li);
  while (list.children.length > MAX_ROWS + 1) list.children[1].remove();
  count += 1;
  $("count").textContent = `${count} event${count === 1 ? "" : "s"}`;
  $("empty").hidden = true;
  if (atBottom) main.scrollTop = main.scrollHeight;
}

function connect() {
  if (stream) stream.close();
  if (!$("rooms").reportValidity()) return;
  const url = streamUrl({
    rooms: splitNames($("rooms").value),
    presence: $("presence").checked,
    since: $("since").value.trim(),
    token: $("token").value.trim(),
  });
  stream = new EventStream({
    url,
    names: splitNames($("names").value),
    since: $("since").value.trim(),
    onState: setState,
    onEvent: show,
    onResume: (lastId) => ($("since").value = lastId),
  });
  stream.open();
}

$("controls").addEventListener("submit", (e) => {
  e.preventDefault();
  connect();
});
$("disconnect").addEventListener("click", () => {
  if (!stream) return;
  $("since").value = stream.lastId;
  stream.close();
});
$("clear").addEventListener("click", () => {
  for (const li of [...$("events").querySelectorAll("li.ev")]) li.remove();
  count = 0;
  $("count").textContent = "0 events";
  $("empty").hidden = false;
});

const q = new URLSearchParams(location.search);
const frag = new URLSearchParams(location.hash.slice(1));
$("rooms").value = q.get("rooms") || q.getAll("room").join(", ") || "lobby";
$("since").value = q.get("since") || "";
$("names").value = q.get("events") || "";
$("presence").checked = q.get("presence") === "1";
if (frag.get("token")) {
  $("token").value = frag.get("token");
  history.replaceState(null, "", location.pathname + location.search);
}
if (q.get("connect") === "1") connect();
