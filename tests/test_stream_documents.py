"""StreamExportSession / StreamImportSession: sessions of any size round-trip losslessly in
small gRPC messages, and an import stores the whole session or nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import grpc
import pytest

from chatd.v1 import chat_service_pb2 as pb
from chatd.v1 import content_pb2, session_pb2
from tests.conftest import Chatd
from tests.helpers import rich_details

LIMIT = 8 * 1024 * 1024  # CHATD_MAX_MESSAGE_BYTES' default: no single request may exceed it


def rich_document(messages: int, text_chars: int) -> Iterator[pb.StreamImportSessionRequest]:
    """A document in parts: settings and a header first, then turns of every part kind
    (text, thought signatures, function calls and responses, usage) in parts of ~1 MiB."""
    header = session_pb2.SessionDocument(format_version=1)
    header.session.model = "echo"
    header.session.system_instruction = "be brief"
    header.session.labels["team"] = "search"
    yield pb.StreamImportSessionRequest(document=header, session_id="copy-source")
    part = session_pb2.SessionDocument()
    for i in range(messages):
        turn = i // 4
        message = part.messages.add(message_id=str(i), turn_id=f"turn-{turn}")
        message.create_time.seconds = 1_700_000_000 + i
        kind = i % 4
        if kind == 0:
            message.role = content_pb2.ROLE_USER
            message.parts.add(text=f"question {i} " + "q" * text_chars)
        elif kind == 1:
            message.role = content_pb2.ROLE_MODEL
            call = message.parts.add(thought_signature=bytes([i % 256]) * 16).function_call
            call.id, call.name = f"call-{i}", "lookup"
            call.args["query"] = f"q{i}"
            message.model = "echo"
        elif kind == 2:
            message.role = content_pb2.ROLE_USER
            answer = message.parts.add().function_response
            answer.id, answer.name = f"call-{i - 1}", "lookup"
            answer.response["result"] = "x" * 100
        else:
            message.role = content_pb2.ROLE_MODEL
            message.parts.add(text="thinking", thought=True, thought_signature=b"\x00\xff" * 8)
            message.parts.add(text=f"answer {i} " + "a" * text_chars)
            message.usage.prompt_token_count = i
            message.usage.candidates_token_count = 7
            message.usage.total_token_count = i + 7
            message.finish_reason = content_pb2.FINISH_REASON_STOP
            message.model = "echo"
        if part.ByteSize() > 1024 * 1024:
            yield pb.StreamImportSessionRequest(document=part)
            part = session_pb2.SessionDocument()
    if part.messages:
        yield pb.StreamImportSessionRequest(document=part)


async def stream_export(chatd: Chatd, session_id: str) -> list[session_pb2.SessionDocument]:
    call = chatd.stub.StreamExportSession(pb.StreamExportSessionRequest(session_id=session_id))
    return [response.document async for response in call]


def merged(parts: list[session_pb2.SessionDocument]) -> session_pb2.SessionDocument:
    whole = session_pb2.SessionDocument()
    for part in parts:
        whole.MergeFrom(part)
    return whole


def without_identity(document: session_pb2.SessionDocument) -> bytes:
    """The document minus what must differ between a session and its imported copy."""
    copy = session_pb2.SessionDocument()
    copy.CopyFrom(document)
    copy.ClearField("export_time")
    for name in ("session_id", "create_time", "update_time", "etag", "uid"):
        copy.session.ClearField(name)
    return copy.SerializeToString(deterministic=True)


async def test_a_session_bigger_than_one_request_round_trips_through_the_streams(
    chatd: Chatd,
) -> None:
    imported = await chatd.stub.StreamImportSession(rich_document(4000, 5000))
    assert imported.session.message_count == 4000
    first = await stream_export(chatd, "copy-source")
    document = merged(first)
    assert document.ByteSize() > LIMIT, "the session must not fit one request"
    assert first[0].session.session_id == "copy-source" and not first[0].messages
    assert all(not p.HasField("session") for p in first[1:])
    assert max(p.ByteSize() for p in first) < 2 * 1024 * 1024, "every part is a small message"
    assert len(document.messages) == 4000

    requests = [pb.StreamImportSessionRequest(document=p) for p in first]
    requests[0].session_id = "copy"
    copied = await chatd.stub.StreamImportSession(iter(requests))
    assert copied.session.session_id == "copy"
    assert copied.session.message_count == 4000
    assert copied.session.usage == imported.session.usage
    again = merged(await stream_export(chatd, "copy"))
    assert again.session.session_id == "copy"
    assert again.session.create_time != document.session.create_time
    assert without_identity(again) == without_identity(document)
    assert [m.message_id for m in again.messages] == [str(i) for i in range(4000)]


async def test_small_documents_still_use_the_unary_rpcs_and_match_the_stream(
    chatd: Chatd,
) -> None:
    await chatd.stub.StreamImportSession(rich_document(8, 10))
    unary = (
        await chatd.stub.ExportSession(pb.ExportSessionRequest(session_id="copy-source"))
    ).document
    streamed = merged(await stream_export(chatd, "copy-source"))
    assert without_identity(unary) == without_identity(streamed)
    imported = await chatd.stub.ImportSession(
        pb.ImportSessionRequest(document=unary, session_id="unary-copy")
    )
    assert imported.session.message_count == 8
    copy = (
        await chatd.stub.ExportSession(pb.ExportSessionRequest(session_id="unary-copy"))
    ).document
    assert without_identity(copy) == without_identity(unary)


async def session_ids(chatd: Chatd) -> set[str]:
    listed = await chatd.stub.ListSessions(pb.ListSessionsRequest(page_size=1000))
    return {s.session_id for s in listed.sessions}


async def test_an_import_failing_midway_stores_nothing(chatd: Chatd) -> None:
    requests = list(rich_document(1600, 5000))
    assert len(requests) > 3
    # A later part may not carry settings: the server refuses it after reading the others.
    requests[-2].document.session.model = "echo"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await chatd.stub.StreamImportSession(iter(requests))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert rich_details(err.value)["BadRequest"].field_violations[0].field == "document"
    # A message that breaks history (a model message answering nothing) in the last part.
    requests = list(rich_document(1600, 5000))
    requests[-1].document.messages[-1].parts[0].function_response.name = "lookup"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await chatd.stub.StreamImportSession(iter(requests))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert await session_ids(chatd) == set()


def cancelled_imports(chatd: Chatd) -> float:
    assert chatd.running.metrics is not None
    return float(
        chatd.running.metrics.rpc_requests.labels(
            "chatd.v1.ChatService", "StreamImportSession", "CANCELLED"
        )._value.get()
    )


async def test_an_import_stream_broken_midway_stores_nothing(chatd: Chatd) -> None:
    requests = list(rich_document(1600, 5000))
    call = chatd.stub.StreamImportSession()
    for request in requests[:-1]:
        await call.write(request)
    call.cancel()  # the client goes away before half-closing
    for _ in range(500):
        if cancelled_imports(chatd) == 1:
            break
        await asyncio.sleep(0.01)
    assert cancelled_imports(chatd) == 1, "the server saw the stream break"
    assert await session_ids(chatd) == set()
    # The same parts, sent whole, import.
    done = await chatd.stub.StreamImportSession(iter(requests))
    assert done.session.message_count == 1600


async def test_an_empty_import_stream_is_invalid(chatd: Chatd) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await chatd.stub.StreamImportSession(iter([]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_bad_message_deep_in_a_long_document_is_named_by_its_place(chatd: Chatd) -> None:
    """Long histories are checked a slice at a time; errors still name the whole
    document's index."""
    requests = list(rich_document(4600, 10))
    for request in requests:
        for message in request.document.messages:
            if message.message_id == "4501":  # a model message calling a tool
                message.role = content_pb2.ROLE_USER
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await chatd.stub.StreamImportSession(iter(requests))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violation = rich_details(err.value)["BadRequest"].field_violations[0]
    assert violation.field == "document.messages[4501]"
    assert "function calls" in violation.description
    assert await session_ids(chatd) == set()


async def test_a_message_over_the_limits_deep_in_a_long_document_is_named_by_its_place(
    chatd: Chatd,
) -> None:
    requests = list(rich_document(4600, 10))
    for request in requests:
        for message in request.document.messages:
            if message.message_id == "2345":
                message.turn_id = "turn\x00"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await chatd.stub.StreamImportSession(iter(requests))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violation = rich_details(err.value)["BadRequest"].field_violations[0]
    assert violation.field == "document.messages[2345].turn_id"
    assert await session_ids(chatd) == set()
