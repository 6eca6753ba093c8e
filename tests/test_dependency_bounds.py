"""pyproject.toml's lower bounds are what the lowest-versions run installs; every runtime import declared."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: Import name -> distribution, where they differ.
DISTRIBUTIONS = {
    "jwt": "pyjwt",
    "prometheus_client": "prometheus-client",
    "pydantic_settings": "pydantic-settings",
}
#: Folders whose modules ship in the wheel (the runtime), and imports that are optional extras there.
RUNTIME = ("protocol", "sessions", "server", "client", "loadtest")
#: Modules a runtime dependency brings (cryptography with pyjwt[crypto], anyio with starlette, ...).
TRANSITIVE = {"cryptography": "pyjwt", "anyio": "starlette", "uvloop": "uvicorn"}
#: Optional features: import -> the extra that declares it.
OPTIONAL = {"matplotlib": "plot"}


def declared() -> dict[str, str]:
    """Distribution name -> lower bound, from [project].dependencies."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    out = {}
    for dep in deps:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?>=([0-9.]+)", dep)
        assert m, f"{dep!r} has no plain lower bound"
        out[m.group(1).lower()] = m.group(2)
    return out


def test_lowest_constraints_pin_exactly_the_lower_bounds() -> None:
    """scripts/constraints-lowest.txt pins each dependency at its pyproject lower bound, and nothing else."""
    pins = {}
    for line in (ROOT / "scripts" / "constraints-lowest.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[name.strip().lower()] = version.strip()
    bounds = declared()
    assert pins.keys() == bounds.keys()
    for name, bound in bounds.items():
        assert tuple(map(int, pins[name].split("."))) == tuple(map(int, bound.split("."))) + (0,) * (
            len(pins[name].split(".")) - len(bound.split("."))
        ), name


def test_every_third_party_import_of_the_runtime_is_declared() -> None:
    """A module imported anywhere in the shipped packages (even lazily) is a declared dependency."""
    names = declared().keys()
    missing = {}
    for folder in RUNTIME:
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    mods = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    mods = [node.module]
                else:
                    continue
                for mod in mods:
                    top = mod.split(".")[0]
                    if top in sys.stdlib_module_names or top == "parley":
                        continue
                    if top in OPTIONAL:
                        extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
                        assert any(d.startswith(top) for d in extras["optional-dependencies"][OPTIONAL[top]])
                        continue
                    dist = TRANSITIVE.get(top) or DISTRIBUTIONS.get(top, top)
                    if dist.lower() not in names:
                        missing[f"{path.relative_to(ROOT)}: {mod}"] = dist
    assert missing == {}
