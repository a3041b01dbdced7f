"""Idempotent retries, TTL expiry, token budgets and lossless export, seen from the model."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from google.protobuf import duration_pb2

from chatd.v1 import chat_service_pb2 as pb
from chatd.v1 import session_pb2
from server.sessions.errors import NotFound
from server.sessions.model import DEFAULT_TENANT
from tests.conftest import Chatd, StartChatd, fast_gemini
from tests.fake_gemini import FakeGemini, Hold, Reply, call_part, get_field, thought_part, usage
from tests.helpers import all_messages, outcome, until, violated_fields


async def test_duplicate_send_message_calls_the_model_once(
    gemini_chatd: Chatd, fake_gemini: FakeGemini
) -> None:
    await gemini_chatd.stub.CreateSession(pb.CreateSessionRequest(session_id="i"))
    fake_gemini.push(Reply(text="only once"))
    request = pb.SendMessageRequest(session_id="i", text="hello", request_id="req-1")
    first = await gemini_chatd.stub.SendMessage(request)
    second = await gemini_chatd.stub.SendMessage(request)
    assert second == first
    assert len(fake_gemini.requests) == 1
    events = await outcome(
        gemini_chatd.stub.StreamReply(
            pb.StreamReplyRequest(session_id="i", text="hello", request_id="req-1")
        )
    )
    # StreamReply replays the stored reply, numbered as stored: a unary reply is one
    # event, its outcome, with the first run's reply_id.
    assert [e.sequence_number for e in events] == [1]
    assert events[-1].reply == first.reply, "StreamReply replays the stored result"
    assert events[0].reply_id == first.reply.reply_id
    assert len(fake_gemini.requests) == 1
    assert len(await all_messages(gemini_chatd.stub, "i")) == 2


async def test_duplicate_arriving_mid_turn_waits_and_gets_the_same_reply(
    gemini_chatd: Chatd, fake_gemini: FakeGemini
) -> None:
    """The model's answer is held until the duplicate is waiting on the running turn."""
    await gemini_chatd.stub.CreateSession(pb.CreateSessionRequest(session_id="i"))
    hold = Hold()
    fake_gemini.push(Reply(text="held answer", hold=hold, hold_after=0))
    request = pb.SendMessageRequest(session_id="i", text="hello", request_id="req-2")
    first = asyncio.ensure_future(gemini_chatd.stub.SendMessage(request))
    await hold.wait_reached()
    running = gemini_chatd.running.chats.replies.running_request(DEFAULT_TENANT, "req-2")
    assert running is not None
    second = asyncio.ensure_future(gemini_chatd.stub.SendMessage(request))
    await until(lambda: running.followers == 1, "the duplicate to wait on the running turn")
    hold.open()
    assert await second == await first
    assert (await first).reply.text == "held answer"
    assert len(fake_gemini.requests) == 1


async def test_same_request_id_for_a_different_request_is_invalid(chatd: Chatd) -> None:
    await chatd.stub.CreateSession(pb.CreateSessionRequest(session_id="i"))
    await chatd.stub.SendMessage(pb.SendMessageRequest(session_id="i", text="a", request_id="r"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await chatd.stub.SendMessage(
            pb.SendMessageRequest(session_id="i", text="b", request_id="r")
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(err.value) == ["request_id"]


async def test_idempotent_create_fork_and_import(chatd: Chatd) -> None:
    create = pb.CreateSessionRequest(session=session_pb2.Session(display_name="x"), request_id="c1")
    a = await chatd.stub.CreateSession(create)
    b = await chatd.stub.CreateSession(create)
    assert a.session.session_id == b.session.session_id
    sid = a.session.session_id
    await chatd.stub.SendMessage(pb.SendMessageRequest(session_id=sid, text="hi"))
    fork = pb.ForkSessionRequest(session_id=sid, request_id="f1")
    f1 = await chatd.stub.ForkSession(fork)
    f2 = await chatd.stub.ForkSession(fork)
    assert f1.session.session_id == f2.session.session_id
    exported = await chatd.stub.ExportSession(pb.ExportSessionRequest(session_id=sid))
    imp = pb.ImportSessionRequest(document=exported.document, session_id="copy", request_id="m1")
    i1 = await chatd.stub.ImportSession(imp)
    i2 = await chatd.stub.ImportSession(imp)
    assert i1.session.session_id == i2.session.session_id == "copy"
    listed = await chatd.stub.ListSessions(pb.ListSessionsRequest())
    assert len(listed.sessions) == 3


async def test_expired_sessions_vanish_and_are_swept_from_disk(start_chatd: StartChatd) -> None:
    """An expired session is gone for callers at once; the store keeps it until the
    sweeper's pass (run here directly: the timed sweeps are an hour apart) deletes it."""
    chatd = await start_chatd(sweep_interval=3600)
    await chatd.stub.CreateSession(
        pb.CreateSessionRequest(
            session_id="short",
            session=session_pb2.Session(ttl=duration_pb2.Duration(nanos=300_000_000)),
        )
    )
    await chatd.stub.CreateSession(pb.CreateSessionRequest(session_id="long"))
    await chatd.stub.SendMessage(pb.SendMessageRequest(session_id="short", text="hi"))
    store = chatd.running.store
    expire_time = (await store.get_session(DEFAULT_TENANT, "short")).expire_time
    assert expire_time is not None
    # Past the expiry by the clock chatd reads.
    await until(lambda: time.time() > expire_time, "the session's expiry")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await chatd.stub.GetSession(pb.GetSessionRequest(session_id="short"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    listed = await chatd.stub.ListSessions(pb.ListSessionsRequest())
    assert [s.session_id for s in listed.sessions] == ["long"]
    assert (await store.get_session(DEFAULT_TENANT, "short")).session_id == "short"

    assert await chatd.running.sweeper.sweep() == (1, 0, 0)
    with pytest.raises(NotFound):
        await store.get_session(DEFAULT_TENANT, "short")
    assert (await store.get_session(DEFAULT_TENANT, "long")).session_id == "long"


async def test_token_budget_drops_oldest_turns_whole(
    start_chatd: StartChatd, fake_gemini: FakeGemini
) -> None:
    """Answers cost their recorded 40 tokens, the rest chatd's estimate: a 90-token budget
    keeps t3 and t4 (about 42 tokens) but not also t2 (about 57 with its tool exchange),
    and never splits a function call from its response."""
    chatd = await start_chatd(provider=fast_gemini(fake_gemini))
    await chatd.stub.CreateSession(
        pb.CreateSessionRequest(
            session_id="b",
            session=session_pb2.Session(
                tools=["calculate"], context_policy=session_pb2.ContextPolicy(max_tokens=90)
            ),
        )
    )
    fake_gemini.push(Reply(text="one", usage=usage(prompt=5, candidates=40)))
    fake_gemini.push(
        Reply(parts=[call_part("calculate", {"expression": "1+1"})], usage=usage(5, 10))
    )
    fake_gemini.push(Reply(text="two", usage=usage(prompt=5, candidates=40)))
    fake_gemini.push(Reply(text="three", usage=usage(prompt=5, candidates=40)))
    fake_gemini.push(Reply(text="four", usage=usage(prompt=5, candidates=40)))
    for text in ("t1", "t2", "t3", "t4"):
        await chatd.stub.SendMessage(pb.SendMessageRequest(session_id="b", text=text))
    sent = fake_gemini.requests[-1]
    assert sent.texts("user") == ["t3", "t4"]
    assert [c["role"] for c in sent.contents] == ["user", "model", "user"]
    third = fake_gemini.requests[-2]
    # t2's turn (call, response, answer: ~55 tokens) fits beside t3 but t1 does not.
    assert third.texts("user")[0] == "t2"
    roles = [c["role"] for c in third.contents]
    assert roles == ["user", "model", "user", "model", "user"]
    assert get_field(third.contents[1]["parts"][0], "function_call", "name") == "calculate"
    assert len(await all_messages(chatd.stub, "b")) == 10, "history itself stays whole"


async def test_exported_session_continues_exactly_elsewhere(
    start_chatd: StartChatd, fake_gemini: FakeGemini
) -> None:
    """The next turn after import sends Gemini exactly what the original would have."""
    first = await start_chatd(provider=fast_gemini(fake_gemini))
    second = await start_chatd(provider=fast_gemini(fake_gemini))
    await first.stub.CreateSession(
        pb.CreateSessionRequest(
            session_id="x",
            session=session_pb2.Session(
                system_instruction="be exact",
                generation_config=session_pb2.GenerationConfig(temperature=0.3, seed=7),
            ),
        )
    )
    fake_gemini.push(
        Reply(parts=[thought_part("hmm", signature=bytes(range(200))), {"text": "first"}])
    )
    await first.stub.SendMessage(pb.SendMessageRequest(session_id="x", text="q1"))
    document = (await first.stub.ExportSession(pb.ExportSessionRequest(session_id="x"))).document
    await second.stub.ImportSession(pb.ImportSessionRequest(document=document))

    fake_gemini.push(Reply(text="a"), times=2)
    await first.stub.SendMessage(pb.SendMessageRequest(session_id="x", text="q2"))
    await second.stub.SendMessage(pb.SendMessageRequest(session_id="x", text="q2"))
    original, imported = fake_gemini.requests[-2], fake_gemini.requests[-1]
    assert imported.body == original.body
