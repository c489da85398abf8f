"""Every ```python block of README.md and docs/*.md compiles; the blocks marked runnable
(``<!-- snippet: runs -->`` on the line before the fence) run as written against a real node
started here, with the environment they read (``HUBBUB_URL``, ``HUBBUB_API_KEY``, ``TOKEN``),
and when an "It prints:" block follows one, they print exactly that."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import token

ROOT = Path(__file__).resolve().parents[1]
MARK = "<!-- snippet: runs -->"
FENCE = re.compile(r"^```(\w*)\s*$")
API_KEY = "dev-key-0123456789abcdef"


@dataclass(frozen=True)
class Snippet:
    path: Path
    line: int  # of the opening fence, 1-based
    code: str
    runs: bool
    prints: str | None  # the output block after "It prints:", if any

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def snippets(path: Path) -> list[Snippet]:
    """The ```python blocks of one Markdown file."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[tuple[int, str, str]] = []  # (fence line index, language, body)
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if m is None:
            i += 1
            continue
        end = i + 1
        while end < len(lines) and not lines[end].startswith("```"):
            end += 1
        blocks.append((i, m.group(1), "\n".join(lines[i + 1 : end]) + "\n"))
        i = end + 1
    out: list[Snippet] = []
    for n, (start, lang, body) in enumerate(blocks):
        if lang != "python":
            continue
        runs = start > 0 and lines[start - 1].strip() == MARK
        prints = None
        if n + 1 < len(blocks):
            nxt = blocks[n + 1][0]
            between = "\n".join(lines[start:nxt]).rsplit("```", 1)[-1]
            if between.strip() == "It prints:" and blocks[n + 1][1] == "":
                prints = blocks[n + 1][2]
        out.append(Snippet(path, start + 1, body, runs, prints))
    return out


ALL = [s for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))] for s in snippets(p)]
RUNNABLE = [s for s in ALL if s.runs]


def test_the_documents_have_snippets() -> None:
    names = {s.name.split(":")[0] for s in ALL}
    assert {"README.md", "docs/embedding.md", "docs/client.md"} <= names, names
    assert {s.name.split(":")[0] for s in RUNNABLE} >= {"docs/client.md"}


@pytest.mark.parametrize("snippet", ALL, ids=[s.name for s in ALL])
def test_snippet_compiles(snippet: Snippet) -> None:
    compile(snippet.code, snippet.name, "exec")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("snippet", RUNNABLE, ids=[s.name for s in RUNNABLE])
async def test_snippet_runs(snippet: Snippet, node_factory: Any, tmp_path: Path) -> None:
    node = await node_factory(api_keys=(API_KEY,))
    script = tmp_path / "snippet.py"
    script.write_text(snippet.code, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HUB_", "HUBBUB_"))}
    env.update(HUBBUB_URL=node.url, HUBBUB_API_KEY=API_KEY, TOKEN=token("alice"))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(script), cwd=tmp_path, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail(f"{snippet.name} did not finish within 30 s")
    assert proc.returncode == 0, err.decode(errors="replace")
    if snippet.prints is not None:
        assert out.decode() == snippet.prints, out.decode()


def test_the_extraction(tmp_path: Path) -> None:
    doc = tmp_path / "sample.txt"
    doc.write_text(
        "text\n\n```python\nprint(1)\n```\n\n" + MARK + "\n```python\nprint(2)\n```\n\n"
        "It prints:\n\n```\n2\n```\n\n```sh\nls\n```\n",
        encoding="utf-8",
    )
    found = snippets(doc)
    assert [(s.line, s.code, s.runs, s.prints) for s in found] == [
        (3, "print(1)\n", False, None),
        (8, "print(2)\n", True, "2\n"),
    ]
