"""The HTTP listener's limits and edge cases, each held against a live in-process server at
127.0.0.1:0: header size, body size and stalls, the large-request budget by decoded
bytes, plain-JSON stream encodings and deadlines, duplicate Authorization headers (on
gRPC too), shutdown, bad header bytes, the Host check without keys, HTTP/2 on the wrong
port, and the rpc log line of a failed call."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
from typing import Any

import grpc
import pytest
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from google.protobuf import json_format

from chatd.v1 import chat_service_pb2 as pb
from chatd.v1 import chat_service_pb2_grpc
from chatd.v1.chat_service_connect import ChatServiceClient
from server.config import Settings, SettingsError, validate
from server.http.listener import MAX_HEADER_BYTES
from tests.conftest import Chatd, StartChatd
from tests.fakes import GatedProvider
from tests.http_helpers import HttpStream, NdjsonLines, post_json
from tests.test_replies import reason_of

SERVICE = "/chatd.v1.ChatService"
KEYS = "alpha:key-alpha,beta:key-beta"
ALPHA = {"authorization": "Bearer key-alpha"}


async def start_http(start_chatd: StartChatd, **overrides: Any) -> Chatd:
    chatd: Chatd = await start_chatd(http_listen="127.0.0.1:0", **overrides)
    return chatd


class Raw:
    """One raw HTTP/1.1 connection: the test writes exactly the bytes it wants."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Raw:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def response(self) -> tuple[int, dict[str, str], bytes]:
        """The status, headers and body (by Content-Length, chunked, or to the close)."""
        stream = HttpStream(self.reader, self.writer)
        await asyncio.wait_for(stream._read_head(), 30)
        if "content-length" in stream.headers:
            body = await self.reader.readexactly(int(stream.headers["content-length"]))
        else:
            body = await asyncio.wait_for(stream.body(), 30)
        return stream.status, stream.headers, body

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()


def head(path: str, port: int, *lines: str, length: int | None = None) -> bytes:
    fields = [
        f"POST {path} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        *lines,
        *([f"Content-Length: {length}"] if length is not None else []),
    ]
    return ("\r\n".join(fields) + "\r\n\r\n").encode()


def reason(body: bytes) -> str:
    """The ErrorInfo reason of a Connect error JSON body."""
    error = json.loads(body)
    [info] = [d["debug"] for d in error.get("details", ()) if d["type"].endswith("ErrorInfo")]
    return str(info["reason"])


# 1. Header size.


async def test_request_headers_past_the_cap_are_refused_431_before_auth(
    start_chatd: StartChatd,
) -> None:
    chatd = await start_http(start_chatd, api_keys=KEYS)
    port = chatd.running.http_port
    big = await Raw.open(port)
    # Sent in pieces, as a slow attacker would: the parser never gets to buffer more.
    await big.send(f"POST {SERVICE}/GetSession HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ".encode())
    for _ in range(MAX_HEADER_BYTES // 4096 + 2):
        await big.send(b"a" * 4096)
    status, _, body = await big.response()
    assert status == 431
    assert str(MAX_HEADER_BYTES) in body.decode()
    assert await big.reader.read() == b"", "the connection is closed"
    await big.close()

    # Headers under the cap are served as ever (here: refused for the key, not the size).
    fine = await post_json(port, f"{SERVICE}/GetSession", {}, headers={"X-Pad": "p" * 8000})
    assert fine.status == 401


async def test_request_headers_that_never_finish_are_refused_408(
    start_chatd: StartChatd,
) -> None:
    chatd = await start_http(start_chatd, http_body_timeout=1.0)
    port = chatd.running.http_port
    slow = await Raw.open(port)
    await slow.send(f"POST {SERVICE}/GetSession HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A".encode())
    status, _, _ = await slow.response()
    assert status == 408
    assert await slow.reader.read() == b"", "the connection is closed"
    await slow.close()
    idle = await Raw.open(port)  # a connection that sends nothing at all
    status, _, _ = await idle.response()
    assert status == 408
    await idle.close()


# 2. Declared body size, stalled bodies, budget by received bytes.


async def test_a_content_length_over_the_message_cap_is_refused_at_once_as_on_grpc(
    start_chatd: StartChatd,
) -> None:
    chatd = await start_http(start_chatd, max_message_bytes=4096)
    port = chatd.running.http_port
    raw = await Raw.open(port)
    await raw.send(
        head(f"{SERVICE}/GetSession", port, "Content-Type: application/json", length=10**12) + b"{"
    )
    status, _, body = await raw.response()
    await raw.close()
    error = json.loads(body)
    assert status == 429
    assert error["code"] == "resource_exhausted"
    assert "larger than configured max 4096" in error["message"]
    assert "details" not in error, "no RetryInfo: a retry could never succeed"

    # gRPC answers an oversize message with the same code.
    with pytest.raises(grpc.aio.AioRpcError) as grpc_error:
        await chatd.stub.GetSession(pb.GetSessionRequest(session_id="x" * 5000))
    assert grpc_error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_a_body_that_never_comes_holds_no_budget_and_its_slot_is_freed(
    start_chatd: StartChatd,
) -> None:
    chatd = await start_http(
        start_chatd,
        api_keys=KEYS,
        large_request_bytes=1024,
        large_request_budget=1500,
        max_streams=1,
        http_body_timeout=1.0,
    )
    port = chatd.running.http_port
    await chatd.stub.CreateSession(
        pb.CreateSessionRequest(session_id="s"), metadata=(("authorization", "Bearer key-alpha"),)
    )
    # Declares a large body, sends one byte of it, then nothing: a stream slot is held
    # until the body times out, the budget never.
    stalled = await Raw.open(port)
    await stalled.send(
        head(
            f"{SERVICE}/StreamReply",
            port,
            "Content-Type: application/json",
            "Authorization: Bearer key-beta",
            length=3000,
        )
        + b"{"
    )
    large = {"sessionId": "s", "text": "x" * 1100}
    other = await post_json(
        port, f"{SERVICE}/SendMessage", large, headers={"Authorization": "Bearer key-alpha"}
    )
    assert other.status == 200, "a declared Content-Length takes nothing from the budget"

    status, _, body = await stalled.response()
    await stalled.close()
    assert status == 504
    assert json.loads(body)["code"] == "deadline_exceeded"
    assert reason(body) == "REQUEST_BODY_STALLED"
    streamed = await post_json(
        port, f"{SERVICE}/StreamReply", large, headers={"Authorization": "Bearer key-alpha"}
    )
    assert streamed.status == 200 and "error" not in streamed.lines[-1], "the slot was freed"


# 3. Chunked and gzip bodies are charged; a client stream per message.


def _chunked(body: bytes) -> bytes:
    return (
        b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:100], body[100:]))
        + b"0\r\n\r\n"
    )


async def test_chunked_and_gzip_bodies_are_charged_by_their_decoded_bytes(
    start_chatd: StartChatd,
) -> None:
    provider = GatedProvider(["held"])
    chatd = await start_http(
        start_chatd, provider=provider, large_request_bytes=1024, large_request_budget=1500
    )
    port = chatd.running.http_port
    for sid in ("big", "other"):
        await chatd.stub.CreateSession(pb.CreateSessionRequest(session_id=sid))
    large = {"sessionId": "big", "text": "x" * 1100}
    held = await HttpStream.post(port, f"{SERVICE}/StreamReply", json.dumps(large).encode())
    assert await NdjsonLines(held).next() is not None
    await provider.started.wait()

    body = json.dumps({**large, "sessionId": "other"}).encode()
    chunked = await Raw.open(port)
    await chunked.send(
        head(
            f"{SERVICE}/SendMessage",
            port,
            "Content-Type: application/json",
            "Transfer-Encoding: chunked",
        )
        + _chunked(body)
    )
    status, _, answer = await chunked.response()
    await chunked.close()
    assert (status, reason(answer)) == (429, "REQUEST_MEMORY_BUDGET")

    zipped = gzip.compress(body)
    assert len(zipped) < 1024, "small on the wire, large once decoded"
    for content_type in ("application/json", "application/json"):
        raw = await Raw.open(port)
        await raw.send(
            head(
                f"{SERVICE}/SendMessage",
                port,
                f"Content-Type: {content_type}",
                "Content-Encoding: gzip",
                length=len(zipped),
            )
            + zipped
        )
        status, _, answer = await raw.response()
        await raw.close()
        assert (status, reason(answer)) == (429, "REQUEST_MEMORY_BUDGET")
    provider.release(2)
    await held.body()
    await held.close()


def _import_requests(sid: str) -> list[pb.StreamImportSessionRequest]:
    requests = [
        pb.StreamImportSessionRequest(
            session_id=sid,
            document=json_format.ParseDict(
                {"format_version": 1, "session": {}}, pb.StreamImportSessionRequest().document
            ),
        )
    ]
    for i in range(6):
        document = json_format.ParseDict(
            {
                "messages": [
                    {"message_id": str(i), "role": "ROLE_USER", "parts": [{"text": "x" * 1200}]}
                ]
            },
            pb.StreamImportSessionRequest().document,
        )
        requests.append(pb.StreamImportSessionRequest(document=document))
    return requests


async def test_a_client_stream_is_charged_per_message_as_on_grpc(start_chatd: StartChatd) -> None:
    # Each message is over the threshold, all of them far over the budget.
    chatd = await start_http(start_chatd, large_request_bytes=1024, large_request_budget=1500)

    async def stream(sid: str) -> Any:
        for request in _import_requests(sid):
            yield request

    on_grpc = await chatd.stub.StreamImportSession(stream("g"))
    assert on_grpc.session.message_count == 6
    async with ChatServiceClient(f"http://127.0.0.1:{chatd.running.http_port}") as client:
        on_http = await client.stream_import_session(stream("h"))
    assert on_http.session.message_count == 6


# 4. and 5. Plain-JSON streams: bad bytes, encodings, deadlines.


async def test_a_plain_json_stream_body_that_is_not_utf8_is_request_malformed(
    start_chatd: StartChatd,
) -> None:
    chatd = await start_http(start_chatd)
    port = chatd.running.http_port
    body = b'{"sessionId": "\xff\xfe"}'
    stream = await HttpStream.post(port, f"{SERVICE}/StreamReply", body)
    answer = await stream.body()
    await stream.close()
    assert stream.status == 400
    assert json.loads(answer)["code"] == "invalid_argument"
    assert reason(answer) == "REQUEST_MALFORMED"


async def test_a_plain_json_stream_honours_gzip_and_refuses_other_encodings(
    start_chatd: StartChatd,
) -> None:
    chatd = await start_http(start_chatd, max_message_bytes=65536)
    port = chatd.running.http_port
    await chatd.stub.CreateSession(pb.CreateSessionRequest(session_id="z"))
    body = gzip.compress(json.dumps({"sessionId": "z", "text": "zipped"}).encode())
    stream = await HttpStream.post(
        port, f"{SERVICE}/StreamReply", body, headers={"Content-Encoding": "gzip"}
    )
    lines = [json.loads(line) for line in (await stream.body()).splitlines()]
    await stream.close()
    assert stream.status == 200
    assert lines[-1]["reply"]["finishReason"] == "FINISH_REASON_STOP"

    other = await HttpStream.post(
        port, f"{SERVICE}/StreamReply", body, headers={"Content-Encoding": "br"}
    )
    answer = json.loads(await other.body())
    await other.close()
    assert other.status == 501
    assert answer["code"] == "unimplemented"
    assert "unknown compression: 'br'" in answer["message"]

    bomb = gzip.compress(b"{" + b" " * 2_000_000 + b"}")
    capped = await HttpStream.post(
        port, f"{SERVICE}/StreamReply", bomb, headers={"Content-Encoding": "gzip"}
    )
    answer = json.loads(await capped.body())
    await capped.close()
    assert answer["code"] == "resource_exhausted", "decompressed within the message cap"


async def test_a_plain_json_stream_keeps_connect_timeout_ms(start_chatd: StartChatd) -> None:
    provider = GatedProvider(["never"])
    chatd = await start_http(start_chatd, provider=provider)
    port = chatd.running.http_port
    await chatd.stub.CreateSession(pb.CreateSessionRequest(session_id="t"))
    request = json.dumps({"sessionId": "t", "text": "wait"}).encode()

    invalid = await HttpStream.post(
        port, f"{SERVICE}/StreamReply", request, headers={"Connect-Timeout-Ms": "soon"}
    )
    answer = json.loads(await invalid.body())
    await invalid.close()
    assert invalid.status == 400 and answer["code"] == "invalid_argument"

    timed = await HttpStream.post(
        port, f"{SERVICE}/StreamReply", request, headers={"Connect-Timeout-Ms": "100"}
    )
    body = await asyncio.wait_for(timed.body(), 30)
    await timed.close()
    # Past its first line the error is the stream's last line; before it, the HTTP answer.
    last = json.loads(body.splitlines()[-1])
    assert last.get("error", last)["code"] == "deadline_exceeded"
    assert timed.status in (200, 504)


# 6. Duplicate Authorization.


async def test_more_than_one_authorization_is_unauthenticated_on_every_edge(
    start_chatd: StartChatd,
) -> None:
    chatd = await start_http(start_chatd, api_keys=KEYS)
    port = chatd.running.http_port
    twice = ("Authorization: Bearer key-alpha", "Authorization: Bearer key-beta")
    for path, content_type in (
        (f"{SERVICE}/GetSession", "application/json"),
        (f"{SERVICE}/StreamReply", "application/json"),
    ):
        raw = await Raw.open(port)
        body = b'{"sessionId": "a", "text": "t"}'
        await raw.send(
            head(path, port, f"Content-Type: {content_type}", *twice, length=len(body)) + body
        )
        status, _, answer = await raw.response()
        await raw.close()
        assert (status, reason(answer)) == (401, "API_KEY_DUPLICATED"), path

    metadata = (("authorization", "Bearer key-alpha"), ("authorization", "Bearer key-beta"))
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await chatd.stub.GetSession(pb.GetSessionRequest(session_id="a"), metadata=metadata)
    assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert reason_of(error.value) == "API_KEY_DUPLICATED"
    with pytest.raises(grpc.aio.AioRpcError) as streamed:
        async for _ in chatd.stub.StreamReply(
            pb.StreamReplyRequest(session_id="a", text="t"), metadata=metadata
        ):
            pass
    assert reason_of(streamed.value) == "API_KEY_DUPLICATED"


# 7. Shutdown.


async def test_calls_cut_at_shutdown_end_unavailable_on_every_protocol(
    start_chatd: StartChatd,
) -> None:
    provider = GatedProvider(["one ", "two"])
    chatd = await start_http(start_chatd, provider=provider)
    port = chatd.running.http_port
    for sid in ("j", "c"):
        await chatd.stub.CreateSession(pb.CreateSessionRequest(session_id=sid))
    ndjson = await HttpStream.post(
        port, f"{SERVICE}/StreamReply", json.dumps({"sessionId": "j", "text": "a"}).encode()
    )
    lines = NdjsonLines(ndjson)
    assert await lines.next() is not None
    connect_events: list[Any] = []
    connect_error: list[ConnectError] = []
    first = asyncio.Event()

    async def connect_stream() -> None:
        async with ChatServiceClient(f"http://127.0.0.1:{port}") as client:
            try:
                async for event in client.stream_reply(
                    pb.StreamReplyRequest(session_id="c", text="b")
                ):
                    connect_events.append(event)
                    first.set()
            except ConnectError as exc:
                connect_error.append(exc)
                first.set()

    task = asyncio.create_task(connect_stream())
    await first.wait()
    await chatd.running.stop(grace=0)
    await task
    rest = await lines.rest()
    await ndjson.close()
    assert rest[-1]["error"]["code"] == "unavailable"
    assert connect_error and connect_error[0].code == Code.UNAVAILABLE


# 9. The Host check without keys.


async def test_without_keys_only_loopback_hosts_are_served(start_chatd: StartChatd) -> None:
    chatd = await start_http(start_chatd)
    port = chatd.running.http_port
    body = b'{"sessionId": "h"}'

    async def with_host(host: str) -> int:
        raw = await Raw.open(port)
        await raw.send(
            f"POST {SERVICE}/CreateSession HTTP/1.1\r\nHost: {host}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        status, _, _ = await raw.response()
        await raw.close()
        return status

    assert await with_host("rebound.attacker.example:8080") == 421
    assert await with_host("localhost.attacker.example") == 421
    assert await with_host(f"localhost:{port}") == 200
    assert await with_host(f"[::1]:{port}") in (200, 409)


async def test_with_keys_any_host_is_served(start_chatd: StartChatd) -> None:
    chatd = await start_http(start_chatd, api_keys=KEYS)
    raw = await Raw.open(chatd.running.http_port)
    body = b'{"sessionId": "h"}'
    await raw.send(
        f"POST {SERVICE}/CreateSession HTTP/1.1\r\nHost: chatd.example.com\r\n"
        "Authorization: Bearer key-alpha\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    status, _, _ = await raw.response()
    await raw.close()
    assert status == 200


# 10. Nits.


@pytest.mark.parametrize(
    "address",
    ["localhost.attacker.example:8080", "127.example.net:8080", "0.0.0.0:8080"],
)
def test_a_listen_host_is_loopback_only_when_it_parses_so(address: str) -> None:
    settings: list[dict[str, Any]] = [{"http_listen": address}, {"listen": address}]
    for setting in settings:
        with pytest.raises(SettingsError, match="without API keys"):
            validate(Settings(**setting))


@pytest.mark.parametrize("address", ["localhost:8080", "127.0.0.2:8080", "[::1]:8080"])
def test_loopback_listen_hosts_need_no_keys(address: str) -> None:
    validate(Settings(http_listen=address))


async def test_a_native_grpc_client_on_the_http_port_is_told_where_grpc_is(
    start_chatd: StartChatd,
) -> None:
    chatd = await start_http(start_chatd)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{chatd.running.http_port}") as channel:
        stub = chat_service_pb2_grpc.ChatServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stub.GetSession(pb.GetSessionRequest(session_id="a"), timeout=30)
    assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "native gRPC is served on CHATD_LISTEN" in (error.value.details() or "")
    # The listener still serves HTTP/1.1 afterwards.
    created = await post_json(chatd.running.http_port, f"{SERVICE}/CreateSession", {})
    assert created.status == 200
