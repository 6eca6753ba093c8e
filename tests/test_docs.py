"""The docs are executed: every fenced ```python / ```bash / ```sh block of README.md and docs/*.md.

Each block runs as a reader would run it, against a real ``parley serve`` that this
module starts on a free port with the documented defaults (memory store, echo model,
auth off) plus an admin token. The documented address ``127.0.0.1:8000`` (or
``localhost:8000``) in a block is replaced by that server's; ``PARLEY_PORT`` and
``PARLEY_ADMIN_TOKEN`` are set for the block, so commands that find the local server
by its settings (``parley feedback export``) reach it too. Blocks run one by one, in
a fresh temporary directory, with this environment's ``python`` and ``parley`` first
on ``PATH``; a block passes when it exits 0 within its time limit.

A block that cannot run here (it names a remote host, needs Docker or an API key,
starts a server of its own, or is a fragment) is preceded by a line
``<!-- not run: <reason> -->``; the reason is required.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from websockets.sync.client import connect

from .support import ROOT, ServerProcess

RUN_LANGS = {"python": "python", "bash": "bash", "sh": "bash"}
FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})\s*([\w+-]*)")
NOT_RUN = re.compile(r"^<!--\s*not run:\s*(?P<reason>.*?)\s*-->\s*$")
DOCUMENTED_ADDRESS = re.compile(r"\b(?:127\.0\.0\.1|localhost):8000\b")
ADMIN_TOKEN = "docs-admin-token-0123456789abcdefghij"
BLOCK_TIMEOUT_S = 180


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    skip_reason: str | None  # from <!-- not run: ... -->; "" when the marker has no reason

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def blocks(path: Path) -> Iterator[Block]:
    """Every fenced block of a runnable language, with the not-run marker above it, if any."""
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, lang = m.group(1), m.group(2).lower()
        end = i + 1
        while end < len(lines) and not re.match(
            rf"^ {{0,3}}{re.escape(fence[0])}{{{len(fence)},}}\s*$", lines[end]
        ):
            end += 1
        if lang in RUN_LANGS:
            before = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            marker = NOT_RUN.match(before)
            yield Block(path, i + 1, lang, "\n".join(lines[i + 1 : end]) + "\n", marker and marker["reason"])
        i = end + 1


ALL_BLOCKS = [b for path in doc_files() for b in blocks(path)]
TO_RUN = [b for b in ALL_BLOCKS if b.skip_reason is None]


@pytest.fixture(scope="module")
def docs_server() -> Iterator[ServerProcess]:
    """``parley serve`` as the docs assume it: embedded defaults, plus an admin token for feedback export."""
    server = ServerProcess({"PARLEY_ADMIN_TOKEN": ADMIN_TOKEN})
    server.start()
    yield server
    server.stop()


def block_env(server: ServerProcess) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PARLEY_", "OPENAI_"))}
    bin_dir = str(Path(sys.executable).parent)
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        PARLEY_HOST="127.0.0.1",
        PARLEY_PORT=str(server.port),
        PARLEY_ADMIN_TOKEN=ADMIN_TOKEN,
        PYTHONUNBUFFERED="1",
    )
    return env


@pytest.mark.parametrize("block", TO_RUN, ids=[b.id for b in TO_RUN])
def test_documented_example_runs(block: Block, docs_server: ServerProcess, tmp_path: Path) -> None:
    """The example runs as written (pointed at a real server) and exits 0: a drifted example fails here."""
    code = DOCUMENTED_ADDRESS.sub(f"127.0.0.1:{docs_server.port}", block.code)
    script = tmp_path / ("example.py" if block.lang == "python" else "example.sh")
    script.write_text(code, encoding="utf-8")
    cmd = (
        [sys.executable, str(script)] if block.lang == "python" else ["bash", "-euo", "pipefail", str(script)]
    )
    try:
        out = subprocess.run(
            cmd,
            cwd=tmp_path,
            env=block_env(docs_server),
            capture_output=True,
            text=True,
            timeout=BLOCK_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{block.id} did not finish within {BLOCK_TIMEOUT_S} s:\n{code}")
    assert out.returncode == 0, (
        f"{block.id} exited {out.returncode}\n--- code\n{code}--- stdout\n{out.stdout[-3000:]}"
        f"--- stderr\n{out.stderr[-3000:]}--- server log\n{docs_server.log()[-3000:]}"
    )


def test_every_skipped_block_says_why() -> None:
    """``<!-- not run: ... -->`` always carries a reason, and every marker sits right above a block."""
    assert ALL_BLOCKS and TO_RUN, "no runnable examples were found: the extraction is broken"
    missing = [b.id for b in ALL_BLOCKS if b.skip_reason == ""]
    assert not missing, f"not-run markers without a reason: {missing}"
    dangling = []
    for path in doc_files():
        lines = path.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            if NOT_RUN.match(line.strip()):
                nxt = next((lines[j] for j in range(i + 1, len(lines)) if lines[j].strip()), "")
                m = FENCE.match(nxt)
                if not m or m.group(2).lower() not in RUN_LANGS:
                    dangling.append(f"{path.relative_to(ROOT)}:{i + 1}")
    assert not dangling, f"not-run markers that are not above a python/bash/sh block: {dangling}"


def test_the_extraction_sees_what_a_reader_sees(tmp_path: Path) -> None:
    """Blocks are found with their language, line and marker; other languages and unmarked text are not."""
    page = tmp_path / "page.md"
    page.write_text(
        "intro\n\n```bash\necho one\n```\n\n<!-- not run: needs a remote host -->\n\n```sh\nssh far\n```\n\n"
        "```toml\nx = 1\n```\n\n````python\nprint('```')\n````\n\n<!-- not run: -->\n```python\npass\n```\n"
    )
    found = list(blocks(page))
    assert [(b.line, b.lang, b.code, b.skip_reason) for b in found] == [
        (3, "bash", "echo one\n", None),
        (9, "sh", "ssh far\n", "needs a remote host"),
        (17, "python", "print('```')\n", None),
        (22, "python", "pass\n", ""),
    ]


# ------------------------------------------------------------------ claims in prose and plain blocks


def test_protocol_examples_of_errors_are_what_the_server_says(docs_server: ServerProcess) -> None:
    """Each ``→ frame`` / ``← error`` pair of docs/protocol.md's example exchange is the server's answer."""
    lines = (ROOT / "docs" / "protocol.md").read_text(encoding="utf-8").splitlines()
    pairs = [
        (sent.removeprefix("→ "), json.loads(answer.removeprefix("← ")))
        for sent, answer in itertools.pairwise(lines)
        if sent.startswith("→ ") and answer.startswith('← {"type":"error"')
    ]
    assert len(pairs) >= 2, "the example exchange lost its error examples"
    with connect(docs_server.url, subprotocols=["parley.v1"], open_timeout=10) as ws:  # type: ignore[list-item]
        ws.send(json.dumps({"type": "hello", "protocol": "parley.v1"}))
        assert json.loads(ws.recv(timeout=10))["type"] == "session.ready"
        for frame, documented in pairs:
            ws.send(frame)
            answer = json.loads(ws.recv(timeout=10))
            while answer["type"] == "heartbeat":
                answer = json.loads(ws.recv(timeout=10))
            assert answer == documented, (
                f"docs/protocol.md says {frame} gives {documented}, the server: {answer}"
            )


def test_every_multi_worker_example_names_redis() -> None:
    """Wherever the docs show ``--workers N`` (N > 1), the same line says it needs a Redis store."""
    bad = []
    for path in doc_files():
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for m in re.finditer(r"--workers (\d+)", line):
                if int(m.group(1)) > 1 and "redis" not in line.lower():
                    bad.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not bad, "--workers without Redis does not work (one memory store per worker):\n" + "\n".join(bad)
