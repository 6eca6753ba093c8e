"""Runs the Node unit tests of web-demo/parley-client.js (reconnect, resume, dedupe, watchdog)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def test_client_module_unit_tests_pass_under_node() -> None:
    """The client's reconnect/dedupe/watchdog/outbox logic passes its `node --test` suite."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed")
    proc = subprocess.run(
        [node, "--test", str(HERE / "client_unit.test.mjs")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=HERE.parent.parent,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert "# fail 0" in proc.stdout
