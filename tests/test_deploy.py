"""The deployment files a newcomer runs: Dockerfile, docker-compose.yml, .env.example, nginx.conf.

No Docker daemon is available in CI, so the image is not built here; what can be
checked without one is: the Dockerfile's rules, the pins it installs, the compose
file as ``docker compose config`` resolves it, and ``nginx -t`` on the committed
load-balancer config (tests/test_nginx.py runs it with real replicas).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement

from .support import ROOT

DOCKERFILE = (ROOT / "Dockerfile").read_text()
SOURCE_DIRS = ("protocol", "sessions", "server", "client", "loadtest", "web-demo")


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per Dockerfile instruction, continuation lines joined."""
    joined = re.sub(r"\\\n", " ", text)
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def final_stage() -> list[tuple[str, str]]:
    steps = instructions(DOCKERFILE)
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last_from:]


def test_dockerfile_runs_unprivileged_from_a_normal_install() -> None:
    """The image runs as a non-root user, installs Parley non-editable, and checks liveness (/healthz)."""
    stage = final_stage()
    users = [arg for word, arg in stage if word == "USER"]
    assert users and users[-1] not in ("root", "0"), "the final stage must switch to a non-root user"
    user_at = max(i for i, (word, _) in enumerate(stage) if word == "USER")
    assert any(word == "CMD" for word, _ in stage[user_at:])
    runs = " ".join(arg for word, arg in instructions(DOCKERFILE) if word == "RUN")
    assert " -e " not in runs and "--editable" not in runs
    health = [arg for word, arg in stage if word == "HEALTHCHECK"]
    assert len(health) == 1 and "/healthz" in health[0] and "/readyz" not in health[0]


def test_dependencies_are_a_cached_layer_before_the_source() -> None:
    """Dependencies install from pyproject.toml and the pins before any source is copied in."""
    stage = final_stage()
    dep_install = next(i for i, (word, arg) in enumerate(stage) if word == "RUN" and "constraints.txt" in arg)
    copies_before = [arg for word, arg in stage[:dep_install] if word == "COPY"]
    assert copies_before and all(
        not any(re.search(rf"(^|\s){d}(\s|/|$)", arg) for d in SOURCE_DIRS) for arg in copies_before
    ), copies_before
    assert any("constraints.txt" in arg for arg in copies_before)


def test_pins_cover_every_dependency_and_satisfy_it() -> None:
    """deploy/constraints.txt pins every runtime dependency at a version pyproject.toml allows."""
    pins = {}
    for line in (ROOT / "deploy" / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, ver = line.partition("==")
            pins[re.sub(r"[-_.]+", "-", name).lower()] = ver
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in deps:
        req = Requirement(dep)
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        assert name in pins, f"{name} is not pinned: run scripts/pin-deps"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"{name}=={pins[name]} does not satisfy {dep}"
        )


def compose(*args: str) -> subprocess.CompletedProcess[str]:
    """``docker compose`` (the v2 plugin) if present, else Debian's ``docker-compose``; no daemon needed."""
    v2 = shutil.which("docker")
    if v2 and subprocess.run([v2, "compose", "version"], capture_output=True, timeout=30).returncode == 0:
        cmd = [v2, "compose"]
    elif shutil.which("docker-compose"):
        cmd = ["docker-compose"]
    else:
        pytest.fail("neither `docker compose` nor `docker-compose` is installed (scripts/test installs it)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}
    return subprocess.run([*cmd, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def test_compose_config_is_valid_with_auth_on_and_bound_to_localhost() -> None:
    """``docker compose config`` accepts it: auth on, the balancer on 127.0.0.1, Redis healthy first."""
    out = compose("--env-file", ".env.example", "config")
    assert out.returncode == 0, out.stderr
    cfg: dict[str, Any] = yaml.safe_load(out.stdout)
    services = cfg["services"]
    parley = services["parley"]
    assert parley["environment"]["PARLEY_AUTH_JWT_SECRET"]
    assert parley["environment"]["PARLEY_STORE"].startswith("redis://redis:")
    assert parley["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "redis-cli" in services["redis"]["healthcheck"]["test"]
    assert services["nginx"]["depends_on"]["parley"]["condition"] == "service_healthy"
    ports = services["nginx"]["ports"]
    published = [p if isinstance(p, str) else f"{p.get('host_ip', '')}:{p['published']}" for p in ports]
    assert published and all(p.startswith("127.0.0.1:") for p in published), published
    assert "ports" not in parley and "ports" not in services["redis"], "only the balancer is published"


def test_compose_refuses_to_start_without_a_secret(tmp_path: Path) -> None:
    """Without PARLEY_AUTH_JWT_SECRET compose stops with a line naming it: auth cannot be off by accident."""
    (tmp_path / "empty.env").write_text("")
    out = compose("--env-file", str(tmp_path / "empty.env"), "config")
    assert out.returncode != 0
    assert "PARLEY_AUTH_JWT_SECRET" in out.stderr and ".env.example" in out.stderr


def test_env_example_names_every_variable_compose_reads() -> None:
    """Every ${VAR} in docker-compose.yml is documented in .env.example."""
    used = set(re.findall(r"\$\{(\w+)", (ROOT / "docker-compose.yml").read_text()))
    documented = set(re.findall(r"^(\w+)=", (ROOT / ".env.example").read_text(), re.M))
    assert used and used <= documented, used - documented


def test_nginx_accepts_the_committed_config(tmp_path: Path) -> None:
    """``nginx -t`` accepts deploy/nginx.conf as committed (names are resolved at request time)."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    out = subprocess.run(
        [nginx, "-t", "-p", str(tmp_path), "-c", str(ROOT / "deploy" / "nginx.conf")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
