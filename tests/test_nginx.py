"""deploy/nginx.conf, run by Debian's nginx in front of real instances found by name through DNS.

The replicas listen on 127.0.0.2, .3 (and later .4), all on one port, like containers
of one compose service; a small DNS server on loopback answers the service name with
their addresses, as Docker's embedded DNS does. Only the resolver's address, the
listen address and the pid file of the committed config are rewritten.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from parley.client import ParleyClient

from .support import ROOT, free_port, reference_reply, wait_until

pytestmark = pytest.mark.slow

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
SERVICE = "parley"  # the name deploy/nginx.conf proxies to (the compose service)


class StubDNS:
    """A loopback DNS server answering A queries for one name with a list of addresses (changeable)."""

    def __init__(self, name: str, addresses: list[str]) -> None:
        self.name = name.lower().rstrip(".")
        self.addresses = list(addresses)
        self.queries = 0
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                data, peer = self.sock.recvfrom(512)
            except OSError:
                return
            reply = self._answer(data)
            if reply:
                self.sock.sendto(reply, peer)

    def _answer(self, query: bytes) -> bytes | None:
        if len(query) < 12:
            return None
        (qid,) = struct.unpack("!H", query[:2])
        labels, i = [], 12
        while i < len(query) and query[i]:
            labels.append(query[i + 1 : i + 1 + query[i]].decode(errors="replace"))
            i += 1 + query[i]
        question = query[12 : i + 5]  # the name, its terminating zero, qtype and qclass
        qtype = struct.unpack("!H", query[i + 1 : i + 3])[0] if i + 3 <= len(query) else 0
        self.queries += 1
        known = ".".join(labels).lower() == self.name
        answers = self.addresses if known and qtype == 1 else []
        flags = 0x8180 if known else 0x8183  # a response, recursion available; NXDOMAIN for other names
        out = struct.pack("!HHHHHH", qid, flags, 1, len(answers), 0, 0) + question
        for addr in answers:  # a pointer to the question's name, type A, class IN, TTL 1 s, 4 bytes
            out += struct.pack("!HHHIH", 0xC00C, 1, 1, 1, 4) + socket.inet_aton(addr)
        return out

    def close(self) -> None:
        self.sock.close()


@dataclass
class Replica:
    """``parley serve`` on one loopback address (a container of the service)."""

    host: str
    port: int
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    log_path: str = field(default="")

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")}
        env.update(self.env, PARLEY_HOST=self.host, PARLEY_PORT=str(self.port))
        fd, self.log_path = tempfile.mkstemp(prefix="parley-replica-", suffix=".log")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "parley.server.cli", "serve"], env=env, cwd=ROOT, stdout=fd, stderr=fd
        )
        os.close(fd)
        wait_until(self._healthy, 20, f"parley on {self.host}:{self.port}")

    def _healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"replica exited: {self.log()}")
        try:
            return httpx.get(f"http://{self.host}:{self.port}/healthz", timeout=0.5).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
            self.proc = None

    def log(self) -> str:
        return Path(self.log_path).read_text() if self.log_path else ""

    def sessions_opened(self) -> int:
        return self.log().count('"session ready"')


def port_free_on(hosts: list[str]) -> int:
    """A port free on every one of ``hosts`` (replicas of one service share their port)."""
    for _ in range(50):
        port = free_port()
        try:
            for host in hosts:
                with socket.socket() as s:
                    s.bind((host, port))
        except OSError:
            continue
        return port
    raise RuntimeError("no port free on every replica address")


@dataclass
class Balanced:
    url: str
    http: str
    dns: StubDNS
    replicas: list[Replica]


@pytest.fixture
def balanced(redis_url: str, tmp_path: Path) -> Iterator[Balanced]:
    """Two replicas found by name behind nginx, with the committed config."""
    env = {
        "PARLEY_STORE": redis_url,
        "PARLEY_ECHO_TOKENS_PER_SECOND": "100",
        "PARLEY_ECHO_REPLY_TOKENS": "60",
    }
    port = port_free_on(["127.0.0.2", "127.0.0.3", "127.0.0.4"])
    replicas = [Replica("127.0.0.2", port, env), Replica("127.0.0.3", port, env)]
    for r in replicas:
        r.start()
    dns = StubDNS(SERVICE, [r.host for r in replicas])
    conf = (ROOT / "deploy" / "nginx.conf").read_text()
    conf, resolvers = re.subn(r"resolver 127\.0\.0\.11 ", f"resolver 127.0.0.1:{dns.port} ", conf)
    assert resolvers == 1, "deploy/nginx.conf no longer names Docker's resolver (127.0.0.11)"
    assert f"set $parley_replicas {SERVICE}:8000;" in conf
    conf = conf.replace(f"{SERVICE}:8000;", f"{SERVICE}:{port};")
    lb_port = free_port()
    conf = conf.replace("listen 8080;", f"listen 127.0.0.1:{lb_port};")
    conf = conf.replace("pid /tmp/parley-nginx.pid;", f"pid {tmp_path}/nginx.pid;")
    (tmp_path / "nginx.conf").write_text(conf)
    nginx = subprocess.Popen(
        [NGINX, "-c", str(tmp_path / "nginx.conf"), "-p", str(tmp_path), "-g", "daemon off;"],
        stderr=subprocess.PIPE,
    )
    http = f"http://127.0.0.1:{lb_port}"

    def up() -> bool:
        try:
            return httpx.get(f"{http}/healthz", timeout=0.5).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(up, 10, "nginx")
    yield Balanced(f"ws://127.0.0.1:{lb_port}/v1/ws", http, dns, replicas)
    nginx.send_signal(signal.SIGQUIT)
    nginx.wait(10)
    dns.close()
    for r in replicas:
        r.stop()


async def test_resume_and_cancel_through_the_load_balancer(balanced: Balanced) -> None:
    """Through nginx round robin a dropped client resumes (on any replica) and a cancel from a tab works."""
    url = balanced.url
    expected, _ = await reference_reply(url, "via nginx")
    c = ParleyClient(url)
    await c.connect()
    cid = await c.send("via nginx")
    for _ in range(10):
        await c.next_event("response.delta")
    c.drop()
    reply = await c.collect(cid, timeout=20)
    assert reply.text == expected and c.gaps == 0 and c.duplicates_dropped == 0 and c.resumes == 1
    # a second tab (round robin: another connection) cancels a running response
    cid = await c.send("cancel via nginx")
    async with ParleyClient(
        url, session_id=c.session_id, resume_token=c.resume_token, last_seq=c.last_seq
    ) as tab:
        started = await tab.next_event("response.started")
        await tab.cancel(started["response_id"])
        assert (await tab.next_event("response.completed"))["finish_reason"] == "cancelled"
    assert (await c.collect(cid)).finish_reason == "cancelled"
    await c.close()
    # both replicas served connections: no stickiness was needed
    for r in balanced.replicas:
        assert r.sessions_opened() >= 1, r.host


async def test_a_replaced_replica_is_found_by_name(balanced: Balanced) -> None:
    """A replica replaced by one at a new address (a recreated container) serves through nginx again."""
    old = balanced.replicas[1]
    old.stop()
    new = Replica("127.0.0.4", old.port, old.env)
    new.start()
    balanced.replicas.append(new)
    balanced.dns.addresses = [balanced.replicas[0].host, new.host]

    async def reaches_new() -> bool:
        async with ParleyClient(balanced.url) as c:
            await c.ask("who serves me")
        return new.sessions_opened() > 0

    # nginx re-asks the name when the resolver's `valid` time has passed (5 s in the committed config)
    deadline = time.monotonic() + 30
    while not await reaches_new():
        assert time.monotonic() < deadline, "nginx never found the new replica"
    assert balanced.dns.queries >= 2


async def test_sse_passes_through_unbuffered(balanced: Balanced) -> None:
    """Through nginx an SSE tail gets each event as it is logged: session.ready at once, then a turn live."""
    async with httpx.AsyncClient(base_url=balanced.http, timeout=10) as c:
        created = (await c.post("/v1/sessions")).json()
        sid, h = created["session_id"], {"Parley-Resume-Token": created["resume_token"]}
        async with c.stream("GET", f"/v1/sessions/{sid}/events", headers=h) as tail:
            assert tail.status_code == 200
            lines = tail.aiter_lines()
            kinds = [line async for line in _events(lines, "session.ready")]  # one small event, alone
            assert kinds[-1] == "session.ready"
            job = await c.post(
                f"/v1/sessions/{sid}/messages",
                headers={**h, "Prefer": "respond-async"},
                json={"client_msg_id": "c1", "content": "through nginx"},
            )
            assert job.status_code == 202
            kinds = [line async for line in _events(lines, "response.delta")]
            running = (await c.get(job.headers["location"], headers=h)).json()
            assert running["status"] == "running"  # the first delta arrived while the reply was being written
            kinds = [line async for line in _events(lines, "response.completed")]  # the turn is over
        async with c.stream(
            "POST",
            f"/v1/sessions/{sid}/messages",
            headers={**h, "Accept": "text/event-stream"},
            json={"client_msg_id": "c2", "content": "streamed through nginx"},
        ) as turn:
            kinds = [line async for line in _events(turn.aiter_lines(), None)]
            assert turn.status_code == 200
        assert kinds[0] == "message.accepted" and kinds[-1] == "response.completed"


async def _events(lines: Any, until: str | None) -> Any:
    """The event types of an SSE stream (read line by line) up to ``until`` (None: its end)."""
    async for line in lines:
        if line.startswith("event: "):
            kind = line[len("event: ") :]
            yield kind
            if kind == until:
                return
