// Frame dispatch on a WebSocket: welcome, replies, errors, presence, ping, tokens, heartbeat.
import assert from "node:assert/strict";
import { test } from "node:test";

import { endpoints } from "../../static/client/endpoints.js";
import { flush } from "./fakes.mjs";
import { answerSubscribe, fakeClient, welcome } from "./helpers.mjs";

test("welcome: session and user; connected once the rooms are subscribed", async () => {
  const { client, last, log } = fakeClient();
  const seen = [];
  client.on("welcome", (f) => seen.push(f.session));
  client.subscribe("r");
  await welcome(last(), { session: "s1", user: "alice" });
  assert.equal(client.session, "s1");
  assert.equal(client.user, "alice");
  assert.equal(client.transport, "websocket");
  assert.deepEqual(seen, ["s1"]);
  assert.equal(client.state, "connecting");
  await answerSubscribe(last());
  assert.equal(client.state, "connected");
  assert.deepEqual(log.states, ["connecting", "connected"]);
});

test("ping gets a pong; frames that are not JSON objects are ignored; unknown types are events", async () => {
  const { client, last } = fakeClient();
  await welcome(last());
  const other = [];
  client.on("ice_servers", (f) => other.push(f.type));
  client.on("news-from-the-future", (f) => other.push(f.type));
  last().receive({ type: "ping" });
  last().receive("not json");
  last().receive("42");
  last().receive("null");
  last().receive({ type: "ice_servers", ice_servers: [] });
  last().receive({ type: "news-from-the-future" });
  assert.deepEqual(last().frames("pong"), [{ type: "pong" }]);
  assert.deepEqual(other, ["ice_servers", "news-from-the-future"]);
  assert.equal(client.state, "connected");
});

test("presence: snapshot in the reply, then join and leave, with onJoin/onLeave/onPresence", async () => {
  const { client, last } = fakeClient();
  const events = [];
  const sub = client.subscribe("r", {
    presence: true,
    onJoin: (m) => events.push(["join", m.session]),
    onLeave: (m) => events.push(["leave", m.session]),
    onPresence: (list) => events.push(["now", list.map((m) => m.session).join(",")]),
  });
  await welcome(last());
  assert.equal(last().last("subscribe").presence, true);
  await answerSubscribe(last(), { presence: [{ session: "a", user: "u1" }, { session: "b", user: "u2" }] });
  last().receive({ type: "join", room: "r", session: "c", user: "u3" });
  last().receive({ type: "join", room: "r", session: "c", user: "u3" }); // repeated: no onJoin
  last().receive({ type: "leave", room: "r", session: "a", user: "u1" });
  last().receive({ type: "leave", room: "r", session: "zz", user: "u9" }); // unknown: nothing
  last().receive({ type: "join", room: "other", session: "x", user: "u" }); // not subscribed
  assert.deepEqual(events, [
    ["join", "a"], ["join", "b"], ["now", "a,b"],
    ["join", "c"], ["now", "a,b,c"], ["now", "a,b,c"],
    ["leave", "a"], ["now", "b,c"],
  ]);
  assert.deepEqual([...sub.members.keys()], ["b", "c"]);
});

test("errors: a request's error rejects it; one without id is an error event", async () => {
  const { client, last, log } = fakeClient();
  await welcome(last());
  const p = client.publish("r", "x");
  await flush();
  const f = last().last("publish");
  last().receive({ type: "error", id: f.id, code: "too_large", message: "big", details: { limit: 1 } });
  await assert.rejects(p, (e) => e.code === "too_large" && e.details.limit === 1 && !e.temporary);
  last().receive({ type: "reply", id: 9999, result: {} }); // an answer nobody waits for
  last().receive({ type: "error", code: "rate_limited", message: "slow down", temporary: true });
  assert.equal(log.errors.length, 1);
  assert.equal(log.errors[0].code, "rate_limited");
  assert.equal(log.errors[0].temporary, true);
});

test("errors: forbidden for a subscribed room ends that subscription", async () => {
  const { client, last, log } = fakeClient();
  let ended = null;
  const sub = client.subscribe("r", { onError: (e) => (ended = e) });
  await welcome(last());
  await answerSubscribe(last());
  last().receive({ type: "error", code: "forbidden", message: "grant gone", details: { room: "r" } });
  assert.equal(ended.code, "forbidden");
  assert.equal(sub.closed, true);
  assert.equal(log.errors.length, 1);
  last().receive({ type: "message", room: "r", epoch: "e1", offset: 1, data: 1 });
});

test("signal frames reach the room's onSignal and the signal event", async () => {
  const { client, last } = fakeClient();
  const got = [];
  client.subscribe("call:x", { onSignal: (f) => got.push(["room", f.from]) });
  client.on("signal", (f) => got.push(["event", f.from]));
  await welcome(last());
  last().receive({ type: "signal", room: "call:x", from: "s2", data: {} });
  assert.deepEqual(got, [["room", "s2"], ["event", "s2"]]);
});

test("tokens: auth frame first; expiring → getToken → refresh; guest hubs get ?token=", async () => {
  let n = 0;
  const { client, clock, sockets, last } = fakeClient({ getToken: async () => `t${++n}` });
  await flush();
  last().open();
  const auth = last().frames("auth")[0];
  assert.equal(auth.token, "t1");
  // A hub admitting guests welcomes first, then refuses the auth frame: reconnect with ?token=.
  last().receive({ type: "welcome", session: "g", user: "guest-1", ping_interval: 25, ping_timeout: 10 });
  last().receive({ type: "error", id: auth.id, code: "bad_request", message: "already authenticated" });
  await flush();
  assert.equal(sockets.length, 2);
  assert.equal(new URL(last().url).searchParams.get("token"), "t2");
  await welcome(last());
  assert.equal(last().frames("auth").length, 0);
  last().receive({ type: "expiring", in: 60 });
  await clock.tick(1);
  const refresh = last().last("refresh");
  assert.equal(refresh.token, "t3");
  last().receive({ type: "reply", id: refresh.id, result: {} });
  await flush();
  assert.equal(client.state, "connected");
});

test("tokens: without one the URL says so (?token= empty); with one, no token in the URL", async () => {
  // An empty ?token= lets a hub that needs a token refuse at once (4501) instead of waiting
  // for an auth frame that never comes; a hub admitting guests takes it as no token.
  const { last } = fakeClient();
  const url = new URL(last().url);
  assert.equal(url.searchParams.get("token"), "");
  const withToken = fakeClient({ token: "t1" });
  assert.equal(new URL(withToken.last().url).searchParams.has("token"), false);
  withToken.last().open();
  assert.equal(withToken.last().frames("auth")[0].token, "t1");
});

test("dead connection: no frame for ping_interval + ping_timeout closes with 4002 and retries", async () => {
  const { clock, sockets, last, log } = fakeClient({ backoff: { base: 10, max: 10 } });
  await welcome(last(), { ping_interval: 2, ping_timeout: 1 });
  await clock.tick(2500);
  last().receive({ type: "ping" }); // alive: the deadline moves
  await clock.tick(2900);
  assert.equal(sockets.length, 1);
  await clock.tick(200);
  assert.equal(log.retries[0].code, 4002);
  assert.equal(sockets[0].closedWith, 1000);
  await clock.tick(20);
  assert.equal(sockets.length, 2);
});

test("no welcome within connectTimeout counts as a failed attempt", async () => {
  const { clock, sockets, log } = fakeClient({ connectTimeout: 1000, backoff: { base: 10, max: 10 } });
  await clock.tick(1100);
  assert.equal(log.retries[0].code, 4002);
  await clock.tick(20);
  assert.equal(sockets.length, 2);
});

test("endpoints: relative URLs resolve against the page, also under a path prefix", () => {
  assert.deepEqual(endpoints(undefined, "https://ex.test/hub/events?x=1"), { ws: "wss://ex.test/hub/v1/ws", http: "https://ex.test/hub" });
  assert.deepEqual(endpoints("v1/ws", "http://ex.test/hub/"), { ws: "ws://ex.test/hub/v1/ws", http: "http://ex.test/hub" });
  assert.deepEqual(endpoints("v1/ws", "http://ex.test/"), { ws: "ws://ex.test/v1/ws", http: "http://ex.test" });
  assert.deepEqual(endpoints("/v1/ws", "http://ex.test/hub/"), { ws: "ws://ex.test/v1/ws", http: "http://ex.test" });
  assert.deepEqual(endpoints("https://other.test", "http://ex.test/"), { ws: "wss://other.test/v1/ws", http: "https://other.test" });
  assert.deepEqual(endpoints("ws://h.test:81/p/v1/ws?x=1#f", "http://ex.test/"), { ws: "ws://h.test:81/p/v1/ws?x=1", http: "http://h.test:81/p" });
});

test("the client module loads without a page and connects to the page's hub by default", async () => {
  const { client } = fakeClient({}, null);
  assert.equal(client.url.ws, "ws://127.0.0.1/v1/ws");
  const doc = { baseURI: "https://ex.test/hub/call?room=x" };
  const { client: c2 } = fakeClient({ document: doc }, "v1/ws");
  assert.equal(c2.url.ws, "wss://ex.test/hub/v1/ws");
  assert.equal(c2.url.http, "https://ex.test/hub");
});

test("page life: offline while reconnecting, a retry at once when the network is back", async () => {
  const win = new EventTarget();
  const nav = { onLine: true };
  const { client, sockets, last, log } = fakeClient({ window: win, navigator: nav, backoff: { base: 60000, max: 60000 }, random: () => 0.99 });
  await welcome(last());
  nav.onLine = false;
  last().drop(1006);
  assert.equal(client.state, "offline");
  nav.onLine = true;
  win.dispatchEvent(new Event("online"));
  await flush();
  assert.equal(sockets.length, 2, "no waiting for the backoff timer");
  assert.deepEqual(log.states.slice(-2), ["offline", "reconnecting"]);
  client.close();
  win.dispatchEvent(new Event("online"));
  assert.equal(sockets.length, 2, "close() stops listening");
});
