"""Connection options shared by the sync and asyncio clients: credentials and metadata."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from chatd.v1 import chat_service_pb2 as pb
from chatd.v1 import content_pb2, session_pb2

Metadata = tuple[tuple[str, str], ...]

# Seconds a unary call may take unless the client is given another timeout.
DEFAULT_TIMEOUT = 30.0


def metadata(api_key: str | None) -> Metadata:
    """The per-call metadata: `authorization: Bearer <api_key>` when a key is given."""
    return (("authorization", f"Bearer {api_key}"),) if api_key else ()


def credentials(tls: bool, root_certificates: bytes | None) -> grpc.ChannelCredentials | None:
    """TLS credentials (verified against `root_certificates` PEM, else the system's roots),
    or None for a plaintext channel."""
    if not tls and root_certificates is None:
        return None
    return grpc.ssl_channel_credentials(root_certificates=root_certificates)


def send_request(
    session_id: str,
    *,
    text: str = "",
    parts: Sequence[content_pb2.Part] = (),
    tool_results: Sequence[pb.ToolResult] = (),
    generation_config: session_pb2.GenerationConfig | None = None,
    request_id: str = "",
    background: bool = False,
) -> pb.SendMessageRequest:
    """A SendMessageRequest of the given fields."""
    return pb.SendMessageRequest(
        session_id=session_id,
        text=text,
        parts=parts,
        tool_results=tool_results,
        generation_config=generation_config,
        request_id=request_id,
        background=background,
    )


def stream_request(
    session_id: str,
    *,
    text: str = "",
    parts: Sequence[content_pb2.Part] = (),
    tool_results: Sequence[pb.ToolResult] = (),
    generation_config: session_pb2.GenerationConfig | None = None,
    request_id: str = "",
    background: bool = False,
    reply_id: str = "",
    starting_after: int = 0,
) -> pb.StreamReplyRequest:
    """A StreamReplyRequest of the given fields."""
    return pb.StreamReplyRequest(
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
