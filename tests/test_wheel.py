"""Hubbub installs as one clean package: the wheel built from this checkout, installed with pip
into a fresh venv (runtime dependencies from the package index, no extras), works on its own.

One build and one venv (module-scoped fixture) serve every check. The checkout is copied to a
temporary folder first (links kept as links, build scratch left out) so that the build neither
writes ``build/`` or ``*.egg-info`` into the working tree nor picks up stale files from them.
The sdist is built from the same copy, and a wheel built from that sdist must hold the same
files, byte for byte, as the wheel built from the checkout.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import tomllib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "hubbub"

# Modules that import only with an extra installed: module -> (extra, the module it lacks).
NEEDS_EXTRA = {
    "hubbub.probe.peer": ("webrtc", "aiortc"),
    "hubbub.bench.sio_server": ("bench", "socketio"),
}
# Importing it runs the command line; ``python -m hubbub --help`` covers it.
NOT_IMPORTED = {"hubbub.__main__"}
# What the package ships besides Python modules (package data in pyproject.toml).
DATA_FILES = {"static": None, "bench": ".mjs"}  # folder -> suffix (None: every file)
PAGES = {"/": "chat.html", "/events": "events.html", "/call": "call.html", "/admin": "admin.html"}
SCRATCH = shutil.ignore_patterns(
    ".git", ".venv*", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "test-artifacts"
)

# Run inside the venv: every module of the installed package, imported one by one.
WALK = """
import importlib, json, pkgutil, sys
import hubbub
skip = set(sys.argv[1:])
result = {"file": hubbub.__file__, "modules": {}}
def onerror(name):
    result["modules"][name] = ["walk", repr(sys.exc_info()[1]), None]
for info in pkgutil.walk_packages(hubbub.__path__, "hubbub.", onerror=onerror):
    if info.name in skip:
        continue
    try:
        importlib.import_module(info.name)
        result["modules"][info.name] = None
    except BaseException as exc:
        result["modules"][info.name] = [type(exc).__name__, str(exc), getattr(exc, "name", None)]
print(json.dumps(result))
"""


@dataclass
class Installed:
    """The wheel, the sdist, the wheel built from the sdist, and the venv holding the wheel."""

    wheel: Path
    sdist: Path
    sdist_wheel: Path
    venv: Path
    cwd: Path  # an empty folder: nothing is found through the current directory
    env: dict[str, str]

    @property
    def python(self) -> str:
        return str(self.venv / "bin" / "python")

    def run(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            argv, cwd=self.cwd, env=self.env, capture_output=True, text=True, timeout=timeout
        )


def _check(proc: subprocess.CompletedProcess[str]) -> None:
    if proc.returncode != 0:
        pytest.fail(
            f"{proc.args} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )


def _pip_install(venv: Path, *requirements: str) -> subprocess.Popen[str]:
    """Start installing into ``venv`` (made ``--without-pip``: its own pip would take seconds
    to set up) with the pip running these tests; :func:`_wait` for it."""
    return subprocess.Popen(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
         "-q", "--disable-pip-version-check", *requirements],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _wait(proc: subprocess.Popen[str], timeout: float = 600) -> None:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    _check(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))


def _venv(path: Path) -> Path:
    _check(subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)],
                          capture_output=True, text=True, timeout=120))  # fmt: skip
    return path


def _build(builder: Path, src: Path, out: Path, *flags: str) -> Path:
    """``python -m build`` in ``builder``, a venv that already holds the build requirements
    (one environment for the three builds instead of an isolated one each)."""
    _check(
        subprocess.run(
            [str(builder / "bin" / "python"), "-m", "build", "--no-isolation", *flags,
             "--outdir", str(out), str(src)],
            capture_output=True, text=True, timeout=300,
        )
    )  # fmt: skip
    return _one(out, "hubbub-*")


def _one(folder: Path, pattern: str) -> Path:
    found = sorted(folder.glob(pattern))
    assert len(found) == 1, f"{folder}: expected one {pattern}, found {found}"
    return found[0]


def _clean_env() -> dict[str, str]:
    """The environment minus whatever could lead Python back to the checkout or change the
    node's configuration."""
    drop = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "PYTHONSAFEPATH")
    return {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("HUB_")}


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    try:
        build_version = importlib.metadata.version("build")  # the test extra's
    except importlib.metadata.PackageNotFoundError:
        pytest.fail("the build package (test extra) is not installed: pip install -e '.[test]'")
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(ROOT, src, symlinks=True, ignore=SCRATCH)
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    builder = _venv(tmp / "builder")
    _wait(_pip_install(builder, f"build=={build_version}", *requires))
    wheel = _build(builder, src, tmp / "dist", "--wheel")
    venv = _venv(tmp / "venv")
    installing = _pip_install(venv, str(wheel))  # the slow part: meanwhile, the sdist
    try:
        sdist = _build(builder, src, tmp / "sdist", "--sdist")
        # build unpacks the sdist into a folder of its own
        sdist_wheel = _build(builder, sdist, tmp / "from-sdist", "--wheel")
    except BaseException:
        installing.kill()
        installing.communicate()
        raise
    _wait(installing)
    cwd = tmp / "cwd"
    cwd.mkdir()
    return Installed(
        wheel=wheel,
        sdist=sdist,
        sdist_wheel=sdist_wheel,
        venv=venv,
        cwd=cwd,
        env=_clean_env(),
    )


def _wheel_files(wheel: Path) -> dict[str, str]:
    """Every file of a wheel (RECORD aside) -> its sha256."""
    with zipfile.ZipFile(wheel) as z:
        return {
            n: hashlib.sha256(z.read(n)).hexdigest()
            for n in z.namelist()
            if not n.endswith("/") and not n.endswith(".dist-info/RECORD")
        }


def _package_files() -> set[str]:
    """What the wheel must hold under hubbub/, read from the checkout (links followed): every
    module, plus the package data."""
    expected: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(PACKAGE, followlinks=True):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        rel = Path(dirpath).relative_to(ROOT)
        for name in filenames:
            path = rel / name
            top = path.parts[1] if len(path.parts) > 2 else ""
            wanted = name.endswith(".py") or (
                top in DATA_FILES and DATA_FILES[top] in (None, path.suffix)
            )
            if wanted:
                expected.add(path.as_posix())
    return expected


def test_wheel_holds_one_package(installed: Installed) -> None:
    names = set(_wheel_files(installed.wheel))
    dist_info = {n.split("/")[0] for n in names if ".dist-info/" in n}
    assert len(dist_info) == 1, dist_info
    (info,) = dist_info
    assert {n for n in names if not n.startswith(("hubbub/", info + "/"))} == set()
    assert {n for n in names if n.startswith("hubbub/")} == _package_files()
    with zipfile.ZipFile(installed.wheel) as z:
        assert z.read(f"{info}/top_level.txt").decode().split() == ["hubbub"]
        assert "hubbub = hubbub.cli:main" in z.read(f"{info}/entry_points.txt").decode()
    script = installed.venv / "bin" / "hubbub"
    assert script.is_file() and os.access(script, os.X_OK)


def test_sdist_builds_the_same_wheel(installed: Installed) -> None:
    with tarfile.open(installed.sdist) as tar:
        members = tar.getmembers()
    links = [m.name for m in members if m.issym() or m.islnk()]
    assert links == [], f"the sdist holds links: {links}"
    top = members[0].name.split("/")[0]
    files = {m.name.removeprefix(top + "/") for m in members if m.isfile()}
    package = {n for n in files if n.startswith("hubbub/")}
    assert package == _package_files()
    assert {"pyproject.toml", "README.md", "PKG-INFO"} <= files
    assert not {n for n in files if n.startswith("tests/")}, "tests ship whole or not at all"
    assert _wheel_files(installed.sdist_wheel) == _wheel_files(installed.wheel)


def test_public_names_import_with_runtime_dependencies_only(installed: Installed) -> None:
    proc = installed.run(
        installed.python,
        "-c",
        "from hubbub import create_app, Settings, HubClient, SyncHubClient, __version__\n"
        "import hubbub, importlib.metadata as md\n"
        "print(hubbub.__file__)\n"
        "print(__version__ == md.version('hubbub'))",
    )
    _check(proc)
    where, same_version = proc.stdout.splitlines()
    assert Path(where).is_relative_to(installed.venv), where
    assert same_version == "True"


def test_every_module_imports(installed: Installed) -> None:
    proc = installed.run(installed.python, "-c", WALK, *NOT_IMPORTED)
    _check(proc)
    result = json.loads(proc.stdout)
    assert Path(result["file"]).is_relative_to(installed.venv), result["file"]
    modules: dict[str, list[str] | None] = result["modules"]
    in_wheel = {
        n.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
        for n in _wheel_files(installed.wheel)
        if n.endswith(".py")
    }
    # the walk reached every module, the linked sub-packages' too
    assert set(modules) == in_wheel - {"hubbub", *NOT_IMPORTED}
    assert set(NEEDS_EXTRA) <= set(modules), "a module listed in NEEDS_EXTRA no longer exists"
    broken = {
        name: error
        for name, error in modules.items()
        if error is not None and name not in NEEDS_EXTRA
    }
    assert broken == {}
    for name, (extra, missing) in NEEDS_EXTRA.items():
        error = modules[name]
        assert error is not None, (
            f"{name} imports without the {extra} extra: drop it from NEEDS_EXTRA"
        )
        kind, _message, module = error
        assert kind == "ModuleNotFoundError", (name, error)
        assert module is not None and module.split(".")[0] == missing, (name, extra, error)


@pytest.mark.parametrize("how", ["module", "script"])
def test_help(installed: Installed, how: str) -> None:
    argv = (
        [installed.python, "-m", "hubbub"]
        if how == "module"
        else [str(installed.venv / "bin" / "hubbub")]
    )
    proc = installed.run(*argv, "--help")
    _check(proc)
    assert "serve" in proc.stdout


@contextlib.contextmanager
def _serving(installed: Installed, port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    argv = [str(installed.venv / "bin" / "hubbub"), "serve", "--host", "127.0.0.1",
            "--port", str(port), "--broker", "memory://"]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, cwd=installed.cwd, env=installed.env, stdout=out, stderr=out)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)


def test_serve_from_the_venv(installed: Installed, tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    with (
        _serving(installed, port, log) as proc,
        httpx.Client(base_url=base, timeout=5, trust_env=False) as http,
    ):
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, f"hubbub serve exited {proc.returncode}:\n{log.read_text()}"
            with contextlib.suppress(httpx.TransportError):
                if http.get("/health/ready").status_code == 200:
                    break
            assert time.monotonic() < deadline, f"never ready:\n{log.read_text()}"
            time.sleep(0.05)
        static = PACKAGE / "static"
        for path, page in PAGES.items():
            r = http.get(path)
            assert r.status_code == 200, (path, r.status_code, r.text[:200])
            assert r.headers["content-type"].startswith("text/html"), (path, r.headers)
            assert r.content == (static / page).read_bytes(), path
        r = http.get("/static/hubbub.js")
        assert r.status_code == 200
        assert "javascript" in r.headers["content-type"]
        assert r.content == (static / "hubbub.js").read_bytes()
        os.kill(proc.pid, signal.SIGTERM)
        try:
            code = proc.wait(20)
        except subprocess.TimeoutExpired:
            pytest.fail(f"hubbub serve ignored SIGTERM:\n{log.read_text()}")
        assert code == 0, log.read_text()
