"""The JS client as an npm package in Node, against a real ``parley serve``: Node >= 22's global
WebSocket (Node 20 with --experimental-websocket), Node 20 given ``ws``, Node 20 given nothing,
and the tarball of ``npm pack`` installed into a scratch project, imported and type-checked."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .support import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "web-demo"
TOOLS = ROOT / "tests" / "js"
NODE_TEST = ROOT / "tests" / "js" / "client_node.test.mjs"
CONSUMER = ROOT / "tests" / "js" / "consumer.ts"


def node() -> str:
    exe = shutil.which("node")
    if exe is None:
        pytest.fail("node is not installed (scripts/test installs it)")
    return exe


def npm() -> str:
    exe = shutil.which("npm")
    if exe is None:
        pytest.fail("npm is not installed (scripts/test installs it)")
    return exe


@pytest.fixture(scope="module")
def tools() -> Path:
    """tests/js/node_modules (tsc, ws) as its lockfile says; scripts/test installs it first."""
    modules = TOOLS / "node_modules"
    if not (modules / "ws").is_dir() or not (modules / ".bin" / "tsc").exists():
        subprocess.run(
            [npm(), "ci", "--no-audit", "--no-fund"], cwd=TOOLS, check=True, timeout=300, capture_output=True
        )
    return modules


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    env = {"PARLEY_STORE": "memory://", "PARLEY_ECHO_TOKENS_PER_SECOND": "100"}
    p = ServerProcess({**env, "PARLEY_ECHO_REPLY_TOKENS": "40"})
    p.start()
    yield p
    p.stop(signal.SIGKILL)


def run_node_tests(args: list[str], test_file: Path, env: dict[str, str], cwd: Path) -> None:
    proc = subprocess.run(
        [node(), *args, "--test", "--test-timeout=30000", str(test_file)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env={"PATH": "/usr/bin:/bin", **env},
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert re.search(r"^# fail 0$", proc.stdout, re.M) and not re.search(r"^# pass 0$", proc.stdout, re.M)


def test_node_with_a_global_websocket_streams_resumes_cancels_and_rates(server: ServerProcess) -> None:
    """With Node 22's global WebSocket (Node 20: --experimental-websocket) the client passes its e2e suite."""
    env = {"PARLEY_URL": server.url, "PARLEY_CLIENT": str(PACKAGE / "parley-client.js")}
    run_node_tests(["--experimental-websocket"], NODE_TEST, env, ROOT)


def test_node_given_the_ws_package_works_too(server: ServerProcess, tools: Path) -> None:
    """Node 20 without a global WebSocket works when handed ``ws``: new ParleyClient(url, {WebSocket})."""
    env = {
        "PARLEY_URL": server.url,
        "PARLEY_CLIENT": str(PACKAGE / "parley-client.js"),
        "PARLEY_WS": str(tools / "ws" / "wrapper.mjs"),
    }
    run_node_tests([], NODE_TEST, env, ROOT)


def test_node_without_any_websocket_fails_at_construction_with_a_clear_error() -> None:
    """No global WebSocket and none given: the constructor throws a TypeError naming the fix."""
    script = (
        f"const {{ ParleyClient }} = await import({json.dumps(str(PACKAGE / 'parley-client.js'))});"
        "delete globalThis.WebSocket;"
        "try { new ParleyClient('ws://127.0.0.1:9/v1/ws'); console.log('constructed'); }"
        "catch (e) { console.log(e.name + ': ' + e.message); }"
    )
    proc = subprocess.run(
        [node(), "--input-type=module", "-e", script], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.strip()
    assert out.startswith("TypeError: ParleyClient: this runtime has no WebSocket"), out
    assert "{ WebSocket }" in out and '"ws"' in out


def declared_exports() -> set[str]:
    text = (PACKAGE / "parley-client.d.ts").read_text()
    return set(re.findall(r"^export declare (?:const|class|function) (\w+)", text, re.M))


def test_declarations_name_exactly_the_module_exports() -> None:
    """parley-client.d.ts declares every runtime export of parley-client.js and nothing more."""
    script = (
        f"const m = await import({json.dumps(str(PACKAGE / 'parley-client.js'))});"
        "console.log(JSON.stringify(Object.keys(m).filter((k) => k !== 'default').sort()));"
    )
    proc = subprocess.run(
        [node(), "--input-type=module", "-e", script], capture_output=True, text=True, timeout=30, check=True
    )
    assert set(json.loads(proc.stdout)) == declared_exports()


def test_js_error_codes_are_the_protocols() -> None:
    """Every error code the JS client knows is a wire code of parley.protocol (a code the server gained
    since is handled as unknown: kept as a string, terminal when connection-level)."""
    from parley.protocol import ErrorCode

    script = (
        f"const m = await import({json.dumps(str(PACKAGE / 'parley-client.js'))});"
        "console.log(JSON.stringify(m.ERROR_CODES));"
    )
    proc = subprocess.run(
        [node(), "--input-type=module", "-e", script], capture_output=True, text=True, timeout=30, check=True
    )
    codes = json.loads(proc.stdout)
    assert len(codes) == len(set(codes)) and set(codes) <= {c.value for c in ErrorCode}


def test_npm_pack_installs_offline_into_a_scratch_project_imports_and_type_checks(
    server: ServerProcess, tools: Path, tmp_path: Path
) -> None:
    """The packed tarball installs offline, runs the e2e suite by its package name, and tsc --strict
    accepts a TypeScript consumer against its declarations."""
    packed = subprocess.run(
        [npm(), "pack", "--json", "--pack-destination", str(tmp_path)],
        cwd=PACKAGE,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    info = json.loads(packed.stdout)[0]
    assert info["name"] == "@parley-chat/client"
    files = sorted(f["path"] for f in info["files"])
    assert files == ["package.json", "parley-client.d.ts", "parley-client.js"]
    tarball = tmp_path / info["filename"]

    app = tmp_path / "app"
    app.mkdir()
    (app / "package.json").write_text(json.dumps({"name": "scratch", "private": True, "type": "module"}))
    subprocess.run(
        [npm(), "install", "--offline", "--no-audit", "--no-fund", str(tarball)],
        cwd=app,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    installed = app / "node_modules" / "@parley-chat" / "client"
    assert (installed / "parley-client.d.ts").is_file()

    shutil.copy(NODE_TEST, app / "client_node.test.mjs")
    env = {"PARLEY_URL": server.url, "PARLEY_CLIENT": "@parley-chat/client"}
    run_node_tests(["--experimental-websocket"], app / "client_node.test.mjs", env, app)

    shutil.copy(CONSUMER, app / "consumer.ts")
    (app / "tsconfig.json").write_text(
        json.dumps(
            {
                "compilerOptions": {
                    "strict": True,
                    "noEmit": True,
                    "target": "es2022",
                    "module": "nodenext",
                    "moduleResolution": "nodenext",
                    "lib": ["es2022", "dom"],
                    "types": [],
                    "skipLibCheck": False,
                },
                "files": ["consumer.ts"],
            }
        )
    )
    tsc = subprocess.run(
        [str(tools / ".bin" / "tsc"), "-p", str(app)], capture_output=True, text=True, timeout=120, cwd=app
    )
    assert tsc.returncode == 0, tsc.stdout + tsc.stderr
