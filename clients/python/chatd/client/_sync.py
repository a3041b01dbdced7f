"""ChatClient: chatd.v1.ChatService over a synchronous grpc channel."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from types import TracebackType

import grpc

from chatd.client._channel import (
    DEFAULT_TIMEOUT,
    credentials,
    metadata,
)
from chatd.v1 import chat_service_pb2 as pb
from chatd.v1 import chat_service_pb2_grpc, content_pb2, session_pb2


class ChatClient:
    """A synchronous chatd client; use it as a context manager or call `close()`.

    `address` is "host:port". `api_key` is sent as `authorization: Bearer <key>` on every
    call (needed when the server has CHATD_API_KEYS). `tls=True` verifies the server against
    the system's roots, `root_certificates` (PEM bytes, implies TLS) against that CA.
    `timeout` is each unary call's deadline in seconds (None: no deadline); streams have
    none. Every method raises `grpc.RpcError` when the call fails: its `code()` is the
    status and `error_details(error)` its ErrorInfo and BadRequest.
    """

    def __init__(
        self,
        address: str,
        *,
        api_key: str | None = None,
        tls: bool = False,
        root_certificates: bytes | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
    ) -> None:
        creds = credentials(tls, root_certificates)
        self.channel: grpc.Channel = (
            grpc.secure_channel(address, creds) if creds else grpc.insecure_channel(address)
        )
        self.stub = chat_service_pb2_grpc.ChatServiceStub(self.channel)
        self.metadata = metadata(api_key)
        self.timeout = timeout

    def close(self) -> None:
        """Closes the channel; calls in flight are cancelled."""
        self.channel.close()

    def __enter__(self) -> ChatClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def create_session(
        self,
        session: session_pb2.Session | None = None,
        *,
        session_id: str = "",
        request_id: str = "",
    ) -> session_pb2.Session:
        """Creates a session from `session`'s settings (model, system instruction,
        function_declarations, labels, ...; None: the server's defaults) and returns it with
        its `session_id`. `session_id` chooses the id (1-128 of letters, digits, '-', '_',
        '.'); `request_id` makes a retry return the first result. INVALID_ARGUMENT for bad
        settings or ids, ALREADY_EXISTS when the id is taken."""
        request = pb.CreateSessionRequest(
            session=session, session_id=session_id, request_id=request_id
        )
        response: pb.CreateSessionResponse = self.stub.CreateSession(
            request, metadata=self.metadata, timeout=self.timeout
        )
        return response.session

    def send_message(
        self,
        session_id: str,
        *,
        text: str = "",
        parts: Sequence[content_pb2.Part] = (),
        tool_results: Sequence[pb.ToolResult] = (),
        generation_config: session_pb2.GenerationConfig | None = None,
        request_id: str = "",
        background: bool = False,
    ) -> pb.Reply:
        """Runs one turn (a user message of `text`/`parts`, or `tool_results` answering
        every pending caller tool call) and returns the finished `Reply`: its `text`,
        `messages`, `finish_reason`, `usage`, and `pending_tool_calls` when the model
        called a caller-executed function. NOT_FOUND for an unknown session,
        INVALID_ARGUMENT for bad content, FAILED_PRECONDITION when tool results do not
        match the pending calls."""
        request = pb.SendMessageRequest(
            session_id=session_id,
            text=text,
            parts=parts,
            tool_results=tool_results,
            generation_config=generation_config,
            request_id=request_id,
            background=background,
        )
        response: pb.SendMessageResponse = self.stub.SendMessage(
            request, metadata=self.metadata, timeout=self.timeout
        )
        return response.reply

    def stream_reply(
        self,
        session_id: str = "",
        *,
        text: str = "",
        parts: Sequence[content_pb2.Part] = (),
        tool_results: Sequence[pb.ToolResult] = (),
        generation_config: session_pb2.GenerationConfig | None = None,
        request_id: str = "",
        background: bool = False,
        reply_id: str = "",
        starting_after: int = 0,
    ) -> Iterator[pb.StreamReplyResponse]:
        """Runs one turn like `send_message` and yields its events as they happen
        (`text_delta`, `tool_call`, `tool_result`, `message`, `part`), the last one a
        `reply`. Each event has a `sequence_number` (1, 2, ...) and the first the
        `reply_id`. With `reply_id` (and no content) it resumes that reply instead: the
        events after `starting_after` are replayed, then followed live. Closing the
        iterator early cancels the stream (and the turn, unless `background`). Errors are
        raised from the iteration as `grpc.RpcError`."""
        request = pb.StreamReplyRequest(
            session_id=session_id,
            text=text,
            parts=parts,
            tool_results=tool_results,
            generation_config=generation_config,
            request_id=request_id,
            background=background,
            reply_id=reply_id,
            starting_after=starting_after,
        )
        call = self.stub.StreamReply(request, metadata=self.metadata)
        try:
            yield from call
        finally:
            call.cancel()

    def get_reply(
        self,
        reply_id: str,
        *,
        session_id: str = "",
        starting_after: int = 0,
        skip_events: bool = False,
    ) -> pb.GetReplyResponse:
        """A reply's state and outcome (`reply`) and its events after `starting_after`
        (`events`, none with `skip_events`). NOT_FOUND for an unknown reply (or one not in
        `session_id` when it is given)."""
        request = pb.GetReplyRequest(
            session_id=session_id,
            reply_id=reply_id,
            starting_after=starting_after,
            skip_events=skip_events,
        )
        response: pb.GetReplyResponse = self.stub.GetReply(
            request, metadata=self.metadata, timeout=self.timeout
        )
        return response

    def cancel_reply(self, session_id: str = "", *, reply_id: str = "") -> pb.CancelReplyResponse:
        """Cancels the session's running reply, or the reply `reply_id`. The response says
        whether a running reply was found and told to stop."""
        request = pb.CancelReplyRequest(session_id=session_id, reply_id=reply_id)
        response: pb.CancelReplyResponse = self.stub.CancelReply(
            request, metadata=self.metadata, timeout=self.timeout
        )
        return response

    def list_messages(
        self, session_id: str, *, page_size: int = 0, page_token: str = ""
    ) -> pb.ListMessagesResponse:
        """One page of the session's history, oldest first (`messages`), and the
        `next_page_token` ("" on the last page). `page_size` is 1-1000 (0: 100).
        NOT_FOUND for an unknown session, INVALID_ARGUMENT for a bad page token."""
        request = pb.ListMessagesRequest(
            session_id=session_id, page_size=page_size, page_token=page_token
        )
        response: pb.ListMessagesResponse = self.stub.ListMessages(
            request, metadata=self.metadata, timeout=self.timeout
        )
        return response
