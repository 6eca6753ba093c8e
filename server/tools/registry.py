"""Server tools by dotted path: imported and checked once, at start-up, per profile.

``tools = ["mypkg.tools:lookup_order"]`` in a profile names a module and an
attribute in it: a ``Tool`` instance (such as one ``function_tool`` made), or a
class whose no-argument instance is one. Every problem (bad path, import error,
not a tool, invalid declaration, two tools with one name) is a ``ConfigError``
naming the profile and the path, so ``parley serve`` says it in one line before
accepting any connection.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Iterable, Mapping
from typing import Any

from parley.protocol.tools import MAX_TOOLS, ToolSpec

from ..config_error import ConfigError
from ..providers.base import Profile
from .base import Tool, spec_of

#: ``package.module:attribute``: the form ``[project.scripts]`` entry points use.
PATH_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"
_PATH_RE = re.compile(PATH_PATTERN)


def load_tool(path: str) -> Tool:
    """The tool at ``path`` (``module:attribute``), checked; ``ConfigError`` says what is wrong."""
    what = f"server tool {path!r}"
    if not isinstance(path, str) or not _PATH_RE.match(path):
        raise ConfigError(what, "write it as 'package.module:attribute'")
    module_name, _, attribute = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or anything the module raises while importing
        raise ConfigError(what, f"cannot import {module_name!r} ({type(exc).__name__}: {exc})") from exc
    try:
        obj: Any = getattr(module, attribute)
    except AttributeError:
        raise ConfigError(what, f"module {module_name!r} has no attribute {attribute!r}") from None
    if inspect.isclass(obj):
        try:
            obj = obj()
        except Exception as exc:
            raise ConfigError(what, f"cannot create {attribute}() ({type(exc).__name__}: {exc})") from exc
    if not isinstance(obj, Tool) or not inspect.iscoroutinefunction(obj.run):
        raise ConfigError(
            what,
            "it must be a tool: name, description, parameters, requires_approval, async def run(args, ctx)",
        )
    if not isinstance(obj.requires_approval, bool):
        raise ConfigError(what, "requires_approval must be True or False")
    try:
        spec_of(obj)
    except ValueError as exc:
        raise ConfigError(what, _first_line(exc)) from None
    return obj


def _first_line(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        message = str(errors(include_url=False, include_input=False)[0].get("msg", exc))
        return message.removeprefix("Value error, ")
    return str(exc)


class ServerTools:
    """Each profile's server tools by name, loaded once; what the core asks for a turn."""

    def __init__(self, by_profile: Mapping[str, Mapping[str, Tool]]) -> None:
        self._by_profile = {name: dict(tools) for name, tools in by_profile.items()}

    @classmethod
    def load(cls, profiles: Iterable[Profile]) -> ServerTools:
        """Import every profile's tools (each path once); ``ConfigError`` on the first problem."""
        cache: dict[str, Tool] = {}
        by_profile: dict[str, dict[str, Tool]] = {}
        for profile in profiles:
            tools: dict[str, Tool] = {}
            for path in profile.tools:
                if path not in cache:
                    cache[path] = load_tool(path)
                tool = cache[path]
                if tool.name in tools:
                    raise ConfigError(
                        f"profile {profile.name!r}: two server tools are named {tool.name!r}",
                        "give each tool in a profile its own name",
                    )
                tools[tool.name] = tool
            if len(tools) > MAX_TOOLS:
                raise ConfigError(
                    f"profile {profile.name!r} has {len(tools)} server tools", f"the limit is {MAX_TOOLS}"
                )
            by_profile[profile.name] = tools
        return cls(by_profile)

    def tools(self, profile: str) -> dict[str, Tool]:
        """The profile's tools by name (empty for a profile without any)."""
        return dict(self._by_profile.get(profile, {}))

    def get(self, profile: str, name: str) -> Tool | None:
        """The server tool ``name`` of ``profile``, or ``None`` (then it is a client tool)."""
        return self._by_profile.get(profile, {}).get(name)

    def specs(self, profile: str) -> tuple[ToolSpec, ...]:
        """The declarations the model sees for the profile's tools, in the profile's order."""
        return tuple(spec_of(tool) for tool in self._by_profile.get(profile, {}).values())
