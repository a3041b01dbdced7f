"""chatd set-up over gRPC: sessions, history, calibration of the echo reply, request payloads."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import grpc

from chatd.v1 import chat_service_pb2 as pb
from chatd.v1 import chat_service_pb2_grpc as pb_grpc
from chatd.v1 import content_pb2, session_pb2

SEND = "/chatd.v1.ChatService/SendMessage"
STREAM = "/chatd.v1.ChatService/StreamReply"
COUNT_TOKENS = "/chatd.v1.ChatService/CountTokens"
# The echo reply is calibrated to this many words (the user message plus 19 of its own);
# it streams them as phrases of a few words each (server.providers.echo.WORDS_PER_CHUNK).
TARGET_WORDS = 50
_WORDS = ("please", "summarise", "the", "quarterly", "report", "and", "list", "three", "risks")


def user_text(words: int) -> str:
    """A plain user message of `words` words."""
    return " ".join(_WORDS[i % len(_WORDS)] for i in range(words))


def send_payloads(session_ids: list[str], text: str) -> list[bytes]:
    return [pb.SendMessageRequest(session_id=s, text=text).SerializeToString() for s in session_ids]


def stream_payloads(session_ids: list[str], text: str) -> list[bytes]:
    return [pb.StreamReplyRequest(session_id=s, text=text).SerializeToString() for s in session_ids]


def touch_payloads(session_ids: list[str]) -> list[bytes]:
    """CountTokens on a session: reads the session and its context window (filling the cache)."""
    return [pb.CountTokensRequest(session_id=s).SerializeToString() for s in session_ids]


@dataclass(frozen=True)
class Calibration:
    """What one turn looks like on the wire, measured on a live chatd."""

    text: str
    words: int
    deltas: int
    events: int
    stream_bytes: int
    request_bytes: int
    response_bytes: int


class Chatd:
    """A gRPC client for setting chatd up (not for load: that is bench.load's job)."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.aio.insecure_channel(address)
        self.stub = pb_grpc.ChatServiceStub(self.channel)

    async def close(self) -> None:
        await self.channel.close()

    async def create_sessions(self, prefix: str, count: int, max_messages: int = 20) -> list[str]:
        """`count` sessions named prefix-N with context_policy.max_messages set."""
        policy = session_pb2.ContextPolicy(max_messages=max_messages)
        ids = [f"{prefix}-{i}" for i in range(count)]
        for start in range(0, count, 64):
            await asyncio.gather(
                *(
                    self.stub.CreateSession(
                        pb.CreateSessionRequest(
                            session_id=sid, session=session_pb2.Session(context_policy=policy)
                        ),
                        timeout=30,
                    )
                    for sid in ids[start : start + 64]
                )
            )
        return ids

    async def append_history(self, session_id: str, count: int, batch: int = 1000) -> None:
        """Appends `count` alternating user/model messages with AppendMessages batches."""
        roles = (content_pb2.ROLE_USER, content_pb2.ROLE_MODEL)
        for start in range(0, count, batch):
            messages = [
                content_pb2.Message(
                    role=roles[i % 2], parts=[content_pb2.Part(text=f"history message {i}")]
                )
                for i in range(start, min(count, start + batch))
            ]
            request = pb.AppendMessagesRequest(session_id=session_id, messages=messages)
            await self.stub.AppendMessages(request, timeout=60)

    async def message_count(self, session_id: str) -> int:
        reply = await self.stub.GetSession(pb.GetSessionRequest(session_id=session_id))
        return int(reply.session.message_count)

    async def _stream_shape(self, session_id: str, text: str) -> tuple[int, int, int, int]:
        deltas = events = size = 0
        streamed = []
        request = pb.StreamReplyRequest(session_id=session_id, text=text)
        async for event in self.stub.StreamReply(request, timeout=30):
            events += 1
            size += event.ByteSize()
            if event.WhichOneof("event") == "text_delta":
                deltas += 1
                streamed.append(event.text_delta.text)
        return len("".join(streamed).split()), deltas, events, size

    async def calibrate(self, session_id: str) -> Calibration:
        """Finds the message length whose StreamReply says TARGET_WORDS words."""
        words = 30
        for _ in range(5):
            said, deltas, events, size = await self._stream_shape(session_id, user_text(words))
            if said == TARGET_WORDS:
                break
            words = max(1, words + TARGET_WORDS - said)
        text = user_text(words)
        request = pb.SendMessageRequest(session_id=session_id, text=text)
        response = await self.stub.SendMessage(request, timeout=30)
        return Calibration(
            text, words, deltas, events, size, request.ByteSize(), response.ByteSize()
        )
