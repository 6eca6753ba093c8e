"""The browser tests' harness: real processes (redis-server, ``parley serve``), a freezable
TCP proxy, a page probe, and a raw websocket as a second, independent reader of a session.

The only polling here is bounded start-up readiness (a port answering, ``/healthz``
returning 200), never ordering of test events.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..support import RedisServer, free_port, wait_until

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("PARLEY_ARTIFACTS_DIR", ROOT / "artifacts")) / "browser"
CHROMIUM = os.environ.get("PARLEY_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]

# Echo pacing for browser tests: slow enough to act mid-reply, fast enough to finish quickly.
ECHO_ENV = {
    "PARLEY_ECHO_TOKENS_PER_SECOND": "15",
    "PARLEY_ECHO_REPLY_TOKENS": "45",
    "PARLEY_ECHO_TTFT_MS": "0",
}


def wait_ready(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Bounded poll for a process to come up (start-up only, never to order test events)."""
    wait_until(check, timeout, what)


class Redis(RedisServer):
    """The suite's throwaway redis-server (free port, never 6379, no persistence), started at once."""

    def __init__(self) -> None:
        super().__init__()
        self.start()


class Parley:
    """``parley serve`` as a child process, restartable on the same port."""

    def __init__(self, store: str = "memory://", env: dict[str, str] | None = None) -> None:
        self.store = store
        self.env = {**ECHO_ENV, **(env or {})}
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.logs: list[Path] = []

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/ws"

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}
        env.update(self.env)
        fd, name = tempfile.mkstemp(prefix="parley-browser-", suffix=".log")
        os.close(fd)
        log = Path(name)
        self.logs.append(log)
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "parley.server.cli",
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--store",
                    self.store,
                ],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_ready(self._healthy, 30, f"parley serve on port {self.port}")

    def _healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"parley serve exited:\n{self.log()}")
        try:
            with urllib.request.urlopen(f"{self.http}/healthz", timeout=0.5) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(sig)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def log(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in self.logs if p.exists())


class FreezingProxy:
    """A TCP proxy whose open connections can be frozen: bytes stop flowing, sockets stay open.

    This is how a dead NAT mapping or a stuck network path looks to a browser: no
    close, no error, just silence. Only a heartbeat watchdog can notice it.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.frozen: set[int] = set()
        self.conns: list[tuple[socket.socket, socket.socket]] = []
        self.lock = threading.Lock()
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            with self.lock:
                self.conns.append((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b, id(client)), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, key: int) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if key in self.frozen:
                    continue  # swallowed: the path is dead but nobody is told
                dst.sendall(data)
        except OSError:
            pass
        if key not in self.frozen:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

    def freeze_open_connections(self) -> int:
        with self.lock:
            for client, _ in self.conns:
                self.frozen.add(id(client))
            return len(self.conns)

    def close(self) -> None:
        self.closed = True
        self.listener.close()
        with self.lock:
            for a, b in self.conns:
                for s in (a, b):
                    with contextlib.suppress(OSError):
                        s.close()


class PageProbe:
    """What a page did that a test must never see: uncaught errors and dialogs (alert())."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self.console_errors: list[str] = []


def watch(pg: Any, probe: PageProbe) -> None:
    pg.on("pageerror", lambda exc: probe.errors.append(str(exc)))

    def on_dialog(dialog: Any) -> None:
        probe.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    pg.on("dialog", on_dialog)
    pg.on("console", lambda m: m.type == "error" and probe.console_errors.append(m.text))


# ------------------------------------------------------------------- protocol helpers (raw websocket)


def _recv(ws: Any, timeout: float) -> dict[str, Any]:
    return dict(json.loads(ws.recv(timeout=timeout)))


def _connect(url: str) -> Any:
    from websockets.sync.client import connect

    return connect(url, subprotocols=["parley.v1"], open_timeout=10)


def run_conversation(ws_url: str, messages: list[str], timeout: float = 60) -> list[str]:
    """Run ``messages`` on a fresh session without interruption; the assistant texts, in order."""
    replies: list[str] = []
    with _connect(ws_url) as ws:
        ws.send(json.dumps({"type": "hello", "protocol": "parley.v1"}))
        assert _recv(ws, 10)["type"] == "session.ready"
        deadline = time.monotonic() + timeout
        for i, content in enumerate(messages):
            ws.send(json.dumps({"type": "message.send", "client_msg_id": f"ref-{i}", "content": content}))
            text = ""
            while True:
                ev = _recv(ws, max(0.1, deadline - time.monotonic()))
                if ev["type"] == "response.delta":
                    text += ev["text"]
                elif ev["type"] == "response.completed":
                    assert ev["finish_reason"] == "stop", ev
                    break
                elif ev["type"] == "error":
                    raise AssertionError(f"reference run failed: {ev}")
            replies.append(text)
    return replies


def session_log(
    ws_url: str,
    session_id: str,
    resume_token: str,
    *,
    after: int = 0,
    until: Callable[[list[dict[str, Any]]], bool],
    timeout: float = 30,
) -> list[dict[str, Any]]:
    """Resume a session as a second reader and collect logged events until ``until(events)``."""
    events: list[dict[str, Any]] = []
    with _connect(ws_url) as ws:
        ws.send(
            json.dumps(
                {
                    "type": "hello",
                    "protocol": "parley.v1",
                    "session_id": session_id,
                    "resume_token": resume_token,
                    "last_seq": after,
                }
            )
        )
        ready = _recv(ws, 10)
        assert ready["type"] == "session.ready", ready
        deadline = time.monotonic() + timeout
        while not until(events):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"condition not met; events so far: {events}")
            ev = _recv(ws, left)
            if "seq" in ev and ev["type"] != "message.duplicate":
                events.append(ev)
    return events
