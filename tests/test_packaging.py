"""The wheel: only ``parley/*`` (no top-level server, client ...), every subpackage and the web demo."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = {
    "protocol": "protocol",
    "sessions": "sessions",
    "server": "server",
    "client": "client",
    "loadtest": "loadtest",
}


def test_the_wheel_ships_parley_only_with_every_subpackage_and_the_web_demo(tmp_path: Path) -> None:
    """A built wheel holds only parley/* (plus its metadata), every folder with an __init__.py, and
    parley/web/index.html, so a non-editable install serves / and shadows no generic module name."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        timeout=300,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("parley-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"parley", next(t for t in tops if t.endswith(".dist-info"))}
    assert "parley/__init__.py" not in names  # a namespace: parley itself has no folder
    for short, folder in FOLDERS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            if "__pycache__" in init.parts:
                continue
            inside = init.relative_to(ROOT / folder).as_posix()
            assert f"parley/{short}/{inside}" in names, (
                f"{init.relative_to(ROOT)} is not in the wheel (pyproject packages)"
            )
    assert {"parley/web/index.html", "parley/web/parley-client.js"} <= set(names)
