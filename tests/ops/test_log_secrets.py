"""Secrets stay out of the logs and no value can forge a log line (hardening case 55).

``hubbub serve`` subprocesses at debug level, in text and JSON format:

* a Redis URL's password never appears, whether Redis answers or refuses the password;
* ``?%74oken=`` (a percent-encoded ``token``) and other spellings of the credential
  parameters are redacted in the access lines of ``hubbub.access`` like ``?token=``;
* a ``sub`` carrying CR/LF is escaped in text logs (every line still starts with a
  timestamp), and JSON lines stay one object each. (HTTP/1.1 parsers refuse CR/LF in header
  values; the origin refused at a handshake is logged escaped by the transports already.)
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
from pathlib import Path

import httpx
import pytest

from tests.conftest import RedisProc, token
from tests.ops.harness import NodeProc
from tests.wsclient import WS

pytestmark = pytest.mark.timeout(90)

REDIS_PASSWORD = "Redis-Pass-7f3a9c1e5b"
WRONG_PASSWORD = "Wrong-Pass-2b8d4f6a0c"
FORGED = "2026-01-01 00:00:00,000 CRITICAL hubbub.forged: FORGED"
TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ +[\w.]+: ")


@pytest.fixture
def redis_with_password() -> object:
    r = RedisProc(extra=("--requirepass", REDIS_PASSWORD)).start()
    try:
        yield r
    finally:
        r.stop()


def broker(r: RedisProc, password: str) -> str:
    return f"redis://:{password}@127.0.0.1:{r.port}/0"


async def stop(node: NodeProc) -> str:
    node.signal(signal.SIGTERM)
    assert await node.wait_exit(15) == 0
    return node.logs()


def check_lines(logs: str, fmt: str) -> None:
    lines = [ln for ln in logs.splitlines() if ln.strip()]
    assert lines
    for ln in lines:
        if fmt == "json":
            obj = json.loads(ln)  # one object per line
            assert "FORGED" not in obj["logger"]
        else:
            assert TEXT_LINE.match(ln) or ln.startswith((" ", "Traceback")), repr(ln)
            assert not ln.startswith(FORGED[:10] + " 00:00"), ln


@pytest.mark.parametrize("fmt", ["text", "json"])
async def test_logs_keep_secrets_and_lines(
    tmp_path: Path, fmt: str, redis_with_password: RedisProc
) -> None:
    env = {"HUB_LOG_FORMAT": fmt, "HUB_LOG_LEVEL": "debug"}
    node = NodeProc(tmp_path, broker(redis_with_password, REDIS_PASSWORD), env).start()
    jwt_q, jwt_a = token("q"), token("a")
    sneaky = token(f"mallory\r\n{FORGED}\n")
    try:
        await node.wait_live()
        async with httpx.AsyncClient(base_url=node.url, timeout=5) as h:
            for query in (f"%74oken={jwt_q}", f"TOKEN={jwt_q}", f"x=1&%61ccess_token={jwt_q}",
                          f"%6Bey={jwt_q}", f"to%6ben={jwt_q}"):  # fmt: skip
                r = await h.get(f"/v1/rooms/r/messages?{query}")
                assert r.status_code in (200, 401), r.text
            async with h.stream("GET", f"/v1/rooms/r/events?%74oken={jwt_a}") as resp:
                assert resp.status_code == 200
        ws = await WS.connect(node.ws_url.replace("?", "") + f"?%74oken={jwt_a}", None)
        await ws.close()
        forged = await WS.connect(node.ws_url, sneaky)  # "session opened: user <sub>" line
        await forged.result({"type": "subscribe", "room": "r"})
        await forged.close()
        await asyncio.sleep(0.2)
    finally:
        logs = await stop(node)
    assert "/v1/ws" in logs and "[redacted]" in logs, logs
    for secret in (REDIS_PASSWORD, jwt_q, jwt_a, sneaky):
        assert secret not in logs, f"{secret[:12]}… leaked into the {fmt} logs:\n{logs}"
    assert "mallory" in logs  # the sub was logged, escaped
    check_lines(logs, fmt)


@pytest.mark.parametrize("fmt", ["text", "json"])
async def test_refused_redis_password_is_not_logged(
    tmp_path: Path, fmt: str, redis_with_password: RedisProc
) -> None:
    env = {"HUB_LOG_FORMAT": fmt, "HUB_LOG_LEVEL": "debug"}
    node = NodeProc(tmp_path, broker(redis_with_password, WRONG_PASSWORD), env).start()
    try:
        for _ in range(100):  # the node starts, and says Redis is not reachable yet
            if "not reachable" in node.logs():
                break
            await asyncio.sleep(0.05)
        async with httpx.AsyncClient(base_url=node.url, timeout=5) as h:
            assert (await h.get("/health/ready")).status_code == 503
        await asyncio.sleep(0.5)
    finally:
        logs = await stop(node)
    assert "not reachable" in logs and f"127.0.0.1:{redis_with_password.port}" in logs, logs
    assert WRONG_PASSWORD not in logs, logs
    check_lines(logs, fmt)
