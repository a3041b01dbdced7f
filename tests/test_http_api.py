"""The HTTP listener (CHATD_HTTP_LISTEN) through a live in-process server: Connect and
gRPC-Web with connectrpc's generated Python client, plain JSON with newline-delimited JSON
streams, and the same auth, tenancy, errors, request ids, metrics and cancellation as gRPC."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
from collections.abc import AsyncIterable, AsyncIterator, MutableMapping
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
from connectrpc.code import Code
from connectrpc.compat import google_protobuf_json_codec
from connectrpc.errors import ConnectError
from connectrpc.protocol import ProtocolType
from google.rpc import error_details_pb2

import server.http as server_http
from chatd.v1 import chat_service_pb2 as pb
from chatd.v1.chat_service_connect import ChatServiceClient
from server.app import build_admission
from server.config import Settings, SettingsError, load
from server.http.listener import STATIC_DIR, HttpApp
from server.http.service import snake
from server.rpc.servicer import ChatServicer
from tests.certs import make_pki
from tests.conftest import Chatd, StartChatd
from tests.fakes import GatedProvider
from tests.http_helpers import HttpStream, NdjsonLines, connect_details, post_json
from tests.test_metrics_rpc import scrape, value
from tests.test_production import as_other_tenant
from tests.test_replies import reason_of

SERVICE = "/chatd.v1.ChatService"
KEYS = "alpha:key-alpha,beta:key-beta"
ALPHA = {"authorization": "Bearer key-alpha"}
BETA = {"authorization": "Bearer key-beta"}


def url(chatd: Chatd) -> str:
    return f"http://127.0.0.1:{chatd.running.http_port}"


async def start_http(start_chatd: StartChatd, **overrides: Any) -> Chatd:
    chatd: Chatd = await start_chatd(http_listen="127.0.0.1:0", **overrides)
    assert chatd.running.http_port > 0
    return chatd


async def collect(stream: AsyncIterable[Any]) -> list[Any]:
    return [item async for item in stream]


async def call(client: ChatServiceClient, name: str, request: Any, headers: Any) -> Any:
    """`client`'s method for the RPC `name` (StreamReply -> stream_reply), run to its end."""
    result = getattr(client, snake(name))(request, headers=headers)
    return await collect(result) if hasattr(result, "__aiter__") else await result


@pytest.mark.parametrize(
    ("protocol", "json_codec"),
    [
        (ProtocolType.CONNECT, False),
        (ProtocolType.CONNECT, True),
        (ProtocolType.GRPC_WEB, False),
        (ProtocolType.GRPC_WEB, True),
    ],
)
async def test_the_generated_connect_client_calls_unary_and_streaming_rpcs(
    start_chatd: StartChatd, protocol: ProtocolType, json_codec: bool
) -> None:
    chatd = await start_http(start_chatd)
    codec: dict[str, Any] = {"codec": google_protobuf_json_codec()} if json_codec else {}
    async with ChatServiceClient(url(chatd), protocol=protocol, **codec) as client:
        created = await client.create_session(pb.CreateSessionRequest(session_id="c"))
        assert created.session.session_id == "c"
        sent = await client.send_message(pb.SendMessageRequest(session_id="c", text="one"))
        assert "turn 1" in sent.reply.text
        events = await collect(
            client.stream_reply(pb.StreamReplyRequest(session_id="c", text="two"))
        )
        assert [e.sequence_number for e in events] == list(range(1, len(events) + 1))
        assert events[0].reply_id and "turn 2" in events[-1].reply.text
        text = "".join(e.text_delta.text for e in events if e.HasField("text_delta"))
        assert text == events[-1].reply.text
        listed = await client.list_messages(pb.ListMessagesRequest(session_id="c"))
        assert len(listed.messages) == 4
    # The same session over native gRPC: one domain behind both listeners.
    got = await chatd.stub.GetSession(pb.GetSessionRequest(session_id="c"))
    assert got.session.message_count == 4


async def test_plain_json_unary_and_newline_delimited_streaming(start_chatd: StartChatd) -> None:
    chatd = await start_http(start_chatd)
    port = chatd.running.http_port
    created = await post_json(port, f"{SERVICE}/CreateSession", {"sessionId": "j"})
    assert created.status == 200
    assert created.headers["content-type"] == "application/json"
    assert created.json()["session"]["sessionId"] == "j"

    streamed = await post_json(port, f"{SERVICE}/StreamReply", {"session_id": "j", "text": "hi"})
    assert streamed.status == 200
    assert streamed.headers["content-type"] == "application/x-ndjson"
    lines = streamed.lines
    assert [int(line["sequenceNumber"]) for line in lines] == list(range(1, len(lines) + 1))
    assert lines[0]["replyId"] and lines[0]["message"]["role"] == "ROLE_USER"
    assert lines[-1]["reply"]["finishReason"] == "FINISH_REASON_STOP"
    assert "error" not in lines[-1]

    # An error before the first message is an HTTP status with Connect's error JSON.
    missing = await post_json(port, f"{SERVICE}/StreamReply", {"sessionId": "no", "text": "x"})
    assert missing.status == 404
    assert missing.json()["code"] == "not_found"
    assert missing.json()["details"][0]["debug"]["reason"] == "SESSION_NOT_FOUND"


async def test_an_error_after_streamed_messages_is_a_last_error_line(
    start_chatd: StartChatd,
) -> None:
    provider = GatedProvider(["one ", "two "])
    chatd = await start_http(start_chatd, provider=provider)
    port = chatd.running.http_port
    await post_json(port, f"{SERVICE}/CreateSession", {"sessionId": "e"})
    stream = await HttpStream.post(
        port, f"{SERVICE}/StreamReply", b'{"sessionId": "e", "text": "hi"}'
    )
    lines = NdjsonLines(stream)
    first = await lines.next()
    assert first is not None and first["replyId"]
    await provider.started.wait()
    cancelled = await chatd.stub.CancelReply(pb.CancelReplyRequest(reply_id=first["replyId"]))
    assert cancelled.cancelled
    rest = await lines.rest()
    await stream.close()
    assert stream.status == 200
    error = rest[-1]["error"]
    assert error["code"] == "canceled"
    assert error["details"][0]["type"] == "google.rpc.ErrorInfo"
    info = error_details_pb2.ErrorInfo.FromString(
        base64.b64decode(error["details"][0]["value"] + "==")
    )
    assert info.reason == error["details"][0]["debug"]["reason"]


async def test_keys_are_required_and_another_tenants_session_is_not_found_everywhere(
    start_chatd: StartChatd,
) -> None:
    chatd = await start_http(start_chatd, api_keys=KEYS)
    async with ChatServiceClient(url(chatd)) as client:
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "key-alpha"}):
            with pytest.raises(ConnectError) as err:
                await client.list_sessions(pb.ListSessionsRequest(), headers=headers)
            assert err.value.code == Code.UNAUTHENTICATED
            assert connect_details(err.value)["ErrorInfo"].reason.startswith("API_KEY_")
        with pytest.raises(ConnectError) as err:
            await collect(client.stream_reply(pb.StreamReplyRequest(session_id="x", text="y")))
        assert err.value.code == Code.UNAUTHENTICATED

        await client.create_session(pb.CreateSessionRequest(session_id="secret"), headers=ALPHA)
        await client.send_message(
            pb.SendMessageRequest(session_id="secret", text="private"), headers=ALPHA
        )
        for name, request in as_other_tenant("secret"):
            with pytest.raises(ConnectError) as err:
                await call(client, name, request, BETA)
            assert err.value.code == Code.NOT_FOUND, name
        listed = await client.list_sessions(pb.ListSessionsRequest(), headers=BETA)
        assert list(listed.sessions) == []
        mine = await client.get_session(pb.GetSessionRequest(session_id="secret"), headers=ALPHA)
        assert mine.session.display_name == "" and mine.session.message_count == 2
    # Plain JSON streams refuse a missing key too, before any line.
    refused = await post_json(
        chatd.running.http_port, f"{SERVICE}/StreamReply", {"sessionId": "secret", "text": "x"}
    )
    assert refused.status == 401 and refused.json()["code"] == "unauthenticated"


async def test_rich_errors_carry_error_info_and_bad_request(start_chatd: StartChatd) -> None:
    chatd = await start_http(start_chatd, max_text_chars=10)
    async with ChatServiceClient(url(chatd)) as client:
        await client.create_session(pb.CreateSessionRequest(session_id="r"))
        with pytest.raises(ConnectError) as err:
            await client.send_message(pb.SendMessageRequest(session_id="r", text="x" * 11))
    assert err.value.code == Code.INVALID_ARGUMENT
    details = connect_details(err.value)
    assert details["ErrorInfo"].reason and details["ErrorInfo"].domain == "chatd"
    assert [v.field for v in details["BadRequest"].field_violations] == ["text"]

    # curl users read the same details as JSON in "debug".
    port = chatd.running.http_port
    plain = await post_json(port, f"{SERVICE}/SendMessage", {"sessionId": "r", "text": "y" * 11})
    assert plain.status == 400
    body = plain.json()
    assert body["code"] == "invalid_argument"
    debug = {d["type"]: d["debug"] for d in body["details"]}
    assert debug["google.rpc.ErrorInfo"]["reason"] == details["ErrorInfo"].reason
    assert debug["google.rpc.BadRequest"]["fieldViolations"][0]["field"] == "text"

    # A field the message does not have is INVALID_ARGUMENT naming the request.
    typo = await post_json(port, f"{SERVICE}/GetSession", {"sesionId": "r"})
    assert typo.status == 400
    assert "sesionId" in typo.json()["message"]
    assert typo.json()["details"][0]["debug"]["reason"] == "REQUEST_MALFORMED"


async def test_the_request_id_is_echoed_or_made(start_chatd: StartChatd) -> None:
    chatd = await start_http(start_chatd)
    port = chatd.running.http_port
    given = await post_json(
        port, f"{SERVICE}/ListSessions", {}, headers={"x-request-id": "req-http-1"}
    )
    assert given.headers["x-request-id"] == "req-http-1"
    made = await post_json(port, f"{SERVICE}/GetSession", {"sessionId": "nope"})
    assert made.status == 404 and len(made.headers["x-request-id"]) == 32
    streamed = await post_json(
        port,
        f"{SERVICE}/StreamGenerateContent",
        {"contents": [{"role": "ROLE_USER", "parts": [{"text": "hi"}]}]},
        headers={"x-request-id": "req-http-2"},
    )
    assert streamed.status == 200 and streamed.lines
    assert streamed.headers["x-request-id"] == "req-http-2"


async def test_metrics_count_http_calls(start_chatd: StartChatd) -> None:
    chatd = await start_http(start_chatd)
    async with ChatServiceClient(url(chatd)) as client:
        await client.create_session(pb.CreateSessionRequest(session_id="m"))
        await collect(client.stream_reply(pb.StreamReplyRequest(session_id="m", text="hi")))
        with pytest.raises(ConnectError):
            await client.get_session(pb.GetSessionRequest(session_id="nope"))
    await post_json(chatd.running.http_port, f"{SERVICE}/StreamReply", {"sessionId": "m"})
    assert chatd.running.metrics_server is not None
    s = await scrape(chatd.running.metrics_server.port)

    def count(method: str, code: str) -> float:
        labels = {"grpc_service": "chatd.v1.ChatService", "grpc_method": method}
        return value(s, "chatd_rpc_requests_total", **labels, grpc_code=code)

    assert count("CreateSession", "OK") == 1
    assert count("StreamReply", "OK") == 1
    assert count("StreamReply", "INVALID_ARGUMENT") == 1
    assert count("GetSession", "NOT_FOUND") == 1
    active = {"grpc_service": "chatd.v1.ChatService", "grpc_method": "StreamReply"}
    assert value(s, "chatd_active_streams", **active) == 0


def connect_envelope(data: dict[str, Any]) -> bytes:
    payload = json.dumps(data).encode()
    return b"\x00" + len(payload).to_bytes(4, "big") + payload


@pytest.mark.parametrize("protocol", ["json", "connect"])
async def test_a_disconnect_mid_stream_cancels_a_foreground_reply(
    start_chatd: StartChatd, protocol: str
) -> None:
    provider = GatedProvider()
    chatd = await start_http(start_chatd, provider=provider)
    port = chatd.running.http_port
    await chatd.stub.CreateSession(pb.CreateSessionRequest(session_id="d"))
    request = {"sessionId": "d", "text": "hi"}
    if protocol == "json":
        stream = await HttpStream.post(port, f"{SERVICE}/StreamReply", json.dumps(request).encode())
    else:
        stream = await HttpStream.post(
            port,
            f"{SERVICE}/StreamReply",
            connect_envelope(request),
            content_type="application/connect+json",
        )
    assert stream.status == 200
    first = await stream.chunk()
    reply_id = json.loads(first if protocol == "json" else first[5:])["replyId"]
    await provider.started.wait()
    await stream.close()
    await provider.cancelled.wait()
    # As on gRPC: the reply ends CANCELLED (CALLER_DISCONNECTED) and stores nothing.
    follow = chatd.stub.StreamReply(pb.StreamReplyRequest(reply_id=reply_id, starting_after=1))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await collect(follow)
    assert caught.value.code() == grpc.StatusCode.CANCELLED
    assert reason_of(caught.value) == "CALLER_DISCONNECTED"
    got = await chatd.stub.GetReply(pb.GetReplyRequest(reply_id=reply_id))
    assert got.reply.state == pb.REPLY_STATE_CANCELLED


async def test_a_disconnect_leaves_a_background_reply_running(start_chatd: StartChatd) -> None:
    provider = GatedProvider()
    chatd = await start_http(start_chatd, provider=provider)
    port = chatd.running.http_port
    await chatd.stub.CreateSession(pb.CreateSessionRequest(session_id="b"))
    stream = await HttpStream.post(
        port, f"{SERVICE}/StreamReply", b'{"sessionId": "b", "text": "hi", "background": true}'
    )
    first = await NdjsonLines(stream).next()
    assert first is not None
    await provider.started.wait()
    await stream.close()
    provider.release(4)
    follow = await post_json(port, f"{SERVICE}/StreamReply", {"replyId": first["replyId"]})
    assert follow.lines[-1]["reply"]["text"] == "one two three four"
    assert not provider.cancelled.is_set()


async def asgi_get(app: HttpApp, path: str) -> tuple[int, bytes]:
    """GET `path` from an ASGI app, driven by hand: (status, body)."""
    sent: list[MutableMapping[str, Any]] = []
    requested = False
    done = asyncio.Event()

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await done.wait()  # the client leaves once the response is complete
        return {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body"):
            done.set()

    scope = {"type": "http", "method": "GET", "path": path, "headers": [], "query_string": b""}
    scope |= {"root_path": "", "scheme": "http", "server": ("127.0.0.1", 80)}
    await app(scope, receive, send)
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], body


async def test_static_files_and_the_root_page(tmp_path: Path) -> None:
    admission = build_admission(Settings())
    servicer = ChatServicer(cast(Any, None))  # static files never reach the domain

    def app(directory: Path) -> HttpApp:
        return HttpApp(servicer, admission, read_max_bytes=1 << 20, static_dir=directory)

    empty = app(tmp_path / "missing")
    assert (await asgi_get(empty, "/"))[0] == 404
    (tmp_path / "site").mkdir()
    site = app(tmp_path / "site")
    assert (await asgi_get(site, "/"))[0] == 404, "no index.html: / is 404"
    (tmp_path / "site" / "index.html").write_text("<h1>chatd</h1>")
    (tmp_path / "site" / "app.js").write_text("console.log(1)")
    assert await asgi_get(site, "/") == (200, b"<h1>chatd</h1>")
    assert await asgi_get(site, "/app.js") == (200, b"console.log(1)")
    assert (await asgi_get(site, "/../secret"))[0] == 404
    # The committed directory the playground's bundle goes into is served by default.
    assert Path(server_http.__file__).parent / "static" == STATIC_DIR and STATIC_DIR.is_dir()


async def test_a_session_streams_out_and_back_in_over_connect(start_chatd: StartChatd) -> None:
    """Server streaming out (StreamExportSession) and client streaming in
    (StreamImportSession, Connect streams over HTTP/1.1)."""
    chatd = await start_http(start_chatd)
    async with ChatServiceClient(url(chatd)) as client:
        await client.create_session(pb.CreateSessionRequest(session_id="out"))
        await client.send_message(pb.SendMessageRequest(session_id="out", text="keep me"))
        parts = await collect(
            client.stream_export_session(pb.StreamExportSessionRequest(session_id="out"))
        )
        assert parts

        async def requests() -> AsyncIterator[pb.StreamImportSessionRequest]:
            for i, part in enumerate(parts):
                yield pb.StreamImportSessionRequest(
                    session_id="in" if i == 0 else "", document=part.document
                )

        imported = await client.stream_import_session(requests())
        assert imported.session.session_id == "in"
        assert imported.session.message_count == 2


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
async def test_the_http_listener_serves_https_with_the_grpc_certificates(
    start_chatd: StartChatd, tmp_path: Path
) -> None:
    pki = make_pki(tmp_path)
    chatd = await start_http(
        start_chatd, tls_cert=str(pki.server.cert), tls_key=str(pki.server.key)
    )
    proc = await asyncio.create_subprocess_exec(
        "curl",
        "-sS",
        "--cacert",
        str(pki.ca.cert),
        "-H",
        "Content-Type: application/json",
        "-d",
        "{}",
        f"https://127.0.0.1:{chatd.running.http_port}{SERVICE}/ListSessions",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    assert json.loads(out) == {}


def test_the_http_listener_setting() -> None:
    assert load([], {}).http_listen == "", "off by default"
    assert load(["--http-listen", "127.0.0.1:8080"], {}).http_listen == "127.0.0.1:8080"
    assert load([], {"CHATD_HTTP_LISTEN": "127.0.0.1:0"}).http_listen == "127.0.0.1:0"
    with pytest.raises(SettingsError, match="CHATD_HTTP_LISTEN"):
        load([], {"CHATD_HTTP_LISTEN": "nowhere"})
    # A public HTTP address needs API keys, as a public gRPC one does.
    with pytest.raises(SettingsError, match=r"0\.0\.0\.0:8080 without API keys"):
        load(["--http-listen", "0.0.0.0:8080"], {})
    assert load(["--http-listen", "0.0.0.0:8080"], {"CHATD_API_KEYS": "t:k"}).http_listen


async def test_large_bodies_share_the_grpc_listeners_byte_budget(start_chatd: StartChatd) -> None:
    provider = GatedProvider(["held"])
    chatd = await start_http(
        start_chatd, provider=provider, large_request_bytes=1024, large_request_budget=1500
    )
    port = chatd.running.http_port
    await chatd.stub.CreateSession(pb.CreateSessionRequest(session_id="big"))
    await chatd.stub.CreateSession(pb.CreateSessionRequest(session_id="other"))
    large = {"sessionId": "big", "text": "x" * 1100}
    held = await HttpStream.post(port, f"{SERVICE}/StreamReply", json.dumps(large).encode())
    assert await NdjsonLines(held).next() is not None
    await provider.started.wait()

    refused = await post_json(port, f"{SERVICE}/SendMessage", {**large, "sessionId": "other"})
    assert refused.status == 429
    [info] = [d["debug"] for d in refused.json()["details"] if d["type"].endswith("ErrorInfo")]
    assert info["reason"] == "REQUEST_MEMORY_BUDGET"
    assert info["metadata"]["limit"] == "CHATD_LARGE_REQUEST_BUDGET"
    small = await post_json(port, f"{SERVICE}/GetSession", {"sessionId": "other"})
    assert small.status == 200, "small requests do not count"

    provider.release(2)  # the held reply's delta, and the next one's
    await held.body()
    await held.close()
    again = await post_json(port, f"{SERVICE}/SendMessage", {**large, "sessionId": "other"})
    assert again.status == 200, "the held bytes were given back"
