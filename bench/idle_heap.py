"""Where the memory of idle WebSocket (or SSE) connections goes: tracemalloc on a real node.

Starts ``hubbub serve`` (memory:// broker, an API key) with tracemalloc running from the start
(a ``sitecustomize`` on PYTHONPATH that dumps a snapshot on SIGUSR1), takes a snapshot, opens N
WebSocket subscribers like ``hubbub bench`` does (``welcome`` → ``subscribe`` → ``reply``,
answering pings; ``--transport sse``: SSE streams of one room), waits, takes a second snapshot and prints the difference per connection,
grouped by file (and by file:line with ``--lines``), plus the RSS per connection.

    .venv/bin/python bench/idle_heap.py --subscribers 2000 [--lines 30] [--pin] [--jwt]
        [--transport sse]

RSS here includes tracemalloc's own bookkeeping: use ``hubbub bench`` for RSS figures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from hubbub.bench.run import free_port, proc_rss_kib, wait_ready
from hubbub.bench.wire import Subscriber, Tally

SITE = """
import os, signal, tracemalloc
tracemalloc.start(int(os.environ.get("HEAP_FRAMES", "1")))
_n = [0]
def _dump(signum, frame):
    _n[0] += 1
    tracemalloc.take_snapshot().dump(os.environ["HEAP_DIR"] + "/snap%d" % _n[0])
    open(os.environ["HEAP_DIR"] + "/done%d" % _n[0], "w").close()
signal.signal(signal.SIGUSR1, _dump)
"""


def snapshot(pid: int, where: Path, n: int) -> tracemalloc.Snapshot:
    os.kill(pid, signal.SIGUSR1)
    done = where / f"done{n}"
    deadline = time.monotonic() + 120
    while not done.exists():
        if time.monotonic() > deadline:
            raise SystemExit("no snapshot")
        time.sleep(0.1)
    return tracemalloc.Snapshot.load(str(where / f"snap{n}"))


async def connect(
    port: int, key: str, n: int, room: str, jwt_secret: str | None = None, kind: str = "ws"
) -> list[Subscriber]:
    """N subscribers of ``room`` (``kind``: ``ws`` or ``sse``): all with the API key, or each
    its own user's JWT (1 h)."""
    loop = asyncio.get_running_loop()
    tally = Tally()
    subs: list[Subscriber] = []
    for i in range(0, n, 200):
        batch = []
        for j in range(min(200, n - i)):
            cred = key
            if jwt_secret is not None:
                import jwt

                claims = {"sub": f"user-{room}-{i + j}", "exp": int(time.time()) + 3600}
                cred = jwt.encode(claims, jwt_secret, algorithm="HS256")
            sub = Subscriber(kind, "hubbub", "127.0.0.1", port, room, cred, tally)
            await loop.create_connection(lambda s=sub: s, "127.0.0.1", port)  # type: ignore[misc]
            batch.append(sub)
        await asyncio.gather(*(s.ready for s in batch))
        subs.extend(batch)
    return subs


async def run(args: argparse.Namespace) -> None:
    where = Path(tempfile.mkdtemp(prefix="idle-heap-"))
    (where / "sitecustomize.py").write_text(SITE)
    key = secrets.token_urlsafe(16)
    secret = secrets.token_urlsafe(32) if args.jwt else None
    port = free_port()
    env = dict(os.environ, HUB_API_KEYS=key, HUB_API_RATE="0", HUB_LOG_LEVEL="warning",
               HUB_BROKER_URL="memory://", HUB_HOST="127.0.0.1", HEAP_DIR=str(where),
               HEAP_FRAMES=str(args.frames),
               PYTHONPATH=os.pathsep.join([str(where), os.environ.get("PYTHONPATH", "")]))  # fmt: skip
    for name in ("HUB_JWT_SECRET", "HUB_CONFIG", "HUB_WORKERS", "HUB_PORT"):
        env.pop(name, None)
    if secret is not None:
        env["HUB_JWT_SECRET"] = secret
    cmd = [sys.executable, "-m", "hubbub.cli", "serve", "--host", "127.0.0.1",
           "--port", str(port), "--broker", "memory://"]  # fmt: skip
    if args.pin:
        cmd = ["taskset", "-c", "0", *cmd]
        os.sched_setaffinity(0, {1})
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL)  # noqa: ASYNC220
    try:
        await asyncio.to_thread(wait_ready, f"http://127.0.0.1:{port}", proc)
        # first-use allocations (imports, caches)
        subs = await connect(port, key, 20, "warm", secret, args.transport)
        await asyncio.sleep(1)
        for s in subs:
            s.close()
        await asyncio.sleep(1)
        before = await asyncio.to_thread(snapshot, proc.pid, where, 1)
        rss0 = proc_rss_kib(proc.pid)
        subs = await connect(port, key, args.subscribers, "idle", secret, args.transport)
        await asyncio.sleep(args.settle)
        after = await asyncio.to_thread(snapshot, proc.pid, where, 2)
        rss1 = proc_rss_kib(proc.pid)
        n = args.subscribers
        flt = [tracemalloc.Filter(False, tracemalloc.__file__)]
        b, a = before.filter_traces(flt), after.filter_traces(flt)
        total = sum(s.size_diff for s in a.compare_to(b, "filename"))
        print(f"{n} idle connections: heap {total / n / 1024:.2f} KiB/conn (traced), "
              f"RSS {(rss1 - rss0) / n:.2f} KiB/conn (with tracemalloc overhead)")  # fmt: skip
        for st in a.compare_to(b, "filename")[: args.files]:
            name = st.traceback[0].filename
            name = name.split("site-packages/")[-1].replace(str(Path.cwd()) + "/", "")
            print(f"  {st.size_diff / n:8.0f} B  {st.count_diff / n:6.1f} blk  {name}")
        if args.lines:
            print("by line:")
            for st in a.compare_to(b, "lineno")[: args.lines]:
                fr = st.traceback[0]
                name = fr.filename.split("site-packages/")[-1].replace(str(Path.cwd()) + "/", "")
                print(f"  {st.size_diff / n:8.0f} B  {st.count_diff / n:6.2f} blk  "
                      f"{name}:{fr.lineno}")  # fmt: skip
        for s in subs:
            s.close()
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--subscribers", type=int, default=2000)
    p.add_argument("--settle", type=float, default=3.0, help="seconds idle before the snapshot")
    p.add_argument("--files", type=int, default=25)
    p.add_argument("--lines", type=int, default=0)
    p.add_argument("--frames", type=int, default=1)
    p.add_argument("--pin", action="store_true")
    p.add_argument("--jwt", action="store_true", help="one user per connection, 1 h JWTs")
    p.add_argument("--transport", choices=("ws", "sse"), default="ws")
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
