"""The Python client as a package: typed (py.typed, mypy --strict clean) and free of protocol copies."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

from parley.client.events import MODEL_OF
from parley.protocol import PROTOCOL_VERSION, ErrorCode
from parley.protocol.messages import CLIENT_TYPES

ROOT = Path(__file__).resolve().parent.parent
CLIENT = ROOT / "client"


def test_client_package_ships_py_typed() -> None:
    """py.typed is in the client folder and in the package data, so type checkers read the hints."""
    assert (CLIENT / "py.typed").is_file()
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"parley.client" = ["py.typed"]' in pyproject


def test_client_package_is_mypy_strict_clean(tmp_path: Path) -> None:
    """mypy --strict (pyproject's [tool.mypy]) finds nothing in parley.client."""
    # setuptools maps folders to parley.* with an import hook mypy cannot follow: give it the tree
    (tmp_path / "parley").mkdir()
    for name, folder in (("client", "client"), ("protocol", "protocol")):
        os.symlink(ROOT / folder, tmp_path / "parley" / name)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--config-file",
            str(ROOT / "pyproject.toml"),
            "--cache-dir",
            str(tmp_path / ".mypy_cache"),
            "-p",
            "parley.client",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Success: no issues found" in proc.stdout


def test_client_spells_no_protocol_constant_itself() -> None:
    """No message type, error code or protocol version is written as a literal in client/: all imported."""
    constants = {PROTOCOL_VERSION, *CLIENT_TYPES, *MODEL_OF, *(c.value for c in ErrorCode)}
    found = []
    for path in sorted(CLIENT.glob("*.py")):
        tree = ast.parse(path.read_text())
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and node.body
            and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)
        }
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value in constants and id(node) not in docstrings:
                found.append(f"{path.name}:{node.lineno}: {node.value!r}")
    assert found == []
