"""Measuring the server under test from the outside: CPU and memory from /proc, Redis command counts.

Only meaningful when the load client runs on the server's host (``--server-pid``).
A pid's worker children (``parley serve --workers N``) are included.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Any

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may contain spaces: split after its closing parenthesis
    return raw[raw.rindex(")") + 2 :].split()


def family(pids: list[int]) -> list[int]:
    """The given pids and all their living descendants."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields:
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    out: list[int] = []
    todo = list(pids)
    while todo:
        pid = todo.pop()
        if pid not in out:
            out.append(pid)
            todo.extend(children.get(pid, []))
    return out


def cpu_seconds(pids: list[int]) -> dict[int, tuple[float, float]]:
    """(user, system) CPU seconds consumed so far, per pid (utime, stime)."""
    out: dict[int, tuple[float, float]] = {}
    for pid in pids:
        fields = _stat_fields(pid)
        if fields:
            out[pid] = (int(fields[11]) / _TICK, int(fields[12]) / _TICK)
    return out


def rss_kb(pids: list[int]) -> int:
    """Resident memory (VmRSS) summed over pids, in KiB."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
                    break
        except OSError:
            continue
    return total


class ServerProbe:
    """CPU and memory of the server processes between ``start()`` and ``stop()``."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self._cpu0: dict[int, tuple[float, float]] = {}
        self.rss_start_kb = 0
        self.rss_loaded_kb: int | None = None
        self.rss_end_kb = 0
        self.cpu_s = 0.0
        self.user_s = 0.0
        self.system_s = 0.0
        self.tracked: list[int] = []

    def start(self) -> None:
        self.tracked = family(self.pids)
        self._cpu0 = cpu_seconds(self.tracked)
        self.rss_start_kb = rss_kb(self.tracked)

    def cpu_now(self) -> float:
        """CPU seconds the tracked processes have used so far (a burst reads it before and after)."""
        return sum(u + s for u, s in cpu_seconds(self.tracked).values())

    def mark_loaded(self) -> None:
        """Remember the memory now (idle mode: once every connection is open)."""
        self.rss_loaded_kb = rss_kb(self.tracked)

    def stop(self) -> None:
        now = cpu_seconds(self.tracked)
        self.user_s = sum(u - self._cpu0.get(p, (0.0, 0.0))[0] for p, (u, _) in now.items())
        self.system_s = sum(s - self._cpu0.get(p, (0.0, 0.0))[1] for p, (_, s) in now.items())
        self.cpu_s = self.user_s + self.system_s
        self.rss_end_kb = rss_kb(self.tracked)

    def to_dict(self, tokens: int, connections: int) -> dict[str, Any]:
        out: dict[str, Any] = {
            "pids": self.tracked,
            "cpu_s": round(self.cpu_s, 3),
            "user_s": round(self.user_s, 3),
            "system_s": round(self.system_s, 3),
            "cpu_s_per_million_tokens": round(self.cpu_s / tokens * 1e6, 3) if tokens else None,
            "rss_start_kb": self.rss_start_kb,
            "rss_end_kb": self.rss_end_kb,
        }
        if self.rss_loaded_kb is not None:
            out["rss_loaded_kb"] = self.rss_loaded_kb
            if connections:
                out["rss_per_connection_kb"] = round(
                    (self.rss_loaded_kb - self.rss_start_kb) / connections, 3
                )
        return out


class RedisProbe:
    """``INFO commandstats`` (and the redis-server's CPU, when local) before and after a run."""

    def __init__(self, url: str) -> None:
        import redis

        self._r = redis.Redis.from_url(url, socket_timeout=5)
        self._before: dict[str, int] = {}
        self._after: dict[str, int] = {}
        self._cpu0 = 0.0
        self._cpu1 = 0.0

    def _calls(self) -> dict[str, int]:
        stats = self._r.info("commandstats")
        return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}

    def _cpu(self) -> float:
        info = self._r.info("cpu")
        return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])

    def cpu_now(self) -> float:
        """Redis's CPU seconds so far (one INFO round trip)."""
        return self._cpu()

    def start(self) -> None:
        self._before = self._calls()
        self._cpu0 = self._cpu()

    def stop(self) -> None:
        self._cpu1 = self._cpu()
        self._after = self._calls()
        self._r.close()

    def to_dict(self, tokens: int) -> dict[str, Any]:
        # our own INFO calls are excluded: they are not the server's doing
        diff = {
            k: n - self._before.get(k, 0)
            for k, n in self._after.items()
            if n - self._before.get(k, 0) > 0 and k != "info"
        }
        scripts = sum(n for k, n in diff.items() if k in ("evalsha", "eval", "fcall", "evalsha_ro"))
        total = sum(diff.values())
        return {
            "commands": total,  # every command, including the ones Lua scripts issue
            "commands_per_token": round(total / tokens, 4) if tokens else None,
            "script_calls": scripts,
            "script_calls_per_token": round(scripts / tokens, 4) if tokens else None,
            "by_command": dict(sorted(diff.items(), key=lambda kv: -kv[1])),
            "cpu_s": round(self._cpu1 - self._cpu0, 3),
            "cpu_s_per_million_tokens": round((self._cpu1 - self._cpu0) / tokens * 1e6, 3)
            if tokens
            else None,
        }


def machine() -> dict[str, Any]:
    """Where the run happened."""
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kb = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    except OSError:
        pass
    versions: dict[str, str] = {}
    for mod in ("websockets", "uvicorn", "uvloop", "starlette", "redis"):
        try:
            versions[mod] = __import__(mod).__version__
        except (ImportError, AttributeError):
            continue
    return {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_mb": mem_kb // 1024,
        "python": sys.version.split()[0],
        "packages": versions,
    }
