"""Processes for benchmarks: a private redis-server, Parley, the relay, the bare websockets server.

Every process is started on a free loopback port, logs to the results directory,
and is killed (by its own pid) when the ``Processes`` context exits.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: What each kind of server is, as a command line (run from the repository root).
COMMANDS = {
    "parley": [sys.executable, "-m", "parley.server.cli", "serve"],
    "relay": [sys.executable, "-m", "bench.relay"],
    "bare": [sys.executable, "-m", "bench.bare_ws"],
}


def importable_as_parley(root: Path) -> None:
    """Make a snapshot's packages import as ``parley.*`` when run from ``root`` (``python -m``).

    An installed Parley (editable or not) maps ``parley.server`` to *its* tree; a snapshot run
    from its own root must win. A regular package ``root/parley/`` whose subpackages link to the
    snapshot's folders (as its pyproject's ``package-dir`` maps them) is found first on sys.path.
    """
    pyproject = root / "pyproject.toml"
    mapping = (
        tomllib.loads(pyproject.read_text()).get("tool", {}).get("setuptools", {}).get("package-dir", {})
    )
    top = {name.split(".")[1]: folder for name, folder in mapping.items() if name.count(".") == 1}
    if not top or (root / "parley").exists():
        return
    pkg = root / "parley"
    pkg.mkdir()
    (pkg / "__init__.py").write_text('"""A benchmark snapshot\'s packages as parley.* (bench/procs.py)."""\n')
    for name, folder in top.items():
        (pkg / name).symlink_to(Path("..") / folder, target_is_directory=True)


def snapshot(ref: str, dest: Path) -> str:
    """Export commit ``ref`` of this repository to ``dest`` (no change to the repository), with the
    working tree's bench/ and loadtest/ laid over it, importable as ``parley.*`` from ``dest``;
    returns the full commit hash."""
    commit = subprocess.run(
        ["git", "rev-parse", ref], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "archive", commit], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    for pkg in ("bench", "loadtest"):
        shutil.copytree(
            ROOT / pkg,
            dest / pkg,
            dirs_exist_ok=True,
            ignore=shutil.ignore_patterns("results", "__pycache__"),
        )
    importable_as_parley(dest)
    return commit


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """Child side (Linux): get SIGTERM when the benchmark process dies, even by SIGKILL or timeout."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _raise_fd_limit() -> None:
    """Children inherit this: 10,000 idle connections need more than the usual 1,024 descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _wait(predicate, timeout: float, what: str, proc: subprocess.Popen[bytes] | None = None) -> None:  # type: ignore[no-untyped-def]
    """Bounded poll of a readiness condition (process start-up only)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.05)


@dataclass
class Server:
    kind: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/ws"

    @property
    def pid(self) -> int:
        return self.proc.pid


@dataclass
class Redis:
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self, *args: str) -> str:
        out = subprocess.run(
            ["redis-cli", "-p", str(self.port), *args], capture_output=True, text=True, timeout=30, check=True
        )
        return out.stdout.strip()


@dataclass
class Processes:
    """Starts processes and kills exactly those at exit."""

    log_dir: Path
    root: Path = ROOT  # the tree servers run from (a snapshot of a commit with ``--ref``)
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def __enter__(self) -> Processes:
        _raise_fd_limit()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in reversed(self.started):
            self.stop(proc)

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if proc in self.started:
            self.started.remove(proc)

    def redis(self) -> Redis:
        exe = shutil.which("redis-server")
        if not exe:
            raise RuntimeError("redis-server is not installed")
        port = free_port()
        workdir = tempfile.mkdtemp(prefix="parley-bench-redis-")
        log = open(self.log_dir / f"redis-{port}.log", "wb")
        proc = subprocess.Popen(
            [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", workdir, "--protected-mode", "no", "--maxclients", "20000"],
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )  # fmt: skip
        self.started.append(proc)
        r = Redis(port, proc)

        def answers() -> bool:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
            return False

        _wait(answers, 10, "redis-server", proc)
        return r

    def server(self, kind: str, env: dict[str, str], tag: str = "") -> Server:
        port = free_port()
        full_env = {**os.environ, **env, "PARLEY_HOST": "127.0.0.1", "PARLEY_PORT": str(port)}
        full_env.setdefault("PYTHONUNBUFFERED", "1")
        log_path = self.log_dir / f"{kind}{('-' + tag) if tag else ''}-{port}.log"
        log = open(log_path, "wb")
        proc = subprocess.Popen(
            COMMANDS[kind],
            env=full_env,
            cwd=self.root,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        self.started.append(proc)

        def healthy() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=0.5) as resp:
                    return bool(resp.status == 200)
            except OSError:
                return False

        _wait(healthy, 30, f"{kind} server on {port} (log: {log_path})", proc)
        return Server(kind, port, proc, log_path)
