"""What the model reads of tool calls: history turns as messages, and context trimming around calls."""

from __future__ import annotations

from parley.server.profiles import NO_RESULT, history_messages, trim_context
from parley.server.providers.base import ChatMessage, ToolCall
from parley.server.tool_turns import MAX_TOOL_ROUNDS, TurnContext

CALLS = [
    {"call_id": "k1", "name": "a", "arguments": {"x": 1}, "server": False},
    {"call_id": "k2", "name": "b", "arguments": {}, "server": True},
]


def test_calls_are_followed_by_their_results_in_order() -> None:
    """An assistant turn with calls becomes tool_calls, each result a tool message right after it."""
    msgs = history_messages(
        [
            {"role": "user", "id": "m1", "content": "hi"},
            {
                "role": "assistant",
                "id": "r1",
                "content": "",
                "finish_reason": "tool_calls",
                "tool_calls": CALLS,
            },
            {"role": "tool", "id": "k2", "content": "2", "output": 2, "is_error": False},
            {"role": "tool", "id": "k1", "content": "no", "output": "no", "is_error": True},
            {"role": "assistant", "id": "r2", "content": "done"},
        ]
    )
    assert [m.role for m in msgs] == ["user", "assistant", "tool", "tool", "assistant"]
    assert msgs[1].tool_calls == (ToolCall("k1", "a", {"x": 1}), ToolCall("k2", "b", {}))
    assert (msgs[2].tool_call_id, msgs[2].content) == ("k2", "2")
    assert (msgs[3].tool_call_id, msgs[3].content) == ("k1", "Error: no")


def test_a_call_without_result_reads_no_result_and_orphans_are_dropped() -> None:
    """A cancelled call gets an error result before the next turn; a result whose call is gone is dropped."""
    msgs = history_messages(
        [
            {"role": "tool", "id": "old", "content": "x", "output": "x"},
            {"role": "user", "id": "m1", "content": "hi"},
            {"role": "assistant", "id": "r1", "content": "", "tool_calls": CALLS[:1]},
            {"role": "assistant", "id": "r2", "content": "", "finish_reason": "cancelled"},
            {"role": "user", "id": "m2", "content": "again"},
        ]
    )
    assert [m.role for m in msgs] == ["user", "assistant", "tool", "user"]
    assert msgs[2].tool_call_id == "k1" and msgs[2].content == f"Error: {NO_RESULT}"


def test_trimming_keeps_a_call_with_its_result_and_counts_arguments() -> None:
    """Old turns go whole: a call and its result are kept or dropped together; arguments cost tokens."""
    big = {"text": " ".join(["w"] * 50)}
    msgs = [
        ChatMessage("user", "one"),
        ChatMessage("assistant", "", tool_calls=(ToolCall("k1", "a", big),)),
        ChatMessage("tool", "ok", tool_call_id="k1"),
        ChatMessage("assistant", "fine"),
        ChatMessage("user", "two"),
        ChatMessage("assistant", "reply"),
    ]
    assert trim_context(msgs, 20) == msgs[4:]
    assert trim_context(msgs, 200) == msgs


def test_rounds_are_bounded_and_a_forced_choice_is_not_repeated() -> None:
    """A continuation is not forced to call again; from MAX_TOOL_ROUNDS on the model may not call."""
    turn = TurnContext(message_id="m", profile="p", trace_id="t", tool_choice="required")
    nxt = turn.next_round()
    assert nxt.round == 1 and nxt.choice() is None
    named = TurnContext(message_id="m", profile="p", trace_id="t", tool_choice={"name": "a"})
    assert named.choice().name == "a" and named.next_round().choice() is None  # type: ignore[union-attr]
    late = TurnContext(message_id="m", profile="p", trace_id="t", tool_choice="auto", round=MAX_TOOL_ROUNDS)
    assert late.choice() == "none"
    assert TurnContext.from_json(turn.to_json()) == turn
