"""deploy/nginx.conf, run by Debian's nginx in front of two real instances: resume and cancel through it."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from parley.client import ParleyClient

from .support import ROOT, ServerProcess, free_port, reference_reply, wait_until

pytestmark = pytest.mark.slow

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


@pytest.fixture
def balanced(redis_url: str, tmp_path: Path) -> Iterator[tuple[str, list[ServerProcess]]]:
    """Two instances behind nginx using the committed config, with only the addresses rewritten."""
    env = {
        "PARLEY_STORE": redis_url,
        "PARLEY_ECHO_TOKENS_PER_SECOND": "100",
        "PARLEY_ECHO_REPLY_TOKENS": "60",
    }
    procs = [ServerProcess(env), ServerProcess(env)]
    for p in procs:
        p.start()
    port = free_port()
    conf = (ROOT / "deploy" / "nginx.conf").read_text()
    conf = conf.replace("parley-1:8000", f"127.0.0.1:{procs[0].port}")
    conf = conf.replace("parley-2:8000", f"127.0.0.1:{procs[1].port}")
    conf = re.sub(r"listen 8080;", f"listen 127.0.0.1:{port};", conf)
    conf = conf.replace("pid /tmp/parley-nginx.pid;", f"pid {tmp_path}/nginx.pid;")
    (tmp_path / "nginx.conf").write_text(conf)
    nginx = subprocess.Popen(
        [NGINX, "-c", str(tmp_path / "nginx.conf"), "-p", str(tmp_path), "-g", "daemon off;"],
        stderr=subprocess.PIPE,
    )

    def up() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=0.5).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(up, 10, "nginx")
    yield f"ws://127.0.0.1:{port}/v1/ws", procs
    nginx.send_signal(signal.SIGQUIT)
    nginx.wait(10)
    for p in procs:
        p.stop(signal.SIGKILL)


async def test_resume_and_cancel_through_the_load_balancer(balanced: tuple[str, list[ServerProcess]]) -> None:
    """Through nginx round robin a dropped client resumes (on any replica) and a cancel from a tab works."""
    url, procs = balanced
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
    for p in procs:
        assert '"session ready"' in p.log()
