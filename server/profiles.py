"""Server-side profiles (provider + model + prompt + params, versioned) and context trimming.

Clients pick a profile by name in ``message.send``; they never name a raw model, so
model churn stays behind the service boundary. Profiles come from a TOML file
(``parley serve --profiles FILE``) or, without one, from ``--model``::

    default = "support"            # optional when the file has exactly one profile

    [profiles.support]
    version = "3"                  # shown as "support@3" in response.started.profile
    provider = "openai"            # or "echo"
    model = "gpt-4o-mini"
    system_prompt = "You are a concise support agent."
    context_tokens = 4000          # upstream budget, in whitespace tokens
    tools = ["parley.server.tools.clock:now"]  # server tools the model may call (module:attribute)
    reasoning = "hide"             # or "stream": send the model's reasoning deltas to clients
    webhook_url = "https://hooks.example.com/parley"  # HTTP jobs' webhook unless the job names one
    [profiles.support.params]      # sent verbatim to the model (temperature, max_tokens, top_p, ...)
    temperature = 0.2
    max_tokens = 512

Context rule (``trim_context``): the system messages and the newest turn (the last
user message and everything after it: replies, tool calls, tool results) are always
kept; older turns (a user message with the replies that follow it) are dropped oldest
first, whole, until the
whitespace-token count of what is kept fits the budget. A turn is never split, and
the kept turns are always the newest, contiguous ones, so a tool call and its result
are never separated (a call's arguments count toward the budget like text). If the
system prompt and the newest turn alone exceed the budget they are still sent as they are.

History (``history_messages``) is what the store keeps, as the model reads it: a call
always has its result right after it (a call whose wait was cancelled or timed out reads
``Error: no result ...``), and a result whose call fell out of the store's window is dropped.
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from parley.protocol.errors import InvalidMessage

from .config_error import ConfigError
from .providers.base import ChatMessage, Profile, ToolCall, tool_result_message
from .providers.registry import PROVIDERS, parse_model
from .tools.registry import PATH_PATTERN

#: Params a profile may not set: Parley owns the conversation and the streaming mode.
RESERVED_PARAMS = frozenset(
    {"model", "messages", "stream", "stream_options", "response_format", "n", "tools", "tool_choice"}
)
_FIELDS = frozenset(
    {"version", "provider", "model", "system_prompt", "context_tokens", "params", "tools", "reasoning"}
    | {"webhook_url"}  # the HTTP jobs' default webhook (docs/http.md)
)
REASONING_MODES = ("hide", "stream")
_TOOL_PATH_RE = re.compile(PATH_PATTERN)
DEFAULT_PROFILE_NAME = "default"
_DEFAULTS = Profile()


class ProfileSet(dict[str, Profile]):
    """Profiles by name (a plain dict) that also knows which one is the default."""

    def __init__(self, profiles: dict[str, Profile], default: str) -> None:
        super().__init__(profiles)
        if default not in self:
            raise ValueError(f"default profile {default!r} is not defined")
        self.default = default

    @property
    def default_profile(self) -> Profile:
        return self[self.default]

    def resolve(self, name: str | None) -> Profile:
        """The named profile, or the default for ``None``; an unknown name is the client's error."""
        if name is None:
            return self.default_profile
        profile = self.get(name)
        if profile is None:
            raise InvalidMessage(f"unknown profile {name!r}; available: {', '.join(sorted(self))}")
        return profile

    def providers(self) -> set[str]:
        """Provider names the profiles use (construct only these)."""
        return {p.provider for p in self.values()}


def count_tokens(text: str) -> int:
    """Whitespace tokens: the budget unit (the same unit the echo model streams in)."""
    return len(text.split())


def load_profiles(path: str | Path) -> ProfileSet:
    """Read and validate a profile file; any problem is a ``ConfigError`` naming the file (and the
    profile and field), told by ``parley serve`` in one line."""
    path = Path(path)
    fix = "fix the file (the format is in docs/providers.md), or leave out --profiles"
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(
            f"cannot read profile file {str(path)!r}: {exc.strerror or exc}",
            "check the path given to --profiles (PARLEY_PROFILES)",
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"profile file {str(path)!r} is not valid TOML ({exc})", fix) from None
    try:
        return parse_profiles(data, source=str(path))
    except ValueError as exc:
        raise ConfigError(str(exc), fix) from None


def parse_profiles(data: dict[str, Any], source: str = "<profiles>") -> ProfileSet:
    """Validate already-parsed TOML data (see the module docstring for the format)."""
    unknown = set(data) - {"default", "profiles"}
    if unknown:
        raise ValueError(f"{source}: unknown top-level key(s) {', '.join(sorted(unknown))}")
    tables = data.get("profiles")
    if not isinstance(tables, dict) or not tables:
        raise ValueError(f"{source}: no [profiles.NAME] tables defined")
    profiles = {name: _parse_profile(name, table, source) for name, table in tables.items()}
    default = data.get("default")
    if default is None:
        if len(profiles) != 1:
            raise ValueError(f"{source}: 'default' must name one of the profiles: {', '.join(profiles)}")
        default = next(iter(profiles))
    if not isinstance(default, str) or default not in profiles:
        raise ValueError(f"{source}: default = {default!r} is not one of the profiles: {', '.join(profiles)}")
    return ProfileSet(profiles, default)


def _parse_profile(name: str, table: Any, source: str) -> Profile:
    def fail(field: str, problem: str) -> ValueError:
        return ValueError(f"{source}: profile {name!r}, field {field!r}: {problem}")

    if not isinstance(table, dict):
        raise ValueError(f"{source}: profile {name!r} must be a table ([profiles.{name}])")
    unknown = set(table) - _FIELDS
    if unknown:
        field = sorted(unknown)[0]
        raise fail(field, f"unknown field (allowed: {', '.join(sorted(_FIELDS))})")

    version = table.get("version", "1")
    if isinstance(version, bool) or not isinstance(version, str | int) or str(version).strip() == "":
        raise fail("version", 'must be a non-empty string such as "3"')
    provider = table.get("provider", "echo")
    if provider not in PROVIDERS:
        raise fail("provider", f"must be one of {', '.join(sorted(PROVIDERS))}, not {provider!r}")
    model = table.get("model", "echo" if provider == "echo" else None)
    if not isinstance(model, str) or not model.strip():
        raise fail("model", "is required (a non-empty string) for the openai provider")
    system_prompt = table.get("system_prompt", "")
    if not isinstance(system_prompt, str):
        raise fail("system_prompt", "must be a string")
    context_tokens = table.get("context_tokens", _DEFAULTS.context_tokens)
    if isinstance(context_tokens, bool) or not isinstance(context_tokens, int) or context_tokens <= 0:
        raise fail("context_tokens", "must be a positive integer")
    params = table.get("params", {})
    if not isinstance(params, dict):
        raise fail("params", "must be a table ([profiles.NAME.params])")
    for key, value in params.items():
        if key in RESERVED_PARAMS:
            raise fail(f"params.{key}", "is set by Parley and cannot be overridden")
        if isinstance(value, float) and not math.isfinite(value):
            raise fail(f"params.{key}", "must be a finite number")
    tools = table.get("tools", [])
    if not isinstance(tools, list) or not all(isinstance(t, str) for t in tools):
        raise fail("tools", 'must be a list of strings such as ["mypkg.tools:lookup_order"]')
    for path in tools:
        if not _TOOL_PATH_RE.match(path):
            raise fail("tools", f"{path!r} is not 'package.module:attribute'")
        if tools.count(path) > 1:
            raise fail("tools", f"{path!r} is listed twice")
    reasoning = table.get("reasoning", _DEFAULTS.reasoning)
    if reasoning not in REASONING_MODES:
        raise fail("reasoning", f'must be "hide" (the default) or "stream", not {reasoning!r}')
    webhook_url = table.get("webhook_url")
    if webhook_url is not None:
        from parley.protocol.http import checked_webhook_url

        try:
            checked_webhook_url(webhook_url if isinstance(webhook_url, str) else "")
        except ValueError as exc:
            raise fail("webhook_url", str(exc)) from None
    return Profile(
        name=name,
        version=str(version),
        provider=provider,
        model=model.strip(),
        system_prompt=system_prompt,
        params=dict(params),
        context_tokens=context_tokens,
        tools=tuple(tools),
        reasoning=reasoning,
        webhook_url=webhook_url,
    )


def default_profile(model_spec: str) -> Profile:
    """The one profile ``--model`` makes: ``echo`` or ``openai:MODEL`` (e.g. ``openai:gpt-4o-mini``)."""
    provider, model = parse_model(model_spec)  # UnknownModel: a ConfigError and a ValueError
    return Profile(name=DEFAULT_PROFILE_NAME, provider=provider, model=model)


def single_profile_set(model_spec: str) -> ProfileSet:
    """A ``ProfileSet`` holding just ``default_profile(model_spec)``."""
    profile = default_profile(model_spec)
    return ProfileSet({profile.name: profile}, profile.name)


def trim_context(messages: Sequence[ChatMessage], budget_tokens: int) -> list[ChatMessage]:
    """Drop the oldest whole turns until the conversation fits ``budget_tokens`` (see module docstring)."""
    # A whitespace token takes at least two characters but the last, so a conversation of at most
    # 2 * budget characters fits without counting: no split of every message on every turn. Tool
    # calls' arguments count too (message_tokens), so a conversation with calls is always counted.
    if sum(len(m.content) + 1 for m in messages) <= 2 * budget_tokens and not any(
        m.tool_calls for m in messages
    ):
        return list(messages)
    pinned = [i for i, m in enumerate(messages) if m.role == "system"]
    # Split the non-system messages into turns: each starts at a user message.
    turns: list[list[int]] = []
    for i, m in enumerate(messages):
        if m.role == "system":
            continue
        if m.role == "user" or not turns:
            turns.append([])
        turns[-1].append(i)
    if not turns:
        return list(messages)

    def cost(indices: list[int]) -> int:
        return sum(message_tokens(messages[i]) for i in indices)

    keep = set(pinned) | set(turns[-1])
    used = cost(pinned) + cost(turns[-1])
    for turn in reversed(turns[:-1]):
        turn_cost = cost(turn)
        if used + turn_cost > budget_tokens:
            break  # never skip a turn to fit an older one: what is kept stays contiguous
        keep.update(turn)
        used += turn_cost
    return [m for i, m in enumerate(messages) if i in keep]


def message_tokens(message: ChatMessage) -> int:
    """A message's budget cost: its text and its calls' arguments."""
    calls = sum(count_tokens(json.dumps(c.arguments)) + 1 for c in message.tool_calls)
    return count_tokens(message.content) + calls


#: What the model reads for a call that never got a result.
NO_RESULT = "no result: the call was cancelled or timed out"


def history_messages(turns: Iterable[dict[str, Any]]) -> list[ChatMessage]:
    """The store's history turns as model messages (see the module docstring for the tool rules)."""
    out: list[ChatMessage] = []
    known: set[str] = set()  # calls of the history kept
    open_calls: list[str] = []  # calls of the last assistant turn still without a result

    def close_calls() -> None:
        out.extend(tool_result_message(cid, NO_RESULT, is_error=True) for cid in open_calls)
        open_calls.clear()

    for t in turns:
        role = t.get("role")
        if role == "tool":
            cid = t.get("id")
            if cid in open_calls:
                open_calls.remove(cid)
                out.append(
                    tool_result_message(cid, t.get("output", t.get("content", "")), bool(t.get("is_error")))
                )
            continue
        close_calls()
        calls = t.get("tool_calls")
        if role == "assistant" and calls:
            made = tuple(ToolCall(c["call_id"], c["name"], dict(c.get("arguments") or {})) for c in calls)
            out.append(ChatMessage("assistant", t.get("content") or "", tool_calls=made))
            open_calls.extend(c.call_id for c in made if c.call_id not in known)
            known.update(c.call_id for c in made)
        elif t.get("content") and role in ("user", "assistant", "system"):
            out.append(ChatMessage(role, t["content"]))
    close_calls()
    return out


def build_context(profile: Profile, history: Sequence[ChatMessage]) -> list[ChatMessage]:
    """What to send upstream: the profile's system prompt, then ``history`` trimmed to its budget."""
    messages = list(history)
    if profile.system_prompt and not any(
        m.role == "system" and m.content == profile.system_prompt for m in messages
    ):
        messages.insert(0, ChatMessage("system", profile.system_prompt))
    return trim_context(messages, profile.context_tokens)
