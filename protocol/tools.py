"""Tool declarations: what a model may call, as the wire and every provider see it.

A tool is ``{name, description, parameters}`` with ``parameters`` a JSON Schema
object (the shape OpenAI, Anthropic and MCP share). Clients declare tools in
``hello`` / ``message.send``; a profile adds server tools; every declaration goes
through ``ToolSpec`` and so through the same checks, each failing with one line
``tool NAME: problem``:

- ``name`` matches ``NAME_PATTERN`` (what every major model API accepts);
- ``description`` is a string of at most ``MAX_DESCRIPTION_CHARS``;
- ``parameters`` is a JSON Schema whose top level is ``{"type": "object", ...}``
  (a model's arguments are always a JSON object), is a valid schema, and is
  within the cost bounds of ``schema_budget.check_schema`` (the same bounds a
  structured-output schema has: the core validates every call's arguments
  against it);
- a list holds at most ``MAX_TOOLS`` tools with distinct names.

Pure: no I/O, no clocks. ``ToolList`` is the annotated type a message field uses;
``parse_tools`` is the same check for code that holds plain JSON.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Annotated, Any, Literal, Union

from jsonschema import Draft202012Validator, SchemaError
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from .schema_budget import SchemaTooCostly, check_schema

#: Tool names: letters, digits, ``_`` and ``-``, 1 to 64 of them (OpenAI's rule, the strictest in use).
NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
#: Tools in one list (a session's, a turn's, or all of them together): a toolbox, not a catalogue;
#: every declaration is sent to the model on every turn and costs prompt tokens.
MAX_TOOLS = 64
#: Characters in one description: it is prompt text the model reads, not documentation.
MAX_DESCRIPTION_CHARS = 4096

_NAME_RE = re.compile(NAME_PATTERN)
#: What ``parameters`` defaults to: a tool that takes no arguments.
EMPTY_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}


class InvalidToolDeclaration(ValueError):
    """A tool declaration cannot be used; the message is ``tool NAME: problem``."""


def tool_problem(raw: Any) -> str | None:
    """What is wrong with one raw declaration (a JSON value), or ``None``; never raises."""
    if not isinstance(raw, dict):
        return "a tool declaration must be a JSON object {name, description, parameters}"
    name = raw.get("name")
    if not isinstance(name, str):
        return "a tool declaration needs a string 'name'"
    label = f"tool {name[:64]!r}" if len(name) <= 64 else f"tool {name[:64]!r}..."
    if not _NAME_RE.match(name):
        return f"{label}: the name must be 1-64 letters, digits, '_' or '-'"
    description = raw.get("description", "")
    if not isinstance(description, str):
        return f"{label}: 'description' must be a string"
    if len(description) > MAX_DESCRIPTION_CHARS:
        return f"{label}: 'description' is longer than {MAX_DESCRIPTION_CHARS} characters"
    parameters = raw.get("parameters", EMPTY_PARAMETERS)
    if not isinstance(parameters, dict):
        return f'{label}: \'parameters\' must be a JSON Schema object such as {{"type": "object"}}'
    if parameters.get("type") != "object":
        return f'{label}: \'parameters\' must describe an object ("type": "object"): arguments are named'
    try:
        check_schema(parameters)
    except SchemaTooCostly as exc:
        return f"{label}: 'parameters': {exc}"
    try:
        Draft202012Validator.check_schema(parameters)
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.path)
        return (
            f"{label}: 'parameters' is not a valid JSON Schema{f' at {where}' if where else ''}: "
            + str(exc.message)[:200]
        )
    return None


def _check_declaration(raw: Any) -> Any:
    problem = tool_problem(raw)
    if problem is not None:
        raise InvalidToolDeclaration(problem)
    return raw


class ToolSpec(BaseModel):
    """One tool the model may call. Constructing one runs every check in the module docstring."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    description: Annotated[str, Field(max_length=MAX_DESCRIPTION_CHARS)] = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: dict(EMPTY_PARAMETERS))

    @model_validator(mode="before")
    @classmethod
    def _declaration(cls, raw: Any) -> Any:
        """All checks first, in one place, so every failure names the tool (pydantic's would not)."""
        if isinstance(raw, ToolSpec):
            return raw
        return _check_declaration(raw)


def _count(raw: Any) -> Any:
    """The count first (before any tool is checked), and a JSON array as the tuple strict mode wants."""
    if isinstance(raw, list | tuple):
        if len(raw) > MAX_TOOLS:
            raise InvalidToolDeclaration(f"at most {MAX_TOOLS} tools may be declared, not {len(raw)}")
        return tuple(raw)
    return raw


def _unique(tools: tuple[ToolSpec, ...]) -> tuple[ToolSpec, ...]:
    seen: set[str] = set()
    for tool in tools:
        if tool.name in seen:
            raise InvalidToolDeclaration(f"tool {tool.name!r}: declared twice")
        seen.add(tool.name)
    return tools


#: The field type for a list of declarations (``hello.tools``, ``message.send.tools``).
ToolList = Annotated[tuple[ToolSpec, ...], BeforeValidator(_count), AfterValidator(_unique)]
_TOOL_LIST = TypeAdapter(ToolList)


def parse_tools(raw: Any) -> tuple[ToolSpec, ...]:
    """Plain JSON (a list of declarations) as checked specs, or ``InvalidToolDeclaration``."""
    if not isinstance(raw, list | tuple):
        raise InvalidToolDeclaration("tools must be a list of {name, description, parameters} objects")
    try:
        return _TOOL_LIST.validate_python(tuple(raw))
    except ValidationError as exc:
        raise InvalidToolDeclaration(_first_message(exc)) from None


def _first_message(exc: ValidationError) -> str:
    err = exc.errors(include_url=False, include_input=False)[0]
    return str(err.get("msg", "invalid tool declaration")).removeprefix("Value error, ")


def combine_tools(*groups: Iterable[ToolSpec]) -> tuple[ToolSpec, ...]:
    """One toolbox from several sources (server tools, the session's, the turn's), in order.

    A name declared by two sources is refused rather than resolved silently: a
    client tool shadowing a server tool, or the other way round, is a mistake the
    client must hear about.
    """
    combined = tuple(tool for group in groups for tool in group)
    _count(combined)
    return _unique(combined)


class NamedToolChoice(BaseModel):
    """``tool_choice: {"name": X}``: the model must call tool X."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    name: Annotated[str, Field(pattern=NAME_PATTERN)]


#: ``"auto"`` (the model decides; the default), ``"none"`` (no calls), ``"required"`` (at least one),
#: or ``{"name": X}`` (exactly tool X).
ToolChoice = Union[Literal["auto", "none", "required"], NamedToolChoice]


def check_tool_choice(choice: ToolChoice | None, tools: Sequence[ToolSpec]) -> None:
    """Refuse a choice that cannot be honoured with ``tools`` (``InvalidToolDeclaration``)."""
    if choice is None or choice in ("auto", "none"):
        return
    if not tools:
        raise InvalidToolDeclaration("tool_choice asks for a tool call but no tools are declared")
    if isinstance(choice, NamedToolChoice) and choice.name not in {t.name for t in tools}:
        raise InvalidToolDeclaration(f"tool {choice.name!r}: named in tool_choice but not declared")
