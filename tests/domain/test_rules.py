"""Domain rules without a server: context windows, config merging, filters, reply merging."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import pytest

from server.sessions.context import select_window
from server.sessions.errors import InvalidArgument
from server.sessions.filters import parse_label_filter
from server.sessions.model import (
    ContextPolicy,
    FunctionCall,
    FunctionResponse,
    GenerationConfig,
    Message,
    Part,
    Role,
    ThinkingConfig,
)
from server.sessions.ports import ModelChunk
from server.sessions.reply import ReplyBuilder


def user(text: str) -> Message:
    return Message(Role.USER, (Part(text=text),))


def model(text: str) -> Message:
    return Message(Role.MODEL, (Part(text=text),))


def call(name: str) -> Message:
    return Message(Role.MODEL, (Part(function_call=FunctionCall("c1", name)),))


def result(name: str) -> Message:
    return Message(Role.USER, (Part(function_response=FunctionResponse("c1", name)),))


@pytest.mark.parametrize(
    ("limit", "expected"),
    [
        (0, ["u1", "m1", "u2", "call", "result", "m2", "u3"]),
        (1, ["u3"]),
        (2, ["u3"]),
        (4, ["u3"]),  # would start inside turn 2's tool exchange: moves to turn 3
        (5, ["u2", "call", "result", "m2", "u3"]),
        (6, ["u2", "call", "result", "m2", "u3"]),
        (100, ["u1", "m1", "u2", "call", "result", "m2", "u3"]),
    ],
)
def test_window_starts_at_a_user_turn_and_never_splits_a_call(
    limit: int, expected: list[str]
) -> None:
    history = [user("u1"), model("m1"), user("u2"), call("f"), result("f"), model("m2"), user("u3")]
    names = {id(history[3]): "call", id(history[4]): "result"}
    window = select_window(history, ContextPolicy(max_messages=limit))
    assert [names.get(id(m)) or m.parts[0].text for m in window] == expected


def test_current_turn_is_sent_whole_even_past_the_limit() -> None:
    """A turn longer than the limit is not cut: the model needs its own call and response."""
    history = [user("u1"), model("m1"), user("u2"), call("f"), result("f")]
    window = select_window(history, ContextPolicy(max_messages=2))
    assert [m.role for m in window] == [Role.USER, Role.MODEL, Role.USER]
    assert window[0].parts[0].text == "u2"


def test_generation_config_override_merges_field_by_field() -> None:
    base = GenerationConfig(
        temperature=0.1, top_k=4, stop_sequences=("x",), thinking=ThinkingConfig(thinking_budget=9)
    )
    override = GenerationConfig(
        temperature=0.0, thinking=ThinkingConfig(include_thoughts=True), seed=3
    )
    merged = override.merged_over(base)
    assert merged.temperature == 0.0, "an explicit zero overrides"
    assert merged.top_k == 4 and merged.stop_sequences == ("x",) and merged.seed == 3
    assert merged.thinking == ThinkingConfig(include_thoughts=True, thinking_budget=9)


def test_label_filter_grammar() -> None:
    assert parse_label_filter("") == {}
    assert parse_label_filter('labels.env = "prod" AND labels.team="a \\"b\\""') == {
        "env": "prod",
        "team": 'a "b"',
    }
    for bad in ("labels.env = prod", 'name = "x"', 'labels.a = "1" OR labels.b = "2"'):
        with pytest.raises(InvalidArgument) as err:
            parse_label_filter(bad)
        assert err.value.violations[0].field == "filter"


def test_reply_builder_joins_text_and_keeps_signatures_with_their_text() -> None:
    builder = ReplyBuilder()
    for chunk in (
        ModelChunk(parts=(Part(text="think ", thought=True),)),
        ModelChunk(parts=(Part(text="more", thought=True, thought_signature=b"\x00sig"),)),
        ModelChunk(parts=(Part(text="Hello "),)),
        ModelChunk(parts=(Part(text="world"),)),
        ModelChunk(parts=(Part(function_call=FunctionCall("id1", "f", {"a": 1})),)),
    ):
        builder.add(chunk)
    parts = builder.parts
    assert parts[0] == Part(text="think more", thought=True, thought_signature=b"\x00sig")
    assert parts[1] == Part(text="Hello world")
    assert parts[2].function_call == FunctionCall("id1", "f", {"a": 1})


def test_part_takes_every_field_by_name_and_in_order() -> None:
    """Part's __init__ is written out: it must set every field, with the dataclass's
    defaults, and take them positionally in the fields' order."""
    names = [f.name for f in dataclasses.fields(Part)]
    assert list(inspect.signature(Part).parameters) == names
    values: dict[str, Any] = {name: object() for name in names}
    part = Part(**values)
    assert all(getattr(part, name) is value for name, value in values.items())
    assert Part(*values.values()) == part
    defaults = Part()
    for f in dataclasses.fields(Part):
        assert getattr(defaults, f.name) == f.default
    with pytest.raises(dataclasses.FrozenInstanceError):
        part.text = "changed"  # type: ignore[misc]
