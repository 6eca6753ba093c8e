"""Every JavaScript example in docs/client.md runs in Node against a real ``parley serve``.

The Python and shell examples of every doc (client.md and README's client snippet included) are
run by tests/test_docs.py; this file adds the one language that runner does not know.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .support import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "client.md"
DEFAULT_URL = "ws://127.0.0.1:8000"
FENCE = re.compile(r"(<!-- not run:[^>]*-->\s*\n)?```(\w+)\n(.*?)\n```", re.S)


def blocks(path: Path, lang: str) -> list[str]:
    """The fenced blocks of one language that are meant to run (not after a ``not run`` marker)."""
    return [
        body
        for marker, kind, body in FENCE.findall(path.read_text())
        if kind == lang and not marker and DEFAULT_URL in body
    ]


PY_BLOCKS = blocks(DOC, "python") + [b for b in blocks(ROOT / "README.md", "python") if "parley.client" in b]
JS_BLOCKS = blocks(DOC, "js")


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    p = ServerProcess({"PARLEY_STORE": "memory://", "PARLEY_ECHO_TOKENS_PER_SECOND": "200"})
    p.start()
    yield p
    p.stop(signal.SIGKILL)


def test_the_docs_have_runnable_client_examples() -> None:
    """docs/client.md has Python and JS examples that run, and README's client snippet is one of them."""
    assert len(PY_BLOCKS) >= 7 and len(JS_BLOCKS) >= 2
    readme = blocks(ROOT / "README.md", "python")
    assert any("parley.client" in b and "asyncio.run(main())" in b for b in readme)


@pytest.mark.parametrize("code", JS_BLOCKS, ids=[f"js-{i}" for i in range(len(JS_BLOCKS))])
def test_javascript_example_runs_in_node(code: str, server: ServerProcess, tmp_path: Path) -> None:
    """The Node example runs (the package name resolved to web-demo/parley-client.js, `ws` to its
    locked copy in tests/js; Node 22's global WebSocket via --experimental-websocket)."""
    node = shutil.which("node")
    assert node, "node is not installed (scripts/test installs it)"
    ws = ROOT / "tests" / "js" / "node_modules" / "ws" / "wrapper.mjs"
    if '"ws"' in code and not ws.exists():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=ws.parents[2], check=True, timeout=300)
    source = (
        code.replace(DEFAULT_URL, f"ws://127.0.0.1:{server.port}")
        .replace('"@parley-chat/client"', json.dumps(str(ROOT / "web-demo" / "parley-client.js")))
        .replace('from "ws"', f"from {json.dumps(str(ws))}")
    )
    script = tmp_path / "example.mjs"
    script.write_text(source)
    flags = [] if '"ws"' in code else ["--experimental-websocket"]
    proc = subprocess.run([node, *flags, str(script)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip()
