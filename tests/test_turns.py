"""Turn semantics through a real server: atomicity, serialization, cancellation, context policy."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2

from chatd.v1 import chat_service_pb2 as pb
from chatd.v1 import content_pb2, session_pb2
from server.sessions.errors import Unavailable
from server.sessions.model import Role
from tests.conftest import StartChatd
from tests.fakes import ScriptedProvider
from tests.helpers import all_messages, outcome


async def test_twenty_concurrent_sends_make_twenty_whole_turns(start_chatd: StartChatd) -> None:
    """Concurrent turns on one session run one at a time: none interleave, none is lost."""
    chatd = await start_chatd(echo_delay_ms=1)
    await chatd.stub.CreateSession(pb.CreateSessionRequest(session_id="busy"))
    texts = [f"message {i}" for i in range(20)]
    replies = await asyncio.gather(
        *(chatd.stub.SendMessage(pb.SendMessageRequest(session_id="busy", text=t)) for t in texts)
    )
    history = await all_messages(chatd.stub, "busy")
    assert len(history) == 40
    for k in range(20):
        user, model = history[2 * k], history[2 * k + 1]
        assert user.role == content_pb2.ROLE_USER and model.role == content_pb2.ROLE_MODEL
        assert user.turn_id == model.turn_id
        assert f'"{user.parts[0].text}"' in model.parts[0].text
        # Each turn saw every earlier turn: they ran strictly one after another.
        assert f"turn {k + 1} of this conversation" in model.parts[0].text
    assert sorted(m.parts[0].text for m in history[::2]) == sorted(texts)
    assert {r.reply.turn_id for r in replies} == {m.turn_id for m in history}


async def test_cancelled_stream_stops_the_model_and_stores_nothing(
    start_chatd: StartChatd,
) -> None:
    """A client cancelling StreamReply mid-way cancels the model call; history is unchanged."""
    provider = ScriptedProvider(deltas=[f"w{i} " for i in range(100)], delay=0.02)
    chatd = await start_chatd(provider=provider)
    await chatd.stub.CreateSession(pb.CreateSessionRequest(session_id="c"))
    await chatd.stub.SendMessage(pb.SendMessageRequest(session_id="c", text="kept"))
    before = await all_messages(chatd.stub, "c")

    call = chatd.stub.StreamReply(pb.StreamReplyRequest(session_id="c", text="dropped"))
    deltas = 0
    async for event in call:
        deltas += event.HasField("text_delta")
        if deltas == 3:
            break
    call.cancel()
    await provider.cancelled.wait()

    assert await all_messages(chatd.stub, "c") == before
    health = await chatd.health.Check(health_pb2.HealthCheckRequest())
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    provider.delay = 0
    after = await chatd.stub.SendMessage(pb.SendMessageRequest(session_id="c", text="next"))
    assert after.reply.finish_reason == content_pb2.FINISH_REASON_STOP
    assert len(await all_messages(chatd.stub, "c")) == len(before) + 2


async def test_failed_model_call_maps_to_status_and_leaves_history(
    start_chatd: StartChatd,
) -> None:
    """An upstream failure mid-stream ends the RPC with its status and stores nothing."""
    provider = ScriptedProvider(
        error=Unavailable("upstream went away", reason="UPSTREAM_UNAVAILABLE"), fail_after=2
    )
    chatd = await start_chatd(provider=provider)
    await chatd.stub.CreateSession(pb.CreateSessionRequest(session_id="f"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await chatd.stub.SendMessage(pb.SendMessageRequest(session_id="f", text="hi"))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert await all_messages(chatd.stub, "f") == []
    got = await chatd.stub.GetSession(pb.GetSessionRequest(session_id="f"))
    assert got.session.message_count == 0


async def test_unexpected_exception_is_internal_with_a_generic_message(
    start_chatd: StartChatd,
) -> None:
    """A bug in a provider never leaks as UNKNOWN or with its message."""
    provider = ScriptedProvider(error=RuntimeError("secret internals"), fail_after=0)
    chatd = await start_chatd(provider=provider)
    await chatd.stub.CreateSession(pb.CreateSessionRequest(session_id="f"))
    for call in (chatd.stub.SendMessage, chatd.stub.StreamReply):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await outcome(call(pb.SendMessageRequest(session_id="f", text="hi")))
        assert err.value.code() == grpc.StatusCode.INTERNAL
        assert "secret" not in (err.value.details() or "")
    assert await all_messages(chatd.stub, "f") == []


async def test_context_policy_sends_whole_recent_turns_and_keeps_history(
    start_chatd: StartChatd,
) -> None:
    """max_messages limits what the model is sent, starting at a user turn; history stays whole."""
    provider = ScriptedProvider()
    chatd = await start_chatd(provider=provider)
    await chatd.stub.CreateSession(
        pb.CreateSessionRequest(
            session_id="p",
            session=session_pb2.Session(
                system_instruction="be brief",
                context_policy=session_pb2.ContextPolicy(max_messages=4),
            ),
        )
    )
    for i in range(5):
        await chatd.stub.SendMessage(pb.SendMessageRequest(session_id="p", text=f"u{i}"))
    sent = provider.requests[-1]
    # Four most recent would start at a model message; the window moves to the next user turn.
    assert [m.role for m in sent.contents] == [Role.USER, Role.MODEL, Role.USER]
    assert [m.parts[0].text for m in sent.contents[::2]] == ["u3", "u4"]
    assert sent.system_instruction == "be brief"
    assert len(await all_messages(chatd.stub, "p")) == 10


async def test_per_turn_generation_config_merges_over_the_session(
    start_chatd: StartChatd,
) -> None:
    provider = ScriptedProvider()
    chatd = await start_chatd(provider=provider)
    await chatd.stub.CreateSession(
        pb.CreateSessionRequest(
            session_id="g",
            session=session_pb2.Session(
                generation_config=session_pb2.GenerationConfig(temperature=0.2, top_k=5)
            ),
        )
    )
    await chatd.stub.SendMessage(
        pb.SendMessageRequest(
            session_id="g",
            text="hi",
            generation_config=session_pb2.GenerationConfig(temperature=0.9, max_output_tokens=10),
        )
    )
    config = provider.requests[-1].generation_config
    assert config.temperature == pytest.approx(0.9)
    assert config.top_k == 5
    assert config.max_output_tokens == 10
    got = await chatd.stub.GetSession(pb.GetSessionRequest(session_id="g"))
    assert got.session.generation_config.temperature == pytest.approx(0.2)
    assert not got.session.generation_config.HasField("max_output_tokens")
