"""Runs the Node unit tests of web-demo/parley-client.js (reconnect, resume, dedupe, watchdog, transports)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.mark.parametrize(
    "suite",
    [
        "client_unit.test.mjs",  # the core over a WebSocket: reconnect, dedupe, watchdog, outbox
        "client_transport.test.mjs",  # the SSE parser, SSE + POST, the "auto" fallback
    ],
)
def test_client_module_unit_tests_pass_under_node(suite: str) -> None:
    """The client's `node --test` suite passes, with at least one test run and none failed."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed")
    proc = subprocess.run(
        [node, "--test", "--test-timeout=30000", str(HERE / suite)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=HERE.parent.parent,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert "# fail 0" in proc.stdout and "# pass 0" not in proc.stdout
