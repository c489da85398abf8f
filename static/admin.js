// Hubbub admin page: the HTTP API of PROTOCOL.md §5 with an API key (GET v1/stats for the
// numbers, v1/rooms, presence, publish, disconnect). No build step, no CDN. Every URL is
// relative to the page (the hub may be mounted under a path prefix). Everything shown comes
// from the server and is written with textContent, never as HTML.
"use strict";

(() => {
  const KEY_STORE = "hubbub-admin-key";
  const POINTS = 120; // 2 minutes at one sample per second
  const NODE_STALE_MS = 15000;
  const $ = (id) => document.getElementById(id);

  let apiKey = null;
  const nodes = new Map(); // node id -> {cur, prev, pubRate, delRate, seen}
  const series = { pub: [], del: [], conn: [] };

  // ---- API key --------------------------------------------------------------------------
  function keyFromFragment() {
    const params = new URLSearchParams(location.hash.replace(/^#/, ""));
    const key = params.get("key");
    if (key) {
      // Drop the key from the address bar (history, screenshots, shoulder surfing).
      history.replaceState(null, "", location.pathname + location.search);
    }
    return key;
  }

  /** A request with the API key (none when there is no key yet). Rejects with an Error
   * carrying `status`; a 401 (and a 403 for GET v1/stats) means "no usable API key": the
   * page stops and asks for one. */
  async function api(method, path, body) {
    const opts = { method, headers: {}, cache: "no-store" };
    if (apiKey) opts.headers.Authorization = "Bearer " + apiKey;
    if (body !== undefined) {
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(body);
    }
    const r = await fetch(path, opts);
    let data = null;
    try { data = await r.json(); } catch (_) { data = null; }
    if (!r.ok) {
      const err = (data && data.error) || { code: String(r.status), message: r.statusText };
      const e = new Error(`${r.status} ${err.code}: ${err.message}`);
      e.status = r.status;
      if (r.status === 401 || (r.status === 403 && path === "v1/stats")) refused(e);
      throw e;
    }
    return data;
  }

  /** The hub refused the page's credentials (or their absence): say why, ask for a key. */
  function refused(err) {
    const why = `(${err.message})`;
    if (apiKey) showLogin(`That API key was refused ${why}.`, "API key refused");
    else showLogin(`This hub refused the stats request ${why}. The admin page needs an API key: ` +
                   "one of the hub's HUB_API_KEYS (a hub in dev mode has none and answers the " +
                   "admin page without a key only on a loopback address such as 127.0.0.1). " +
                   "Enter the key above.", "API key needed");
  }

  function setStatus(text, kind) {
    $("conn-dot").className = "dot" + (kind ? " " + kind : "");
    $("conn-text").textContent = text;
  }

  function showLogin(message, status) {
    stop();
    apiKey = null;
    sessionStorage.removeItem(KEY_STORE);
    setStatus(status || "API key needed", "bad");
    $("nodes-count").textContent = "";
    $("app").hidden = true;
    $("dev-note").hidden = true;
    $("login").hidden = false;
    setOut("login-out", message || "", message ? "err" : "");
    $("login-key").focus();
  }

  /** Open the page with `key` (null: try without one, for a hub that allows it). */
  async function open(key) {
    apiKey = key || null;
    setStatus("connecting…", "");
    let first;
    try {
      first = await api("GET", "v1/stats");
    } catch (e) {
      // 401/403 were answered by refused(); anything else (network, 5xx) is shown as it is.
      if (e.status !== 401 && e.status !== 403) {
        showLogin(`The stats request failed: ${e.message || e}`, "stats unreachable");
      }
      return;
    }
    if (apiKey) sessionStorage.setItem(KEY_STORE, apiKey);
    // A hub in dev mode (no secret, no API key) answers a loopback page without a key.
    $("dev-note").hidden = !(first && first.dev_mode);
    $("login").hidden = true;
    $("app").hidden = false;
    start();
  }

  function setOut(id, text, kind) {
    const el = $(id);
    el.textContent = text;
    el.className = "out" + (kind ? " " + kind : "");
  }

  // ---- stats ----------------------------------------------------------------------------
  // GET v1/stats answers for one node: behind a balancer each request may reach another one,
  // so nodes are collected as they answer and rates come from two answers of the same node.
  async function sampleOnce() {
    const s = await api("GET", "v1/stats");
    const cur = {
      t: s.time * 1000,
      pubs: s.publications,
      dels: s.deliveries,
      ws: s.connections.ws || 0,
      sse: s.connections.sse || 0,
      subs: s.subscriptions,
      brokerUp: s.broker.up,
      draining: s.draining,
      webhooks: s.webhooks || [],
    };
    const n = nodes.get(s.node) || { pubRate: 0, delRate: 0 };
    if (n.cur) {
      const dt = (cur.t - n.cur.t) / 1000;
      if (dt > 0.3) {
        n.pubRate = Math.max(0, (cur.pubs - n.cur.pubs) / dt);
        n.delRate = Math.max(0, (cur.dels - n.cur.dels) / dt);
      } else {
        return; // too close to the last sample for a rate: keep that one as the base
      }
    }
    n.cur = cur;
    n.seen = Date.now();
    nodes.set(s.node, n);
  }

  async function tick() {
    // Two requests per tick: behind a balancer they often reach different nodes.
    const results = await Promise.allSettled([sampleOnce(), sampleOnce()]);
    if (!timers.length) return; // refused meanwhile: the page asks for a key now
    const ok = results.some((r) => r.status === "fulfilled");
    setStatus(ok ? "live" : "stats unreachable", ok ? "ok" : "bad");
    const now = Date.now();
    let pub = 0, del = 0, ws = 0, sse = 0, subs = 0, live = 0;
    for (const n of nodes.values()) {
      if (now - n.seen > NODE_STALE_MS) continue;
      live += 1;
      pub += n.pubRate; del += n.delRate;
      ws += n.cur.ws; sse += n.cur.sse; subs += n.cur.subs;
    }
    $("s-nodes").textContent = String(live);
    $("s-ws").textContent = String(ws);
    $("s-sse").textContent = String(sse);
    $("s-subs").textContent = String(subs);
    $("s-pub").textContent = pub.toFixed(pub < 10 ? 1 : 0);
    $("s-del").textContent = del.toFixed(del < 10 ? 1 : 0);
    $("nodes-count").textContent = `${live} node${live === 1 ? "" : "s"}`;
    push(series.pub, pub); push(series.del, del); push(series.conn, ws + sse);
    renderNodes(now);
    renderWebhooks(now);
    drawChart();
  }

  function push(arr, v) {
    arr.push(v);
    if (arr.length > POINTS) arr.shift();
  }

  function cell(tr, text, cls) {
    const td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    tr.appendChild(td);
    return td;
  }

  function renderNodes(now) {
    const body = $("nodes");
    body.replaceChildren();
    const ids = [...nodes.keys()].sort();
    for (const id of ids) {
      const n = nodes.get(id);
      const tr = document.createElement("tr");
      cell(tr, id);
      cell(tr, String(n.cur.ws), "num");
      cell(tr, String(n.cur.sse), "num");
      cell(tr, n.pubRate.toFixed(1), "num");
      const b = cell(tr, "");
      const dot = document.createElement("span");
      dot.className = "dot " + (n.cur.brokerUp ? "ok" : "bad");
      b.appendChild(dot);
      b.appendChild(document.createTextNode(n.cur.brokerUp ? "up" : "down"));
      const stale = now - n.seen > NODE_STALE_MS;
      cell(tr, stale ? "gone?" : n.cur.draining ? "draining" : "serving");
      cell(tr, Math.round((now - n.seen) / 1000) + "s", "num");
      body.appendChild(tr);
    }
    if (!ids.length) emptyRow(body, 7, "no node answered yet");
  }

  /** Per endpoint: deliveries summed over live nodes; queue depth and age: the largest seen. */
  function renderWebhooks(now) {
    const rows = new Map();
    for (const n of nodes.values()) {
      if (now - n.seen > NODE_STALE_MS) continue;
      for (const w of n.cur.webhooks) {
        const r = rows.get(w.endpoint) || { ok: 0, failed: 0, dropped: 0, depth: 0, age: 0 };
        r.ok += w.deliveries.ok; r.failed += w.deliveries.failed;
        r.dropped += w.deliveries.dropped;
        r.depth = Math.max(r.depth, w.queue_depth);
        r.age = Math.max(r.age, w.oldest_age_seconds || 0);
        rows.set(w.endpoint, r);
      }
    }
    $("webhooks-section").hidden = rows.size === 0;
    const body = $("webhooks");
    body.replaceChildren();
    for (const [endpoint, r] of [...rows.entries()].sort()) {
      const tr = document.createElement("tr");
      cell(tr, endpoint, "endpoint");
      cell(tr, String(r.ok), "num");
      cell(tr, String(r.failed), "num");
      cell(tr, String(r.dropped), r.dropped ? "num bad" : "num");
      cell(tr, String(r.depth), "num");
      cell(tr, r.age ? r.age.toFixed(1) + "s" : "–", "num");
      body.appendChild(tr);
    }
  }

  function emptyRow(body, span, text) {
    const tr = document.createElement("tr");
    const td = cell(tr, text, "empty");
    td.colSpan = span;
    body.appendChild(tr);
  }

  // ---- chart (canvas, no library) -------------------------------------------------------
  function niceMax(v) {
    if (v <= 1) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const f of [1, 2, 2.5, 5, 10]) if (f * p >= v) return f * p;
    return 10 * p;
  }

  function drawChart() {
    const canvas = $("chart");
    const dpr = window.devicePixelRatio || 1;
    const w = canvas.clientWidth, h = canvas.clientHeight;
    if (!w || !h) return;
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
      canvas.width = Math.round(w * dpr);
      canvas.height = Math.round(h * dpr);
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    const css = getComputedStyle(document.documentElement);
    const color = (name) => css.getPropertyValue(name).trim();
    const pad = { l: 46, r: 46, t: 10, b: 22 };
    const pw = w - pad.l - pad.r, ph = h - pad.t - pad.b;
    const rateMax = niceMax(Math.max(...series.pub, ...series.del, 0));
    // Connections are whole numbers: four whole steps.
    const connMax = 4 * Math.max(1, Math.ceil(niceMax(Math.max(...series.conn, 0)) / 4));
    ctx.font = "11px system-ui, sans-serif";
    ctx.lineWidth = 1;
    for (let i = 0; i <= 4; i++) {
      const y = pad.t + ph - (ph * i) / 4;
      ctx.strokeStyle = color("--line");
      ctx.beginPath(); ctx.moveTo(pad.l, y + 0.5); ctx.lineTo(pad.l + pw, y + 0.5); ctx.stroke();
      ctx.fillStyle = color("--dim");
      ctx.textAlign = "right";
      ctx.fillText(fmt((rateMax * i) / 4), pad.l - 6, y + 4);
      ctx.textAlign = "left";
      ctx.fillStyle = color("--orange");
      ctx.fillText(fmt((connMax * i) / 4), pad.l + pw + 6, y + 4);
    }
    ctx.fillStyle = color("--dim");
    ctx.textAlign = "center";
    for (const [frac, label] of [[0, "-2 min"], [0.5, "-1 min"], [1, "now"]]) {
      ctx.fillText(label, pad.l + pw * frac, h - 6);
    }
    const line = (data, max, stroke, fill) => {
      if (data.length < 2) return;
      const x = (i) => pad.l + pw * ((POINTS - data.length + i) / (POINTS - 1));
      const y = (v) => pad.t + ph - (ph * v) / max;
      ctx.beginPath();
      data.forEach((v, i) => (i ? ctx.lineTo(x(i), y(v)) : ctx.moveTo(x(i), y(v))));
      if (fill) {
        ctx.save();
        ctx.lineTo(x(data.length - 1), pad.t + ph);
        ctx.lineTo(x(0), pad.t + ph);
        ctx.closePath();
        ctx.globalAlpha = 0.15;
        ctx.fillStyle = stroke;
        ctx.fill();
        ctx.restore();
        ctx.beginPath();
        data.forEach((v, i) => (i ? ctx.lineTo(x(i), y(v)) : ctx.moveTo(x(i), y(v))));
      }
      ctx.strokeStyle = stroke;
      ctx.lineWidth = 2;
      ctx.stroke();
      ctx.lineWidth = 1;
    };
    line(series.conn, connMax, color("--orange"), false);
    line(series.del, rateMax, color("--green"), true);
    line(series.pub, rateMax, color("--accent"), true);
  }

  function fmt(v) {
    if (v >= 1000) return (v / 1000).toFixed(v >= 10000 ? 0 : 1) + "k";
    return String(Number(v.toFixed(2))); // 0.25, 12.5, 3
  }

  // ---- rooms, presence, publish, disconnect ---------------------------------------------
  async function loadRooms() {
    const prefix = $("rooms-prefix").value.trim();
    const q = new URLSearchParams({ limit: "100" });
    if (prefix) q.set("prefix", prefix);
    try {
      const res = await api("GET", "v1/rooms?" + q);
      const body = $("rooms");
      body.replaceChildren();
      for (const r of res.rooms) {
        const tr = document.createElement("tr");
        tr.className = "clickable";
        tr.title = "show presence, publish here";
        cell(tr, r.room);
        cell(tr, String(r.sessions), "num");
        tr.addEventListener("click", () => {
          $("presence-room").value = r.room;
          $("publish-room").value = r.room;
          loadPresence();
        });
        body.appendChild(tr);
      }
      if (!res.rooms.length) emptyRow(body, 2, "no rooms with sessions");
      setOut("rooms-out", res.cursor ? "more rooms: narrow with a prefix" : "");
    } catch (e) {
      setOut("rooms-out", String(e.message || e), "err");
    }
  }

  async function loadPresence() {
    const room = $("presence-room").value.trim();
    if (!room) return;
    try {
      const res = await api("GET", `v1/rooms/${encodeURIComponent(room)}/presence`);
      const body = $("presence");
      body.replaceChildren();
      for (const m of res.members) {
        const tr = document.createElement("tr");
        cell(tr, m.user);
        cell(tr, m.name || "");
        cell(tr, m.session);
        cell(tr, m.transport);
        body.appendChild(tr);
      }
      if (!res.members.length) emptyRow(body, 4, "nobody present");
      setOut("presence-out", `${room}: ${res.users} user(s), ${res.sessions} session(s)`, "ok");
    } catch (e) {
      setOut("presence-out", String(e.message || e), "err");
    }
  }

  async function publish() {
    const room = $("publish-room").value.trim();
    let data;
    try {
      data = JSON.parse($("publish-data").value);
    } catch (e) {
      setOut("publish-out", "data is not valid JSON: " + e.message, "err");
      return;
    }
    const body = { data };
    const event = $("publish-event").value.trim();
    if (event) body.event = event;
    try {
      const res = await api("POST", `v1/rooms/${encodeURIComponent(room)}/messages`, body);
      setOut("publish-out", `published to ${res.room} at offset ${res.offset} (epoch ${res.epoch})`,
             "ok");
    } catch (e) {
      setOut("publish-out", String(e.message || e), "err");
    }
  }

  async function kick() {
    const user = $("kick-user").value.trim();
    const reason = $("kick-reason").value.trim();
    try {
      const res = await api("POST", `v1/users/${encodeURIComponent(user)}/disconnect`,
                            reason ? { reason } : {});
      setOut("kick-out", `${user}: ${res.sessions} session(s) closed (4509)`, "ok");
    } catch (e) {
      setOut("kick-out", String(e.message || e), "err");
    }
  }

  // ---- wiring ---------------------------------------------------------------------------
  let timers = [];
  function start() {
    if (timers.length) return;
    tick();
    loadRooms();
    timers = [setInterval(tick, 1000), setInterval(loadRooms, 5000)];
  }

  function stop() {
    for (const t of timers) clearInterval(t);
    timers = [];
  }
  window.addEventListener("resize", drawChart);

  const onSubmit = (id, fn) => $(id).addEventListener("submit", (ev) => { ev.preventDefault(); fn(); });
  onSubmit("login-form", () => open($("login-key").value.trim()));
  onSubmit("rooms-form", loadRooms);
  onSubmit("presence-form", loadPresence);
  onSubmit("publish-form", publish);
  onSubmit("kick-form", kick);

  open(keyFromFragment() || sessionStorage.getItem(KEY_STORE));
})();
