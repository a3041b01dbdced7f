"""chatd.v1.ChatService: decode the request, call the domain, encode the answer."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import Any

import grpc
import structlog

from chatd.v1 import chat_service_pb2 as pb
from chatd.v1 import chat_service_pb2_grpc
from server.rpc.content_codec import (
    contents_from_pb,
    dict_to_struct,
    messages_to_pb,
    parts_from_pb,
)
from server.rpc.generation_codec import generate_input, generation_event_to_pb, generation_to_pb
from server.rpc.session_codec import session_to_pb, settings_from_pb
from server.rpc.turn_codec import TurnRequest, event_to_pb, reply_to_pb, turn_input
from server.sessions.errors import InvalidArgument, Unimplemented
from server.sessions.events import TurnCompleted, TurnEvent
from server.sessions.model import DEFAULT_TENANT, Part
from server.sessions.service import ChatSessions
from server.sessions.stateless import GenerationDone

Context = grpc.aio.ServicerContext[Any, Any]


def _tenant(context: Context) -> str:
    return DEFAULT_TENANT


def _bind(request: Any) -> None:
    """Adds the request's session id to this RPC's log line."""
    session_id = getattr(request, "session_id", "")
    if session_id:
        structlog.contextvars.bind_contextvars(session_id=session_id)


class ChatServicer(chat_service_pb2_grpc.ChatServiceServicer):
    def __init__(self, chats: ChatSessions) -> None:
        self._chats = chats

    async def CreateSession(
        self, request: pb.CreateSessionRequest, context: Context
    ) -> pb.CreateSessionResponse:
        settings = settings_from_pb(request.session)
        session = await self._chats.create(_tenant(context), settings, request.session_id)
        structlog.contextvars.bind_contextvars(session_id=session.session_id)
        response = pb.CreateSessionResponse()
        session_to_pb(session, response.session)
        return response

    async def GetSession(
        self, request: pb.GetSessionRequest, context: Context
    ) -> pb.GetSessionResponse:
        _bind(request)
        session = await self._chats.get(_tenant(context), request.session_id)
        response = pb.GetSessionResponse()
        session_to_pb(session, response.session)
        return response

    async def ListSessions(
        self, request: pb.ListSessionsRequest, context: Context
    ) -> pb.ListSessionsResponse:
        page = await self._chats.list(
            _tenant(context),
            page_size=request.page_size,
            page_token=request.page_token,
            filter=request.filter,
            order_by=request.order_by,
        )
        response = pb.ListSessionsResponse(next_page_token=page.next_page_token)
        for session in page.items:
            session_to_pb(session, response.sessions.add())
        return response

    async def DeleteSession(
        self, request: pb.DeleteSessionRequest, context: Context
    ) -> pb.DeleteSessionResponse:
        _bind(request)
        await self._chats.delete(_tenant(context), request.session_id)
        return pb.DeleteSessionResponse()

    async def ListMessages(
        self, request: pb.ListMessagesRequest, context: Context
    ) -> pb.ListMessagesResponse:
        _bind(request)
        page = await self._chats.list_messages(
            _tenant(context),
            request.session_id,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        response = pb.ListMessagesResponse(next_page_token=page.next_page_token)
        messages_to_pb(page.items, response.messages)
        return response

    def _turn(self, request: TurnRequest, context: Context) -> AsyncGenerator[TurnEvent, None]:
        _bind(request)
        turn = turn_input(request, context.time_remaining())
        return self._chats.run_turn(_tenant(context), request.session_id, turn)

    async def SendMessage(
        self, request: pb.SendMessageRequest, context: Context
    ) -> pb.SendMessageResponse:
        response = pb.SendMessageResponse()
        async with aclosing(self._turn(request, context)) as events:
            async for event in events:
                if isinstance(event, TurnCompleted):
                    reply_to_pb(event.reply, response.reply)
        return response

    async def StreamReply(
        self, request: pb.StreamReplyRequest, context: Context
    ) -> AsyncIterator[pb.StreamReplyResponse]:
        sequence_number = 0
        async with aclosing(self._turn(request, context)) as events:
            async for event in events:
                sequence_number += 1
                yield event_to_pb(event, sequence_number)

    async def CountTokens(
        self, request: pb.CountTokensRequest, context: Context
    ) -> pb.CountTokensResponse:
        _bind(request)
        if request.text and request.parts:
            raise InvalidArgument("parts", "set either text or parts, not both")
        candidate = (
            (Part(text=request.text),) if request.text else parts_from_pb(request.parts, "parts")
        )
        count = await self._chats.count_tokens(
            _tenant(context),
            request.session_id,
            candidate=candidate,
            contents=contents_from_pb(request.contents, "contents"),
            model=request.model,
        )
        return pb.CountTokensResponse(total_tokens=count.total_tokens, estimated=count.estimated)

    async def GenerateContent(
        self, request: pb.GenerateContentRequest, context: Context
    ) -> pb.GenerateContentResponse:
        response = pb.GenerateContentResponse()
        given = generate_input(request, context.time_remaining())
        async with aclosing(self._chats.generate(given)) as events:
            async for event in events:
                if isinstance(event, GenerationDone):
                    generation_to_pb(event, response.generation)
        return response

    async def StreamGenerateContent(
        self, request: pb.StreamGenerateContentRequest, context: Context
    ) -> AsyncIterator[pb.StreamGenerateContentResponse]:
        given = generate_input(request, context.time_remaining())
        sequence_number = 0
        async with aclosing(self._chats.generate(given)) as events:
            async for event in events:
                sequence_number += 1
                yield generation_event_to_pb(event, sequence_number)

    async def ListTools(
        self, request: pb.ListToolsRequest, context: Context
    ) -> pb.ListToolsResponse:
        page = self._chats.list_tools(page_size=request.page_size, page_token=request.page_token)
        response = pb.ListToolsResponse(next_page_token=page.next_page_token)
        for declaration in page.items:
            tool = response.tools.add(name=declaration.name, description=declaration.description)
            if declaration.parameters is not None:
                dict_to_struct(declaration.parameters, tool.parameters)
        return response

    # RPCs of the contract that later releases serve.

    async def UpdateSession(
        self, request: pb.UpdateSessionRequest, context: Context
    ) -> pb.UpdateSessionResponse:
        raise _not_live("UpdateSession")

    async def ForkSession(
        self, request: pb.ForkSessionRequest, context: Context
    ) -> pb.ForkSessionResponse:
        raise _not_live("ForkSession")

    async def ClearHistory(
        self, request: pb.ClearHistoryRequest, context: Context
    ) -> pb.ClearHistoryResponse:
        raise _not_live("ClearHistory")

    async def ExportSession(
        self, request: pb.ExportSessionRequest, context: Context
    ) -> pb.ExportSessionResponse:
        raise _not_live("ExportSession")

    async def ImportSession(
        self, request: pb.ImportSessionRequest, context: Context
    ) -> pb.ImportSessionResponse:
        raise _not_live("ImportSession")

    async def AppendMessages(
        self, request: pb.AppendMessagesRequest, context: Context
    ) -> pb.AppendMessagesResponse:
        raise _not_live("AppendMessages")

    async def CancelReply(
        self, request: pb.CancelReplyRequest, context: Context
    ) -> pb.CancelReplyResponse:
        raise _not_live("CancelReply")


def _not_live(name: str) -> Unimplemented:
    return Unimplemented(
        f"{name} is part of the chatd.v1 contract but is not live in this release; "
        "see the README for the RPCs served today",
        reason="RPC_NOT_LIVE",
    )
