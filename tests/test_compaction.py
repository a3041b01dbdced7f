"""Context compaction: older turns summarised into a summary message, seen through the API."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import grpc
import pytest

from chatd.v1 import chat_service_pb2 as pb
from chatd.v1 import content_pb2, session_pb2
from server.sessions.compaction import DEFAULT_INSTRUCTIONS, FIRST_READ, SUMMARY_PREFIX
from server.sessions.model import Message
from server.sessions.store_wrapper import StoreWrapper
from server.store.memory import MemoryStore
from tests.conftest import Chatd, StartChatd, fast_gemini
from tests.fake_gemini import (
    FakeGemini,
    Hold,
    HttpError,
    RecordedRequest,
    Reply,
    Script,
    echo_default,
    usage,
)
from tests.helpers import all_messages, rich_details, violated_fields
from tests.test_metrics_rpc import scrape, value


def _policy(**compaction: Any) -> session_pb2.ContextPolicy:
    return session_pb2.ContextPolicy(compaction=session_pb2.ContextPolicy.Compaction(**compaction))


async def _create(chatd: Chatd, session_id: str, policy: session_pb2.ContextPolicy) -> None:
    await chatd.stub.CreateSession(
        pb.CreateSessionRequest(
            session_id=session_id, session=session_pb2.Session(context_policy=policy)
        )
    )


# ----------------------------------------------------------------------------- echo provider


async def test_echo_summarises_older_turns_and_later_turns_send_the_summary(chatd: Chatd) -> None:
    await _create(chatd, "c", _policy(trigger_messages=6, keep_recent_turns=1))
    replies = [
        (await chatd.stub.SendMessage(pb.SendMessageRequest(session_id="c", text=f"m{i}"))).reply
        for i in range(6)
    ]
    # Turn 4 would send 7 messages: turns 1-3 (seqs 0-5) become a summary at seq 6.
    assert "0 earlier messages" in replies[0].text
    assert "4 earlier messages" in replies[2].text
    assert "1 earlier messages" in replies[3].text, "summary + the current message"
    assert "3 earlier messages" in replies[4].text
    messages = await all_messages(chatd.stub, "c")
    summaries = [m for m in messages if m.HasField("summary")]
    assert [
        (m.message_id, m.summary.first_message_id, m.summary.last_message_id) for m in summaries
    ] == [
        ("6", "0", "5"),
        ("11", "0", "10"),
    ]
    first, second = summaries
    assert first.role == content_pb2.ROLE_MODEL
    assert first.parts[0].text.startswith("Echo summary: 3 user and 3 model messages, 0 earlier")
    # The second re-summarises the first plus turns 4 and 5 (seqs 7-10).
    assert second.parts[0].text.startswith("Echo summary: 2 user and 2 model messages, 1 earlier")
    assert first.usage.prompt_token_count > 0
    # History stays whole: 6 turns of 2 messages, plus the two summaries.
    assert len(messages) == 14
    assert [m.message_id for m in messages] == [str(i) for i in range(14)]
    # A turn's reply lists the summary it made among its messages.
    assert [m.message_id for m in replies[3].messages] == ["6", "7", "8"]


async def test_summaries_survive_export_and_import(chatd: Chatd) -> None:
    await _create(chatd, "x", _policy(trigger_messages=4, keep_recent_turns=1))
    for i in range(4):
        await chatd.stub.SendMessage(pb.SendMessageRequest(session_id="x", text=f"m{i}"))
    document = (await chatd.stub.ExportSession(pb.ExportSessionRequest(session_id="x"))).document
    assert document.session.context_policy.compaction.trigger_messages == 4
    exported = [m for m in document.messages if m.HasField("summary")]
    assert exported, "the export carries the summary"
    await chatd.stub.ImportSession(pb.ImportSessionRequest(document=document, session_id="y"))
    copy = await all_messages(chatd.stub, "y")
    assert [m.summary for m in copy if m.HasField("summary")] == [m.summary for m in exported]
    reply = (await chatd.stub.SendMessage(pb.SendMessageRequest(session_id="y", text="on"))).reply
    original = (
        await chatd.stub.SendMessage(pb.SendMessageRequest(session_id="x", text="on"))
    ).reply
    assert reply.text == original.text, "the copy sends what the original sends"
    # The streaming RPCs carry it too.
    parts = [
        r.document
        async for r in chatd.stub.StreamExportSession(pb.StreamExportSessionRequest(session_id="x"))
    ]
    streamed = [m for p in parts for m in p.messages if m.HasField("summary")]
    now = [m for m in await all_messages(chatd.stub, "x") if m.HasField("summary")]
    assert len(now) > len(exported), "the turn after the export compacted again"
    assert [m.summary for m in streamed] == [m.summary for m in now]
    requests = [pb.StreamImportSessionRequest(document=p) for p in parts]
    requests[0].session_id = "z"
    await chatd.stub.StreamImportSession(iter(requests))
    copy = await all_messages(chatd.stub, "z")
    assert [m.summary for m in copy if m.HasField("summary")] == [m.summary for m in streamed]


async def test_an_imported_summary_must_end_before_itself(chatd: Chatd) -> None:
    await _create(chatd, "x", _policy(trigger_messages=4, keep_recent_turns=1))
    for i in range(4):
        await chatd.stub.SendMessage(pb.SendMessageRequest(session_id="x", text=f"m{i}"))
    document = (await chatd.stub.ExportSession(pb.ExportSessionRequest(session_id="x"))).document
    index = next(i for i, m in enumerate(document.messages) if m.HasField("summary"))
    document.messages[index].summary.last_message_id = document.messages[index].message_id
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await chatd.stub.ImportSession(pb.ImportSessionRequest(document=document, session_id="y"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(err.value) == [f"document.messages[{index}].summary"]
    assert rich_details(err.value)["ErrorInfo"].reason == "SUMMARY_INVALID"


@pytest.mark.parametrize(
    ("compaction", "field"),
    [
        ({}, "trigger_tokens"),
        ({"trigger_tokens": -1}, "trigger_tokens"),
        ({"trigger_messages": -2}, "trigger_messages"),
        ({"trigger_messages": 4, "keep_recent_turns": -1}, "keep_recent_turns"),
        ({"trigger_messages": 4, "instructions": "x" * 40_000}, "instructions"),
    ],
)
async def test_bad_compaction_settings_name_the_field(
    chatd: Chatd, compaction: dict[str, Any], field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _create(chatd, "bad", _policy(**compaction))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(err.value) == [f"session.context_policy.compaction.{field}"]
    assert rich_details(err.value)["ErrorInfo"].reason == "COMPACTION_INVALID"


# ----------------------------------------------------------------------------- fake Gemini


def _is_summarising(request: RecordedRequest) -> bool:
    texts = request.texts()
    return bool(texts) and texts[-1].startswith(DEFAULT_INSTRUCTIONS)


def _long_answers(request: RecordedRequest) -> Script:
    """Answers of about 60 words, and short summaries."""
    if request.method == "countTokens":
        return echo_default(request)
    prompt = sum(len(t) for t in request.texts(role=None)) // 4
    if _is_summarising(request):
        digest = hashlib.sha256(request.texts()[-1].encode()).hexdigest()[:12]
        text = f"summary {digest} of {len(request.texts()[-1])} characters"
    else:
        text = f"answer to {request.texts()[-1]}: " + "word " * 60
    return Reply(text=text, usage=usage(prompt=prompt, candidates=len(text) // 4))


def _failing_summaries(request: RecordedRequest) -> Script:
    if _is_summarising(request):
        return HttpError(400, "summaries refused")
    return _long_answers(request)


def _contents_json(request: RecordedRequest) -> list[str]:
    return [json.dumps(c, sort_keys=True) for c in request.contents]


TRIGGER = 1200


async def _sixty_turns(chatd: Chatd, session_id: str) -> list[pb.Reply]:
    await _create(chatd, session_id, _policy(trigger_tokens=TRIGGER, keep_recent_turns=2))
    replies = []
    for i in range(60):
        reply = await chatd.stub.SendMessage(
            pb.SendMessageRequest(session_id=session_id, text=f"question {i} " + "q " * 20)
        )
        replies.append(reply.reply)
    return replies


async def test_sixty_turns_on_gemini_stay_under_the_trigger_with_a_stable_prefix(
    gemini_chatd: Chatd, fake_gemini: FakeGemini
) -> None:
    fake_gemini.set_default(_long_answers)
    await _sixty_turns(gemini_chatd, "long")
    turns = [r for r in fake_gemini.requests if r.method != "countTokens"]
    answers = [r for r in turns if not _is_summarising(r)]
    summarising = [r for r in turns if _is_summarising(r)]
    assert len(answers) == 60
    assert summarising, "the conversation outgrew the trigger"
    # Tokens as chatd counts them (text length / 4): far under the trigger as sent.
    for request in answers:
        chars = sum(len(t) for t in request.texts(role=None))
        assert chars / 4 < TRIGGER, "what is sent stays under the trigger"
    messages = await all_messages(gemini_chatd.stub, "long")
    summaries = [m for m in messages if m.HasField("summary")]
    assert len(summaries) == len(summarising)
    assert len(messages) == 120 + len(summaries), "history stays whole"
    by_id = {m.message_id: m for m in messages}
    for summary in summaries:
        assert summary.summary.first_message_id == "0"
        last = int(summary.summary.last_message_id)
        # The range ends with a model answer, just before the kept turns begin.
        assert by_id[str(last)].role == content_pb2.ROLE_MODEL
        assert int(summary.message_id) > last
        assert summary.usage.total_token_count > 0
    # Between compactions, every request starts with the same summary content.
    prefixes: dict[str, int] = {}
    for request in answers:
        first = request.texts()[0]
        if first.startswith(SUMMARY_PREFIX):
            prefixes[first] = prefixes.get(first, 0) + 1
    assert len(prefixes) == len(summaries)
    assert all(count >= 2 for count in prefixes.values())
    stable = [_contents_json(r) for r in answers if r.texts()[0].startswith(SUMMARY_PREFIX)]
    for earlier, later in itertools.pairwise(stable):
        if earlier[0] == later[0]:
            assert later[: len(earlier)] == earlier, "the next request extends the previous one"
    # Exported and imported with the summaries.
    document = (
        await gemini_chatd.stub.ExportSession(pb.ExportSessionRequest(session_id="long"))
    ).document
    assert [m.summary for m in document.messages if m.HasField("summary")] == [
        m.summary for m in summaries
    ]
    await gemini_chatd.stub.ImportSession(
        pb.ImportSessionRequest(document=document, session_id="long-copy")
    )
    copy = await all_messages(gemini_chatd.stub, "long-copy")
    assert [m.summary for m in copy if m.HasField("summary")] == [m.summary for m in summaries]
    # The session's usage is its messages' (summaries included), in the copy too.
    sessions = [
        (await gemini_chatd.stub.GetSession(pb.GetSessionRequest(session_id=i))).session
        for i in ("long", "long-copy")
    ]
    assert sessions[0].usage == sessions[1].usage
    total = sum(m.usage.prompt_token_count for m in messages)
    assert sessions[0].usage.prompt_token_count == total


async def test_failed_summaries_leave_every_turn_successful(
    start_chatd: StartChatd, fake_gemini: FakeGemini
) -> None:
    chatd = await start_chatd(provider=fast_gemini(fake_gemini))
    fake_gemini.set_default(_failing_summaries)
    replies = await _sixty_turns(chatd, "failing")
    assert all(r.text.startswith("answer to question") for r in replies)
    messages = await all_messages(chatd.stub, "failing")
    assert not [m for m in messages if m.HasField("summary")]
    assert len(messages) == 120
    failed = [r for r in fake_gemini.requests if _is_summarising(r)]
    assert failed, "summaries were asked for"
    server = chatd.running.metrics_server
    assert server is not None
    samples = await scrape(server.port)
    assert value(samples, "chatd_compactions_total", outcome="failed") == len(failed)
    assert value(samples, "chatd_compactions_total", outcome="ok") == 0


async def test_compaction_never_separates_a_call_from_its_result_and_pauses_cleanly(
    chatd: Chatd,
) -> None:
    """Turns with the caller's function calls: summaries end before a turn's user message,
    and a compacting turn that pauses for tool results exports, imports and resumes."""
    await chatd.stub.CreateSession(
        pb.CreateSessionRequest(
            session_id="t",
            session=session_pb2.Session(
                context_policy=_policy(trigger_messages=6, keep_recent_turns=1),
                function_declarations=[session_pb2.FunctionDeclaration(name="lookup")],
            ),
        )
    )
    paused = ""
    for i in range(6):
        got = await chatd.stub.SendMessage(
            pb.SendMessageRequest(session_id="t", text=f'/call lookup {{"n": {i}}}')
        )
        calls = got.reply.pending_tool_calls
        assert len(calls) == 1
        if any(m.HasField("summary") for m in got.reply.messages):
            paused = "t"
            document = (
                await chatd.stub.ExportSession(pb.ExportSessionRequest(session_id="t"))
            ).document
            await chatd.stub.ImportSession(
                pb.ImportSessionRequest(document=document, session_id=f"t{i}")
            )
        await chatd.stub.SendMessage(
            pb.SendMessageRequest(
                session_id="t",
                tool_results=[pb.ToolResult(call_id=calls[0].id, result_json=f'{{"v": {i}}}')],
            )
        )
    assert paused, "a paused turn compacted"
    messages = await all_messages(chatd.stub, "t")
    by_id = {m.message_id: m for m in messages}
    summaries = [m for m in messages if m.HasField("summary")]
    assert summaries
    for summary in summaries:
        after = by_id[str(int(summary.summary.last_message_id) + 1)]
        # The next message not covered is a user message starting a turn (or the summary).
        assert after.HasField("summary") or (
            after.role == content_pb2.ROLE_USER and after.parts[0].text.startswith("/call")
        )


async def test_the_summary_is_made_after_a_turn_and_the_next_turn_uses_it(
    gemini_chatd: Chatd, fake_gemini: FakeGemini
) -> None:
    fake_gemini.set_default(_long_answers)
    await _create(gemini_chatd, "bg", _policy(trigger_messages=6, keep_recent_turns=1))
    for i in range(3):
        await gemini_chatd.stub.SendMessage(pb.SendMessageRequest(session_id="bg", text=f"q{i}"))
    # The next turn would send 7 messages: its summary is asked for before it is sent.
    asked = await asyncio.to_thread(fake_gemini.wait_for_request, 4, 30.0)
    assert _is_summarising(asked)
    before = len(fake_gemini.requests)
    got = await gemini_chatd.stub.SendMessage(pb.SendMessageRequest(session_id="bg", text="q3"))
    assert [m.summary.last_message_id for m in got.reply.messages if m.HasField("summary")] == ["5"]
    during = fake_gemini.requests[before:]
    assert not any(_is_summarising(r) for r in during), "the turn did not summarise again"
    assert during[0].texts()[0].startswith(SUMMARY_PREFIX)


async def test_deleting_the_session_cancels_its_background_summary(
    start_chatd: StartChatd, fake_gemini: FakeGemini
) -> None:
    # A model call timeout far beyond the wait below: only cancelling ends the call.
    gemini_chatd = await start_chatd(provider=fast_gemini(fake_gemini, timeout=600.0))
    hold = Hold()

    def script(request: RecordedRequest) -> Script:
        if _is_summarising(request):
            return Reply(text="a summary in two pieces", chunks=2, hold=hold)
        return _long_answers(request)

    fake_gemini.set_default(script)
    await _create(gemini_chatd, "del", _policy(trigger_messages=6, keep_recent_turns=1))
    for i in range(3):
        await gemini_chatd.stub.SendMessage(pb.SendMessageRequest(session_id="del", text=f"q{i}"))
    await hold.wait_reached(timeout=30)
    await gemini_chatd.stub.DeleteSession(pb.DeleteSessionRequest(session_id="del"))
    gone = await fake_gemini.await_disconnect(timeout=30)
    assert _is_summarising(gone.request)
    hold.open()


class _ReadCounter(StoreWrapper):
    """The memory store, recording how many messages each recent_messages call returned."""

    def __init__(self) -> None:
        super().__init__(MemoryStore())
        self.reads: list[int] = []

    def _around(self, operation: str) -> AbstractContextManager[object]:
        return nullcontext()

    async def recent_messages(
        self, tenant: str, session_id: str, limit: int | None = None
    ) -> list[Message]:
        messages = await super().recent_messages(tenant, session_id, limit)
        self.reads.append(len(messages))
        return messages


async def test_a_turn_reads_history_from_the_newest_summary_not_all_of_it(
    start_chatd: StartChatd,
) -> None:
    store = _ReadCounter()
    chatd = await start_chatd(store=store)
    await _create(chatd, "big", _policy(trigger_messages=8, keep_recent_turns=1))
    for i in range(100):
        await chatd.stub.SendMessage(pb.SendMessageRequest(session_id="big", text=f"m{i}"))
    messages = await all_messages(chatd.stub, "big")
    assert len(messages) > 200
    reads = store.reads[-50:]
    # A summary every few turns: each turn reads a bounded tail, never the whole history.
    assert max(reads) <= FIRST_READ + 16, reads
    # And with what it read, it sent the same as it would have with all of it.
    summaries = [m for m in messages if m.HasField("summary")]
    assert int(summaries[-1].message_id) > len(messages) - 12
    count = await chatd.stub.CountTokens(pb.CountTokensRequest(session_id="big"))
    assert count.total_tokens > 0
    assert store.reads[-1] <= FIRST_READ + 16
