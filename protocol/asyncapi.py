"""The AsyncAPI 3 document, generated from the message models (never written by hand)."""

from __future__ import annotations

from typing import Any, get_args

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from . import messages as m
from .errors import CloseCode, ErrorCode

CLIENT_MODELS: list[type[BaseModel]] = [m.Hello, m.MessageSend, m.ResponseCancel, m.Feedback, m.Ping]
SERVER_MODELS: list[type[BaseModel]] = [
    m.SessionReady,
    m.SessionSnapshot,
    m.MessageAccepted,
    m.MessageDuplicate,
    m.ResponseStarted,
    m.ResponseDelta,
    m.ResponseCompleted,
    m.FeedbackRecorded,
    m.Heartbeat,
    m.Pong,
    m.Error,
]


def _message_name(model: type[BaseModel]) -> str:
    """The wire ``type`` of a message model (its ``Literal`` annotation)."""
    return str(get_args(model.model_fields["type"].annotation)[0])


def asyncapi_document() -> dict[str, Any]:
    """A complete AsyncAPI 3.0 document for protocol v1."""
    pairs = [(model, "validation") for model in CLIENT_MODELS] + [
        (model, "serialization") for model in SERVER_MODELS
    ]
    _, defs = models_json_schema(pairs, ref_template="#/components/schemas/{model}")
    schemas: dict[str, Any] = defs.get("$defs", {})
    for model in SERVER_MODELS:
        name = _message_name(model)
        if name in m.LOGGED_TYPES:  # logged events carry their seq first
            schema = schemas[model.__name__]
            schema["properties"] = {"seq": {"type": "integer", "minimum": 1}, **schema["properties"]}
            schema.setdefault("required", []).insert(0, "seq")
    messages: dict[str, Any] = {}
    for model in CLIENT_MODELS + SERVER_MODELS:
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
            "local": {"host": "127.0.0.1:8000", "protocol": "ws", "pathname": "/v1/ws"},
        },
        "channels": {
            "session": {
                "address": "/v1/ws",
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
