"""/metrics of a real server that has served a turn, checked by Prometheus's own linter."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from importlib.metadata import version

import httpx

from parley.client import ParleyClient

from .support import live_server

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


async def test_metrics_pass_promtool_and_carry_process_and_build_info(redis_url: str) -> None:
    """``promtool check metrics`` accepts /metrics; it holds process_* and parley_build_info."""
    async with live_server(store=redis_url, echo_tokens_per_second=0, echo_reply_tokens=5) as live:
        async with ParleyClient(live.url) as c:
            await c.ask("fill every histogram")
        async with httpx.AsyncClient() as http:
            text = (await http.get(f"{live.http}/metrics")).text
    out = await asyncio.to_thread(
        subprocess.run, [PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0 and out.stdout == "" and out.stderr == "", out.stdout + out.stderr
    assert f'parley_build_info{{protocol="parley.v1",version="{version("parley")}"}} 1.0' in text
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds"):
        assert f"\n{name} " in text, name
    assert "parley_redis_latency_seconds_bucket" in text and "parley_ttft_seconds_bucket" in text
