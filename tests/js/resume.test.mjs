// Resume cursors: `since` on every resubscribe, dedupe at the seam, gaps.
import assert from "node:assert/strict";
import { test } from "node:test";

import { Subscription } from "../../static/client/subscription.js";
import { answerSubscribe, fakeClient, welcome } from "./helpers.mjs";

function recorder() {
  const got = { msgs: [], gaps: [] };
  return {
    got,
    opts: { onMessage: (m) => got.msgs.push([m.epoch, m.offset]), onGap: (g) => got.gaps.push(g) },
  };
}

const msg = (offset, epoch = "e1", room = "r") => ({ type: "message", room, epoch, offset, data: offset, ts: 1 });

test("resubscribe after 4000 sends since = the last position, then the hub's cursor", async () => {
  const { client, clock, last, log } = fakeClient({ backoff: { base: 10, max: 10 } });
  const { got, opts } = recorder();
  const sub = client.subscribe("r", { ...opts, history: 20 });
  await welcome(last());
  const first = await answerSubscribe(last(), { offset: 0, cursor: "c0" });
  assert.equal(first.since, undefined);
  assert.equal(first.history, 20);
  assert.equal(sub.since, "c0", "the cursor names exactly the current position");
  last().receive(msg(1));
  last().receive(msg(2));
  assert.deepEqual(sub.position, { epoch: "e1", offset: 2 });
  assert.deepEqual(sub.since, { epoch: "e1", offset: 2 }, "the cursor is stale: the position");

  last().drop(4000, "draining");
  await clock.tick(20);
  await welcome(last());
  const again = last().last("subscribe");
  assert.deepEqual(again.since, { epoch: "e1", offset: 2 });
  assert.equal(again.history, undefined, "since wins over history");
  // The replay overlaps what was seen: dropped; the rest is delivered once.
  last().receive(msg(2));
  last().receive(msg(3));
  await answerSubscribe(last(), { offset: 3, cursor: "c3", recovered: true });
  assert.equal(sub.since, "c3");
  assert.deepEqual(got.msgs, [["e1", 1], ["e1", 2], ["e1", 3]]);
  assert.equal(log.states.at(-1), "connected");

  last().drop(1006);
  await clock.tick(20);
  await welcome(last());
  assert.equal(last().last("subscribe").since, "c3");
});

test("a gap moves the position (also to a new epoch); a hole is reported as synthetic", () => {
  const { got, opts } = recorder();
  const sub = new Subscription(null, "r", opts);
  sub._message(msg(1));
  sub._message(msg(4));
  assert.deepEqual(got.gaps, [{ room: "r", epoch: "e1", from: 2, to: 3, synthetic: true }]);
  sub._gap({ room: "r", epoch: "e1", from: 1, to: 2 });
  assert.equal(got.gaps.length, 1, "a gap behind the position changes nothing");
  sub._gap({ room: "r", epoch: "e2", from: 1, to: 7 });
  assert.deepEqual(sub.position, { epoch: "e2", offset: 7 });
  sub._message(msg(7, "e2"));
  sub._message(msg(8, "e2"));
  assert.deepEqual(got.msgs, [["e1", 1], ["e1", 4], ["e2", 8]]);
});

test("since given to subscribe is used on the first subscribe", async () => {
  const { client, last } = fakeClient();
  const a = client.subscribe("a", { since: { epoch: "e9", offset: 41 } });
  client.subscribe("b", { since: "cursor-b", history: 5 });
  assert.deepEqual(a.position, { epoch: "e9", offset: 41 });
  await welcome(last());
  const frames = last().frames("subscribe");
  assert.deepEqual(frames.map((f) => [f.room, f.since, f.history]), [
    ["a", { epoch: "e9", offset: 41 }, undefined],
    ["b", "cursor-b", undefined],
  ]);
});

test("ephemeral messages have no position and are always delivered", () => {
  const { got, opts } = recorder();
  const sub = new Subscription(null, "r", opts);
  sub._message(msg(3));
  assert.equal(sub._message({ type: "message", room: "r", data: "typing" }), true);
  assert.equal(sub._message(msg(3)), false);
  assert.deepEqual(sub.position, { epoch: "e1", offset: 3 });
  assert.equal(got.msgs.length, 2);
});

test("a temporary subscribe refusal is retried on the same connection", async () => {
  const { client, clock, last } = fakeClient({ random: () => 0.5, backoff: { base: 100, max: 1000 } });
  const sub = client.subscribe("r");
  await welcome(last());
  const f = last().last("subscribe");
  last().receive({ type: "error", id: f.id, code: "unavailable", message: "broker down", temporary: true });
  await clock.tick(49);
  assert.equal(last().frames("subscribe").length, 1);
  await clock.tick(2);
  assert.equal(last().frames("subscribe").length, 2);
  await answerSubscribe(last(), { offset: 5 });
  assert.deepEqual(await sub.ready, { room: "r", epoch: "e1", offset: 5, recovered: false });
  assert.equal(client.state, "connected");
});

test("a final subscribe refusal ends the subscription", async () => {
  const { client, last, log } = fakeClient();
  let onError = null;
  const sub = client.subscribe("secret", { onError: (e) => (onError = e) });
  await welcome(last());
  const f = last().last("subscribe");
  last().receive({ type: "error", id: f.id, code: "forbidden", message: "no grant" });
  await assert.rejects(sub.ready, (e) => e.code === "forbidden");
  assert.equal(onError.code, "forbidden");
  assert.equal(log.errors[0].code, "forbidden");
  assert.equal(sub.closed, true);
  client.subscribe("secret"); // the room is free again
});
