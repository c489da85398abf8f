"""The repository stands alone: every file its docs and code refer to is in it.

* Every relative Markdown link (``[text](path)``) points to an existing file.
* Every mention of a ``*.md`` file, in any text file, names an existing file (relative to the
  mentioning file, to the repository root, or to ``docs/``).
* Nothing refers to documents that live outside the repository.
* Every test named in docs/hardening.md exists, and the catalogue numbers its cases 1..N once.
"""

from __future__ import annotations

import ast
import os
import re
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
SKIP_DIRS = {".git", ".venv", "node_modules", "test-artifacts", "__pycache__", ".mypy_cache",
             ".ruff_cache", ".pytest_cache", "build", "dist"}  # fmt: skip
TEXT = {".py", ".md", ".js", ".mjs", ".html", ".css", ".toml", ".yaml", ".yml", ".conf",
        ".service", ".txt", ".cfg", ".ini", ".json", ".sh"}  # fmt: skip
TEXT_NAMES = {"Makefile", "Dockerfile", "run", ".gitignore"}
SELF = Path(__file__).resolve()

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
MD_MENTION = re.compile(r"(?<![\w./-])((?:\.{1,2}/)?[\w][\w./-]*\.md)\b")
URL = re.compile(r"[a-z][a-z0-9+.-]*://\S+", re.IGNORECASE)
# Documents that are not part of the repository, in any spelling the code might use.
FORBIDDEN = re.compile(r"\.\./shared|/work/|\bDESIGN\.md|\bHARDENING(?:\.md|\s+\d)")


@cache
def text_files() -> list[Path]:
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = sorted(
            d
            for d in dirnames
            if d not in SKIP_DIRS and not d.endswith(".egg-info") and not d.startswith(".venv")
        )
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if path.is_symlink() or path.resolve() == SELF:
                continue
            if path.suffix in TEXT or name in TEXT_NAMES or name.startswith("Dockerfile"):
                out.append(path)
    return out


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def resolves(mention: str, source: Path) -> bool:
    mention = mention.split("#", 1)[0]
    if not mention:
        return True  # an anchor in the same document
    bases = [source.parent, ROOT, ROOT / "docs"]
    return any((base / mention).is_file() for base in bases)


def markdown_files() -> list[Path]:
    return [p for p in text_files() if p.suffix == ".md"]


def test_markdown_links_point_to_files() -> None:
    broken = []
    for path in markdown_files():
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for target in LINK.findall(line):
                if URL.match(target) or target.startswith(("mailto:", "#")):
                    continue
                if not (path.parent / target.split("#", 1)[0]).exists():
                    broken.append(f"{rel(path)}:{n}: {target}")
    assert not broken, "links to missing files:\n" + "\n".join(broken)


def test_mentioned_markdown_files_exist() -> None:
    missing = []
    for path in text_files():
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            line = URL.sub(" ", line)
            for mention in MD_MENTION.findall(line):
                if not resolves(mention, path):
                    missing.append(f"{rel(path)}:{n}: {mention}")
    assert not missing, "mentions of files that are not in the repository:\n" + "\n".join(missing)


def test_nothing_refers_outside_the_repository() -> None:
    found = []
    for path in text_files():
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            m = FORBIDDEN.search(line)
            if m:
                found.append(f"{rel(path)}:{n}: {m.group(0)}")
    assert not found, (
        "references to documents outside the repository (say it in docs/design.md or "
        "docs/hardening.md instead):\n" + "\n".join(found)
    )


def _tests_in(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
    return names


def test_hardening_catalogue_names_real_tests() -> None:
    text = (ROOT / "docs" / "hardening.md").read_text(encoding="utf-8")
    numbers = [int(m) for m in re.findall(r"^(\d+)\. ", text, re.MULTILINE)]
    assert numbers == list(range(1, len(numbers) + 1)), numbers
    refs = re.findall(r"`(tests/[\w/]+\.py)::([\w:]+)`", text)
    assert refs
    missing = []
    for file, name in refs:
        path = ROOT / file
        if not path.is_file():
            missing.append(f"{file} (no such file)")
        elif not set(name.split("::")) <= _tests_in(path):
            missing.append(f"{file}::{name}")
    assert not missing, "docs/hardening.md names tests that do not exist:\n" + "\n".join(missing)


@pytest.mark.parametrize(
    ("text", "bad"),
    [
        ("see ../shared/DESIGN.md", True),
        ("(HARDENING 24)", True),
        ("read /work/shared/PROTOCOL.md", True),
        ("hardening case 24 (docs/hardening.md)", False),
    ],
)
def test_the_checks_themselves(text: str, bad: bool) -> None:
    assert bool(FORBIDDEN.search(text)) is bad
    assert resolves("docs/design.md", ROOT / "README.md")
    assert resolves("PROTOCOL.md", ROOT / "hub" / "hub.py")
    assert not resolves("bench/notes-nothing.md", ROOT / "README.md")


# ---- what a reader types and reads ------------------------------------------------------------
SHELL_FENCES = ("", "sh", "bash", "console")
# A command word: at the start of a line (after "$ " and VAR=value assignments), or after
# $( | && || ; — the places a shell runs a program.
COMMAND_AT = r"(?:^(?:\$ )?(?:[A-Z_]+=\S*\s+)*|\$\(\s*|[|;&]\s*)"
# In a checkout the commands are .venv/bin/hubbub, .venv/bin/pip …, and Debian has python3 only.
BARE_COMMAND = re.compile(
    COMMAND_AT + r"(hubbub (?:serve|token|rooms|probe|bench|soak|webhooks)\b(?!:)|python\b|pip\b)"
)


def code_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of the lines inside shell-like fenced blocks of a Markdown file."""
    out: list[tuple[int, str]] = []
    fence: str | None = None
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.startswith("```"):
            fence = line[3:].strip() if fence is None else None
        elif fence in SHELL_FENCES:
            out.append((n, line))
    return out


def reader_docs() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_commands_in_the_docs_run_in_a_checkout() -> None:
    bad = [
        f"{rel(path)}:{n}: {line.strip()}"
        for path in reader_docs()
        for n, line in code_lines(path)
        if BARE_COMMAND.search(line.strip())
    ]
    assert not bad, "use .venv/bin/… (or python3) as the README says:\n" + "\n".join(bad)


@pytest.mark.parametrize(
    ("line", "bad"),
    [
        ("hubbub serve --port 1", True),
        ("$ hubbub rooms explain x", True),
        ("HUBBUB_TOKEN=$(hubbub token --sub p) x", True),
        ("X=1 python -c 'print(1)'", True),
        ("pip install 'hubbub[webrtc]'", True),
        (".venv/bin/hubbub serve &", False),
        ("TOKEN=$(podman exec hubbub hubbub token --sub alice)", False),
        ("hubbub soak: seed 2026, 3 nodes", False),
        ("python3 -c 'import secrets'", False),
    ],
)
def test_the_command_check(line: str, bad: bool) -> None:
    assert bool(BARE_COMMAND.search(line)) is bad


# "`HUB_X`, 30 s by default", "`HUB_X` (default 100", "`HUB_X`, default 16384", "(default 1 MiB"
DEFAULT_SAID = re.compile(
    r"`(HUB_[A-Z_]+)`(?:,| \()\s*(?:default:?\s*`?([0-9][0-9.]*)(\s*[KM]iB)?"
    r"|([0-9][0-9.]*)\s*s?\s+by\s+default)"
)
UNITS = {None: 1, " KiB": 1024, " MiB": 1024 * 1024, "KiB": 1024, "MiB": 1024 * 1024}


def test_defaults_named_in_the_docs_match_the_code() -> None:
    from dataclasses import fields

    from hubbub.hub.settings import Settings, env_name
    from hubbub.hub.values import Rate

    code = Settings()
    defaults = {env_name(f.name): getattr(code, f.name) for f in fields(Settings)}
    seen, wrong = 0, []
    for path in [*reader_docs(), *sorted((ROOT / "bench").glob("*.md"))]:
        text = " ".join(path.read_text(encoding="utf-8").split())  # a phrase may wrap
        for m in DEFAULT_SAID.finditer(text):
            value = defaults.get(m.group(1))
            if value is None or isinstance(value, (str, tuple, dict)) or value is True:
                continue
            said = float(m.group(2) or m.group(4)) * UNITS[m.group(3)]
            actual = value.rate if isinstance(value, Rate) else float(value)
            seen += 1
            if actual != said:
                wrong.append(f"{rel(path)}: {m.group(0)!r}, but the default is {value!r}")
    assert seen >= 10, seen
    assert not wrong, "\n".join(wrong)


async def test_every_metric_is_documented(node_factory: Any) -> None:
    """Every family a node's /metrics exposes (one refusal made, so the labelled families
    have samples) has a row in docs/operations.md."""
    node = await node_factory()
    async with httpx.AsyncClient(base_url=node.url, timeout=10) as http:
        assert (await http.get("/v1/rooms/r/messages?token=x")).status_code == 401
        text = (await http.get("/metrics")).text
    names = re.findall(r"^# TYPE (hubbub_\w+)", text, re.MULTILINE)
    assert len(names) >= 15, names
    doc = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    missing = [n for n in names if f"`{n}" not in doc]
    assert not missing, f"not in docs/operations.md: {missing}"
