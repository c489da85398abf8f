"""Hubbub stays on the public side of the ASGI stack it runs on, so it can follow new releases.

* pyproject.toml gives starlette, uvicorn and websockets a floor (``>=``) and no upper bound:
  ``make test-latest`` is how a new release gets checked, not a pin.
* No module of Hubbub (hub/, transports/, signaling/, bench/, hubbub/) imports a ``_``-prefixed module or
  name of those three, reaches a ``_``-prefixed attribute through one of their modules, imports
  uvicorn's protocol implementations (``uvicorn.protocols``), or subclasses a uvicorn class: the
  server runs Hubbub's own protocol through uvicorn's documented ``http=`` option.

The check is static (``ast``); attributes reached through an object (``conn._x``) are out of
its sight. The checker is itself tested on small sources that must or must not pass.
"""

from __future__ import annotations

import ast
import os
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
WATCHED = ("starlette", "uvicorn", "websockets")
# Every folder the wheel installs as hubbub.* (bench/ ships as hubbub.bench).
SOURCE_DIRS = ("hub", "transports", "signaling", "bench", "hubbub")
# Modules of uvicorn that are its own server implementation, not an API to build on.
UVICORN_INTERNALS = ("uvicorn.protocols",)


# ---- pyproject.toml ------------------------------------------------------------------------------
def bound_problems(requirements: list[str]) -> list[str]:
    """What is wrong with the watched packages among ``requirements`` (PEP 508 strings): an
    upper bound (``<``, ``<=``, ``==``, ``===``, ``~=``) or a missing ``>=`` floor."""
    problems: list[str] = []
    for line in requirements:
        try:
            req = Requirement(line)
        except InvalidRequirement as exc:
            problems.append(f"{line!r} is not a valid requirement: {exc}")
            continue
        name = canonicalize_name(req.name)
        if name not in WATCHED:
            continue
        for spec in req.specifier:
            if spec.operator in ("<", "<=", "==", "===", "~="):
                problems.append(f"{line!r}: {spec} is an upper bound")
        if not any(spec.operator == ">=" for spec in req.specifier):
            problems.append(f"{line!r} has no >= floor")
    return problems


def project_requirements() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        lines.extend(extra)
    return lines


def test_watched_packages_have_a_floor_and_no_upper_bound() -> None:
    lines = project_requirements()
    named = {canonicalize_name(Requirement(line).name) for line in lines}
    assert set(WATCHED) <= named, f"pyproject.toml no longer requires {set(WATCHED) - named}"
    assert bound_problems(lines) == []


@pytest.mark.parametrize(
    "line",
    ["uvicorn[standard]>=0.35,<0.36", "websockets~=16.0", "starlette==1.0.*", "uvicorn<=1",
     "starlette>=1.0,===1.0.0", "websockets", "uvicorn[standard]"],
)  # fmt: skip
def test_bound_check_refuses(line: str) -> None:
    assert bound_problems([line])


@pytest.mark.parametrize(
    "line",
    ["uvicorn[standard]>=0.35", "websockets>=16,!=16.1", "starlette >= 1.0", "redis<9",
     'uvicorn>=0.35; python_version >= "3.11"'],
)  # fmt: skip
def test_bound_check_accepts(line: str) -> None:
    assert bound_problems([line]) == []


# ---- sources -------------------------------------------------------------------------------------
def _private(part: str) -> bool:
    return part.startswith("_") and not (part.startswith("__") and part.endswith("__"))


def _watched(dotted: str) -> bool:
    return dotted.split(".", 1)[0] in WATCHED


def _reason(dotted: str) -> str | None:
    """Why using ``dotted`` (a module, or a module's attribute) is off limits, or None."""
    if not _watched(dotted):
        return None
    if any(_private(part) for part in dotted.split(".")):
        return f"private name {dotted}"
    if any(dotted == m or dotted.startswith(m + ".") for m in UVICORN_INTERNALS):
        return f"uvicorn internals {dotted}"
    return None


def _dotted(node: ast.expr) -> list[str] | None:
    """``a.b.c`` as ["a", "b", "c"]; None for anything but names and attributes."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return parts[::-1]


def source_problems(source: str, filename: str = "<source>") -> list[str]:
    """Uses of starlette, uvicorn or websockets in one module that leave their public API:
    ``_``-prefixed modules, names or module attributes, ``uvicorn.protocols``, importing them by
    string (``importlib.import_module``), and classes with a uvicorn base."""
    tree = ast.parse(source, filename)
    bound: dict[str, str] = {}  # local name -> the dotted path it stands for
    problems: list[str] = []

    def report(node: ast.AST, what: str) -> None:
        problems.append(f"{filename}:{getattr(node, 'lineno', 0)}: {what}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if why := _reason(alias.name):
                    report(node, f"import of {why}")
                local = alias.asname or alias.name.split(".", 1)[0]
                bound[local] = alias.name if alias.asname else local
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if why := _reason(node.module):
                report(node, f"import of {why}")
            for alias in node.names:
                target = f"{node.module}.{alias.name}"
                if not why and (why_name := _reason(target)):
                    report(node, f"import of {why_name}")
                bound[alias.asname or alias.name] = target

    def resolve(expr: ast.expr) -> str | None:
        parts = _dotted(expr)
        if parts is None or parts[0] not in bound:
            return None
        return ".".join([bound[parts[0]], *parts[1:]])

    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
            full = resolve(node)
            # A chain is reported once, at its shortest offending prefix.
            if full and (why := _reason(full)) and not _reason(full.rsplit(".", 1)[0]):
                report(node, f"use of {why}")
        elif isinstance(node, ast.Call):
            name = resolve(node.func) or (_dotted(node.func) or [""])[-1]
            if name in ("importlib.import_module", "import_module", "__import__") and node.args:
                arg = node.args[0]
                text = arg.value if isinstance(arg, ast.Constant) else None
                if isinstance(text, str) and (why := _reason(text)):
                    report(node, f"import of {why}")
        elif isinstance(node, ast.ClassDef):
            for base in node.bases:
                full = resolve(base)
                if full and full.split(".", 1)[0] == "uvicorn":
                    report(node, f"class {node.name} subclasses {full}")
    return problems


def hubbub_modules() -> Iterator[Path]:
    """Every .py file of Hubbub's packages, once (the links inside hubbub/ are not followed)."""
    for top in SOURCE_DIRS:
        for folder, dirs, files in os.walk(ROOT / top):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            for name in sorted(files):
                if name.endswith(".py"):
                    yield Path(folder) / name


def test_hubbub_uses_only_the_public_api_of_its_server_stack() -> None:
    modules = list(hubbub_modules())
    names = {p.relative_to(ROOT).as_posix() for p in modules}
    # The scan sees the code that matters (a moved folder would make it vacuous).
    assert {"transports/h1.py", "transports/wsconn.py", "transports/server.py",
            "hubbub/app.py", "hubbub/cli.py", "bench/ws_server.py"} <= names  # fmt: skip
    problems: list[str] = []
    for path in modules:
        rel = path.relative_to(ROOT).as_posix()
        problems.extend(source_problems(path.read_text(encoding="utf-8"), rel))
    assert problems == []


BAD = {
    "private module": "from uvicorn.protocols.http._x import P",
    "private module in starlette": "from starlette._utils import is_async_callable",
    "private name": "from websockets.frames import _prepare",
    "private module, plain import": "import websockets._speedups",
    "uvicorn protocols": "import uvicorn.protocols",
    "uvicorn protocols, from": "from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol",
    "uvicorn protocols, module": "from uvicorn import protocols",
    "private attribute": "import starlette.routing\nx = starlette.routing._compile",
    "private attribute through alias": "import uvicorn.config as c\nc._private()",
    "private attribute of a name": "from websockets import server\nserver._x",
    "by string": "import importlib\nimportlib.import_module('uvicorn.protocols.utils')",
    "by string, dunder": "__import__('starlette._utils')",
    "uvicorn base": "from uvicorn.server import Server\nclass S(Server): pass",
    "uvicorn base, dotted": "import uvicorn\nclass C(uvicorn.Config): pass",
    "uvicorn base, aliased": "import uvicorn.server as srv\nclass S(srv.ServerState): pass",
    "nested": "def f():\n    from uvicorn.main import _x\n    return _x",
}
GOOD = {
    "public imports": "import uvicorn\nfrom uvicorn.server import Server, ServerState",
    "dunder": "from uvicorn import __version__\nimport websockets\nwebsockets.__version__",
    "websockets base": "from websockets.server import ServerProtocol\nclass P(ServerProtocol): pass",
    "starlette base": "from starlette.routing import Route\nclass R(Route): pass",
    "private of our own": "from hubbub.transports import _x\nclass A(_x.B): pass",
    "object attribute": "import uvicorn\nuvicorn.Config(app)._x",
}


@pytest.mark.parametrize("source", BAD.values(), ids=BAD.keys())
def test_source_check_refuses(source: str) -> None:
    assert source_problems(source)


@pytest.mark.parametrize("source", GOOD.values(), ids=GOOD.keys())
def test_source_check_accepts(source: str) -> None:
    assert source_problems(source) == []
