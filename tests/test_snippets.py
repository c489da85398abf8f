"""Every ```python block of README.md and docs/*.md compiles; the blocks marked runnable
(``<!-- snippet: runs -->`` on the line before the fence) run as written against a real node
started here, with the environment they read (``HUBBUB_URL``, ``HUBBUB_API_KEY``, ``TOKEN``)
and the node's address in place of ``127.0.0.1:8000``, and when an "It prints:" block follows
one, they print exactly that. A block that runs until stopped is marked
``<!-- snippet: runs until it prints: TEXT -->``: it must print TEXT, still running or after
exiting 0, and is then stopped."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port, need_tool, token

ROOT = Path(__file__).resolve().parents[1]
MARK = "<!-- snippet: runs -->"
UNTIL = re.compile(r"^<!-- snippet: runs until it prints: (.+) -->$")
FENCE = re.compile(r"^```(\w*)\s*$")
API_KEY = "dev-key-0123456789abcdef"


@dataclass(frozen=True)
class Snippet:
    path: Path
    line: int  # of the opening fence, 1-based
    code: str
    runs: bool
    prints: str | None  # the output block after "It prints:", if any
    until: str | None = None  # runs until it prints this, then is stopped

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
        before = lines[start - 1].strip() if start > 0 else ""
        until = m.group(1) if (m := UNTIL.match(before)) else None
        runs = before == MARK or until is not None
        prints = None
        if n + 1 < len(blocks):
            nxt = blocks[n + 1][0]
            between = "\n".join(lines[start:nxt]).rsplit("```", 1)[-1]
            if between.strip() == "It prints:" and blocks[n + 1][1] == "":
                prints = blocks[n + 1][2]
        out.append(Snippet(path, start + 1, body, runs, prints, until))
    return out


ALL = [s for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))] for s in snippets(p)]
RUNNABLE = [s for s in ALL if s.runs]


def test_the_documents_have_snippets() -> None:
    names = {s.name.split(":")[0] for s in ALL}
    assert {"README.md", "docs/embedding.md", "docs/client.md"} <= names, names
    assert {s.name.split(":")[0] for s in RUNNABLE} >= {"docs/client.md", "README.md"}


@pytest.mark.parametrize("snippet", ALL, ids=[s.name for s in ALL])
def test_snippet_compiles(snippet: Snippet) -> None:
    compile(snippet.code, snippet.name, "exec")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("snippet", RUNNABLE, ids=[s.name for s in RUNNABLE])
async def test_snippet_runs(snippet: Snippet, node_factory: Any, tmp_path: Path) -> None:
    node = await node_factory(api_keys=(API_KEY,))
    script = tmp_path / "snippet.py"
    address = node.url.split("//", 1)[1]
    script.write_text(snippet.code.replace("127.0.0.1:8000", address), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HUB_", "HUBBUB_"))}
    env.update(HUBBUB_URL=node.url, HUBBUB_API_KEY=API_KEY, TOKEN=token("alice"))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(script), cwd=tmp_path, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    if snippet.until is not None:
        await _until_it_prints(proc, snippet)
        return
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail(f"{snippet.name} did not finish within 30 s")
    assert proc.returncode == 0, err.decode(errors="replace")
    if snippet.prints is not None:
        assert out.decode() == snippet.prints, out.decode()


async def _read_until(
    stream: asyncio.StreamReader, done: Callable[[bytes], bool], within: float
) -> bytes:
    """What ``stream`` gave until ``done(output)``, its end, or ``within`` seconds."""
    out = b""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(within):
            while not done(out):
                chunk = await stream.read(4096)
                if not chunk:
                    break
                out += chunk
    return out


async def _until_it_prints(proc: asyncio.subprocess.Process, snippet: Snippet) -> None:
    """Read ``proc``'s output until it shows ``snippet.until``; then stop it. Fails when it
    exits first (with a non-zero status, or 0 without printing it) or takes over 30 s."""
    assert proc.stdout is not None and proc.stderr is not None and snippet.until is not None
    until = snippet.until.encode()
    try:
        out = await _read_until(proc.stdout, lambda out: until in out, 30)
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
    err = (await proc.stderr.read()).decode(errors="replace")
    assert snippet.until.encode() in out, (out.decode(errors="replace"), err)
    assert proc.returncode in (0, -9), err


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
    doc.write_text("<!-- snippet: runs until it prints: 'x': 1 -->\n```python\nprint(3)\n```\n")
    assert [(s.runs, s.until) for s in snippets(doc)] == [(True, "'x': 1")]


def readme_shell_example() -> str:
    """The ```sh block of the README's "A minimal example"."""
    section = (ROOT / "README.md").read_text(encoding="utf-8").split("## A minimal example", 1)[1]
    return section.split("```sh\n", 1)[1].split("```", 1)[0]


@pytest.mark.timeout(90)
async def test_the_readme_shell_example_runs(tmp_path: Path) -> None:
    """The README's first commands, pasted whole into bash (on a free port instead of 8000, the
    checkout's ``.venv/bin`` being this interpreter's): the backend's publish is answered and
    the SSE stream shows it. Pasted whole, the node must be up before the first curl."""
    need_tool("curl")
    port = free_port()
    script = readme_shell_example().replace("127.0.0.1:8000", f"127.0.0.1:{port}")
    script = script.replace(".venv/bin/", f"{Path(sys.executable).parent}/")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HUB_", "HUBBUB_"))}
    env["HUB_PORT"] = str(port)
    proc = await asyncio.create_subprocess_exec(
        "bash", "-c", script, cwd=tmp_path, env=env, start_new_session=True,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None

    def shown(out: bytes) -> bool:
        return b'"text":"hello"' in out.split(b'"offset":1', 1)[-1] and b"data:" in out

    try:
        out = await _read_until(proc.stdout, shown, 60)
    finally:
        await _stop_group(proc)
    err = (await proc.stderr.read()).decode(errors="replace")
    text = out.decode(errors="replace")
    assert text.startswith('{"room":"chat:lobby","offset":1,'), (text, err)
    sse = text.split("}", 1)[1]
    assert "data:" in sse and '"text":"hello"' in sse, (text, err)


async def _stop_group(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM to the script's process group (bash, the node it put in the background, curl),
    then SIGKILL to whatever is left after 15 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    await proc.wait()
    for _ in range(150):
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        await asyncio.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
