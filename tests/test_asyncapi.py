"""The protocol registry and its AsyncAPI document: valid, complete, spoken by the JS client."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import typing
from pathlib import Path

from parley.protocol import messages as m
from parley.protocol.asyncapi import WS_PATH, asyncapi_document
from parley.protocol.errors import ErrorCode

ROOT = Path(__file__).resolve().parent.parent
JS_TOOLS = ROOT / "tests" / "js"
JS_CLIENT = ROOT / "web-demo" / "parley-client.js"


def doc_types(doc: dict[str, typing.Any], *, logged: bool | None = None) -> set[str]:
    msgs = doc["components"]["messages"].values()
    return {x["name"] for x in msgs if logged is None or x["x-logged"] is logged}


def test_every_list_of_types_is_the_registry() -> None:
    """The unions, the type tuples and the logged set all name exactly the registered models."""
    client = {k for k, v in m.REGISTRY.items() if v.direction == "client"}
    logged = {k for k, v in m.REGISTRY.items() if v.logged}
    union_types = {m._wire_type(x) for x in typing.get_args(typing.get_args(m.ClientMessage)[0])}
    assert set(m.CLIENT_TYPES) == client == union_types
    assert m.LOGGED_TYPES == logged == {m._wire_type(x) for x in typing.get_args(m.LoggedEvent)}
    assert set(m.SERVER_TYPES) == set(m.REGISTRY) - client
    assert doc_types(asyncapi_document()) == set(m.REGISTRY)


def test_the_document_passes_the_official_asyncapi_parser(tmp_path: Path) -> None:
    """@asyncapi/parser (npm, installed by scripts/test into tests/js) reports no error or warning."""
    node = shutil.which("node")
    assert node, "node is not installed (scripts/test installs it)"
    assert (JS_TOOLS / "node_modules" / "@asyncapi" / "parser").is_dir(), (
        "run `npm ci --prefix tests/js` (scripts/test does)"
    )
    path = tmp_path / "asyncapi.json"
    path.write_text(json.dumps(asyncapi_document()))
    out = subprocess.run(
        [node, str(JS_TOOLS / "validate_asyncapi.mjs"), str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=JS_TOOLS,
    )
    diagnostics = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    serious = [d for d in diagnostics if d["severity"] in (0, 1)]
    assert out.returncode == 0 and not serious, (out.stderr, serious)


def test_the_websocket_address_resolves_once() -> None:
    """Server pathname plus channel address is /v1/ws, not /v1/ws/v1/ws."""
    doc = asyncapi_document()
    (server,) = doc["servers"].values()
    assert server.get("pathname", "") + doc["channels"]["session"]["address"] == WS_PATH == "/v1/ws"


def js_lists() -> dict[str, list[str]]:
    """The JS client's exported type and code lists, as Node sees them when it imports the module."""
    node = shutil.which("node")
    assert node, "node is not installed (scripts/test installs it)"
    script = (
        f"const m = await import({json.dumps(JS_CLIENT.as_uri())});"
        "console.log(JSON.stringify({client: m.CLIENT_TYPES, logged: m.LOGGED_TYPES,"
        " ephemeral: m.EPHEMERAL_TYPES, codes: m.ERROR_CODES}));"
    )
    out = subprocess.run(
        [node, "--input-type=module", "-e", script], capture_output=True, text=True, timeout=60, check=True
    )
    lists: dict[str, list[str]] = json.loads(out.stdout)
    return lists


def test_the_js_client_speaks_the_types_of_the_document() -> None:
    """web-demo/parley-client.js's exported type lists, the types it sends, the cases it handles and
    its error codes all match the generated AsyncAPI document: a renamed or added type fails here."""
    source = JS_CLIENT.read_text()
    doc = asyncapi_document()
    js = js_lists()
    assert set(js["client"]) == set(m.CLIENT_TYPES)
    assert set(js["logged"]) == doc_types(doc, logged=True)
    server_types = doc_types(doc) - set(m.CLIENT_TYPES)
    assert set(js["ephemeral"]) == server_types - doc_types(doc, logged=True)
    assert set(js["codes"]) == {code.value for code in ErrorCode}
    json_schema_types = {"object", "array", "string", "number", "integer", "boolean", "null"}  # tool specs
    sent = set(re.findall(r'\btype: "([a-z_.]+)"', source)) - json_schema_types
    handled = set(re.findall(r'\bcase "([a-z_.]+)"', source))
    assert set(m.CLIENT_TYPES) <= sent, "the client no longer sends every client message type"
    assert sent | handled <= doc_types(doc), (
        f"names the document does not have: {(sent | handled) - doc_types(doc)}"
    )
