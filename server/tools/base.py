"""What a server tool is (``Tool``), what it is told (``ToolContext``), what a call gives (``ToolResult``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from parley.protocol.tools import EMPTY_PARAMETERS, ToolSpec


@runtime_checkable
class Tool(Protocol):
    """A tool the server runs. ``run`` returns the output: a string or any JSON value.

    ``run`` may raise ``ToolError`` to tell the model (and the client) what went
    wrong in its own words; any other exception becomes a generic failure whose
    details stay in the server log. ``requires_approval``: the call waits for the
    client's ``tool.approve`` before it runs.
    """

    name: str
    description: str
    parameters: dict[str, Any]
    requires_approval: bool

    async def run(self, args: dict[str, Any], ctx: ToolContext) -> Any: ...


class ToolError(Exception):
    """A failure the tool wants reported as it is: its message becomes the ``is_error`` output."""


@dataclass(frozen=True, slots=True)
class ToolContext:
    """Where a call comes from, for logging, authorisation and idempotency (``call_id`` is unique)."""

    session_id: str
    response_id: str
    call_id: str
    trace_id: str = ""
    tenant: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)  # the session's hello metadata


@dataclass(frozen=True, slots=True)
class ToolResult:
    """The outcome of one call, logged and answered exactly like a client's ``tool.result``."""

    call_id: str
    output: Any  # a string or a JSON value
    is_error: bool = False


@dataclass(frozen=True, slots=True)
class FunctionTool:
    """A ``Tool`` made from an async function (see ``function_tool``)."""

    name: str
    description: str
    parameters: dict[str, Any]
    fn: Callable[[dict[str, Any], ToolContext], Awaitable[Any]]
    requires_approval: bool = False

    async def run(self, args: dict[str, Any], ctx: ToolContext) -> Any:
        return await self.fn(args, ctx)


def function_tool(
    *,
    name: str | None = None,
    description: str = "",
    parameters: dict[str, Any] | None = None,
    requires_approval: bool = False,
) -> Callable[[Callable[[dict[str, Any], ToolContext], Awaitable[Any]]], FunctionTool]:
    """Decorate ``async def f(args, ctx)`` into a ``Tool`` named ``name`` (default: the function's name)."""

    def wrap(fn: Callable[[dict[str, Any], ToolContext], Awaitable[Any]]) -> FunctionTool:
        return FunctionTool(
            name=name or fn.__name__,
            description=description or (fn.__doc__ or "").strip(),
            parameters=dict(EMPTY_PARAMETERS) if parameters is None else parameters,
            fn=fn,
            requires_approval=requires_approval,
        )

    return wrap


def spec_of(tool: Tool) -> ToolSpec:
    """The declaration the model sees; raises ``ValueError`` (``tool NAME: problem``) if it is invalid."""
    return ToolSpec.model_validate(
        {"name": tool.name, "description": tool.description, "parameters": tool.parameters}
    )
