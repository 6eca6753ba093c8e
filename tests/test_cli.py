"""The ``parley`` command as a user runs it: every bad input is one line, exit 2 (config) or 1 (else)."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import select
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from parley.sessions import STORE_SCHEMES

from .support import ROOT, ServerProcess, free_port, wait_until

#: The installed console script, as a user types it (falls back to the module in odd environments).
PARLEY = [exe] if (exe := shutil.which("parley", path=str(Path(sys.executable).parent))) else [
    sys.executable,
    "-m",
    "parley.server.cli",
]  # fmt: skip


def clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment without any PARLEY_* or OpenAI setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PARLEY_", "OPENAI_"))}
    env.update(extra)
    return env


def run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PARLEY, *args],
        env=env if env is not None else clean_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def bad_toml(tmp: Path) -> str:
    path = tmp / "broken.toml"
    path.write_text('[profiles.support\nmodel = "x"\n')
    return str(path)


# (id, argv, env, exit code, words the one line must contain)
BAD_INPUTS: list[tuple[str, list[str], dict[str, str], int, list[str]]] = [
    ("unknown model", ["serve", "--model", "gpt-4o"], {}, 2, ["'gpt-4o'", "openai:MODEL"]),
    ("unknown store", ["serve", "--store", "postgres://x"], {}, 2, ["postgres://", *STORE_SCHEMES]),
    ("profiles toml error", ["serve", "--profiles", "{bad_toml}"], {}, 2, ["not valid TOML", "line 1"]),
    ("missing profiles", ["serve", "--profiles", "/nonexistent/p.toml"], {}, 2, ["/nonexistent/p.toml"]),
    ("log level", ["serve"], {"PARLEY_LOG_LEVEL": "verbose"}, 2, ["PARLEY_LOG_LEVEL", "debug"]),
    (
        "public key",
        ["serve"],
        {"PARLEY_AUTH_JWT_PUBLIC_KEY": "notapem"},
        2,
        ["PARLEY_AUTH_JWT_PUBLIC_KEY", "PEM"],
    ),
    ("openai without key", ["serve", "--model", "openai:X"], {}, 2, ["OPENAI_API_KEY"]),
    (
        "unreachable store",
        ["feedback", "export", "--store", "redis://nohost:1/0"],
        {},
        1,
        ["redis://nohost:1/0", "Redis"],
    ),
    ("port range", ["serve", "--port", "99999"], {}, 2, ["--port", "65535"]),
    ("port not a number", ["serve"], {"PARLEY_PORT": "abc"}, 2, ["PARLEY_PORT", "integer"]),
    ("workers need redis", ["serve", "--workers", "2"], {}, 2, ["--workers 2", "redis://"]),
    ("unknown flag", ["serve", "--prot", "8000"], {}, 2, ["--prot", "--help"]),
    ("unknown command", ["srve"], {}, 2, ["srve", "--help"]),
    ("token without secret", ["token", "--sub", "u", "--tenant", "t"], {}, 2, ["PARLEY_AUTH_JWT_SECRET"]),
    ("short secret", ["serve"], {"PARLEY_AUTH_JWT_SECRET": "short"}, 2, ["32 bytes"]),
    ("bad since", ["feedback", "export", "--since", "yesterdayish"], {}, 2, ["yesterdayish"]),
    ("loadtest bad url", ["loadtest", "--url", "http://x"], {}, 2, ["ws://"]),
]


@pytest.mark.parametrize(
    ("argv", "env", "code", "words"), [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS]
)
def test_every_bad_input_is_one_line(
    tmp_path: Path, argv: list[str], env: dict[str, str], code: int, words: list[str]
) -> None:
    """A bad flag, setting, file or unreachable store prints one ``parley: what: fix`` line, no traceback."""
    argv = [a.replace("{bad_toml}", bad_toml(tmp_path)) for a in argv]
    out = run(*argv, env=clean_env(**env))
    lines = out.stderr.splitlines()
    assert out.returncode == code, out.stderr
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("parley: ") and ": " in lines[0][len("parley: ") :], lines[0]
    assert "Traceback" not in out.stderr and out.stdout == ""
    for word in words:
        assert word in lines[0], lines[0]


def test_a_port_in_use_is_one_line() -> None:
    """A port another process listens on is refused in one line (exit 1) before the server starts."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = run("serve", "--port", str(port))
    assert out.returncode == 1, out.stderr
    assert out.stderr.splitlines() == [
        f"parley: port {port} on 127.0.0.1 is already in use: "
        "stop what listens there, or pick another --port (PARLEY_PORT)"
    ]


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_shows_the_traceback_then_the_line(how: str) -> None:
    """With --debug (or PARLEY_LOG_LEVEL=debug) the traceback comes first, the one line still last."""
    args = ["--debug", "serve", "--profiles", "/nonexistent/p.toml"] if how == "flag" else ["serve"]
    env = (
        clean_env()
        if how == "flag"
        else clean_env(PARLEY_AUTH_JWT_PUBLIC_KEY="notapem", PARLEY_LOG_LEVEL="debug")
    )
    out = run(*args, env=env)
    assert out.returncode == 2
    assert "Traceback (most recent call last)" in out.stderr
    assert out.stderr.splitlines()[-1].startswith("parley: ")


def test_version_and_help_show_what_a_newcomer_needs() -> None:
    """``parley --version`` names the version; ``serve --help`` shows each flag's default and variable."""
    from importlib.metadata import version

    out = run("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"parley {version('parley')}"
    helptext = " ".join(run("serve", "--help").stdout.split())  # argparse wraps lines
    for default in (
        "default: 127.0.0.1",
        "default: 8000",
        "default: memory://",
        "default: echo",
        "default: 1",
    ):
        assert default in helptext, default
    assert "PARLEY_PORT" in helptext and "redis://" in helptext


def test_token_mints_the_claims_asked_for() -> None:
    """``parley token`` mints an HS256 JWT with sub, tenant and the TTL asked for."""
    import jwt

    secret = "a-development-secret-of-32-bytes!!"
    out = run(
        "token",
        "--sub",
        "ada",
        "--tenant",
        "acme",
        "--ttl",
        "30m",
        env=clean_env(PARLEY_AUTH_JWT_SECRET=secret),
    )
    assert out.returncode == 0, out.stderr
    claims = jwt.decode(out.stdout.strip(), secret, algorithms=["HS256"])
    assert (claims["sub"], claims["tenant"]) == ("ada", "acme")
    assert 1790 <= claims["exp"] - time.time() <= 1800
    bad = run(
        "token", "--sub", "a", "--tenant", "t", "--ttl", "soon", env=clean_env(PARLEY_AUTH_JWT_SECRET=secret)
    )
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--ttl" in bad.stderr


def _serve_first_lines(tty: bool, env: dict[str, str], count: int = 3) -> list[str]:
    """Start ``parley serve`` with stderr on a pseudo-terminal or a pipe; its first log lines."""
    port = free_port()
    full_env = clean_env(PARLEY_PORT=str(port), **env)
    if tty:
        leader, follower = pty.openpty()
        proc = subprocess.Popen([*PARLEY, "serve"], env=full_env, cwd=ROOT, stderr=follower, stdout=follower)
        os.close(follower)
        reader = leader
    else:
        proc = subprocess.Popen([*PARLEY, "serve"], env=full_env, cwd=ROOT, stderr=subprocess.PIPE)
        assert proc.stderr is not None
        reader = proc.stderr.fileno()
    buf = b""
    deadline = time.monotonic() + 30
    try:
        while buf.count(b"\n") < count and time.monotonic() < deadline:
            ready, _, _ = select.select([reader], [], [], 1)
            if ready:
                chunk = os.read(reader, 4096)
                if not chunk:
                    break
                buf += chunk
    finally:
        proc.terminate()
        proc.wait(15)
        if tty:
            os.close(leader)
    return buf.decode(errors="replace").splitlines()[:count]


def test_logs_are_text_at_a_terminal_and_json_otherwise() -> None:
    """stderr a TTY: human-readable lines; a pipe: JSON lines; PARLEY_LOG_FORMAT overrides both."""
    at_terminal = _serve_first_lines(True, {})
    assert at_terminal and not any(line.lstrip().startswith("{") for line in at_terminal), at_terminal
    assert any("AUTH IS OFF" in line for line in at_terminal)
    piped = _serve_first_lines(False, {})
    assert piped and all(json.loads(line)["level"] for line in piped), piped
    forced = _serve_first_lines(True, {"PARLEY_LOG_FORMAT": "json"})
    assert forced and all(json.loads(line)["msg"] for line in forced), forced


@pytest.mark.slow
def test_workers_with_a_redis_store_serve(redis_url: str) -> None:
    """``--workers 2`` is refused only with a memory store: with Redis both workers serve."""
    port = free_port()
    proc = subprocess.Popen(
        [*PARLEY, "serve", "--workers", "2", "--store", redis_url, "--port", str(port)],
        env=clean_env(),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )

    def healthy() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(proc.stderr.read().decode() if proc.stderr else "exited")
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=0.5).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(healthy, 30, "parley --workers 2")
    finally:
        proc.terminate()
        proc.wait(30)
    assert proc.stderr is not None
    started = [line for line in proc.stderr.read().decode().splitlines() if "Started server process" in line]
    assert len(started) == 2


def test_plot_without_matplotlib_is_refused_before_the_run() -> None:
    """``loadtest --plot`` without the plot extra says so in one line at once, before any session runs."""
    nobody = f"ws://127.0.0.1:{free_port()}/v1/ws"  # nothing listens: a run would end "nothing measured" (3)
    code = (
        "import sys; sys.modules['matplotlib'] = None\n"
        "from parley.server.cli import main\n"
        f"sys.exit(main(['loadtest', '--url', {nobody!r}, '-n', '1', '-t', '1', '--plot', 'out.png', '-q']))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=clean_env(), cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2, out.stderr
    assert out.stderr.splitlines() == [
        "parley: --plot needs matplotlib: pip install 'parley[plot]', or drop --plot"
    ]


ADMIN = "an-admin-token-of-at-least-32-characters"


async def _rate_one_reply(ws_url: str) -> str:
    """One turn on a new session, rated up over the raw protocol; the response id."""
    import websockets

    async with websockets.connect(ws_url, subprotocols=["parley.v1"], open_timeout=10) as ws:  # type: ignore[list-item]
        await ws.send(json.dumps({"type": "hello", "protocol": "parley.v1"}))
        async with asyncio.timeout(20):
            assert json.loads(await ws.recv())["type"] == "session.ready"
            await ws.send(json.dumps({"type": "message.send", "client_msg_id": "c1", "content": "rate me"}))
            while (ev := json.loads(await ws.recv()))["type"] != "response.completed":
                pass
            rid = str(ev["response_id"])
            await ws.send(json.dumps({"type": "feedback", "response_id": rid, "rating": "up"}))
            while json.loads(await ws.recv())["type"] != "feedback.recorded":
                pass
    return rid


async def test_feedback_export_works_with_the_default_memory_store() -> None:
    """With the default memory store, ``parley feedback export`` asks the local server (admin token)."""
    server = ServerProcess({"PARLEY_ADMIN_TOKEN": ADMIN, "PARLEY_ECHO_TOKENS_PER_SECOND": "0"})
    server.start()
    try:
        rid = await _rate_one_reply(server.url)
        env = clean_env(PARLEY_PORT=str(server.port), PARLEY_ADMIN_TOKEN=ADMIN)
        out = await asyncio.to_thread(run, "feedback", "export", "--since", "1h", env=env)
        assert out.returncode == 0, out.stderr
        rows = [json.loads(line) for line in out.stdout.splitlines()]
        assert [(r["response_id"], r["rating"]) for r in rows] == [(rid, "up")]
        # without the admin token: one line saying where to get it
        out = await asyncio.to_thread(run, "feedback", "export", env=clean_env(PARLEY_PORT=str(server.port)))
        assert out.returncode == 2 and len(out.stderr.splitlines()) == 1
        assert "PARLEY_ADMIN_TOKEN" in out.stderr
    finally:
        server.stop()
    # no server there any more: one line, exit 1
    out = await asyncio.to_thread(run, "feedback", "export", env=env)
    assert out.returncode == 1 and len(out.stderr.splitlines()) == 1, out.stderr
    assert f"127.0.0.1:{server.port}" in out.stderr and "parley serve" in out.stderr
