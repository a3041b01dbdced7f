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
    messages_to_pb,
    parts_from_pb,
)
from server.rpc.generation_codec import generate_input, generation_event_to_pb, generation_to_pb
from server.rpc.json_codec import object_output
from server.rpc.reply_codec import decode_events, record_to_pb
from server.rpc.request_keys import request_key
from server.rpc.session_codec import (
    function_declarations_from_pb,
    session_to_pb,
    settings_from_pb,
)
from server.rpc.session_ops import SessionOpsServicer
from server.rpc.turn_codec import TurnRequest, event_to_pb, reply_to_pb, turn_input
from server.sessions.errors import InvalidArgument
from server.sessions.events import ReplyStarted, TurnCompleted, TurnEvent
from server.sessions.model import Part
from server.sessions.ports import ReplyEvents, ReplyState
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

    def _turn(
        self, request: TurnRequest, context: Context
    ) -> AsyncGenerator[ReplyStarted | TurnEvent | ReplyEvents, None]:
        _bind(request)
        turn = turn_input(
            request,
            context.time_remaining(),
            stream_text=isinstance(request, pb.StreamReplyRequest),
        )
        key = request_key("turn", request, ignore=("background",))
        return self._chats.run_turn(
            _tenant(context), request.session_id, turn, key, background=request.background
        )

    async def SendMessage(
        self, request: pb.SendMessageRequest, context: Context
    ) -> pb.SendMessageResponse:
        response = pb.SendMessageResponse()
        async with aclosing(self._turn(request, context)) as events:
            async for event in events:
                if isinstance(event, ReplyStarted):
                    response.reply.reply_id = event.reply_id
                    if request.background:
                        break  # it runs on; the caller follows it by reply_id
                elif isinstance(event, TurnCompleted):
                    _log_usage(event)
                    reply_to_pb(event.reply, response.reply)
                elif isinstance(event, ReplyEvents):
                    # A retry of a request that ran: the stored reply's outcome.
                    for stored in decode_events((event,), 0):
                        if stored.HasField("reply"):
                            response.reply.CopyFrom(stored.reply)
        return response

    async def StreamReply(
        self, request: pb.StreamReplyRequest, context: Context
    ) -> AsyncIterator[pb.StreamReplyResponse]:
        if request.reply_id:
            async for out in self._resume(request, context):
                yield out
            return
        if request.starting_after:
            raise InvalidArgument(
                "starting_after",
                "is only for resuming: set reply_id too",
                reason="RESUME_FIELD_INVALID",
            )
        sequence_number = 0
        reply_id = ""
        async with aclosing(self._turn(request, context)) as events:
            async for event in events:
                if isinstance(event, ReplyStarted):
                    reply_id = event.reply_id
                    continue
                if isinstance(event, ReplyEvents):
                    # A retry of a request that ran: the stored reply, numbered as stored.
                    for out in decode_events((event,), sequence_number):
                        sequence_number = out.sequence_number
                        if not out.reply_id and sequence_number == 1:
                            out.reply_id = reply_id
                        yield out
                    continue
                sequence_number += 1
                if isinstance(event, TurnCompleted):
                    _log_usage(event)
                out = event_to_pb(event, sequence_number)
                if sequence_number == 1:
                    out.reply_id = reply_id
                yield out

    async def _resume(
        self, request: pb.StreamReplyRequest, context: Context
    ) -> AsyncIterator[pb.StreamReplyResponse]:
        """StreamReply with reply_id: the reply's events after starting_after, then live."""
        given = {
            "text": bool(request.text),
            "parts": bool(request.parts),
            "tool_results": bool(request.tool_results),
            "generation_config": request.HasField("generation_config"),
            "background": request.background,
            "request_id": bool(request.request_id),
        }
        for name, set_ in given.items():
            if set_:
                raise InvalidArgument(
                    name,
                    "must be empty when resuming a reply (reply_id is set)",
                    reason="RESUME_FIELD_INVALID",
                )
        if request.session_id:
            _bind(request)
        seen = request.starting_after
        reply_id = ""
        first = True
        follow = self._chats.follow_reply(
            _tenant(context), request.session_id, request.reply_id, seen
        )
        async with aclosing(follow) as items:
            async for item in items:
                if isinstance(item, ReplyStarted):
                    reply_id = item.reply_id
                    continue
                if isinstance(item, tuple):
                    outs = [event_to_pb(item[1], item[0])]
                else:
                    outs = decode_events((item,), seen)
                for out in outs:
                    if out.sequence_number <= seen:
                        continue
                    seen = out.sequence_number
                    if first:
                        out.reply_id = reply_id
                        first = False
                    yield out

    async def GetReply(self, request: pb.GetReplyRequest, context: Context) -> pb.GetReplyResponse:
        if request.session_id:
            _bind(request)
        record, numbered, stored = await self._chats.get_reply(
            _tenant(context),
            request.session_id,
            request.reply_id,
            after=request.starting_after,
            events=not request.skip_events,
        )
        response = pb.GetReplyResponse()
        record_to_pb(record, response.reply)
        if not request.skip_events:
            response.events.extend(event_to_pb(event, seq) for seq, event in numbered)
            response.events.extend(decode_events(stored, request.starting_after))
        if record.state in _WITH_OUTCOME and stored:
            # The outcome is the ended reply's last event, whatever the caller asked for.
            last = decode_events(stored[-1:], record.last_seq - 1)
            if last and last[-1].HasField("reply"):
                response.reply.reply.CopyFrom(last[-1].reply)
        return response

    async def ListReplies(
        self, request: pb.ListRepliesRequest, context: Context
    ) -> pb.ListRepliesResponse:
        _bind(request)
        page = await self._chats.list_replies(
            _tenant(context),
            request.session_id,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        response = pb.ListRepliesResponse(next_page_token=page.next_page_token)
        for record in page.items:
            record_to_pb(record, response.replies.add())
        return response

    async def CountTokens(
        self, request: pb.CountTokensRequest, context: Context
    ) -> pb.CountTokensResponse:
        _bind(request)
        if request.text and request.parts:
            raise InvalidArgument(
                "parts", "set either text or parts, not both", reason="FIELDS_CONFLICT"
            )
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
                object_output(declaration.parameters, tool, "parameters", "parameters_json")
        return response


_WITH_OUTCOME = frozenset({ReplyState.COMPLETED, ReplyState.AWAITING_TOOL_RESULTS})


def _log_usage(done: TurnCompleted) -> None:
    """Adds the turn's token counts to this RPC's log line."""
    usage = done.reply.usage
    structlog.contextvars.bind_contextvars(
        tokens_in=usage.prompt_tokens, tokens_out=usage.candidates_tokens
    )
