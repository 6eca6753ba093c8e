"""The AsyncAPI 3 document, generated from the message models (never written by hand)."""

from __future__ import annotations

from typing import Any, get_args

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from . import messages as m
from .errors import CloseCode, ErrorCode

#: The models the document describes: the protocol registry's (``messages.REGISTRY``).
CLIENT_MODELS = m.CLIENT_MODELS
SERVER_MODELS = m.SERVER_MODELS
#: Where the WebSocket is served: the channel's address (the server entry has no path of its own,
#: or the two would join into ``/v1/ws/v1/ws``).
WS_PATH = "/v1/ws"


def _message_name(model: type[BaseModel]) -> str:
    """The wire ``type`` of a message model (its ``Literal`` annotation)."""
    return str(get_args(model.model_fields["type"].annotation)[0])


def _asyncapi_schema(node: Any) -> Any:
    """pydantic's JSON Schema as an AsyncAPI 3 Schema Object: ``discriminator`` is the property
    name (a string), not OpenAPI's ``{propertyName, mapping}`` object."""
    if isinstance(node, dict):
        out = {k: _asyncapi_schema(v) for k, v in node.items()}
        disc = out.get("discriminator")
        if isinstance(disc, dict) and "propertyName" in disc:
            out["discriminator"] = disc["propertyName"]
        return out
    if isinstance(node, list):
        return [_asyncapi_schema(v) for v in node]
    return node


def asyncapi_document() -> dict[str, Any]:
    """A complete AsyncAPI 3.0 document for protocol v1."""
    pairs = [(model, "validation") for model in CLIENT_MODELS] + [
        (model, "serialization") for model in SERVER_MODELS
    ]
    _, defs = models_json_schema(pairs, ref_template="#/components/schemas/{model}")
    schemas: dict[str, Any] = _asyncapi_schema(defs.get("$defs", {}))
    for model in SERVER_MODELS:
        name = _message_name(model)
        if name in m.LOGGED_TYPES:  # logged events carry their seq first
            schema = schemas[model.__name__]
            schema["properties"] = {"seq": {"type": "integer", "minimum": 1}, **schema["properties"]}
            schema.setdefault("required", []).insert(0, "seq")
    messages: dict[str, Any] = {}
    for model in (*CLIENT_MODELS, *SERVER_MODELS):
        name = _message_name(model)
        messages[name.replace(".", "_")] = {
            "name": name,
            "title": name,
            "summary": (model.__doc__ or "").strip().split("\n")[0] or name,
            "payload": {"$ref": f"#/components/schemas/{model.__name__}"},
            "x-logged": name in m.LOGGED_TYPES,
        }
    client_refs = [
        {"$ref": f"#/channels/session/messages/{_message_name(x).replace('.', '_')}"} for x in CLIENT_MODELS
    ]
    server_refs = [
        {"$ref": f"#/channels/session/messages/{_message_name(x).replace('.', '_')}"} for x in SERVER_MODELS
    ]
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Parley",
            "version": m.PROTOCOL_VERSION,
            "description": (
                "WebSocket session protocol for AI chat. Subprotocol `parley.v1`; the first client "
                "message is `hello`. Logged server events carry a per-session `seq` (1, 2, 3, ...)."
            ),
            "x-error-codes": {code.value: {"retryable": code.retryable} for code in ErrorCode},
            "x-close-codes": {c.name.lower(): int(c) for c in CloseCode},
        },
        "servers": {
            "local": {"host": "127.0.0.1:8000", "protocol": "ws"},
        },
        "channels": {
            "session": {
                "address": WS_PATH,
                "messages": {k: {"$ref": f"#/components/messages/{k}"} for k in messages},
                "bindings": {"ws": {"bindingVersion": "0.1.0"}},
            }
        },
        "operations": {
            "sendClientMessage": {
                "action": "receive",
                "channel": {"$ref": "#/channels/session"},
                "messages": client_refs,
            },
            "sendServerEvent": {
                "action": "send",
                "channel": {"$ref": "#/channels/session"},
                "messages": server_refs,
            },
        },
        "components": {"messages": messages, "schemas": schemas},
    }
