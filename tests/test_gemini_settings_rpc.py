"""Gemini request settings end to end: gRPC -> chatd -> google-genai -> the strict fake.

Each test shows what reaches the wire (the fake's request log) and what chatd stores and
returns: thinking, media resolution, service tier, tool_config, cached_content, labels,
per-modality usage, CountTokens and model changes."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2, struct_pb2

from chatd.v1 import chat_service_pb2 as pb
from chatd.v1 import content_pb2, session_pb2
from server.tools import BUILTIN_TOOLS, ToolRegistry
from tests.conftest import Chatd, StartChatd, fast_gemini
from tests.fake_gemini import (
    FakeGemini,
    Reply,
    Tokens,
    b64decode,
    call_part,
    get_field,
    text_part,
    thought_part,
    usage,
)
from tests.helpers import all_messages, rich_details, violated_fields

SIGNATURE = b"\x01sig\xff"
GC = session_pb2.GenerationConfig
Thinking = session_pb2.ThinkingConfig


async def new_session(
    chatd: Chatd, session_id: str = "g", **settings: Any
) -> pb.CreateSessionResponse:
    return await chatd.stub.CreateSession(
        pb.CreateSessionRequest(session_id=session_id, session=session_pb2.Session(**settings))
    )


async def send(chatd: Chatd, text: str = "hi", **fields: Any) -> pb.SendMessageResponse:
    return await chatd.stub.SendMessage(pb.SendMessageRequest(session_id="g", text=text, **fields))


async def refused(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


def sent_config(fake: FakeGemini, index: int = -1) -> Any:
    return fake.requests[index].field("generation_config", default={})


# --------------------------------------------------------------------------- thinking


async def test_turn_thinking_level_replaces_session_budget_on_the_wire(
    gemini_chatd: Chatd, fake_gemini: FakeGemini
) -> None:
    """A budget and a level never travel together: the turn's level replaces the session's
    budget for that turn only; the next turn sends the session's budget again."""
    await new_session(gemini_chatd, generation_config=GC(thinking=Thinking(thinking_budget=1024)))
    level = GC(thinking=Thinking(thinking_level=Thinking.THINKING_LEVEL_XHIGH))
    await send(gemini_chatd, generation_config=level)
    await send(gemini_chatd)

    first, second = (get_field(sent_config(fake_gemini, i), "thinking_config") for i in (0, 1))
    assert len(first) == 1 and get_field(first, "thinking_level") == "XHIGH"
    assert get_field(second, "thinking_budget") == 1024
    assert get_field(second, "thinking_level") is None
    assert all(r.rejection is None for r in fake_gemini.requests)

    # And the other way round: a turn's budget replaces a session's level.
    await gemini_chatd.stub.UpdateSession(
        pb.UpdateSessionRequest(
            session=session_pb2.Session(
                session_id="g",
                generation_config=GC(
                    thinking=Thinking(thinking_level=Thinking.THINKING_LEVEL_XHIGH)
                ),
            ),
            update_mask=field_mask_pb2.FieldMask(paths=["generation_config"]),
        )
    )
    stored = (await gemini_chatd.stub.GetSession(pb.GetSessionRequest(session_id="g"))).session
    assert stored.generation_config.thinking.thinking_level == Thinking.THINKING_LEVEL_XHIGH
    await send(gemini_chatd, generation_config=GC(thinking=Thinking(thinking_budget=0)))
    third = get_field(sent_config(fake_gemini), "thinking_config")
    assert get_field(third, "thinking_budget") == 0
    assert get_field(third, "thinking_level") is None


@pytest.mark.parametrize("where", ["session", "turn"])
async def test_budget_and_level_together_are_invalid_argument(
    gemini_chatd: Chatd, fake_gemini: FakeGemini, where: str
) -> None:
    both = GC(thinking=Thinking(thinking_budget=10, thinking_level=Thinking.THINKING_LEVEL_LOW))
    if where == "session":
        error = await refused(new_session(gemini_chatd, generation_config=both))
        assert violated_fields(error) == ["session.generation_config.thinking.thinking_level"]
    else:
        await new_session(gemini_chatd)
        error = await refused(send(gemini_chatd, generation_config=both))
        assert violated_fields(error) == ["generation_config.thinking.thinking_level"]
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not both" in (error.details() or "")
    assert fake_gemini.requests == []


async def test_include_thoughts_are_stored_streamed_as_thoughts_and_replayed(
    gemini_chatd: Chatd, fake_gemini: FakeGemini
) -> None:
    await new_session(gemini_chatd, generation_config=GC(thinking=Thinking(include_thoughts=True)))
    fake_gemini.push(
        Reply(parts=[thought_part("Let me think.", signature=SIGNATURE), text_part("Four.")])
    )
    events = [
        e
        async for e in gemini_chatd.stub.StreamReply(
            pb.StreamReplyRequest(session_id="g", text="2+2?")
        )
    ]
    assert get_field(sent_config(fake_gemini), "thinking_config", "include_thoughts") is True
    deltas = [(e.text_delta.text, e.text_delta.thought) for e in events if e.HasField("text_delta")]
    assert deltas == [("Let me think.", True), ("Four.", False)]
    assert events[-1].reply.text == "Four."

    history = await all_messages(gemini_chatd.stub, "g")
    thought = history[1].parts[0]
    assert (thought.text, thought.thought, thought.thought_signature) == (
        "Let me think.",
        True,
        SIGNATURE,
    )
    await send(gemini_chatd, "and 3+3?")
    replayed = fake_gemini.requests[-1].contents[1]["parts"][0]
    assert replayed["text"] == "Let me think." and replayed["thought"] is True
    assert b64decode(get_field(replayed, "thought_signature")) == SIGNATURE


# --------------------------------------------------------------------------- media resolution


async def test_media_resolution_per_request_and_per_part(
    gemini_chatd: Chatd, fake_gemini: FakeGemini
) -> None:
    """The session's default goes in generationConfig; a part's own resolution goes on the
    part, through v1beta (v1 does not serve it), and is stored with the message."""
    await new_session(
        gemini_chatd, generation_config=GC(media_resolution=content_pb2.MEDIA_RESOLUTION_LOW)
    )
    await send(gemini_chatd, "plain text turn")
    assert fake_gemini.requests[-1].path.startswith("/v1/")
    assert get_field(sent_config(fake_gemini), "media_resolution") == "MEDIA_RESOLUTION_LOW"

    image = content_pb2.Part(
        inline_data=content_pb2.Blob(mime_type="image/png", data=b"\x89PNG"),
        media_resolution=content_pb2.MEDIA_RESOLUTION_ULTRA_HIGH,
    )
    await gemini_chatd.stub.SendMessage(
        pb.SendMessageRequest(session_id="g", parts=[content_pb2.Part(text="look"), image])
    )
    sent = fake_gemini.requests[-1]
    assert sent.path.startswith("/v1beta/")
    assert sent.rejection is None
    part = sent.contents[-1]["parts"][1]
    assert get_field(part, "media_resolution") == {"level": "MEDIA_RESOLUTION_ULTRA_HIGH"}
    history = await all_messages(gemini_chatd.stub, "g")
    assert history[2].parts[1].media_resolution == content_pb2.MEDIA_RESOLUTION_ULTRA_HIGH


async def test_media_resolution_rules_name_the_field(
    gemini_chatd: Chatd, fake_gemini: FakeGemini
) -> None:
    await new_session(gemini_chatd)
    text = content_pb2.Part(text="x", media_resolution=content_pb2.MEDIA_RESOLUTION_HIGH)
    error = await refused(
        gemini_chatd.stub.SendMessage(pb.SendMessageRequest(session_id="g", parts=[text]))
    )
    assert violated_fields(error) == ["parts[0].media_resolution"]
    ultra = GC(media_resolution=content_pb2.MEDIA_RESOLUTION_ULTRA_HIGH)
    error = await refused(send(gemini_chatd, generation_config=ultra))
    assert violated_fields(error) == ["generation_config.media_resolution"]
    assert fake_gemini.requests == []


# --------------------------------------------------------------------------- service tier, cache


async def test_service_tier_is_stored_and_overridden_per_turn(
    gemini_chatd: Chatd, fake_gemini: FakeGemini
) -> None:
    created = await new_session(
        gemini_chatd, generation_config=GC(service_tier=GC.SERVICE_TIER_FLEX)
    )
    assert created.session.generation_config.service_tier == GC.SERVICE_TIER_FLEX
    await send(gemini_chatd)
    await send(gemini_chatd, generation_config=GC(service_tier=GC.SERVICE_TIER_PRIORITY))
    assert fake_gemini.requests[0].field("service_tier") == "flex"
    assert fake_gemini.requests[1].field("service_tier") == "priority"


async def test_cached_content_per_session_and_turn_without_instruction_or_tools(
    gemini_chatd: Chatd, fake_gemini: FakeGemini
) -> None:
    created = await new_session(
        gemini_chatd, generation_config=GC(cached_content="cachedContents/abc-1")
    )
    assert created.session.generation_config.cached_content == "cachedContents/abc-1"
    await send(gemini_chatd)
    await send(gemini_chatd, generation_config=GC(cached_content="cachedContents/other"))
    assert fake_gemini.requests[0].field("cached_content") == "cachedContents/abc-1"
    assert fake_gemini.requests[1].field("cached_content") == "cachedContents/other"
    assert all(r.rejection is None for r in fake_gemini.requests)

    # Gemini refuses a system instruction or tools beside a cache; so does chatd, up front.
    error = await refused(
        new_session(
            gemini_chatd,
            "h",
            system_instruction="be brief",
            generation_config=GC(cached_content="cachedContents/abc-1"),
        )
    )
    assert violated_fields(error) == ["session.generation_config.cached_content"]
    await new_session(gemini_chatd, "i", system_instruction="be brief")
    error = await refused(
        gemini_chatd.stub.SendMessage(
            pb.SendMessageRequest(
                session_id="i", text="x", generation_config=GC(cached_content="cachedContents/c")
            )
        )
    )
    assert violated_fields(error) == ["generation_config.cached_content"]
    error = await refused(
        new_session(gemini_chatd, "j", generation_config=GC(cached_content="caches/../x"))
    )
    assert violated_fields(error) == ["session.generation_config.cached_content"]
    assert len(fake_gemini.requests) == 2


# --------------------------------------------------------------------------- tool_config


async def test_tool_config_is_stored_replaced_per_turn_and_loses_to_the_round_limit(
    start_chatd: StartChatd, fake_gemini: FakeGemini
) -> None:
    chatd = await start_chatd(
        provider=fast_gemini(fake_gemini), tools=ToolRegistry(BUILTIN_TOOLS), max_tool_rounds=1
    )
    any_calc = session_pb2.ToolConfig(
        mode=session_pb2.ToolConfig.MODE_ANY, allowed_function_names=["calculate"]
    )
    created = await new_session(
        chatd, tools=["calculate"], generation_config=GC(tool_config=any_calc)
    )
    assert created.session.generation_config.tool_config == any_calc

    fake_gemini.push(Reply(text="no tools needed"))
    await send(chatd)
    calling = fake_gemini.requests[-1].field("tool_config", "function_calling_config")
    assert get_field(calling, "mode") == "ANY"
    assert get_field(calling, "allowed_function_names") == ["calculate"]

    # A turn's tool_config replaces the session's whole (no allowed names left behind).
    auto = session_pb2.ToolConfig(mode=session_pb2.ToolConfig.MODE_AUTO)
    fake_gemini.push(Reply(parts=[call_part("calculate", {"expression": "1+1"})]))
    fake_gemini.push(Reply(parts=[call_part("calculate", {"expression": "2+2"})]))
    fake_gemini.push(Reply(text="enough"))
    reply = (await send(chatd, "loop", generation_config=GC(tool_config=auto))).reply
    assert reply.finish_reason == content_pb2.FINISH_REASON_MAX_TOOL_ROUNDS
    modes = [r.field("tool_config", "function_calling_config") for r in fake_gemini.requests[-3:]]
    # One round of tools, a second round stopped by the limit, then the last word.
    assert modes[:2] == [{"mode": "AUTO"}, {"mode": "AUTO"}]
    assert modes[2] == {"mode": "NONE"}, "chatd's round limit wins on its last call"
    assert all(r.rejection is None for r in fake_gemini.requests)


async def test_tool_config_rules_name_the_field(gemini_chatd: Chatd) -> None:
    names_with_auto = session_pb2.ToolConfig(
        mode=session_pb2.ToolConfig.MODE_AUTO, allowed_function_names=["f"]
    )
    error = await refused(
        new_session(gemini_chatd, generation_config=GC(tool_config=names_with_auto))
    )
    assert violated_fields(error) == [
        "session.generation_config.tool_config.allowed_function_names"
    ]


# --------------------------------------------------------------------------- usage


def _details(**counts: int) -> list[dict[str, object]]:
    return [{"modality": m, "tokenCount": c} for m, c in counts.items()]


async def test_modality_usage_per_message_reply_and_session(
    gemini_chatd: Chatd, fake_gemini: FakeGemini
) -> None:
    """Per-modality counts and cached tokens are kept per message and summed by modality
    over replies and the session; traffic_type stays on the message."""
    await new_session(gemini_chatd)
    for image in (258, 100):
        meta = usage(prompt=10 + image, candidates=5)
        meta.update(
            cachedContentTokenCount=8,
            promptTokensDetails=_details(TEXT=10, IMAGE=image),
            candidatesTokensDetails=_details(TEXT=5),
            cacheTokensDetails=_details(TEXT=8),
            trafficType="ON_DEMAND",
        )
        fake_gemini.push(Reply(text="ok", usage=meta))
        reply = (await send(gemini_chatd)).reply
        assert [(d.modality, d.token_count) for d in reply.usage.prompt_tokens_details] == [
            ("TEXT", 10),
            ("IMAGE", image),
        ]
    history = await all_messages(gemini_chatd.stub, "g")
    first = history[1].usage
    assert first.cached_content_token_count == 8
    assert [(d.modality, d.token_count) for d in first.cache_tokens_details] == [("TEXT", 8)]
    assert first.traffic_type == "ON_DEMAND"
    session = (await gemini_chatd.stub.GetSession(pb.GetSessionRequest(session_id="g"))).session
    assert session.usage.cached_content_token_count == 16
    assert [(d.modality, d.token_count) for d in session.usage.prompt_tokens_details] == [
        ("TEXT", 20),
        ("IMAGE", 358),
    ]
    assert [(d.modality, d.token_count) for d in session.usage.candidates_tokens_details] == [
        ("TEXT", 10)
    ]
    assert session.usage.traffic_type == ""


# --------------------------------------------------------------------------- CountTokens


async def test_count_tokens_counts_instruction_and_tools_of_the_next_turn(
    gemini_chatd: Chatd, fake_gemini: FakeGemini
) -> None:
    decl = session_pb2.FunctionDeclaration(name="lookup", description="Looks things up")
    await new_session(gemini_chatd, system_instruction="Be brief.", function_declarations=[decl])
    fake_gemini.push(Tokens(77))
    counted = await gemini_chatd.stub.CountTokens(
        pb.CountTokensRequest(session_id="g", text="how many")
    )
    assert (counted.total_tokens, counted.estimated) == (77, False)
    sent = fake_gemini.requests[-1]
    assert sent.rejection is None
    assert set(sent.body) == {"generateContentRequest"}
    inner = sent.generate_request
    assert get_field(inner, "system_instruction", "parts") == [{"text": "Be brief."}]
    assert get_field(inner, "tools", 0, "function_declarations", 0, "name") == "lookup"
    assert sent.texts("user") == ["how many"]

    stateless = await gemini_chatd.stub.CountTokens(
        pb.CountTokensRequest(
            contents=[
                content_pb2.Content(
                    role=content_pb2.ROLE_USER, parts=[content_pb2.Part(text="a b")]
                )
            ],
            system_instruction="one two three",
        )
    )
    assert stateless.total_tokens == 5  # the fake counts words, the instruction's too
    error = await refused(
        gemini_chatd.stub.CountTokens(
            pb.CountTokensRequest(session_id="g", text="x", system_instruction="y")
        )
    )
    assert violated_fields(error) == ["system_instruction"]


async def test_echo_estimate_counts_instruction_and_declarations(chatd: Chatd) -> None:
    await chatd.stub.CreateSession(pb.CreateSessionRequest(session_id="e"))
    bare = await chatd.stub.CountTokens(pb.CountTokensRequest(session_id="e", text="x" * 40))
    decl = session_pb2.FunctionDeclaration(name="lookup", description="d" * 40)
    await chatd.stub.CreateSession(
        pb.CreateSessionRequest(
            session_id="f",
            session=session_pb2.Session(system_instruction="y" * 40, function_declarations=[decl]),
        )
    )
    full = await chatd.stub.CountTokens(pb.CountTokensRequest(session_id="f", text="x" * 40))
    assert full.estimated
    assert full.total_tokens >= bare.total_tokens + 10 + 10


# --------------------------------------------------------------------------- models


async def test_model_change_while_paused_is_failed_precondition(
    gemini_chatd: Chatd, fake_gemini: FakeGemini
) -> None:
    decl = session_pb2.FunctionDeclaration(name="lookup")
    await new_session(gemini_chatd, model="gemini-2.5-flash", function_declarations=[decl])
    fake_gemini.push(Reply(parts=[call_part("lookup", {"q": "x"}, id="c1", signature=SIGNATURE)]))
    paused = (await send(gemini_chatd)).reply
    assert paused.finish_reason == content_pb2.FINISH_REASON_TOOL_CALLS_PENDING

    change = pb.UpdateSessionRequest(
        session=session_pb2.Session(session_id="g", model="gemini-3-pro-preview"),
        update_mask=field_mask_pb2.FieldMask(paths=["model"]),
    )
    error = await refused(gemini_chatd.stub.UpdateSession(change))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert rich_details(error)["ErrorInfo"].reason == "MODEL_CHANGE_WHILE_PAUSED"
    assert "signatures" in (error.details() or "")

    # Answered, the turn is over and the model may change; the old model's signatures stay
    # in chatd's history but do not go to the new model.
    await gemini_chatd.stub.SendMessage(
        pb.SendMessageRequest(
            session_id="g",
            tool_results=[pb.ToolResult(call_id="c1", result=struct_pb2.Value(string_value="y"))],
        )
    )
    await gemini_chatd.stub.UpdateSession(change)
    await send(gemini_chatd, "next")
    sent = fake_gemini.requests[-1]
    assert sent.model == "gemini-3-pro-preview"
    assert sent.rejection is None
    assert "thoughtSignature" not in str(sent.body) and "thought_signature" not in str(sent.body)
    history = await all_messages(gemini_chatd.stub, "g")
    assert history[1].parts[0].thought_signature == SIGNATURE


# --------------------------------------------------------------------------- labels


LABELS = {"team": "search", "Cost.Center": "A/B", "env": "prod"}


@pytest.mark.parametrize(
    ("vertex", "forward", "expected"),
    [
        (True, True, {"team": "search", "env": "prod"}),
        (True, False, None),
        (False, True, None),
    ],
)
async def test_session_labels_go_upstream_only_on_vertex_when_forwarded(
    start_chatd: StartChatd,
    fake_gemini: FakeGemini,
    vertex: bool,
    forward: bool,
    expected: dict[str, str] | None,
) -> None:
    """Vertex AI takes request labels (Google Cloud label syntax only: "Cost.Center" stays
    chatd's own); the Gemini API takes none, so chatd never sends them there."""
    provider = fast_gemini(fake_gemini, vertexai=vertex, forward_labels=forward)
    chatd = await start_chatd(provider=provider)
    await new_session(chatd, labels=LABELS)
    await send(chatd)
    await chatd.stub.GenerateContent(
        pb.GenerateContentRequest(
            contents=[
                content_pb2.Content(role=content_pb2.ROLE_USER, parts=[content_pb2.Part(text="x")])
            ],
            labels=LABELS,
        )
    )
    for sent in fake_gemini.requests:
        assert sent.vertex is vertex
        assert sent.rejection is None
        assert sent.field("labels") == expected
    stored = (await chatd.stub.GetSession(pb.GetSessionRequest(session_id="g"))).session
    assert dict(stored.labels) == LABELS


# --------------------------------------------------------------------------- wire rules


async def test_display_names_are_kept_but_sent_only_to_vertex(
    start_chatd: StartChatd, fake_gemini: FakeGemini
) -> None:
    """The Gemini API's Blob and FileData have no display_name (it answers 400 Unknown
    name); Vertex AI's do."""
    image = content_pb2.Part(
        inline_data=content_pb2.Blob(mime_type="image/png", data=b"\x89", display_name="pic")
    )
    for index, vertex in enumerate((False, True)):
        chatd = await start_chatd(provider=fast_gemini(fake_gemini, vertexai=vertex))
        await new_session(chatd)
        await chatd.stub.SendMessage(pb.SendMessageRequest(session_id="g", parts=[image]))
        sent = fake_gemini.requests[index]
        assert sent.rejection is None
        blob = get_field(sent.contents[0], "parts", 0, "inline_data")
        assert get_field(blob, "display_name") == ("pic" if vertex else None)
        history = await all_messages(chatd.stub, "g")
        assert history[0].parts[0].inline_data.display_name == "pic"


async def test_gemini_3_current_turn_call_without_signature_gets_the_documented_dummy(
    gemini_chatd: Chatd, fake_gemini: FakeGemini
) -> None:
    """A paused turn whose call has no signature (appended history, or written by a model
    that signs nothing) resumes on Gemini 3 with the dummy signature the thought-signature
    guide documents, which the strict fake, like Gemini, accepts."""
    decl = session_pb2.FunctionDeclaration(name="lookup")
    await new_session(gemini_chatd, model="gemini-3-flash-preview", function_declarations=[decl])
    fake_gemini.push(Reply(parts=[call_part("lookup", {}, id="c1")]))
    await send(gemini_chatd)
    await gemini_chatd.stub.SendMessage(
        pb.SendMessageRequest(
            session_id="g",
            tool_results=[pb.ToolResult(call_id="c1", result=struct_pb2.Value(number_value=1))],
        )
    )
    resumed = fake_gemini.requests[-1]
    assert resumed.rejection is None
    call = resumed.contents[1]["parts"][0]
    assert get_field(call, "thought_signature") == "skip_thought_signature_validator"
    history = await all_messages(gemini_chatd.stub, "g")
    assert history[1].parts[0].thought_signature == b"", "history is never rewritten"


async def test_count_tokens_on_vertex_passes_instruction_and_tools_in_the_sdk_config(
    start_chatd: StartChatd, fake_gemini: FakeGemini
) -> None:
    """Vertex AI's countTokens takes systemInstruction and tools beside contents, which the
    SDK's public count_tokens sends from CountTokensConfig."""
    chatd = await start_chatd(provider=fast_gemini(fake_gemini, vertexai=True))
    decl = session_pb2.FunctionDeclaration(name="lookup")
    await new_session(chatd, system_instruction="Be brief.", function_declarations=[decl])
    fake_gemini.push(Tokens(9))
    counted = await chatd.stub.CountTokens(pb.CountTokensRequest(session_id="g", text="hi"))
    assert counted.total_tokens == 9
    sent = fake_gemini.requests[-1]
    assert sent.vertex and sent.rejection is None
    assert sent.field("system_instruction", "parts") == [{"text": "Be brief."}]
    assert get_field(sent.body, "tools", 0, "function_declarations", 0, "name") == "lookup"
    assert sent.texts("user") == ["hi"]
