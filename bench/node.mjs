// Subscriber worker of `hubbub bench --loadgen node`: the same counting as the Python worker
// (bench/load.py `_subscriber_main` with bench/wire.py `Subscriber`), on
// Node's `net` sockets, so that one process parses frames far cheaper than asyncio can.
//
// Protocol with its Python parent (bench/node.py), one line each way:
//   stdin  line 1: the job, JSON {assignments: [[host, port, room], ...], kind: "ws"|"sse",
//                  dialect: "hubbub"|"plain"|"socketio", key, connect_parallel, latencies: path}
//   stdout "R <connected> <errors JSON>"  once every subscription is live (or failed)
//   stdout "P <deliveries>"               running delivery count, at most every ~1 ms, on change
//   stdin  "stop"                         -> latencies (int32 microseconds, host order) written
//                                            to the `latencies` path, then
//   stdout "D <JSON>"                     {subs: [[room, start, uniq, dup, code|null]], deliveries,
//                                            last_at: "ns", latencies: count}; then it exits.
// Times are CLOCK_MONOTONIC nanoseconds (process.hrtime.bigint() on Linux), as the publisher's
// payload `t` (Python's time.monotonic_ns()). Latency = arrival of the data chunk - t.

import net from "node:net";
import crypto from "node:crypto";
import fs from "node:fs";
import readline from "node:readline";

const MSG = Buffer.from('{"type":"message"');
const MSG_AT = Buffer.from('{"type":"message","offset":'); // hubbub/envelope.py's frame start
const DATA = Buffer.from(',"data":');
const T = Buffer.from('{"t":');
const S = Buffer.from(',"s":');
const SIO = Buffer.from('42["m",');
const DATA_LINE = Buffer.from("data: ");
const LFLF = Buffer.from("\n\n");

// ---- exact shortcuts for the frames the bench itself makes (JSON.parse for anything else) ----
// They read the bytes in place: no string per frame. Each returns null when the frame is not
// of the expected shape; the caller then decodes and parses it fully.

/** Whether buf[i...end) starts with the bytes of `what`. */
function hasAt(buf, i, end, what) {
  if (end - i < what.length) return false;
  for (let k = 0; k < what.length; k++) if (buf[i + k] !== what[k]) return false;
  return true;
}

let intEnd = 0; // where the last intAt() stopped

/** The non-negative integer written at buf[i...end) (NaN when none or inexact); sets intEnd. */
function intAt(buf, i, end) {
  let n = 0;
  let j = i;
  for (; j < end; j++) {
    const c = buf[j] - 48;
    if (c < 0 || c > 9) break;
    n = n * 10 + c;
  }
  intEnd = j;
  const c = j < end ? buf[j] : 0;
  // a fraction, an exponent or more than 2**53 would need the full parser
  return j === i || j - i > 15 || c === 46 || c === 101 || c === 69 ? NaN : n;
}

/** [t, s] of a bench payload `{"t":T,"s":S,...` at buf[i...end), or null. */
function payloadAt(buf, i, end) {
  if (!hasAt(buf, i, end, T)) return null;
  const t = intAt(buf, i + T.length, end);
  if (Number.isNaN(t) || !hasAt(buf, intEnd, end, S)) return null;
  const s = intAt(buf, intEnd + S.length, end);
  return Number.isNaN(s) ? null : [t, s];
}

/** [offset, t] of a hubbub `message` frame at buf[i...end), or null. */
function hubbubMessage(buf, i, end) {
  if (!hasAt(buf, i, end, MSG_AT)) return null;
  const offset = intAt(buf, i + MSG_AT.length, end);
  if (Number.isNaN(offset)) return null;
  // Every field before "data" is a number or a string, and no JSON string holds an unescaped
  // `,"data":`: the first one after the offset is the envelope's (data is the last field).
  const d = buf.indexOf(DATA, intEnd);
  if (d < 0 || d >= end) return null;
  const p = payloadAt(buf, d + DATA.length, end);
  return p === null ? null : [offset, p[0]];
}

// ---- the tally shared by all connections ----------------------------------------------------
let deliveries = 0;
let lastAt = 0;
let lat = new Int32Array(1 << 16);
let nlat = 0;
let reported = 0;
let timer = null;

function progress() {
  if (timer !== null || deliveries === reported) return;
  timer = setTimeout(() => {
    timer = null;
    if (deliveries !== reported) {
      reported = deliveries;
      process.stdout.write(`P ${deliveries}\n`);
    }
  }, 1);
}

function maskFrame(opcode, payload) {
  const n = payload.length;
  const headLen = n < 126 ? 2 : n < 65536 ? 4 : 10;
  const out = Buffer.allocUnsafe(headLen + 4 + n);
  out[0] = 0x80 | opcode;
  if (n < 126) out[1] = 0x80 | n;
  else if (n < 65536) {
    out[1] = 0x80 | 126;
    out.writeUInt16BE(n, 2);
  } else {
    out[1] = 0x80 | 127;
    out.writeBigUInt64BE(BigInt(n), 2);
  }
  crypto.randomFillSync(out, headLen, 4);
  for (let i = 0; i < n; i++) out[headLen + 4 + i] = payload[i] ^ out[headLen + (i & 3)];
  return out;
}

// ---- one subscriber ---------------------------------------------------------------------------
class Subscriber {
  constructor(job, host, port, room) {
    this.kind = job.kind;
    this.dialect = job.dialect;
    this.key = job.key;
    this.host = host;
    this.port = port;
    this.room = room;
    this.start = 0;
    this.last = 0;
    this.uniq = 0;
    this.dup = 0;
    this.code = null;
    this.headersDone = false;
    this.buf = null; // unparsed input (Buffer)
    this.chunkLeft = -1; // SSE: bytes left in the current HTTP chunk (-1: read a size line)
    this.sse = null; // SSE: de-chunked bytes not yet split into events
    this.isReady = false;
    this.ready = new Promise((resolve, reject) => {
      this.resolveReady = resolve;
      this.rejectReady = reject;
    });
    this.sock = net.connect({ host, port });
    this.sock.setNoDelay(true);
    this.sock.on("connect", () => this.sock.write(this.request()));
    this.sock.on("data", (d) => this.onData(d));
    this.sock.on("error", () => {});
    this.sock.on("close", () => {
      if (this.code === null) this.code = 1006;
      this.fail("connection lost before ready");
    });
  }

  setReady() {
    if (!this.isReady) {
      this.isReady = true;
      this.resolveReady();
    }
  }

  fail(why) {
    if (!this.isReady) {
      this.isReady = true;
      this.rejectReady(new Error(why));
    }
  }

  request() {
    const auth = this.key ? `Authorization: Bearer ${this.key}\r\n` : "";
    const host = `Host: ${this.host}:${this.port}\r\n`;
    if (this.kind === "sse") {
      return `GET /v1/rooms/${this.room}/events HTTP/1.1\r\n${host}Accept: text/event-stream\r\n${auth}\r\n`;
    }
    const path = {
      hubbub: "/v1/ws",
      plain: `/sub?room=${this.room}`,
      socketio: "/socket.io/?EIO=4&transport=websocket",
    }[this.dialect];
    const wskey = crypto.randomBytes(16).toString("base64");
    return (
      `GET ${path} HTTP/1.1\r\n${host}Upgrade: websocket\r\nConnection: Upgrade\r\n` +
      `Sec-WebSocket-Key: ${wskey}\r\nSec-WebSocket-Version: 13\r\n${auth}\r\n`
    );
  }

  sendText(text) {
    if (!this.sock.destroyed) this.sock.write(maskFrame(0x1, Buffer.from(text)));
  }

  close() {
    this.sock.destroy();
  }

  onData(data) {
    let buf = this.buf === null ? data : Buffer.concat([this.buf, data]);
    this.buf = null;
    if (!this.headersDone) {
      const end = buf.indexOf("\r\n\r\n");
      if (end < 0) {
        this.buf = buf;
        return;
      }
      const status = buf.toString("latin1", 0, end).split("\r\n", 1)[0];
      if (!status.includes(" 101 ") && !status.includes(" 200 ")) {
        this.code = -1;
        this.fail(status);
        this.close();
        return;
      }
      buf = buf.subarray(end + 4);
      this.headersDone = true;
      if (this.kind === "ws" && this.dialect === "plain") this.setReady();
    }
    const before = deliveries;
    if (this.kind === "ws") this.frames(buf);
    else this.chunks(buf);
    if (deliveries !== before) progress();
  }

  frames(buf) {
    const n = buf.length;
    let pos = 0;
    let now = -1;
    while (n - pos >= 2) {
      const b0 = buf[pos];
      let ln = buf[pos + 1] & 0x7f;
      let at = pos + 2;
      if (ln === 126) {
        if (n - at < 2) break;
        ln = buf.readUInt16BE(at);
        at += 2;
      } else if (ln === 127) {
        if (n - at < 8) break;
        ln = Number(buf.readBigUInt64BE(at));
        at += 8;
      }
      if (n - at < ln) break;
      const op = b0 & 0x0f;
      pos = at + ln;
      if (op === 0x1) {
        if (now < 0) now = Number(process.hrtime.bigint());
        this.onFrame(buf, at, pos, now);
      } else if (op === 0x8) {
        this.code = ln >= 2 ? buf.readUInt16BE(at) : 1005;
        this.close();
        return;
      } else if (op === 0x9) {
        this.sock.write(maskFrame(0xa, buf.subarray(at, pos)));
      }
    }
    if (pos < n) this.buf = buf.subarray(pos);
  }

  chunks(buf) {
    // De-chunk the HTTP body (uvicorn streams SSE with chunked encoding), then split events.
    const parts = this.sse === null ? [] : [this.sse];
    let pos = 0;
    const n = buf.length;
    for (;;) {
      const left = this.chunkLeft;
      if (left < 0) {
        const eol = buf.indexOf("\r\n", pos);
        if (eol < 0) break;
        const size = parseInt(buf.toString("latin1", pos, eol).split(";")[0] || "0", 16);
        pos = eol + 2;
        if (size === 0) {
          this.code = 0;
          this.close();
          return;
        }
        this.chunkLeft = size;
      } else if (left === 0) {
        if (n - pos < 2) break;
        pos += 2;
        this.chunkLeft = -1;
      } else {
        if (pos >= n) break;
        const take = Math.min(left, n - pos);
        parts.push(buf.subarray(pos, pos + take));
        pos += take;
        this.chunkLeft = left - take;
      }
    }
    if (pos < n) this.buf = buf.subarray(pos);
    const out = parts.length === 1 ? parts[0] : Buffer.concat(parts);
    const end = out.lastIndexOf(LFLF);
    if (end < 0) {
      this.sse = out.length ? out : null;
      return;
    }
    this.sse = end + 2 < out.length ? out.subarray(end + 2) : null;
    const now = Number(process.hrtime.bigint());
    let start = 0;
    while (start <= end) {
      let e = out.indexOf(LFLF, start);
      if (e < 0 || e > end) e = end;
      this.onSse(out, start, e, now);
      start = e + 2;
    }
  }

  onSse(buf, i, end, now) {
    // Hubbub writes `id:`, `event:`, `data:` in that order, one line each (compact JSON), so
    // the data is the event's last line.
    const at = buf.indexOf(DATA_LINE, i);
    if (at < 0 || at >= end) {
      if (!this.isReady) {
        const ev = buf.toString("utf8", i, end);
        const k = ev.indexOf("id: ");
        if (k >= 0) {
          const ident = ev.slice(k + 4).split("\n", 1)[0];
          const dot = ident.lastIndexOf(".");
          this.start = this.last = parseInt(ident.slice(dot + 1), 10);
          this.setReady();
        }
      }
      return;
    }
    const from = at + DATA_LINE.length;
    if (hasAt(buf, from, end, MSG)) {
      let m = hubbubMessage(buf, from, end);
      if (m === null) {
        const obj = JSON.parse(buf.toString("utf8", from, end));
        m = [obj.offset, obj.data.t];
      }
      this.count(m[0], m[1], now);
    }
  }

  onFrame(buf, at, end, now) {
    // The shortcuts first (the bench's own publications), else the full parse in onText().
    const d = this.dialect;
    const m =
      d === "hubbub"
        ? hubbubMessage(buf, at, end)
        : d === "plain"
          ? payloadAt(buf, at, end)
          : hasAt(buf, at, end, SIO)
            ? payloadAt(buf, at + SIO.length, end)
            : null;
    if (m === null) this.onText(buf.toString("utf8", at, end), now);
    else if (d === "hubbub") this.count(m[0], m[1], now);
    else this.count(m[1], m[0], now);
  }

  onText(text, now) {
    const d = this.dialect;
    if (d === "hubbub") {
      if (text.startsWith('{"type":"message"')) {
        const obj = JSON.parse(text);
        this.count(obj.offset, obj.data.t, now);
        return;
      }
      const obj = JSON.parse(text);
      const kind = obj.type;
      if (kind === "welcome") {
        this.sendText(`{"type":"subscribe","room":"${this.room}","id":1}`);
      } else if (kind === "reply" && obj.id === 1) {
        this.start = this.last = parseInt(obj.result.offset, 10);
        this.setReady();
      } else if (kind === "ping") {
        this.sendText('{"type":"pong"}');
      } else if (kind === "error") {
        this.fail(text);
      }
    } else if (d === "plain") {
      const obj = JSON.parse(text);
      this.count(obj.s, obj.t, now);
    } else if (text.startsWith("42")) {
      const obj = JSON.parse(text.slice(2))[1];
      this.count(obj.s, obj.t, now);
    } else if (text.startsWith("0{")) {
      this.sendText("40");
    } else if (text.startsWith("40")) {
      this.sendText(`421["join","${this.room}"]`);
    } else if (text.startsWith("431")) {
      this.setReady();
    } else if (text === "2") {
      this.sendText("3");
    }
  }

  count(position, sentNs, now) {
    if (position > this.last) {
      this.last = position;
      this.uniq += 1;
    } else {
      this.dup += 1;
    }
    deliveries += 1;
    lastAt = now;
    if (nlat === lat.length) {
      const bigger = new Int32Array(lat.length * 2);
      bigger.set(lat);
      lat = bigger;
    }
    lat[nlat++] = Math.trunc((now - sentNs) / 1000);
  }
}

// ---- the worker ------------------------------------------------------------------------------
function withTimeout(promise, ms) {
  let t;
  const timeout = new Promise((_, reject) => {
    t = setTimeout(() => reject(new Error(`not ready after ${ms / 1000}s`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(t));
}

async function main() {
  const lines = readline.createInterface({ input: process.stdin });
  const it = lines[Symbol.asyncIterator]();
  const job = JSON.parse((await it.next()).value);
  const subs = [];
  const errors = [];
  let next = 0;
  async function lane() {
    while (next < job.assignments.length) {
      const [host, port, room] = job.assignments[next++];
      const s = new Subscriber(job, host, port, room);
      subs.push(s);
      try {
        await withTimeout(s.ready, 60000);
      } catch (e) {
        errors.push(String(e));
      }
    }
  }
  const lanes = [];
  const opening = performance.now();
  for (let i = 0; i < Math.max(1, job.connect_parallel); i++) lanes.push(lane());
  await Promise.all(lanes);
  const openedS = (performance.now() - opening) / 1000; // handshake plus subscribe, every one
  process.stdout.write(`R ${job.assignments.length - errors.length} ${openedS} ${JSON.stringify(errors.slice(0, 3))}\n`);
  for (;;) {
    const r = await it.next();
    if (r.done || r.value.trim() === "stop") break;
  }
  const summary = subs.map((s) => [s.room, s.start, s.uniq, s.dup, s.code]);
  fs.writeFileSync(job.latencies, new Uint8Array(lat.buffer, 0, nlat * 4));
  const done = { subs: summary, deliveries, last_at: String(lastAt), latencies: nlat };
  process.stdout.write(`D ${JSON.stringify(done)}\n`, () => {
    for (const s of subs) s.close();
    process.exit(0);
  });
}

main().catch((e) => {
  process.stderr.write(`bench_node: ${e.stack || e}\n`);
  process.exit(2);
});
