"""Client tools: declarations with handlers, and the state of every call the model makes.

A tool is a function the model may call, declared to the server as ``{name, description,
parameters}`` (``parley.protocol.tools.ToolSpec`` checks it here, before anything is sent)::

    @tool
    def set_theme(theme: Literal["light", "dark"]) -> str:
        "Switch the page between light and dark."
        ...

    ParleyClient(url, tools=[set_theme, (spec, handler)], approve=ask_the_person)

A handler is called with the call's arguments as keyword arguments, sync (run in a thread, so
it may block) or async; what it returns is the output (a string or any JSON value); what it
raises is sent as ``is_error`` with the exception's message. A tool made with ``approve=True``
runs only after the client's ``approve`` callback said yes; a no is sent as ``is_error``
``"denied by the user"``. A server tool that asks (``tool.approval_requested``) goes to the
same callback and is answered with ``tool.approve``.

``ToolCalls`` is the bookkeeping, on plain event dicts: which calls are pending (a
``response.tool_call`` for this client with no ``tool.result.accepted`` yet), which answers
are not yet logged (resent after a resume; the server answers a repeat with
``tool.result.duplicate``, so that is safe), and which calls this process is already handling.
It is rebuilt from whatever the log replays (or a snapshot), so a new process resuming a session
from seq 0 runs or asks about the calls that are still open.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Union, get_type_hints

from pydantic import TypeAdapter

from parley.protocol.tools import ToolSpec, parse_tools

from .events import (
    COMPLETED,
    SNAPSHOT,
    TOOL_APPROVAL_REQUESTED,
    TOOL_APPROVE,
    TOOL_CALL,
    TOOL_CALL_DELTA,
    TOOL_CALLS_FINISH,
    TOOL_RESULT,
    TOOL_RESULT_ACCEPTED,
)

__all__ = [
    "DENIED",
    "ApprovalCallback",
    "ClientTool",
    "PendingCall",
    "ToolCalls",
    "ToolLike",
    "as_tool",
    "tool",
]

#: The output of a call the person refused (what the issue and both clients send).
DENIED = "denied by the user"


@dataclass(frozen=True)
class PendingCall:
    """A call waiting for this client: what a handler's approval callback is shown."""

    call_id: str
    response_id: str
    name: str
    arguments: dict[str, Any]
    server: bool = False  # a server tool asking for approval (answered with tool.approve)


#: ``approve(call) -> bool`` (or an awaitable of one): may the call run?
ApprovalCallback = Callable[[PendingCall], Union[bool, Awaitable[bool]]]


@dataclass(frozen=True)
class ClientTool:
    """A tool this client declares and runs: its checked declaration, its handler, and whether to ask."""

    spec: ToolSpec
    handler: Callable[..., Any]
    approve: bool = False

    @property
    def name(self) -> str:
        return self.spec.name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """A decorated function stays callable as itself."""
        return self.handler(*args, **kwargs)


#: What ``tools=`` accepts: a ``ClientTool`` (``@tool``), or a ``(spec, handler)`` pair.
ToolLike = Union[ClientTool, tuple[Union[ToolSpec, dict[str, Any]], Callable[..., Any]]]


def as_tool(item: ToolLike) -> ClientTool:
    """A ``ClientTool`` from either form; a bad declaration raises ``InvalidToolDeclaration``."""
    if isinstance(item, ClientTool):
        return item
    spec, handler = item
    if not callable(handler):
        raise TypeError(f"tool {getattr(spec, 'name', spec)!r}: the handler is not callable")
    return ClientTool(spec_of(spec), handler)


def spec_of(raw: ToolSpec | dict[str, Any]) -> ToolSpec:
    """A checked declaration; a bad one raises ``InvalidToolDeclaration`` (one line naming the tool)."""
    return raw if isinstance(raw, ToolSpec) else parse_tools([raw])[0]


def _parameters_of(fn: Callable[..., Any]) -> dict[str, Any]:
    """A JSON Schema object for a function's keyword parameters, from its type hints (pydantic's)."""
    hints = get_type_hints(fn)
    properties: dict[str, Any] = {}
    required: list[str] = []
    for name, param in inspect.signature(fn).parameters.items():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        schema = TypeAdapter(hints.get(name, Any)).json_schema()
        schema.pop("title", None)
        properties[name] = schema
        if param.default is param.empty:
            required.append(name)
    out: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        out["required"] = required
    return out


def tool(
    fn: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    description: str | None = None,
    parameters: dict[str, Any] | None = None,
    approve: bool = False,
) -> Any:
    """Make a function a tool: ``@tool`` or ``@tool(description=..., parameters=..., approve=True)``.

    The name defaults to the function's, the description to its docstring, the parameters to a
    schema of its signature's type hints.
    """

    def make(f: Callable[..., Any]) -> ClientTool:
        spec = spec_of(
            {
                "name": name or f.__name__,
                "description": description if description is not None else inspect.getdoc(f) or "",
                "parameters": parameters if parameters is not None else _parameters_of(f),
            }
        )
        return ClientTool(spec, f, approve)

    return make(fn) if fn is not None else make


def output_of(value: Any) -> Any:
    """A handler's return value as the wire's ``output``: a string or a JSON value (None: "")."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError):
        return str(value)


async def call_maybe_async(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Await an async callable; run a sync one in a thread, so a blocking handler or prompt is fine."""
    if inspect.iscoroutinefunction(fn):
        return await fn(*args, **kwargs)
    result = await asyncio.to_thread(fn, *args, **kwargs)
    if inspect.isawaitable(result):
        return await result
    return result


@dataclass
class _Outgoing:
    """An answer not yet logged: sent (again) on each connection until the server has it."""

    frame: dict[str, Any]
    response_id: str | None
    written_on: int = 0  # connection number it was last written on (0: not yet)
    not_before: float = 0.0  # time.monotonic() before which it is not sent again (retry_after_ms)

    def retry_at(self, delay: float) -> None:
        self.written_on = 0
        self.not_before = time.monotonic() + delay


@dataclass
class CallState:
    """One call as the log tells it, plus what this process is doing about it."""

    call_id: str
    response_id: str
    name: str
    arguments: dict[str, Any] | None = None
    arguments_text: str = ""
    server: bool = False
    approval_requested: bool = False
    done: bool = False
    output: Any = None
    is_error: bool = False

    def pending(self) -> PendingCall:
        return PendingCall(self.call_id, self.response_id, self.name, self.arguments or {}, self.server)


@dataclass
class ToolCalls:
    """Every call of the session, the answers in flight, and the calls being handled here."""

    tools: dict[str, ClientTool] = field(default_factory=dict)
    calls: dict[str, CallState] = field(default_factory=dict)
    finish: dict[str, str] = field(default_factory=dict)  # response_id -> finish_reason
    outbox: dict[str, _Outgoing] = field(default_factory=dict)  # call_id -> answer
    handling: set[str] = field(default_factory=set)  # call_ids run or asked about by this process
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def add(self, items: Iterable[ToolLike]) -> list[ClientTool]:
        """Register tools (by name; a later one replaces an earlier one); returns them."""
        added = [as_tool(item) for item in items]
        for t in added:
            self.tools[t.name] = t
        return added

    def specs(self) -> list[dict[str, Any]]:
        return [t.spec.model_dump() for t in self.tools.values()]

    @property
    def busy(self) -> bool:
        """A handler or an approval is in progress here (a turn waiting on it is not idle)."""
        return any(not t.done() for t in self.tasks)

    # ------------------------------------------------------------ the log

    def track(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind in (TOOL_CALL_DELTA, TOOL_CALL, TOOL_APPROVAL_REQUESTED):
            call = self.calls.get(event["call_id"])
            if call is None:
                call = CallState(event["call_id"], event["response_id"], event.get("name", ""))
                self.calls[call.call_id] = call
            if kind == TOOL_CALL_DELTA:
                call.arguments_text += event.get("arguments_delta", "")
            else:
                call.arguments = dict(event.get("arguments") or {})
                call.arguments_text = json.dumps(call.arguments)
                call.server = bool(event.get("server")) or kind == TOOL_APPROVAL_REQUESTED
                call.approval_requested = call.approval_requested or kind == TOOL_APPROVAL_REQUESTED
        elif kind == TOOL_RESULT_ACCEPTED:
            call = self.calls.setdefault(
                event["call_id"], CallState(event["call_id"], event["response_id"], event.get("name", ""))
            )
            call.done, call.output, call.is_error = True, event.get("output"), bool(event.get("is_error"))
            self.settle(call.call_id)
        elif kind == COMPLETED:
            self.finish[event["response_id"]] = event["finish_reason"]
            if event["finish_reason"] != TOOL_CALLS_FINISH:  # ended for good: its open calls need no answer
                for call in self.calls.values():
                    if call.response_id == event["response_id"] and not call.done:
                        self.settle(call.call_id)
        elif kind == SNAPSHOT:
            self._snapshot(event)

    def _snapshot(self, event: dict[str, Any]) -> None:
        """Calls from the snapshot's assistant turns (``tool_calls``), results from its ``tool`` turns."""
        turns = [*event.get("turns", []), *([event["in_flight"]] if event.get("in_flight") else [])]
        results = {t["id"]: t for t in turns if t.get("role") == "tool"}
        for t in turns:
            if t.get("role") != "assistant":
                continue
            if t.get("finish_reason"):
                self.finish[t["id"]] = t["finish_reason"]
            for c in t.get("tool_calls") or []:
                call = CallState(c["call_id"], t["id"], c["name"], dict(c.get("arguments") or {}))
                call.arguments_text = json.dumps(call.arguments)
                call.server = bool(c.get("server"))
                result = results.get(call.call_id)
                if result is not None:
                    call.done, call.output = True, result.get("output")
                    call.is_error = bool(result.get("is_error"))
                    self.outbox.pop(call.call_id, None)
                self.calls.setdefault(call.call_id, call)

    def settle(self, call_id: str) -> None:
        """Nothing more to send for this call (logged, refused, or its response ended)."""
        self.outbox.pop(call_id, None)

    def is_open(self, response_id: str) -> bool:
        """Still streaming, or ended with ``tool_calls`` and waiting for results."""
        finish = self.finish.get(response_id)
        return finish is None or finish == TOOL_CALLS_FINISH

    # ------------------------------------------------------------ what to do

    def due(self) -> list[CallState]:
        """Open calls this process should run or ask about now (each only once)."""
        out = []
        for call in self.calls.values():
            if call.done or call.arguments is None or not self.is_open(call.response_id):
                continue
            if call.call_id in self.handling or call.call_id in self.outbox:
                continue
            if call.server and not call.approval_requested:
                continue  # the server runs it
            if not call.server and call.name not in self.tools:
                continue  # declared per turn without a handler: the application answers it
            out.append(call)
        return out

    def answer(self, call_id: str, output: Any, *, is_error: bool = False) -> None:
        frame: dict[str, Any] = {"type": TOOL_RESULT, "call_id": call_id, "output": output_of(output)}
        if is_error:
            frame["is_error"] = True
        call = self.calls.get(call_id)
        if call is not None and call.done:
            return
        self.outbox[call_id] = _Outgoing(frame, call.response_id if call else None)

    def decide(self, call_id: str, approved: bool) -> None:
        call = self.calls.get(call_id)
        if call is not None and call.done:
            return
        frame = {"type": TOOL_APPROVE, "call_id": call_id, "approved": approved}
        self.outbox[call_id] = _Outgoing(frame, None)  # an approval goes at once: the server waits on it

    def to_write(self, connection: int) -> list[_Outgoing]:
        """Answers this connection has not carried yet; results only once their response asked."""
        out = []
        now = time.monotonic()
        for item in self.outbox.values():
            if item.written_on == connection or item.not_before > now:
                continue
            if item.response_id is not None and self.finish.get(item.response_id) is None:
                continue  # still streaming: results go once it ends with finish_reason tool_calls
            out.append(item)
        return out

    def pending_calls(self) -> list[PendingCall]:
        """Calls still open: waiting for this client, the person, or a server tool."""
        return [
            c.pending()
            for c in self.calls.values()
            if not c.done and c.arguments is not None and self.is_open(c.response_id)
        ]
