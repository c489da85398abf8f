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
