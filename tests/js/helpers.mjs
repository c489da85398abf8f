// A client wired to fakes, for the tests.
import { connect } from "../../static/hubbub.js";
import { FakeClock, fakeWebSockets, flush } from "./fakes.mjs";

/** `connect()` against fake sockets and a fake clock; no page (window/document null). */
export function fakeClient(options = {}, url = "ws://hub.test/v1/ws") {
  const clock = new FakeClock();
  const { FakeWebSocket, sockets } = fakeWebSockets();
  const log = { states: [], errors: [], retries: [] };
  const client = connect(url, {
    transport: "websocket", // "auto" would fall back to SSE after 3 sockets that never opened
    WebSocket: FakeWebSocket,
    clock,
    window: null,
    document: null,
    navigator: null,
    fetch: () => Promise.reject(new Error("no fetch in this test")),
    onState: (s) => log.states.push(s),
    onError: (e) => log.errors.push(e),
    ...options,
  });
  client.on("retry", (r) => log.retries.push(r));
  const last = () => sockets[sockets.length - 1];
  return { client, clock, sockets, last, log };
}

/** Open the newest socket and welcome it. */
export async function welcome(ws, extra = {}) {
  ws.open();
  ws.receive({ type: "welcome", session: `s${Math.random()}`, user: "u", ping_interval: 25, ping_timeout: 10, version: "1", ...extra });
  await flush();
}

/** Answer the newest unanswered `subscribe` frame on `ws` with `result`. */
export async function answerSubscribe(ws, result = {}) {
  const f = ws.last("subscribe");
  ws.receive({ type: "reply", id: f.id, result: { room: f.room, epoch: "e1", offset: 0, recovered: false, ...result } });
  await flush();
  return f;
}

export { flush };
