// The reconnect policy: full-jitter bounds, the attempt counter, terminal close codes.
import assert from "node:assert/strict";
import { test } from "node:test";

import { backoffOptions, jitterDelay, ReconnectPolicy } from "../../static/client/reconnect.js";
import { flush } from "./fakes.mjs";
import { fakeClient, welcome } from "./helpers.mjs";

test("jitterDelay: uniform in [0, min(max, base * 2^attempt))", () => {
  const opts = { base: 100, max: 5000 };
  for (let attempt = 0; attempt < 12; attempt++) {
    const ceiling = Math.min(5000, 100 * 2 ** attempt);
    assert.equal(jitterDelay(opts, attempt, () => 0), 0);
    assert.equal(jitterDelay(opts, attempt, () => 0.5), ceiling / 2);
    for (let i = 0; i < 200; i++) {
      const d = jitterDelay(opts, attempt);
      assert.ok(d >= 0 && d < ceiling, `attempt ${attempt}: ${d} not in [0, ${ceiling})`);
    }
  }
  assert.equal(jitterDelay(opts, 10_000, () => 0.999999), 5000 * 0.999999, "huge attempts stay at max");
  assert.equal(jitterDelay(opts, -3, () => 0.5), 50, "a negative attempt counts as 0");
});

test("ReconnectPolicy: counts attempts, caps at max, starts over after a stable connection", () => {
  const p = new ReconnectPolicy({ base: 500, max: 30000 }, { random: () => 0.999 });
  const ceilings = [];
  for (let i = 0; i < 8; i++) ceilings.push(Math.round(p.next() / 0.999));
  assert.deepEqual(ceilings, [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000]);
  assert.equal(p.attempt, 8);
  p.lost(4999);
  assert.equal(p.attempt, 8, "a connection that lived under 5 s keeps the count");
  p.lost(5001);
  assert.equal(p.attempt, 0, "one that lived longer starts over");
  assert.equal(Math.round(p.next() / 0.999), 500);
  assert.equal(p.delayFor(3), 4000 * 0.999, "delayFor does not count");
  assert.equal(p.attempt, 1);
});

test("backoffOptions: defaults, overrides and refusals", () => {
  assert.deepEqual(backoffOptions(), { base: 500, max: 30000 });
  assert.deepEqual(backoffOptions({ base: 50 }), { base: 50, max: 30000 });
  assert.throws(() => backoffOptions({ max: Infinity }), /backoff.max/);
  assert.throws(() => backoffOptions({ base: "1s" }), /backoff.base/);
});

test("client: reconnect delays after 4000 grow and stay within the jitter bounds", async () => {
  const { clock, sockets, last, log } = fakeClient({ backoff: { base: 100, max: 1600 } });
  for (let i = 0; i < 7; i++) {
    last().drop(i === 0 ? 4000 : 1006);
    await flush();
    const r = log.retries[i];
    assert.equal(r.attempt, i + 1);
    assert.ok(r.delay >= 0 && r.delay < Math.min(1600, 100 * 2 ** i), `retry ${i}: ${r.delay}`);
    await clock.tick(r.delay + 1);
    assert.equal(sockets.length, i + 2, "one new socket per retry");
  }
  assert.equal(log.retries[0].code, 4000);
  assert.ok(log.states.includes("reconnecting"));
});

test("client: the count starts over after a connection that lived more than 5 s", async () => {
  const { clock, last, log } = fakeClient({ backoff: { base: 100, max: 100000 }, random: () => 0.5 });
  for (let i = 0; i < 3; i++) {
    last().drop(1006);
    await clock.tick(log.retries[i].delay + 1);
  }
  assert.equal(log.retries.at(-1).attempt, 3);
  await welcome(last());
  await clock.tick(6000);
  last().drop(1006);
  assert.equal(log.retries.at(-1).attempt, 1);
  assert.equal(log.retries.at(-1).delay, 50);
});

test("client: 4501 is terminal: closed, onError, no new attempt", async () => {
  const { client, clock, sockets, last, log } = fakeClient();
  await welcome(last());
  last().receive({ type: "disconnect", code: 4501, reason: "token refused" });
  last().drop(4501, "");
  await clock.tick(120_000);
  assert.equal(sockets.length, 1);
  assert.equal(client.state, "closed");
  assert.equal(log.errors.length, 1);
  assert.equal(log.errors[0].code, "unauthorized");
  assert.equal(log.errors[0].closeCode, 4501);
  assert.equal(log.errors[0].message, "token refused");
  client.reconnect();
  assert.equal(sockets.length, 2, "reconnect() is the way back");
});

test("client: 4004 (token expired) retries at the shortest delay with a fresh token", async () => {
  let n = 0;
  const { clock, sockets, last, log } = fakeClient({ getToken: async () => `tok-${++n}`, backoff: { base: 100, max: 10000 }, random: () => 0.5 });
  await flush();
  for (let i = 0; i < 4; i++) {
    last().drop(1006);
    await clock.tick(log.retries.at(-1).delay + 1);
  }
  await welcome(last());
  last().drop(4004, "token expired");
  assert.equal(log.retries.at(-1).attempt, 1);
  await clock.tick(51);
  assert.equal(sockets.length, 6);
  last().open();
  assert.equal(last().frames("auth")[0].token, "tok-6");
});
