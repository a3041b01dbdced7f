"""chatd.v1.ChatService: decode the request, call the domain, encode the answer."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing

import structlog

from chatd.v1 import chat_service_pb2 as pb
from chatd.v1 import chat_service_pb2_grpc
from server.rpc.calls import Context
from server.rpc.calls import bind_session as _bind
from server.rpc.calls import tenant_of as _tenant
from server.rpc.content_codec import (
    contents_from_pb,
    dict_to_struct,
    messages_to_pb,
    parts_from_pb,
)
from server.rpc.generation_codec import generate_input, generation_event_to_pb, generation_to_pb
from server.rpc.request_keys import request_key
from server.rpc.session_codec import (
    function_declarations_from_pb,
    session_to_pb,
    settings_from_pb,
)
from server.rpc.session_ops import SessionOpsServicer
from server.rpc.turn_codec import TurnRequest, event_to_pb, reply_to_pb, turn_input
from server.sessions.errors import InvalidArgument
from server.sessions.events import TurnCompleted, TurnEvent
from server.sessions.model import Part
from server.sessions.service import ChatSessions
from server.sessions.stateless import GenerationDone


class ChatServicer(SessionOpsServicer, chat_service_pb2_grpc.ChatServiceServicer):
    def __init__(self, chats: ChatSessions) -> None:
        self._chats = chats

    async def CreateSession(
        self, request: pb.CreateSessionRequest, context: Context
    ) -> pb.CreateSessionResponse:
        settings = settings_from_pb(request.session)
        session = await self._chats.create(
            _tenant(context),
            settings,
            request.session_id,
            request_key("CreateSession", request),
        )
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
        turn = turn_input(
            request,
            context.time_remaining(),
            stream_text=isinstance(request, pb.StreamReplyRequest),
        )
        key = request_key("turn", request)
        return self._chats.run_turn(_tenant(context), request.session_id, turn, key)

    async def SendMessage(
        self, request: pb.SendMessageRequest, context: Context
    ) -> pb.SendMessageResponse:
        response = pb.SendMessageResponse()
        async with aclosing(self._turn(request, context)) as events:
            async for event in events:
                if isinstance(event, TurnCompleted):
                    _log_usage(event)
                    reply_to_pb(event.reply, response.reply)
        return response

    async def StreamReply(
        self, request: pb.StreamReplyRequest, context: Context
    ) -> AsyncIterator[pb.StreamReplyResponse]:
        sequence_number = 0
        async with aclosing(self._turn(request, context)) as events:
            async for event in events:
                sequence_number += 1
                if isinstance(event, TurnCompleted):
                    _log_usage(event)
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
            system_instruction=request.system_instruction,
            function_declarations=function_declarations_from_pb(
                request.function_declarations, "function_declarations"
            ),
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


def _log_usage(done: TurnCompleted) -> None:
    """Adds the turn's token counts to this RPC's log line."""
    usage = done.reply.usage
    structlog.contextvars.bind_contextvars(
        tokens_in=usage.prompt_tokens, tokens_out=usage.candidates_tokens
    )
