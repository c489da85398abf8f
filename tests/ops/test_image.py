"""The container image for real: deploy/build-image.sh builds it with podman on a Debian base made
with mmdebstrap, then the tests run it with the port published on 127.0.0.1 and credentials
configured (not dev mode): /health/ready answers, the HEALTHCHECK passes, an HTTP publish reaches
an SSE subscriber, the node runs unprivileged, and SIGTERM drains it to exit code 0.

Building needs root (or rootless podman with subordinate ids), network access to the Debian
archive and PyPI on a cold cache, and about a minute; warm rebuilds take seconds. In CI a missing
podman or mmdebstrap fails the run (``make system-deps`` installs them).
"""

from __future__ import annotations

import json
import os
import resource
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port, need_tool

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "localhost/hubbub:test"
pytestmark = pytest.mark.timeout(600)


def podman() -> list[str]:
    """podman with runc when it is installed: crun 1.8 (Debian 12) refuses hosts that mix cgroup
    v1 controllers with a cgroup v2 mount."""
    exe = need_tool("podman")
    runc = shutil.which("runc") or shutil.which("runc", path="/usr/sbin:/sbin")
    return [exe, "--runtime", runc] if runc else [exe]


def caller_limits() -> list[str]:
    """The caller's own hard limits for the container: podman's defaults for root (nofile and
    nproc far above them) fail where the caller lacks CAP_SYS_RESOURCE."""
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nproc = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    cap = 1 << 20
    nofile = cap if nofile == resource.RLIM_INFINITY else min(nofile, cap)
    nproc = pid_max if nproc == resource.RLIM_INFINITY else min(nproc, pid_max)
    return ["--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", f"nproc={nproc}:{nproc}"]


def run(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def image() -> str:
    need_tool("mmdebstrap")
    podman()
    started = time.monotonic()
    env = {**os.environ, "IMAGE": IMAGE}
    build = subprocess.run([str(ROOT / "deploy" / "build-image.sh")], env=env,
                           capture_output=True, text=True, timeout=540)  # fmt: skip
    assert build.returncode == 0, (build.stdout + build.stderr)[-4000:]
    print(f"image built in {time.monotonic() - started:.1f} s")
    return IMAGE


@dataclass
class Container:
    name: str
    url: str
    api_key: str


@pytest.fixture(scope="module")
def node(image: str) -> Iterator[Container]:
    name = f"hubbub-test-{secrets.token_hex(4)}"
    port = free_port()
    api_key = secrets.token_urlsafe(24)
    r = run(*podman(), "run", "--detach", "--name", name, *caller_limits(),
            "--publish", f"127.0.0.1:{port}:8000",
            "--env", "HUB_HOST=0.0.0.0",
            "--env", f"HUB_JWT_SECRET={secrets.token_hex(32)}",
            "--env", f"HUB_API_KEYS={api_key}",
            image)  # fmt: skip
    assert r.returncode == 0, r.stderr
    try:
        container = Container(name, f"http://127.0.0.1:{port}", api_key)
        wait_ready(container)
        yield container
    finally:
        run(*podman(), "rm", "--force", "--time", "0", name)


def wait_ready(c: Container, deadline: float = 30.0) -> None:
    end = time.monotonic() + deadline
    last = ""
    while time.monotonic() < end:
        try:
            r = httpx.get(f"{c.url}/health/ready", timeout=2)
            if r.status_code == 200:
                return
            last = f"{r.status_code} {r.text}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.2)
    logs = run(*podman(), "logs", c.name)
    pytest.fail(f"not ready after {deadline} s ({last}); logs:\n{logs.stdout}{logs.stderr}")


def test_image_config(image: str) -> None:
    r = run(*podman(), "image", "inspect", image)
    assert r.returncode == 0, r.stderr
    (info,) = json.loads(r.stdout)
    config = info["Config"]
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["hubbub", "serve"]
    assert config["StopSignal"] == "SIGTERM"
    assert "8000/tcp" in config["ExposedPorts"]
    # podman lists the docker-format HEALTHCHECK beside Config; docker inside it.
    health = info.get("Healthcheck") or config.get("Healthcheck")
    assert health and "/health/ready" in " ".join(health["Test"]), info


def test_ready_and_http_publish_reaches_an_sse_subscriber(node: Container) -> None:
    r = httpx.get(f"{node.url}/health/ready", timeout=5)
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    tok = run(*podman(), "exec", node.name, "hubbub", "token", "--sub", "alice",
              "--subscribe", "chat:*")  # fmt: skip
    assert tok.returncode == 0, tok.stderr
    token = tok.stdout.strip()
    events = f"{node.url}/v1/rooms/chat:lobby/events?since=0"
    auth = {"Authorization": f"Bearer {token}"}
    with httpx.Client(timeout=10) as client, client.stream("GET", events, headers=auth) as stream:
        assert stream.status_code == 200, stream.read()
        assert stream.headers["content-type"].startswith("text/event-stream")
        lines = stream.iter_lines()
        for line in lines:  # the stream is open once its first id (the position) arrives
            if line.startswith("id:"):
                break
        pub = client.post(f"{node.url}/v1/rooms/chat:lobby/messages",
                          headers={"Authorization": f"Bearer {node.api_key}"},
                          json={"data": {"text": "hello from the image"}})  # fmt: skip
        assert pub.status_code == 201, pub.text
        offset = pub.json()["offset"]
        for line in lines:
            if line.startswith("data:"):
                msg = json.loads(line[5:])
                assert msg["type"] == "message" and msg["room"] == "chat:lobby"
                assert msg["offset"] == offset
                assert msg["data"] == {"text": "hello from the image"}
                break
        else:
            pytest.fail("the SSE stream ended before the message")


def test_publish_needs_the_api_key(node: Container) -> None:
    r = httpx.post(f"{node.url}/v1/rooms/chat:lobby/messages", json={"data": 1}, timeout=5)
    assert r.status_code == 401, r.text


def test_healthcheck_passes(node: Container) -> None:
    # podman schedules HEALTHCHECK with systemd timers; run it directly (works without systemd).
    r = run(*podman(), "healthcheck", "run", node.name)
    assert r.returncode == 0, r.stdout + r.stderr
    status = run(*podman(), "inspect", "--format", "{{.State.Health.Status}}", node.name)
    assert status.stdout.strip() == "healthy"


def test_runs_unprivileged_from_plain_files_without_pip(node: Container) -> None:
    script = (
        "import os, pathlib, importlib.util, hubbub;"
        "pkg = pathlib.Path(hubbub.__file__).parent;"
        "print(os.getuid(), os.getgid(), any(p.is_symlink() for p in pkg.rglob('*')),"
        " importlib.util.find_spec('pip') is not None, os.access(pkg, os.W_OK),"
        " (pkg / 'static' / 'hubbub.js').is_file())"
    )
    r = run(*podman(), "exec", node.name, "python", "-c", script)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["10001", "10001", "False", "False", "False", "True"]


def test_dev_mode_refuses_the_public_bind(image: str) -> None:
    r = run(*podman(), "run", "--rm", *caller_limits(), "--env", "HUB_HOST=0.0.0.0", image)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "refusing to bind 0.0.0.0 in dev mode" in r.stderr


def test_sigterm_drains_to_exit_code_zero(node: Container) -> None:
    """Last: stops the node. podman stop sends STOPSIGNAL (SIGTERM) to hubbub as PID 1."""
    started = time.monotonic()
    r = run(*podman(), "stop", "--time", "40", node.name)
    assert r.returncode == 0, r.stderr
    assert time.monotonic() - started < 35  # drained, not killed after the 40 s grace
    code = run(*podman(), "inspect", "--format", "{{.State.ExitCode}}", node.name)
    assert code.stdout.strip() == "0", code.stdout + code.stderr
