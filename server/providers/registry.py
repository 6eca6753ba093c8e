"""Which model providers exist, keyed by the prefix of ``--model`` (``echo``, ``openai:MODEL``).

One table: profiles validate ``provider =`` against it, ``--model`` is parsed by it,
and the runtime builds each provider a profile set uses from it. A new provider is a
module in ``server/providers/`` and one ``ProviderSpec`` here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..config_error import ConfigError
from ..settings import Settings
from .base import ModelProvider


class UnknownModel(ConfigError, ValueError):
    """A ``--model`` or profile names no provider (a ``ValueError`` too, as profile checks raise)."""


def _echo(settings: Settings) -> ModelProvider:
    from .echo import EchoProvider

    return EchoProvider(
        ttft_ms=settings.echo_ttft_ms,
        tokens_per_second=settings.echo_tokens_per_second,
        reply_tokens=settings.echo_reply_tokens,
    )


def _openai(settings: Settings) -> ModelProvider:
    from .openai import OpenAIProvider  # imports the openai package only when a profile uses it

    return OpenAIProvider(
        connect_timeout=settings.openai_connect_timeout_s,
        first_token_timeout=settings.openai_first_token_timeout_s,
        between_token_timeout=settings.openai_between_token_timeout_s,
        retry_attempts=settings.openai_retry_attempts,
    )


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    name: str
    build: Callable[[Settings], ModelProvider]
    needs_model: bool  # ``--model NAME:MODEL``; without, ``--model NAME`` alone
    example: str  # shown when a model spec is refused


PROVIDERS: dict[str, ProviderSpec] = {
    spec.name: spec
    for spec in (
        ProviderSpec("echo", _echo, needs_model=False, example="echo"),
        ProviderSpec("openai", _openai, needs_model=True, example="openai:MODEL (e.g. openai:gpt-4o-mini)"),
    )
}


def accepted_models() -> str:
    return " or ".join(f"'{spec.example}'" for spec in PROVIDERS.values())


def parse_model(model_spec: str) -> tuple[str, str]:
    """``--model`` as (provider, model): ``echo`` -> (echo, echo), ``openai:gpt-4o`` -> (openai, gpt-4o)."""
    spec = model_spec.strip()
    name, sep, model = spec.partition(":")
    provider = PROVIDERS.get(name)
    if provider is not None:
        if not provider.needs_model and not sep:
            return name, name
        if provider.needs_model and sep and model.strip():
            return name, model.strip()
    raise UnknownModel(f"unknown model {model_spec!r}", f"--model must be {accepted_models()}")


def build_provider(name: str, settings: Settings) -> ModelProvider:
    spec = PROVIDERS.get(name)
    if spec is None:
        raise UnknownModel(f"unknown model provider {name!r}", f"use one of {', '.join(sorted(PROVIDERS))}")
    return spec.build(settings)
