"""``hubbub bench --loadgen node``: a subscriber worker whose connections live in a Node.js child.

The worker process is started by the orchestrator exactly like the Python one
(:func:`hubbub.bench.load.subscriber_worker`) and speaks the same ``Pipe`` protocol
(``("ready", n, errors, seconds to open them)``, ``go``, ``stop``, ``("done", summary, latencies, deliveries, last_at,
cpu, wall)``). It pins itself, then runs ``node node.mjs`` (which inherits the pinning),
hands it the job as one JSON line on stdin, mirrors the child's running delivery count (``P n``
lines, at most every ~1 ms) into the shared ``progress`` array for the publisher's closed loop,
and converts the child's result: latencies come through a temporary file (int32 µs), not a pipe.
The CPU figure it reports is its own plus the child's (``/proc/<pid>/stat``), so the saturation
check in the report still sees the whole load generator. ``HUBBUB_BENCH_NODE_ARGS`` adds options
to the node command line (profiling: ``--cpu-prof --cpu-prof-dir=DIR``).
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import subprocess
import tempfile
import time
from array import array
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from hubbub.bench.load import WorkerJob, _setup

SCRIPT = Path(__file__).with_name("node.mjs")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def node_path() -> str | None:
    """The ``node`` executable, or None when it is not installed."""
    return shutil.which("node")


def _cpu_s(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class _Child:
    """The node process and the line protocol on its stdout."""

    def __init__(self, job: WorkerJob, lat_path: str) -> None:
        node = node_path()
        if node is None:
            raise RuntimeError("--loadgen node: node is not installed")
        extra = os.environ.get("HUBBUB_BENCH_NODE_ARGS", "").split()  # e.g. --cpu-prof
        self.proc = subprocess.Popen([node, *extra, str(SCRIPT)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE)  # fmt: skip
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.stdin = self.proc.stdin
        self.out = self.proc.stdout.fileno()
        self.pending = b""
        self.latencies = lat_path
        spec = {"assignments": [list(a) for a in job.assignments], "kind": job.kind,
                "dialect": job.dialect, "key": job.key, "connect_parallel": job.connect_parallel,
                "latencies": lat_path}  # fmt: skip
        self.say(json.dumps(spec))

    def say(self, line: str) -> None:
        self.stdin.write(line.encode() + b"\n")
        self.stdin.flush()

    def lines(self) -> list[bytes]:
        """The complete lines available now (call when stdout is readable); EOF raises."""
        data = os.read(self.out, 1 << 16)
        if not data:
            raise RuntimeError(f"node.mjs exited with {self.proc.wait()}")
        self.pending += data
        *done, self.pending = self.pending.split(b"\n")
        return done

    def cpu(self) -> float:
        return _cpu_s(self.proc.pid)


def node_subscriber_worker(job: WorkerJob, progress: Any, conn: Connection) -> None:
    """The ``--loadgen node`` counterpart of :func:`hubbub.bench.load.subscriber_worker`."""
    _setup(job.pin)
    fd, lat_path = tempfile.mkstemp(prefix="hubbub-bench-", suffix=".lat")
    os.close(fd)
    child = None
    try:
        child = _Child(job, lat_path)
        _serve(child, job.index, progress, conn)
    finally:
        if child is not None and child.proc.poll() is None:
            child.proc.kill()
            child.proc.wait()
        os.unlink(lat_path)


def _serve(child: _Child, idx: int, progress: Any, conn: Connection) -> None:
    sel = selectors.DefaultSelector()
    sel.register(child.out, selectors.EVENT_READ, "node")
    sel.register(conn.fileno(), selectors.EVENT_READ, "pipe")
    cpu0 = t0 = cpu = wall = 0.0
    stopping = False
    while True:
        for key, _ in sel.select():
            if key.data == "pipe":
                msg = conn.recv()
                if msg == "go":
                    cpu0, t0 = time.process_time() + child.cpu(), time.monotonic()
                    child.say("go")
                elif msg == "stop" and not stopping:
                    stopping = True
                    cpu = time.process_time() + child.cpu() - cpu0
                    wall = time.monotonic() - t0
                    child.say("stop")
                continue
            for line in child.lines():
                tag, _, rest = line.partition(b" ")
                if tag == b"P":
                    progress[idx] = int(rest)
                elif tag == b"R":
                    n, opened_s, errors = rest.split(b" ", 2)
                    conn.send(("ready", int(n), json.loads(errors), float(opened_s)))
                elif tag == b"D":
                    done = json.loads(rest)
                    progress[idx] = done["deliveries"]
                    lat = array("i")
                    with open(child.latencies, "rb") as f:
                        lat.frombytes(f.read())
                    subs = [tuple(s) for s in done["subs"]]
                    conn.send(("done", subs, array("q", lat).tobytes(), done["deliveries"],
                               int(done["last_at"]), cpu, wall))  # fmt: skip
                    child.proc.wait(10)
                    return
