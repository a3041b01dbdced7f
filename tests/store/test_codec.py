"""The storage codec: lossless round trips and compact encodings."""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType

import pytest

from server.sessions.model import (
    Blob,
    FinishReason,
    FunctionCall,
    GenerationConfig,
    Message,
    Part,
    PendingTurn,
    Role,
    SessionSettings,
    Summary,
    ThinkingConfig,
    ToolConfig,
    Usage,
)
from server.store import codec, rules

from .builders import EVERY_PART_KIND, FULL_SETTINGS


def round_trip_settings(settings: SessionSettings) -> SessionSettings:
    return codec.settings_from_dict(codec.loads(codec.dumps(codec.settings_to_dict(settings))))


def round_trip_message(message: Message) -> Message:
    body = codec.loads(codec.dumps(codec.message_body_to_dict(message)))
    return codec.message_from_body(
        body,
        role=message.role.value,
        seq=message.seq,
        create_time=message.create_time,
        turn_id=message.turn_id,
    )


def test_default_values_encode_to_nothing() -> None:
    """Rows stay small: defaults and None are left out."""
    assert codec.dumps(codec.settings_to_dict(SessionSettings())) == "{}"
    assert codec.dumps(codec.usage_to_dict(Usage())) == "{}"
    assert codec.dumps(codec.part_to_dict(Part(text="hi"))) == '{"text":"hi"}'
    assert codec.pending_to_json(None) is None


def test_generation_config_keeps_zero_apart_from_none() -> None:
    zeros = GenerationConfig(temperature=0.0, top_k=0, seed=0, stop_sequences=())
    assert codec.generation_config_to_dict(zeros) == {
        "temperature": 0.0,
        "top_k": 0,
        "seed": 0,
        "stop_sequences": [],
    }
    for config in (zeros, GenerationConfig(), GenerationConfig(thinking=ThinkingConfig())):
        back = codec.generation_config_from_dict(codec.generation_config_to_dict(config))
        assert back == config


def test_float_fields_come_back_as_floats_even_when_written_as_integers() -> None:
    config = codec.generation_config_from_dict({"temperature": 1, "top_k": 3})
    assert type(config.temperature) is float
    assert type(config.top_k) is int


@pytest.mark.parametrize("settings", [SessionSettings(), FULL_SETTINGS])
def test_settings_round_trip(settings: SessionSettings) -> None:
    assert round_trip_settings(settings) == settings


def test_every_part_kind_round_trips_with_exact_bytes() -> None:
    back = round_trip_message(EVERY_PART_KIND)
    assert back == EVERY_PART_KIND
    assert back.parts[3].inline_data is not None
    assert back.parts[3].inline_data.data == bytes(range(256)) * 3
    assert back.parts[2].thought_signature == bytes(range(256))


def test_inline_data_is_standard_base64() -> None:
    part = Part(thought_signature=b"\xfb\xff", text="x")
    assert codec.part_to_dict(part)["thought_signature"] == "+/8="


def test_non_dict_mappings_are_encoded_as_objects() -> None:
    call = FunctionCall("id", "f", MappingProxyType({"a": MappingProxyType({"b": 1})}))
    text = codec.pending_to_json(PendingTurn("t", 0, 0, (call,)))
    assert text is not None
    assert '"calls":[{"name":"f","id":"id","args":{"a":{"b":1}}}]' in text
    back = codec.pending_from_json(text)
    assert back is not None
    assert back.calls == (FunctionCall("id", "f", {"a": {"b": 1}}),)


def test_message_without_usage_differs_from_zero_usage() -> None:
    bare = Message(Role.USER, (Part(text="x"),))
    zero = Message(Role.USER, (Part(text="x"),), usage=Usage())
    assert round_trip_message(bare).usage is None
    assert round_trip_message(zero).usage == Usage()


@pytest.mark.parametrize("seconds", [0.0, 1.5, 1_700_000_000.123456, 4_102_444_800.999999])
def test_microsecond_quantization_is_stable(seconds: float) -> None:
    once = rules.quantize_time(seconds)
    assert rules.quantize_time(once) == once
    assert rules.to_micros(once) == rules.to_micros(seconds)


def test_request_settings_media_resolution_and_modality_usage_round_trip() -> None:
    """Media resolution, service tier, tool_config and cached_content are kept with the
    session; a part's media resolution and per-modality usage with the message."""
    config = GenerationConfig(
        thinking=ThinkingConfig(include_thoughts=True, thinking_level="XHIGH"),
        media_resolution="MEDIA_RESOLUTION_LOW",
        service_tier="flex",
        tool_config=ToolConfig("ANY", ("a", "b")),
        cached_content="cachedContents/c-1",
    )
    settings = SessionSettings(generation_config=config)
    assert round_trip_settings(settings) == settings
    assert (
        round_trip_settings(
            SessionSettings(generation_config=GenerationConfig(tool_config=ToolConfig()))
        ).generation_config.tool_config
        == ToolConfig()
    )
    message = Message(
        Role.MODEL,
        (Part(inline_data=Blob("image/png", b"\x00"), media_resolution="MEDIA_RESOLUTION_HIGH"),),
        usage=Usage(
            prompt_tokens=3,
            prompt_details=(("TEXT", 1), ("IMAGE", 2)),
            candidates_details=(("TEXT", 4),),
            cache_details=(("TEXT", 1),),
            tool_use_prompt_details=(("TEXT", 9),),
            traffic_type="ON_DEMAND",
        ),
    )
    assert round_trip_message(message) == message


PACKED_CASES = [
    EVERY_PART_KIND,
    Message(Role.USER, (Part(text="short"),), seq=3, create_time=1.5, turn_id="t"),
    Message(Role.USER, (Part(text="line one\nline two \u2028 nul:\x00 lone:\ud800"),), seq=4),
    Message(Role.USER, (Part(text="x"),), seq=5, usage=Usage()),
    Message(Role.MODEL, (), seq=6, finish_reason=FinishReason.MAX_TOKENS),
    Message(Role.MODEL, (Part(text="m"),), seq=7, model="gemini-test"),
    Message(
        Role.MODEL,
        (Part(text="x"), Part(text="thought", thought=True)),
        seq=8,
        usage=Usage(
            prompt_tokens=3,
            total_tokens=3,
            prompt_details=(("TEXT", 1), ("IMAGE", 2)),
            tool_use_prompt_details=(("TEXT", 9),),
            traffic_type="ON_DEMAND",
        ),
        candidate_metadata={"avgLogprobs": -0.5, "finishMessage": "done\n"},
    ),
    Message(Role.MODEL, (Part(text="u"),), seq=9, usage=Usage(candidates_tokens=5)),
    Message(Role.MODEL, (Part(text="s"),), seq=11, summary=Summary(0, 9)),
    Message(
        Role.MODEL,
        (Part(text="s"),),
        seq=12,
        usage=Usage(prompt_tokens=9),
        model="m",
        candidate_metadata={"finishMessage": "x"},
        summary=Summary(0, 11),
    ),
    Message(
        Role.MODEL,
        (Part(function_call=FunctionCall("c", "f", {"big": 2**70, "inf": float("inf")})),),
        seq=10,
        candidate_metadata={"score": float("-inf")},
    ),
]


def test_packed_messages_round_trip_every_field() -> None:
    data = codec.pack_messages(PACKED_CASES)
    assert data.count(b"\n") == len(PACKED_CASES) - 1  # one line per message
    assert codec.unpack_messages(data) == PACKED_CASES
    assert codec.packed_seqs(data) == [m.seq for m in PACKED_CASES]
    for i in range(len(PACKED_CASES)):  # each line stands alone
        line = data.split(b"\n")[i]
        assert codec.unpack_messages(line) == [PACKED_CASES[i]]
    assert codec.pack_messages([]) == b""
    assert codec.unpack_messages(b"") == []


def test_packed_messages_of_one_turn_share_their_strings() -> None:
    turn = [
        Message(Role.USER, (Part(text="q"),), seq=0, turn_id="turn-0", model=""),
        Message(Role.MODEL, (Part(text="a"),), seq=1, turn_id="turn-0", model="echo"),
        Message(Role.MODEL, (Part(text="b"),), seq=2, turn_id="turn-0", model="echo"),
    ]
    back = codec.unpack_messages(codec.pack_messages(turn))
    assert back == turn
    assert back[0].turn_id is back[1].turn_id is back[2].turn_id
    assert back[1].model is back[2].model
    zero = codec.unpack_messages(codec.pack_messages([replace(turn[0], usage=Usage())]))
    assert zero[0].usage is codec.ZERO_USAGE


def test_packed_integers_beyond_64_bits_stay_exact() -> None:
    """An integer too big for 64 bits in a call's arguments, with nothing else in the
    history that orjson refuses, comes back exact (orjson alone would read a float)."""
    big = 12345678901234567890123
    messages = [
        Message(Role.USER, (Part(text="order it"),), seq=1),
        Message(
            Role.MODEL,
            (Part(function_call=FunctionCall("c", "order", {"id": big, "qty": 3})),),
            seq=2,
        ),
    ]
    back = codec.unpack_messages(codec.pack_messages(messages))
    assert back == messages
    call = back[1].parts[0].function_call
    assert call is not None
    assert type(call.args["id"]) is int


def test_a_summary_keeps_its_range_in_a_message_row() -> None:
    summary = Message(Role.MODEL, (Part(text="s"),), seq=4, summary=Summary(0, 3))
    assert round_trip_message(summary) == summary
    assert round_trip_message(replace(summary, summary=None)).summary is None
