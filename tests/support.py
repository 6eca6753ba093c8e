"""Real processes for tests: a redis-server per test session, uvicorn in-process or as a child."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from parley.client import ParleyClient
from parley.server.app import create_app
from parley.server.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_cluster_port() -> int:
    """A free port whose cluster-bus port (port + 10000) is free too."""
    for _ in range(200):
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    """Poll a readiness condition (process start-up), bounded; never used to order events."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.02)


@dataclass
class RedisServer:
    """A real redis-server on a free loopback port; can be stopped and restarted on that port."""

    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    dir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="parley-redis-"))
    persist: bool = False  # AOF with fsync always: data survives kill -9 and restart
    extra: list[str] = field(default_factory=list)  # more redis-server arguments

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        exe = shutil.which("redis-server")
        assert exe, "redis-server is not installed (run .ci/run, which installs it)"
        self.proc = subprocess.Popen(
            [
                exe,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes" if self.persist else "no",
                "--appendfsync",
                "always",
                "--dir",
                self.dir,
                "--protected-mode",
                "no",
                *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self._answers, 10, "redis-server")

    def _answers(self) -> bool:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
        return False

    def stop(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None:
            self.proc.send_signal(sig)
            self.proc.wait(10)
            self.proc = None

    def command(self, *args: str) -> str:
        out = subprocess.run(
            ["redis-cli", "-p", str(self.port), *args], capture_output=True, text=True, timeout=10, check=True
        )
        return out.stdout


@dataclass
class LiveServer:
    """uvicorn serving ``create_app(settings)`` inside the test's event loop, on a real socket."""

    settings: Settings
    server: uvicorn.Server
    port: int
    app: Any

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/ws"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def state(self) -> Any:
        return self.app.state.parley


def uvicorn_config(app: Any, settings: Settings, port: int) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        ws_max_size=settings.max_frame_bytes,
        ws_per_message_deflate=settings.ws_per_message_deflate,
        ws_ping_interval=settings.heartbeat_interval_ms / 1000,
        ws_ping_timeout=settings.heartbeat_interval_ms / 1000,
        lifespan="on",
        log_level="warning",
        timeout_graceful_shutdown=2,
    )


@contextlib.asynccontextmanager
async def live_server(**overrides: Any) -> AsyncIterator[LiveServer]:
    """Start a real uvicorn server in this loop; shut it down (gracefully) afterwards."""
    settings = Settings(**overrides)
    app = create_app(settings)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn_config(app, settings, port))
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve(sockets=[sock]))
    started = asyncio.get_running_loop().time()
    while not server.started:
        if task.done():
            task.result()
        if asyncio.get_running_loop().time() - started > 10:
            raise TimeoutError("server did not start")
        await asyncio.sleep(0.005)
    live = LiveServer(settings, server, port, app)
    try:
        yield live
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 15)
        sock.close()


@dataclass
class ServerProcess:
    """``parley serve`` as a child process: real signals (SIGTERM, SIGKILL) reach it."""

    env: dict[str, str]
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    log_path: str = ""

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/ws"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = {**os.environ, **self.env, "PARLEY_PORT": str(self.port), "PARLEY_HOST": "127.0.0.1"}
        fd, self.log_path = tempfile.mkstemp(prefix="parley-server-", suffix=".log")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "parley.server.cli", "serve"], env=env, cwd=ROOT, stdout=fd, stderr=fd
        )
        os.close(fd)
        wait_until(self._healthy, 20, f"parley on {self.port}")

    def _healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"server exited: {self.log()}")
        try:
            return httpx.get(f"{self.http}/healthz", timeout=0.5).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        if self.proc is None:
            return None
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        self.proc = None
        return code

    def log(self) -> str:
        return Path(self.log_path).read_text() if self.log_path else ""


@dataclass
class RedisCluster:
    """Three real `redis-server --cluster-enabled yes` nodes on loopback, joined into one cluster."""

    nodes: list[RedisServer] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}"

    def start(self) -> None:
        for _ in range(3):
            node = RedisServer(
                port=free_cluster_port(), extra=["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"]
            )
            node.extra.extend(["--cluster-config-file", f"{node.dir}/nodes.conf"])
            node.start()
            self.nodes.append(node)
        subprocess.run(
            [
                "redis-cli",
                "--cluster",
                "create",
                *[f"127.0.0.1:{n.port}" for n in self.nodes],
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            capture_output=True,
            check=True,
            timeout=30,
        )
        wait_until(self._ok, 20, "cluster state ok")

    def _ok(self) -> bool:
        return all("cluster_state:ok" in n.command("CLUSTER", "INFO") for n in self.nodes)

    def flush(self) -> None:
        for n in self.nodes:
            n.command("FLUSHALL")

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()


async def reference_reply(url: str, content: str) -> tuple[str, int]:
    """The uninterrupted reply to a one-turn conversation, and the number of events it logged."""
    async with ParleyClient(url) as c:
        reply = await c.ask(content)
        return reply.text, c.last_seq


async def read_logged(c: ParleyClient, k: int) -> list[int]:
    """Read events until ``k`` logged ones arrived (at least one event) or a response completed first;
    return their seqs. A reply may log fewer events than a reference run of it did: tokens that
    arrive while a store write is in flight are coalesced into one delta."""
    seqs: list[int] = []
    async for ev in c.events():
        if "seq" in ev:
            seqs.append(ev["seq"])
        if len(seqs) >= k or ev["type"] == "response.completed":
            break
    return seqs
