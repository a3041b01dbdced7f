"""A thin typed client for chatd.v1.ChatService, sync (`ChatClient`) and asyncio
(`AsyncChatClient`). The methods take the request's fields as keyword arguments and return
the generated protobuf messages of `chatd.v1`; a failed call raises `grpc.RpcError`, whose
rich details `error_details` reads."""

from chatd.client._aio import AsyncChatClient
from chatd.client._channel import DEFAULT_TIMEOUT
from chatd.client._errors import error_details
from chatd.client._sync import ChatClient

__all__ = ["DEFAULT_TIMEOUT", "AsyncChatClient", "ChatClient", "error_details"]
