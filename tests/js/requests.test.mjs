// The request queue: pending replies by id, queueing while disconnected, timeouts, resends.
import assert from "node:assert/strict";
import { test } from "node:test";

import { HubbubError } from "../../static/client/errors.js";
import { Requests } from "../../static/client/requests.js";
import { FakeClock, flush } from "./fakes.mjs";
import { answerSubscribe, fakeClient, welcome } from "./helpers.mjs";

test("Requests: queue in order, queue_full past maxQueue", async () => {
  const book = new Requests(new FakeClock(), { timeout: 0, maxQueue: 2 });
  const p1 = book.add({ type: "publish", room: "a" }, { resend: true }, null);
  book.add({ type: "publish", room: "b" }, { resend: true }, null);
  const p3 = book.add({ type: "publish", room: "c" }, { resend: true }, null);
  await assert.rejects(p3, (e) => e instanceof HubbubError && e.code === "queue_full" && e.temporary);
  const q = book.takeQueue();
  assert.deepEqual(q.map((r) => r.frame.room), ["a", "b"]);
  assert.equal(book.queue.length, 0);
  q[0].resolve("done");
  assert.equal(await p1, "done");
});

test("Requests: track gives fresh ids; settle routes replies and errors", async () => {
  const book = new Requests(new FakeClock());
  let got;
  const r1 = { resolve: (v) => (got = v), reject: assert.fail };
  const f1 = book.track({ type: "history", room: "a" }, r1);
  let err;
  const r2 = { resolve: assert.fail, reject: (e) => (err = e) };
  const f2 = book.track({ type: "publish", room: "a" }, r2);
  assert.notEqual(f1.id, f2.id);
  assert.equal(book.settle({ type: "reply", id: f1.id, result: { ok: 1 } }), true);
  assert.deepEqual(got, { ok: 1 });
  assert.equal(book.settle({ type: "error", id: f2.id, code: "rate_limited", message: "slow", temporary: true }), true);
  assert.equal(err.code, "rate_limited");
  assert.equal(err.temporary, true);
  assert.equal(book.settle({ type: "reply", id: f1.id, result: {} }), false, "answered once only");
  assert.equal(book.settle({ type: "error", code: "x" }), false, "no id: not a request's answer");
});

test("Requests: a timeout rejects and forgets the request, pending or queued", async () => {
  const clock = new FakeClock();
  const book = new Requests(clock, { timeout: 1000 });
  const queued = book.add({ type: "publish", room: "a" }, { resend: true }, null);
  let sent;
  const inflight = book.add({ type: "history", room: "a" }, { resend: true }, (r) => (sent = book.track(r.frame, r)));
  const checks = [
    assert.rejects(queued, (e) => e.code === "timeout" && e.temporary === true),
    assert.rejects(inflight, (e) => e.code === "timeout"),
  ];
  await clock.tick(999);
  assert.equal(book.queue.length, 1);
  await clock.tick(1);
  await Promise.all(checks);
  assert.equal(book.queue.length, 0);
  assert.equal(book.pending.size, 0);
  assert.equal(book.settle({ type: "reply", id: sent.id, result: {} }), false);
});

test("Requests: requeueInflight resends in id order before the queue; others reject", async () => {
  const book = new Requests(new FakeClock(), { timeout: 0 });
  const results = [];
  const mk = (name, resend) => {
    const r = { frame: { type: "publish", room: name }, resend, resolve: () => {}, reject: (e) => results.push([name, e.code, e.closeCode]) };
    return r;
  };
  const a = mk("a", true);
  const b = mk("b", false);
  const c = mk("c", true);
  book.track(a.frame, a);
  book.track(b.frame, b);
  book.track(c.frame, c);
  const d = mk("d", true);
  book.hold(d);
  book.requeueInflight(4000);
  assert.deepEqual(book.queue.map((r) => r.frame.room), ["a", "c", "d"]);
  assert.deepEqual(results, [["b", "disconnected", 4000]]);
  book.failAll(new HubbubError("closed", "bye"));
  assert.deepEqual(results.map((x) => x[0]), ["b", "a", "c", "d"]);
});

test("Requests: bad limits are refused with a clear error", () => {
  assert.throws(() => new Requests(new FakeClock(), { timeout: -1 }), /requestTimeout must be a number >= 0/);
  assert.throws(() => new Requests(new FakeClock(), { maxQueue: "many" }), /maxQueue must be a number >= 0/);
});

test("client: publishes made while connecting wait for the resubscribe, then go in order", async () => {
  const { client, last } = fakeClient();
  client.subscribe("room1");
  const p1 = client.publish("room1", "one");
  const p2 = client.publish("room1", "two", { key: "mine" });
  await welcome(last());
  assert.deepEqual(last().sent.map((f) => f.type), ["subscribe"], "nothing before the rooms are back");
  await answerSubscribe(last());
  const pubs = last().frames("publish");
  assert.deepEqual(pubs.map((f) => f.data), ["one", "two"]);
  assert.match(pubs[0].key, /^k[0-9a-f]{24}$/);
  assert.equal(pubs[1].key, "mine");
  for (const [i, f] of pubs.entries()) last().receive({ type: "reply", id: f.id, result: { room: "room1", offset: i + 1, epoch: "e1" } });
  assert.equal((await p1).offset, 1);
  assert.equal((await p2).offset, 2);
});

test("client: a publish in flight is resent with the same key after a reconnect", async () => {
  const { client, clock, sockets, last } = fakeClient({ backoff: { base: 10, max: 10 } });
  await welcome(last());
  const inflight = client.publish("room1", "first");
  await flush();
  const sent = last().last("publish");
  const later = client.publish("room1", "second");
  await flush();
  last().drop(1006);
  const queued = client.publish("room1", "third");
  const ephemeral = client.publish("room1", "typing", { ephemeral: true });
  await clock.tick(20);
  assert.equal(sockets.length, 2);
  await welcome(last());
  const again = last().frames("publish");
  assert.deepEqual(again.map((f) => f.data), ["first", "second", "third", "typing"]);
  assert.equal(again[0].key, sent.key, "same idempotency key");
  assert.equal(again[3].key, undefined, "ephemeral publishes carry no key");
  for (const f of again) last().receive({ type: "reply", id: f.id, result: { room: "room1", offset: 1, epoch: "e1" } });
  await Promise.all([inflight, later, queued, ephemeral]);
});

test("client: a signal in flight when the connection drops rejects with disconnected", async () => {
  const { client, last } = fakeClient();
  await welcome(last());
  const p = client.signal("call:x", "s2", { sdp: "offer" });
  await flush();
  last().drop(1006);
  await assert.rejects(p, (e) => e.code === "disconnected" && e.temporary && e.closeCode === 1006);
});

test("client: close() rejects pending and queued requests; later calls reject at once", async () => {
  const { client, last, log } = fakeClient();
  const queued = client.publish("r", 1);
  await welcome(last());
  const pending = client.history("r");
  client.close();
  await assert.rejects(queued, (e) => e.code === "closed");
  await assert.rejects(pending, (e) => e.code === "closed");
  await assert.rejects(client.presence("r"), (e) => e.code === "closed");
  assert.equal(client.state, "closed");
  assert.equal(log.errors.length, 0, "closing yourself is not an error");
});

test("client: requestTimeout and maxQueue apply to queued requests", async () => {
  const { client, clock } = fakeClient({ requestTimeout: 500, maxQueue: 1 });
  const first = client.publish("r", 1);
  await assert.rejects(client.publish("r", 2), (e) => e.code === "queue_full");
  const check = assert.rejects(first, (e) => e.code === "timeout");
  await clock.tick(500);
  await check;
});

test("connect: bad options are refused with a clear error", () => {
  assert.throws(() => fakeClient({ transport: "carrier-pigeon" }), /transport must be one of/);
  assert.throws(() => fakeClient({ tokenIn: "cookie" }), /tokenIn must be/);
  assert.throws(() => fakeClient({ backoff: { base: -5 } }), /backoff.base must be/);
  assert.throws(() => fakeClient({}, "ftp://hub.test/"), /ws\(s\) or http\(s\)/);
  assert.throws(() => fakeClient({}, "http://[::1"), /not a hub URL/);
});
