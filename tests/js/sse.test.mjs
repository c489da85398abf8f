// SSE: the stream parser, the client's SSE transport (fetch), and the events page's
// EventSource handling.
import assert from "node:assert/strict";
import { test } from "node:test";

import { EventStream, HUB_EVENTS, splitNames, streamUrl } from "../../static/client/eventsource.js";
import { SseParser } from "../../static/client/sse.js";
import { fakeEventSources, flush, jsonResponse, sseResponse } from "./fakes.mjs";
import { fakeClient } from "./helpers.mjs";

function parse(chunks) {
  const out = [];
  const p = new SseParser((ev) => out.push(ev));
  for (const c of chunks) p.feed(c);
  return { out, p };
}

test("SseParser: fields, multi-line data, comments, ids, line endings split across pieces", () => {
  const { out, p } = parse([
    "retry: 1000\nid: c0\n\n", // no data: not dispatched, but the id counts
    ": a comment\nevent: chat\ndata: {\"a\":\n",
    "data: 1}\nid: c1\n\n",
    "data: plain\r",
    "\n\r\n", // CRLF split between pieces: one line end, then the blank line
    "event: hub.gap\rdata: x\r\r",
    "id: c2\ndata: late", // incomplete: nothing yet
  ]);
  assert.deepEqual(out, [
    { event: "chat", data: '{"a":\n1}', id: "c1" },
    { event: "message", data: "plain", id: "c1" },
    { event: "hub.gap", data: "x", id: "c1" },
  ]);
  assert.equal(p.lastId, "c1", "an id counts once its block is complete");
  p.feed("\n\n");
  assert.equal(p.lastId, "c2");
  assert.equal(out.at(-1).data, "late");
});

/** A client on transport "sse" whose fetch() answers from `routes` (path → response). */
function sseClient(options = {}) {
  const calls = [];
  const streams = [];
  const answers = [];
  const fetch = async (url, init = {}) => {
    const u = new URL(url);
    calls.push({ path: u.pathname, query: u.searchParams, init });
    if (u.pathname.endsWith("/v1/events")) {
      const s = sseResponse();
      streams.push(s);
      return s;
    }
    const a = answers.shift();
    if (!a) throw new TypeError("network down");
    return a;
  };
  const made = fakeClient({ transport: "sse", fetch, token: "jwt", ...options }, "https://ex.test/hub/v1/ws");
  return { ...made, calls, streams, answers };
}

test("SSE transport: prefix-relative URLs, events to the room, since on the next stream", async () => {
  const { client, clock, calls, streams, log } = sseClient({ backoff: { base: 10, max: 10 } });
  const got = { msgs: [], gaps: [], joins: [] };
  const sub = client.subscribe("lobby", {
    presence: true,
    onMessage: (m) => got.msgs.push(m.offset),
    onGap: (g) => got.gaps.push([g.from, g.to]),
    onJoin: (m) => got.joins.push(m.session),
  });
  await flush();
  const first = calls.find((c) => c.path === "/hub/v1/events");
  assert.ok(first, JSON.stringify(calls.map((c) => c.path)));
  assert.deepEqual(first.query.getAll("room"), ["lobby"]);
  assert.equal(first.query.get("presence"), "1");
  assert.equal(first.init.headers.Authorization, "Bearer jwt");
  const s = streams[0];
  s.push("retry: 1000\nid: c0\n\n");
  await flush();
  assert.equal(client.state, "connected");
  assert.equal(client.transport, "sse");
  assert.deepEqual(await sub.ready, { room: "lobby", transport: "sse" });
  const m = (o) => JSON.stringify({ type: "message", room: "lobby", epoch: "e1", offset: o, data: o });
  s.push(`id: c1\ndata: ${m(1)}\n\nevent: chat\nid: c2\ndata: ${m(2)}\n\n`);
  s.push(`event: hub.join\ndata: ${JSON.stringify({ room: "lobby", session: "s9", user: "u" })}\n\n`);
  s.push(`event: hub.gap\nid: c5\ndata: ${JSON.stringify({ room: "lobby", epoch: "e1", from: 3, to: 5 })}\n\n`);
  s.push(`id: c5\ndata: ${m(2)}\n\n`); // a repeat: dropped
  s.push("data: not json\n\n");
  await flush();
  assert.deepEqual(got, { msgs: [1, 2], gaps: [[3, 5]], joins: ["s9"] });
  s.end(); // the stream ends without a reason: reconnect, resuming after the last id
  await flush();
  assert.equal(log.retries[0].code, 1006);
  await clock.tick(20);
  const again = calls.filter((c) => c.path === "/hub/v1/events");
  assert.equal(again.length, 2);
  assert.equal(again[1].query.get("since"), "c5");
});

test("SSE transport: publish over HTTP with the key; hub.expired reconnects; 4509 is final", async () => {
  const { client, clock, calls, streams, answers, log } = sseClient({ backoff: { base: 10, max: 10 } });
  client.subscribe("lobby");
  await flush();
  streams[0].push(": hello\n\n");
  await flush();
  answers.push(jsonResponse(201, { room: "lobby", offset: 7, epoch: "e1", cursor: "c7" }));
  const r = await client.publish("lobby", { text: "hi" }, { key: "k1" });
  assert.equal(r.offset, 7);
  const post = calls.find((c) => c.init.method === "POST");
  assert.equal(post.path, "/hub/v1/rooms/lobby/messages");
  assert.equal(post.init.headers["Idempotency-Key"], "k1");
  assert.deepEqual(JSON.parse(post.init.body), { data: { text: "hi" } });
  answers.push(jsonResponse(403, { error: { code: "forbidden", message: "no grant", details: {} } }));
  await assert.rejects(client.publish("lobby", 1), (e) => e.code === "forbidden" && !e.temporary);
  await assert.rejects(client.signal("lobby", "s2", {}), (e) => e.code === "bad_request");

  streams[0].push("event: hub.expired\ndata: {}\n\n");
  await flush();
  assert.equal(log.retries.at(-1).code, 4004);
  await clock.tick(20);
  assert.equal(streams.length, 2);
  streams[1].push(": hi\n\n");
  await flush();
  streams[1].push('event: hub.disconnect\ndata: {"code": 4509, "reason": "kicked"}\n\n');
  streams[1].end();
  await flush();
  assert.equal(client.state, "closed");
  assert.equal(log.errors.at(-1).closeCode, 4509);
  assert.equal(log.errors.at(-1).message, "kicked");
});

test("SSE transport: 401 before the stream is terminal (unauthorized)", async () => {
  const fetch = async () => jsonResponse(401, { error: { code: "unauthorized", message: "no" } });
  const { client, log } = fakeClient({ transport: "sse", fetch });
  client.subscribe("a");
  await flush();
  await flush();
  assert.equal(client.state, "closed");
  assert.equal(log.errors[0].code, "unauthorized");
});

test("streamUrl: relative to the page; rooms, presence, since, token", () => {
  assert.equal(streamUrl({ rooms: ["a", "b"] }), "v1/events?room=a&room=b");
  const u = new URL(streamUrl({ rooms: ["a"], presence: true, since: "c1", token: "t t" }), "https://ex.test/hub/events");
  assert.equal(u.pathname, "/hub/v1/events");
  assert.deepEqual([...u.searchParams], [["room", "a"], ["presence", "1"], ["since", "c1"], ["token", "t t"]]);
  assert.throws(() => streamUrl({ rooms: [] }), /at least one room/);
  assert.deepEqual(splitNames(" a, ,b ,"), ["a", "b"]);
});

function watch(options = {}) {
  const { FakeEventSource, sources } = fakeEventSources();
  const log = { states: [], events: [], resume: [] };
  const stream = new EventStream({
    url: "v1/events?room=a",
    EventSource: FakeEventSource,
    onState: (s, d) => log.states.push(d ? `${s}: ${d}` : s),
    onEvent: (name, e) => log.events.push([name, e.id, e.data]),
    onResume: (id) => log.resume.push(id),
    ...options,
  });
  stream.open();
  return { stream, es: () => sources.at(-1), sources, log };
}

test("EventStream: listens to message, hub.* and custom names; ids only when they move", () => {
  const { stream, es, log } = watch({ names: ["chat", "message"] });
  assert.deepEqual([...es().listeners.keys()], ["message", ...HUB_EVENTS, "chat"]);
  es().open();
  es().emit("message", { n: 1 }, "c1");
  es().emit("chat", { n: 2 }, "c2");
  es().emit("hub.join", { session: "s" }); // no id of its own
  assert.deepEqual(log.events.map(([n, id]) => [n, id]), [["message", "c1"], ["chat", "c2"], ["hub.join", ""]]);
  assert.equal(stream.lastId, "c2");
  assert.deepEqual(log.states, ["connecting", "open"]);
});

test("EventStream: the browser's retry is 'reconnecting'; a refusal is final", () => {
  const { es, log } = watch();
  es().fail(0); // CONNECTING: EventSource retries by itself
  es().fail(2); // CLOSED: a non-200 answer
  assert.deepEqual(log.states, ["connecting", "reconnecting", "closed: refused (check token and rooms)"]);
  assert.equal(es().readyState, 2);
});

test("EventStream: hub.expired and a final hub.disconnect close and offer the resume id", () => {
  const a = watch({ since: "c0" });
  a.es().emit("message", { n: 1 }, "c4");
  a.es().emit("hub.expired", {});
  assert.equal(a.log.states.at(-1), "closed: token expired: paste a fresh token and connect");
  assert.deepEqual(a.log.resume, ["c4"]);
  a.es().emit("message", { n: 2 }, "c5"); // after close: ignored
  assert.equal(a.log.events.length, 2);

  const b = watch();
  b.es().emit("hub.disconnect", { reason: "draining", reconnect: true });
  b.es().emit("hub.disconnect", "not json");
  assert.equal(b.log.resume.length, 0, "a disconnect the browser may retry keeps the stream");
  b.es().emit("hub.disconnect", { reason: "kicked", reconnect: false });
  assert.equal(b.log.states.at(-1), "closed: kicked");
  assert.deepEqual(b.log.resume, [""]);
});

test("EventStream: a new open() closes the old source; its events are ignored", () => {
  const { stream, sources, log } = watch();
  const old = sources[0];
  stream.open();
  assert.equal(old.readyState, 2);
  old.emit("message", { n: 1 }, "x");
  assert.equal(log.events.length, 0);
});
