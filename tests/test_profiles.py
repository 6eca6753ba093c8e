"""Profile files, ``--model`` defaults and the context-trimming rule."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from parley.protocol.errors import ErrorCode, InvalidMessage
from parley.server.config_error import ConfigError
from parley.server.profiles import (
    ProfileSet,
    build_context,
    count_tokens,
    default_profile,
    load_profiles,
    parse_profiles,
    single_profile_set,
    trim_context,
)
from parley.server.providers.base import ChatMessage, Profile

GOOD = """
default = "support"

[profiles.support]
version = "3"
provider = "openai"
model = "gpt-4o-mini"
system_prompt = "You are a concise support agent."
context_tokens = 4000
[profiles.support.params]
temperature = 0.2
max_tokens = 512

[profiles.playground]
provider = "echo"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "profiles.toml"
    path.write_text(text)
    return path


def S(text: str) -> ChatMessage:
    return ChatMessage("system", text)


def U(text: str) -> ChatMessage:
    return ChatMessage("user", text)


def A(text: str) -> ChatMessage:
    return ChatMessage("assistant", text)


# -- loading ------------------------------------------------------------------------------------


def test_load_profiles_reads_every_field(tmp_path: Path) -> None:
    """A valid file yields each profile with its provider, model, prompt, params, budget and version."""
    profiles = load_profiles(write(tmp_path, GOOD))
    assert isinstance(profiles, dict)
    assert set(profiles) == {"support", "playground"}
    support = profiles["support"]
    assert support == Profile(
        name="support",
        version="3",
        provider="openai",
        model="gpt-4o-mini",
        system_prompt="You are a concise support agent.",
        params={"temperature": 0.2, "max_tokens": 512},
        context_tokens=4000,
    )
    assert support.label == "support@3"
    assert profiles.default == "support"
    assert profiles.default_profile is support
    assert profiles.providers() == {"openai", "echo"}


def test_omitted_fields_take_profile_defaults(tmp_path: Path) -> None:
    """An echo profile needs no model, and unset fields take the Profile defaults."""
    playground = load_profiles(write(tmp_path, GOOD))["playground"]
    assert playground.provider == "echo"
    assert playground.model == "echo"
    assert playground.version == "1"
    assert playground.system_prompt == ""
    assert playground.params == {}
    assert playground.context_tokens == Profile().context_tokens


def test_integer_version_is_accepted_as_text(tmp_path: Path) -> None:
    """``version = 3`` (a TOML integer) is read as the version string "3"."""
    profiles = load_profiles(write(tmp_path, '[profiles.a]\nversion = 3\nprovider = "echo"\n'))
    assert profiles["a"].version == "3"


def test_single_profile_is_the_default(tmp_path: Path) -> None:
    """With one profile and no ``default`` key, that profile is the default."""
    profiles = load_profiles(write(tmp_path, '[profiles.only]\nprovider = "echo"\n'))
    assert profiles.default == "only"


def test_default_required_with_several_profiles(tmp_path: Path) -> None:
    """Several profiles without ``default`` is an error that says so."""
    text = '[profiles.a]\nprovider = "echo"\n[profiles.b]\nprovider = "echo"\n'
    with pytest.raises(ConfigError, match="'default'"):
        load_profiles(write(tmp_path, text))


def test_default_must_name_a_profile(tmp_path: Path) -> None:
    """A ``default`` naming no profile is an error naming the bad value."""
    with pytest.raises(ConfigError, match="'nope'"):
        load_profiles(write(tmp_path, 'default = "nope"\n[profiles.a]\nprovider = "echo"\n'))


@pytest.mark.parametrize(
    ("table", "field"),
    [
        ('provider = "anthropic"', "provider"),
        ('provider = "openai"', "model"),
        ('provider = "openai"\nmodel = ""', "model"),
        ("context_tokens = 0", "context_tokens"),
        ('context_tokens = "lots"', "context_tokens"),
        ("version = true", "version"),
        ('version = ""', "version"),
        ("system_prompt = 5", "system_prompt"),
        ("temprature = 0.2", "temprature"),
        ('params = "hot"', "params"),
        ("[profiles.bad.params]\nstream = false", "params.stream"),
        ("[profiles.bad.params]\nmodel = 'x'", "params.model"),
        ("[profiles.bad.params]\ntemperature = nan", "params.temperature"),
    ],
)
def test_validation_errors_name_profile_and_field(tmp_path: Path, table: str, field: str) -> None:
    """Every invalid field is a ConfigError naming the profile and the field."""
    with pytest.raises(ConfigError) as info:
        load_profiles(write(tmp_path, f"[profiles.bad]\n{table}\n"))
    message = str(info.value)
    assert "'bad'" in message
    assert f"'{field}'" in message


def test_invalid_toml_is_a_clear_error(tmp_path: Path) -> None:
    """A file that is not TOML raises ConfigError naming the file."""
    path = write(tmp_path, "[profiles.a\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_profiles(path)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    """A missing profile file raises ConfigError naming the path."""
    with pytest.raises(ConfigError, match="cannot read profile file"):
        load_profiles(tmp_path / "absent.toml")


def test_empty_file_and_unknown_keys_rejected() -> None:
    """A file without profiles, or with unknown top-level keys, is rejected."""
    with pytest.raises(ValueError, match=r"no \[profiles\.NAME\]"):
        parse_profiles({})
    with pytest.raises(ValueError, match="unknown top-level"):
        parse_profiles({"profiles": {"a": {}}, "defualt": "a"})


def test_docs_example_is_valid() -> None:
    """The profile file shown in docs/providers.md loads."""
    docs = Path(__file__).resolve().parent.parent / "docs" / "providers.md"
    blocks = re.findall(r"```toml\n(.*?)```", docs.read_text(), re.S)
    assert blocks
    for block in blocks:
        profiles = parse_profiles(tomllib.loads(block), source="docs")
        assert profiles.default in profiles


# -- selection ----------------------------------------------------------------------------------


def test_resolve_picks_named_or_default(tmp_path: Path) -> None:
    """resolve(None) is the default profile; resolve(name) is that profile."""
    profiles = load_profiles(write(tmp_path, GOOD))
    assert profiles.resolve(None).name == "support"
    assert profiles.resolve("playground").name == "playground"


def test_resolve_unknown_is_invalid_message(tmp_path: Path) -> None:
    """Asking for an undefined profile is the client's error (invalid_message), never internal."""
    profiles = load_profiles(write(tmp_path, GOOD))
    with pytest.raises(InvalidMessage) as info:
        profiles.resolve("gpt-5")
    assert info.value.code is ErrorCode.INVALID_MESSAGE
    assert not info.value.retryable


def test_profile_set_rejects_unknown_default() -> None:
    """A ProfileSet cannot be built with a default that is not in it."""
    with pytest.raises(ValueError):
        ProfileSet({"a": Profile(name="a")}, "b")


@pytest.mark.parametrize(
    ("spec", "provider", "model"),
    [
        ("echo", "echo", "echo"),
        ("openai:gpt-4o-mini", "openai", "gpt-4o-mini"),
        ("openai:llama3.1:8b", "openai", "llama3.1:8b"),
    ],
)
def test_default_profile_from_model_flag(spec: str, provider: str, model: str) -> None:
    """``--model echo`` and ``--model openai:MODEL`` make a one-profile default named "default"."""
    profile = default_profile(spec)
    assert (profile.name, profile.provider, profile.model) == ("default", provider, model)
    assert profile.label == "default@1"
    profiles = single_profile_set(spec)
    assert profiles.resolve(None) == profile


@pytest.mark.parametrize("spec", ["", "openai", "openai:", "gpt-4o", "anthropic:claude"])
def test_default_profile_rejects_bad_specs(spec: str) -> None:
    """Anything but ``echo`` or ``openai:MODEL`` is a ValueError showing the accepted forms."""
    with pytest.raises(ValueError, match="openai:MODEL"):
        default_profile(spec)


# -- context trimming ---------------------------------------------------------------------------


def test_fitting_conversation_is_unchanged() -> None:
    """A conversation within budget is sent whole."""
    messages = [S("be brief"), U("one two"), A("three"), U("four")]
    assert trim_context(messages, 100) == messages


def test_oldest_turns_dropped_first() -> None:
    """Over budget, whole turns go oldest first until the rest fits."""
    messages = [S("sys"), U("a a a"), A("b b b"), U("c c"), A("d d"), U("e")]
    # tokens: sys 1, turn1 6, turn2 4, newest 1 -> total 12
    assert trim_context(messages, 6) == [S("sys"), U("c c"), A("d d"), U("e")]
    assert trim_context(messages, 5) == [S("sys"), U("e")]


def test_system_prompt_and_newest_turn_always_kept() -> None:
    """Even when they alone exceed the budget, the system prompt and the newest turn are sent."""
    messages = [S("a long system prompt"), U("old"), A("reply"), U("a very long newest question indeed")]
    assert trim_context(messages, 1) == [S("a long system prompt"), U("a very long newest question indeed")]


def test_newest_turn_includes_its_partial_reply() -> None:
    """The newest turn is the last user message and everything after it; it is never split."""
    messages = [U("old old old"), A("x x x"), U("new"), A("partial answer so far")]
    assert trim_context(messages, 2) == [U("new"), A("partial answer so far")]


def test_turn_is_never_split() -> None:
    """A turn that does not fit whole is dropped whole, never just its user or assistant half."""
    messages = [U("q1"), A("a long long long answer"), U("q2")]
    assert trim_context(messages, 3) == [U("q2")]


def test_kept_turns_are_contiguous() -> None:
    """A small old turn is not kept after a bigger newer one was dropped: no holes in the history."""
    messages = [U("tiny"), U("this one is big big big"), U("now")]
    assert trim_context(messages, 3) == [U("now")]


def test_empty_and_system_only_conversations() -> None:
    """Nothing to trim means the input comes back as it is."""
    assert trim_context([], 10) == []
    assert trim_context([S("only")], 0) == [S("only")]


def test_build_context_adds_prompt_and_trims() -> None:
    """build_context puts the profile's prompt first (once) and trims to the profile's budget."""
    profile = Profile(system_prompt="be kind", context_tokens=4)
    history = [U("old old old"), A("reply"), U("new")]
    assert build_context(profile, history) == [S("be kind"), U("new")]
    assert build_context(profile, [S("be kind"), U("new")]) == [S("be kind"), U("new")]


roles = st.sampled_from(["system", "user", "assistant"])
words = st.lists(st.sampled_from(["a", "bb", "c"]), max_size=6).map(" ".join)
conversations = st.lists(st.builds(ChatMessage, roles, words), max_size=12)


@given(conversations, st.integers(min_value=0, max_value=40))
def test_trim_properties(messages: list[ChatMessage], budget: int) -> None:
    """Trimming keeps order, every system message and the newest turn, and fits the budget when possible."""
    result = trim_context(messages, budget)
    # an order-preserving subsequence
    it = iter(messages)
    assert all(any(m is n for n in it) for m in result)
    assert [m for m in messages if m.role == "system"] == [m for m in result if m.role == "system"]
    users = [i for i, m in enumerate(messages) if m.role == "user"]
    tail = messages[users[-1] :] if users else messages
    newest = [m for m in tail if m.role != "system"]
    kept_turns = [m for m in result if m.role != "system"]
    if newest:
        assert kept_turns[-len(newest) :] == newest
    minimal = [m for m in messages if m.role == "system"] + newest
    total = sum(count_tokens(m.content) for m in result)
    assert total <= budget or len(result) == len(minimal)


def test_trimming_skips_counting_only_when_the_conversation_surely_fits() -> None:
    """The no-count fast path of trim_context returns exactly what counting would have kept."""
    import random

    from parley.server.profiles import count_tokens, trim_context
    from parley.server.providers.base import ChatMessage

    rng = random.Random(7)
    for _ in range(5000):
        msgs = [
            ChatMessage(
                rng.choice(["user", "assistant", "system"]),
                " ".join("x" * rng.randint(1, 3) for _ in range(rng.randint(0, 6))) + " " * rng.randint(0, 2),
            )
            for _ in range(rng.randint(0, 6))
        ]
        budget = rng.randint(0, 30)
        out = trim_context(msgs, budget)
        if sum(count_tokens(m.content) for m in msgs) <= budget:
            assert out == msgs  # everything fits: nothing dropped, order kept
