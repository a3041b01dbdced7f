"""The production surface: API keys and tenants, TLS and mTLS, limits, rate limits, request ids."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2

from chatd.v1 import chat_service_pb2 as pb
from chatd.v1 import chat_service_pb2_grpc, content_pb2, session_pb2
from server.config import SettingsError, load
from tests.certs import make_pki
from tests.conftest import Chatd, StartChatd
from tests.fakes import GatedProvider
from tests.helpers import outcome, rich_details, until, violated_fields

KEYS = "alpha:key-alpha,beta:key-beta"
ALPHA = (("authorization", "Bearer key-alpha"),)
BETA = (("authorization", "Bearer key-beta"),)


def as_other_tenant(session_id: str) -> list[tuple[str, Any]]:
    """Every RPC that names a session, aimed at `session_id`."""
    message = content_pb2.Message(role=content_pb2.ROLE_USER, parts=[content_pb2.Part(text="x")])
    return [
        ("GetSession", pb.GetSessionRequest(session_id=session_id)),
        (
            "UpdateSession",
            pb.UpdateSessionRequest(
                session=session_pb2.Session(session_id=session_id, display_name="stolen")
            ),
        ),
        ("DeleteSession", pb.DeleteSessionRequest(session_id=session_id)),
        ("ForkSession", pb.ForkSessionRequest(session_id=session_id)),
        ("ClearHistory", pb.ClearHistoryRequest(session_id=session_id)),
        ("ExportSession", pb.ExportSessionRequest(session_id=session_id)),
        ("SendMessage", pb.SendMessageRequest(session_id=session_id, text="hi")),
        ("StreamReply", pb.StreamReplyRequest(session_id=session_id, text="hi")),
        ("ListMessages", pb.ListMessagesRequest(session_id=session_id)),
        ("AppendMessages", pb.AppendMessagesRequest(session_id=session_id, messages=[message])),
        ("CountTokens", pb.CountTokensRequest(session_id=session_id, text="x")),
        ("CancelReply", pb.CancelReplyRequest(session_id=session_id)),
    ]


async def test_another_tenants_session_is_not_found_everywhere(start_chatd: StartChatd) -> None:
    chatd = await start_chatd(api_keys=KEYS)
    created = await chatd.stub.CreateSession(
        pb.CreateSessionRequest(session_id="secret"), metadata=ALPHA
    )
    await chatd.stub.SendMessage(
        pb.SendMessageRequest(session_id="secret", text="private"), metadata=ALPHA
    )
    for name, request in as_other_tenant("secret"):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await outcome(getattr(chatd.stub, name)(request, metadata=BETA))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND, name
    listed = await chatd.stub.ListSessions(pb.ListSessionsRequest(), metadata=BETA)
    assert list(listed.sessions) == []
    # Beta may use the same id for a session of its own, unrelated to alpha's.
    await chatd.stub.CreateSession(pb.CreateSessionRequest(session_id="secret"), metadata=BETA)
    mine = await chatd.stub.GetSession(pb.GetSessionRequest(session_id="secret"), metadata=ALPHA)
    assert mine.session.display_name == "", "beta's update never reached alpha's session"
    assert mine.session.message_count == 2
    assert mine.session.create_time == created.session.create_time


async def test_every_rpc_needs_a_valid_key_but_health_and_reflection(
    start_chatd: StartChatd,
) -> None:
    chatd = await start_chatd(api_keys=KEYS)
    service = pb.DESCRIPTOR.services_by_name["ChatService"]
    for metadata in ((), (("authorization", "Bearer wrong"),), (("authorization", "key-alpha"),)):
        for method in service.methods:
            request = getattr(pb, method.input_type.name)()
            sent = iter([request]) if method.client_streaming else request
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await outcome(getattr(chatd.stub, method.name)(sent, metadata=metadata))
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, method.name
            assert rich_details(err.value)["ErrorInfo"].reason.startswith("API_KEY_")
    health = await chatd.health.Check(health_pb2.HealthCheckRequest())
    assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_no_keys_and_a_public_address_is_refused_unless_told() -> None:
    with pytest.raises(SettingsError, match="--insecure-no-auth"):
        load(["--listen", "0.0.0.0:50051"], {})
    assert load(["--listen", "0.0.0.0:50051", "--insecure-no-auth"], {}).insecure_no_auth
    assert load(["--listen", "0.0.0.0:50051"], {"CHATD_API_KEYS": "t:k"}).api_keys


async def test_tls_and_mutual_tls(start_chatd: StartChatd, tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    ca = pki.ca.cert.read_bytes()
    tls = await start_chatd(tls_cert=str(pki.server.cert), tls_key=str(pki.server.key))
    async with grpc.aio.secure_channel(tls.address, grpc.ssl_channel_credentials(ca)) as channel:
        stub = chat_service_pb2_grpc.ChatServiceStub(channel)
        created = await stub.CreateSession(pb.CreateSessionRequest(session_id="tls"))
        assert created.session.session_id == "tls"
    async with grpc.aio.insecure_channel(tls.address) as plain:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await chat_service_pb2_grpc.ChatServiceStub(plain).GetSession(
                pb.GetSessionRequest(session_id="tls"), timeout=2
            )
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE

    mtls = await start_chatd(
        tls_cert=str(pki.server.cert),
        tls_key=str(pki.server.key),
        tls_client_ca=str(pki.ca.cert),
    )
    cert, key = pki.client.read()
    with_cert = grpc.ssl_channel_credentials(ca, private_key=key, certificate_chain=cert)
    async with grpc.aio.secure_channel(mtls.address, with_cert) as channel:
        stub = chat_service_pb2_grpc.ChatServiceStub(channel)
        await stub.CreateSession(pb.CreateSessionRequest(session_id="mtls"))
    async with grpc.aio.secure_channel(mtls.address, grpc.ssl_channel_credentials(ca)) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await chat_service_pb2_grpc.ChatServiceStub(channel).GetSession(
                pb.GetSessionRequest(session_id="mtls"), timeout=2
            )
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_rate_limit_is_resource_exhausted_with_retry_info(start_chatd: StartChatd) -> None:
    chatd = await start_chatd(api_keys=KEYS, rate_limit=2, rate_burst=3)
    for _ in range(3):
        await chatd.stub.ListSessions(pb.ListSessionsRequest(), metadata=ALPHA)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await chatd.stub.ListSessions(pb.ListSessionsRequest(), metadata=ALPHA)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    delay = rich_details(err.value)["RetryInfo"].retry_delay
    assert 0 < delay.seconds + delay.nanos / 1e9 <= 0.5
    # Buckets are per tenant: beta is unaffected.
    await chatd.stub.ListSessions(pb.ListSessionsRequest(), metadata=BETA)


async def test_message_size_limits(start_chatd: StartChatd) -> None:
    chatd = await start_chatd(max_text_chars=100, max_parts=2, max_message_bytes=4096)
    await chatd.stub.CreateSession(pb.CreateSessionRequest(session_id="l"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await chatd.stub.SendMessage(pb.SendMessageRequest(session_id="l", text="x" * 101))
    assert violated_fields(err.value) == ["text"]
    parts = [content_pb2.Part(text="a")] * 3
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await chatd.stub.SendMessage(pb.SendMessageRequest(session_id="l", parts=parts))
    assert violated_fields(err.value) == ["parts"]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await chatd.stub.SendMessage(
            pb.SendMessageRequest(session_id="l", parts=[content_pb2.Part(text="y" * 5000)])
        )
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, "larger than the request cap"
    ok = await chatd.stub.SendMessage(pb.SendMessageRequest(session_id="l", text="x" * 100))
    assert ok.reply.text


async def test_sessions_per_tenant_limit(start_chatd: StartChatd) -> None:
    chatd = await start_chatd(api_keys=KEYS, max_sessions_per_tenant=2)
    for sid in ("a", "b"):
        await chatd.stub.CreateSession(pb.CreateSessionRequest(session_id=sid), metadata=ALPHA)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await chatd.stub.CreateSession(pb.CreateSessionRequest(session_id="c"), metadata=ALPHA)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert rich_details(err.value)["ErrorInfo"].reason == "SESSION_QUOTA"
    with pytest.raises(grpc.aio.AioRpcError):
        await chatd.stub.ForkSession(pb.ForkSessionRequest(session_id="a"), metadata=ALPHA)
    await chatd.stub.CreateSession(pb.CreateSessionRequest(session_id="c"), metadata=BETA)
    await chatd.stub.DeleteSession(pb.DeleteSessionRequest(session_id="a"), metadata=ALPHA)
    await chatd.stub.CreateSession(pb.CreateSessionRequest(session_id="c"), metadata=ALPHA)


async def test_concurrent_stream_limit(start_chatd: StartChatd) -> None:
    """Two streams held inside the model fill max_streams=2: a third is refused until
    they end."""
    provider = GatedProvider()
    chatd = await start_chatd(provider=provider, max_streams=2)
    for i in range(3):
        await chatd.stub.CreateSession(pb.CreateSessionRequest(session_id=f"s{i}"))
    calls = [
        chatd.stub.StreamReply(pb.StreamReplyRequest(session_id=f"s{i}", text="go"))
        for i in range(2)
    ]
    running = [asyncio.ensure_future(outcome(c)) for c in calls]
    await until(lambda: provider.calls == 2, "both streams to reach the model")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await outcome(chatd.stub.StreamReply(pb.StreamReplyRequest(session_id="s2", text="go")))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "RetryInfo" in rich_details(err.value)
    provider.release(2 * len(provider.deltas))
    await asyncio.gather(*running)
    provider.release(len(provider.deltas))
    events = await outcome(
        chatd.stub.StreamReply(pb.StreamReplyRequest(session_id="s2", text="go"))
    )
    assert events[-1].HasField("reply"), "slots are released when streams end"


async def test_request_ids_are_echoed_or_generated(chatd: Chatd) -> None:
    call = chatd.stub.CreateSession(
        pb.CreateSessionRequest(session_id="r"), metadata=(("x-request-id", "trace-123"),)
    )
    await call
    assert ("x-request-id", "trace-123") in tuple(await call.trailing_metadata())
    generated = chatd.stub.GetSession(pb.GetSessionRequest(session_id="r"))
    await generated
    ids = [v for k, v in await generated.trailing_metadata() if k == "x-request-id"]
    assert len(ids) == 1 and len(ids[0]) == 32
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await chatd.stub.GetSession(
            pb.GetSessionRequest(session_id="missing"), metadata=(("x-request-id", "t-9"),)
        )
    assert ("x-request-id", "t-9") in tuple(err.value.trailing_metadata() or ())
