"""Sessions on the gemini provider, end to end: gRPC -> chatd -> google-genai -> fake Gemini."""

from __future__ import annotations

import grpc
import pytest

from chatd.v1 import chat_service_pb2 as pb
from chatd.v1 import content_pb2, session_pb2
from tests.conftest import Chatd, StartChatd, fast_gemini
from tests.fake_gemini import (
    Drop,
    FakeGemini,
    Hold,
    HttpError,
    Reply,
    Tokens,
    b64decode,
    get_field,
    text_part,
    thought_part,
    usage,
)
from tests.helpers import all_messages, outcome, rich_details

SIGNATURE = bytes(range(256))
# Longer than any test runs: a call that ends at all was ended by what the test checks.
NEVER = 3600.0
# How long a wait on the fake may take before the test fails as hung.
HANG_GUARD = 30.0


async def new_session(chatd: Chatd, session_id: str = "g", **settings: object) -> None:
    await chatd.stub.CreateSession(
        pb.CreateSessionRequest(
            session_id=session_id,
            session=session_pb2.Session(**settings),  # type: ignore[arg-type]
        )
    )


async def test_third_turn_sends_whole_history_instruction_merged_config_and_signatures(
    gemini_chatd: Chatd, fake_gemini: FakeGemini
) -> None:
    """What Gemini receives on turn 3: every earlier message, the system instruction, the
    session's config with the turn's override merged in, and thought signatures unchanged."""
    await new_session(
        gemini_chatd,
        model="gemini-test",
        system_instruction="You are terse.",
        generation_config=session_pb2.GenerationConfig(temperature=0.25, top_k=5),
    )
    fake_gemini.push(
        Reply(parts=[thought_part("pondering", signature=SIGNATURE), text_part("first answer")])
    )
    fake_gemini.push(Reply(text="second answer"))
    fake_gemini.push(Reply(text="third answer"))
    for text in ("one", "two"):
        await gemini_chatd.stub.SendMessage(pb.SendMessageRequest(session_id="g", text=text))
    await gemini_chatd.stub.SendMessage(
        pb.SendMessageRequest(
            session_id="g",
            text="three",
            generation_config=session_pb2.GenerationConfig(temperature=0.75, max_output_tokens=64),
        )
    )

    third = fake_gemini.requests[-1]
    assert third.model == "gemini-test"
    assert third.api_key == "test-key"
    contents = third.contents
    assert [c["role"] for c in contents] == ["user", "model", "user", "model", "user"]
    assert third.texts("user") == ["one", "two", "three"]
    first_reply = contents[1]["parts"]
    assert get_field(first_reply[0], "thought") is True
    assert b64decode(get_field(first_reply[0], "thought_signature")) == SIGNATURE
    assert get_field(first_reply[1], "text") == "first answer"
    instruction = third.field("system_instruction")
    assert get_field(instruction, "parts", 0, "text") == "You are terse."
    config = third.field("generation_config")
    assert get_field(config, "temperature") == pytest.approx(0.75)
    assert get_field(config, "top_k") == 5
    assert get_field(config, "max_output_tokens") == 64

    # chatd's own copy of the signature is byte-identical too.
    history = await all_messages(gemini_chatd.stub, "g")
    assert history[1].parts[0].thought_signature == SIGNATURE
    assert history[1].parts[0].thought


async def test_streamed_reply_arrives_in_order_and_is_stored_as_one_message(
    gemini_chatd: Chatd, fake_gemini: FakeGemini
) -> None:
    await new_session(gemini_chatd)
    answer = "The quick brown fox jumps over the lazy dog."
    fake_gemini.push(
        Reply(text=answer, chunks=5, chunk_delay=0.01, usage=usage(prompt=7, candidates=9))
    )
    events = [
        e
        async for e in gemini_chatd.stub.StreamReply(
            pb.StreamReplyRequest(session_id="g", text="tell me")
        )
    ]
    deltas = [e.text_delta.text for e in events if e.HasField("text_delta")]
    assert len(deltas) == 5
    assert "".join(deltas) == answer
    reply = events[-1].reply
    assert reply.text == answer
    assert reply.usage.prompt_token_count == 7
    assert reply.usage.candidates_token_count == 9

    history = await all_messages(gemini_chatd.stub, "g")
    assert len(history) == 2
    assert [p.text for p in history[1].parts] == [answer]
    assert history[1].usage.candidates_token_count == 9


async def test_usage_is_summed_on_the_session(gemini_chatd: Chatd, fake_gemini: FakeGemini) -> None:
    await new_session(gemini_chatd)
    for prompt in (3, 10):
        fake_gemini.push(Reply(text="ok", usage=usage(prompt=prompt, candidates=2)))
        await gemini_chatd.stub.SendMessage(pb.SendMessageRequest(session_id="g", text="hi"))
    got = await gemini_chatd.stub.GetSession(pb.GetSessionRequest(session_id="g"))
    assert got.session.usage.prompt_token_count == 13
    assert got.session.usage.candidates_token_count == 4
    assert got.session.usage.total_token_count == 17


@pytest.mark.parametrize(
    ("finish", "expected"),
    [
        ("MAX_TOKENS", content_pb2.FINISH_REASON_MAX_TOKENS),
        ("SAFETY", content_pb2.FINISH_REASON_SAFETY),
        ("RECITATION", content_pb2.FINISH_REASON_RECITATION),
    ],
)
async def test_finish_reasons_are_reported_and_partial_text_kept(
    gemini_chatd: Chatd, fake_gemini: FakeGemini, finish: str, expected: int
) -> None:
    await new_session(gemini_chatd)
    fake_gemini.push(Reply(text="partial", finish_reason=finish))
    sent = await gemini_chatd.stub.SendMessage(pb.SendMessageRequest(session_id="g", text="go"))
    assert sent.reply.finish_reason == expected
    assert sent.reply.text == "partial"
    history = await all_messages(gemini_chatd.stub, "g")
    assert history[1].finish_reason == expected


async def test_blocked_prompt_is_a_finish_reason_and_stores_nothing(
    gemini_chatd: Chatd, fake_gemini: FakeGemini
) -> None:
    await new_session(gemini_chatd)
    fake_gemini.push(Reply(block_reason="SAFETY"))
    sent = await gemini_chatd.stub.SendMessage(pb.SendMessageRequest(session_id="g", text="bad"))
    assert sent.reply.finish_reason == content_pb2.FINISH_REASON_PROMPT_BLOCKED
    assert sent.reply.block_reason == "SAFETY"
    assert sent.reply.text == ""
    assert list(sent.reply.messages) == []
    assert await all_messages(gemini_chatd.stub, "g") == []


FAULTS = [
    pytest.param(HttpError(400, "bad request"), grpc.StatusCode.INVALID_ARGUMENT, 1, id="400"),
    pytest.param(
        HttpError(401, "API key not valid"), grpc.StatusCode.FAILED_PRECONDITION, 1, id="401"
    ),
    pytest.param(HttpError(403, "denied"), grpc.StatusCode.FAILED_PRECONDITION, 1, id="403"),
    pytest.param(HttpError(404, "no such model"), grpc.StatusCode.NOT_FOUND, 1, id="404"),
    pytest.param(
        HttpError(429, "slow down", retry_delay="7s"),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        3,
        id="429",
    ),
    pytest.param(HttpError(500, "oops"), grpc.StatusCode.UNAVAILABLE, 3, id="500"),
    pytest.param(HttpError(503, "overloaded"), grpc.StatusCode.UNAVAILABLE, 3, id="503"),
    pytest.param(
        Reply(text="a b c d", chunks=4, error_after=2, error=HttpError(503, "gone")),
        grpc.StatusCode.UNAVAILABLE,
        1,
        id="mid-stream-error",
    ),
    pytest.param(
        Reply(text="a b c d", chunks=4, drop_after=2),
        grpc.StatusCode.UNAVAILABLE,
        1,
        id="mid-stream-drop",
    ),
    pytest.param(Drop(), grpc.StatusCode.UNAVAILABLE, 1, id="dropped-connection"),
]


@pytest.mark.parametrize("rpc", ["SendMessage", "StreamReply"])
@pytest.mark.parametrize(("fault", "code", "attempts"), FAULTS)
async def test_upstream_faults_map_to_statuses_with_bounded_retries_and_no_history_change(
    gemini_chatd: Chatd,
    fake_gemini: FakeGemini,
    rpc: str,
    fault: object,
    code: grpc.StatusCode,
    attempts: int,
) -> None:
    await new_session(gemini_chatd, model="gemini-test")
    fake_gemini.push(Reply(text="kept"))
    await gemini_chatd.stub.SendMessage(pb.SendMessageRequest(session_id="g", text="first"))
    before = await all_messages(gemini_chatd.stub, "g")
    fake_gemini.reset()
    fake_gemini.push(fault, times=10)  # type: ignore[arg-type]

    request = pb.SendMessageRequest(session_id="g", text="second")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await outcome(getattr(gemini_chatd.stub, rpc)(request))
    assert err.value.code() == code
    assert len(fake_gemini.requests) == attempts, "retries are bounded (3 tries, first included)"
    assert await all_messages(gemini_chatd.stub, "g") == before
    details = rich_details(err.value)
    assert details["ErrorInfo"].domain == "chatd"
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        assert details["RetryInfo"].retry_delay.seconds == 7
    if code == grpc.StatusCode.NOT_FOUND:
        assert "gemini-test" in (err.value.details() or "")
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        assert "GEMINI_API_KEY" in (err.value.details() or "")


async def test_retry_then_success_is_one_clean_turn(
    gemini_chatd: Chatd, fake_gemini: FakeGemini
) -> None:
    await new_session(gemini_chatd)
    fake_gemini.push(HttpError(503), times=2)
    fake_gemini.push(Reply(text="finally"))
    sent = await gemini_chatd.stub.SendMessage(pb.SendMessageRequest(session_id="g", text="hi"))
    assert sent.reply.text == "finally"
    assert len(fake_gemini.requests) == 3
    assert len(await all_messages(gemini_chatd.stub, "g")) == 2


async def test_slow_model_past_the_callers_deadline_is_deadline_exceeded(
    start_chatd: StartChatd, fake_gemini: FakeGemini
) -> None:
    """The caller's gRPC deadline bounds the model call, however long the provider's own
    timeout: the model never answers, the caller gets DEADLINE_EXCEEDED, and the server
    gives up too: it closes the upstream request (had it not, the fake would never see a
    disconnect) and stores nothing."""
    chatd = await start_chatd(provider=fast_gemini(fake_gemini, timeout=NEVER, retry_attempts=1))
    await new_session(chatd)
    fake_gemini.push(Reply(text="late", delay=NEVER))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await chatd.stub.SendMessage(pb.SendMessageRequest(session_id="g", text="hi"), timeout=0.5)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    disconnect = await fake_gemini.await_disconnect(timeout=HANG_GUARD)
    assert disconnect.events_sent == 0
    assert await all_messages(chatd.stub, "g") == []


async def test_provider_timeout_is_deadline_exceeded(
    start_chatd: StartChatd, fake_gemini: FakeGemini
) -> None:
    chatd = await start_chatd(provider=fast_gemini(fake_gemini, timeout=0.3, retry_attempts=1))
    await new_session(chatd)
    fake_gemini.push(Reply(text="late", delay=2.0))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await chatd.stub.SendMessage(pb.SendMessageRequest(session_id="g", text="hi"))
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert await all_messages(chatd.stub, "g") == []


async def test_cancelling_stream_reply_closes_the_upstream_request(
    gemini_chatd: Chatd, fake_gemini: FakeGemini
) -> None:
    """The client cancelling StreamReply closes the HTTP request to Gemini: the answer is
    held after its first chunk, so nothing but chatd closing the request ends it."""
    await new_session(gemini_chatd)
    fake_gemini.push(Reply(text=" ".join(["word"] * 50), chunks=50, hold=Hold(), hold_after=1))
    call = gemini_chatd.stub.StreamReply(pb.StreamReplyRequest(session_id="g", text="long"))
    async for event in call:
        if event.HasField("text_delta"):
            break
    call.cancel()
    disconnect = await fake_gemini.await_disconnect(timeout=HANG_GUARD)
    assert disconnect.events_sent == 1
    assert await all_messages(gemini_chatd.stub, "g") == []


async def test_count_tokens_counts_history_plus_candidate_on_gemini(
    gemini_chatd: Chatd, fake_gemini: FakeGemini
) -> None:
    await new_session(gemini_chatd)
    fake_gemini.push(Reply(text="answer"))
    await gemini_chatd.stub.SendMessage(pb.SendMessageRequest(session_id="g", text="question"))
    fake_gemini.push(Tokens(42))
    counted = await gemini_chatd.stub.CountTokens(
        pb.CountTokensRequest(session_id="g", text="candidate")
    )
    assert counted.total_tokens == 42
    assert not counted.estimated
    sent = fake_gemini.requests[-1]
    assert sent.method == "countTokens"
    assert sent.texts("user") == ["question", "candidate"]
    assert sent.texts("model") == ["answer"]
    assert len(await all_messages(gemini_chatd.stub, "g")) == 2, "counting stores nothing"


async def test_count_tokens_on_echo_is_a_marked_estimate(chatd: Chatd) -> None:
    await chatd.stub.CreateSession(pb.CreateSessionRequest(session_id="e"))
    counted = await chatd.stub.CountTokens(pb.CountTokensRequest(session_id="e", text="x" * 40))
    assert counted.estimated
    assert counted.total_tokens == 10
    stateless = await chatd.stub.CountTokens(
        pb.CountTokensRequest(
            contents=[
                content_pb2.Content(
                    role=content_pb2.ROLE_USER, parts=[content_pb2.Part(text="abcd")]
                )
            ]
        )
    )
    assert stateless.total_tokens == 1


async def test_generate_content_is_stateless(gemini_chatd: Chatd, fake_gemini: FakeGemini) -> None:
    """The caller's contents go upstream as given; nothing is stored anywhere."""
    contents = [
        content_pb2.Content(role=content_pb2.ROLE_USER, parts=[content_pb2.Part(text="hi")]),
        content_pb2.Content(role=content_pb2.ROLE_MODEL, parts=[content_pb2.Part(text="hello")]),
        content_pb2.Content(role=content_pb2.ROLE_USER, parts=[content_pb2.Part(text="again")]),
    ]
    fake_gemini.push(Reply(text="stateless answer", usage=usage(prompt=4, candidates=2)))
    unary = await gemini_chatd.stub.GenerateContent(
        pb.GenerateContentRequest(model="gemini-test", contents=contents, system_instruction="s")
    )
    assert unary.generation.text == "stateless answer"
    assert unary.generation.finish_reason == content_pb2.FINISH_REASON_STOP
    assert (
        unary.generation.usage.total_token_count == 0
        or unary.generation.usage.prompt_token_count == 4
    )
    sent = fake_gemini.requests[-1]
    assert sent.model == "gemini-test"
    assert [c["role"] for c in sent.contents] == ["user", "model", "user"]

    fake_gemini.push(Reply(text="streamed stateless", chunks=3))
    events = [
        e
        async for e in gemini_chatd.stub.StreamGenerateContent(
            pb.StreamGenerateContentRequest(contents=contents)
        )
    ]
    assert "".join(e.text_delta.text for e in events if e.HasField("text_delta")) == (
        "streamed stateless"
    )
    assert events[-1].generation.text == "streamed stateless"
    listed = await gemini_chatd.stub.ListSessions(pb.ListSessionsRequest())
    assert list(listed.sessions) == []


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.GenerateContentRequest(), "contents"),
        (
            pb.GenerateContentRequest(
                contents=[content_pb2.Content(parts=[content_pb2.Part(text="x")])]
            ),
            "contents[0].role",
        ),
        (
            pb.GenerateContentRequest(contents=[content_pb2.Content(role=content_pb2.ROLE_USER)]),
            "contents[0].parts",
        ),
        (
            pb.GenerateContentRequest(
                contents=[
                    content_pb2.Content(
                        role=content_pb2.ROLE_USER, parts=[content_pb2.Part(text="x")]
                    )
                ],
                generation_config=session_pb2.GenerationConfig(top_p=3),
            ),
            "generation_config.top_p",
        ),
    ],
)
async def test_generate_content_rejects_bad_input_naming_the_field(
    gemini_chatd: Chatd, fake_gemini: FakeGemini, request_: pb.GenerateContentRequest, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await gemini_chatd.stub.GenerateContent(request_)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in rich_details(err.value)["BadRequest"].field_violations] == [field]
    assert fake_gemini.requests == []
