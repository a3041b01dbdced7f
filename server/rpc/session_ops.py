"""The whole-session RPCs: update, fork, clear, export, import, append and cancel."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import structlog

from chatd.v1 import chat_service_pb2 as pb
from server.rpc.calls import Context
from server.rpc.calls import bind_session as _bind
from server.rpc.calls import tenant_of as _tenant
from server.rpc.content_codec import message_from_pb, messages_to_pb
from server.rpc.document_codec import (
    DocumentAssembler,
    document_from_pb,
    document_parts,
    document_to_pb,
)
from server.rpc.request_keys import StreamFingerprint, request_key
from server.rpc.session_codec import session_to_pb
from server.rpc.update_mask import parse_etag, updated_settings
from server.sessions.errors import InvalidArgument
from server.sessions.ids import check_id, parse_message_id
from server.sessions.pacing import deferred_full_collection
from server.sessions.service import ChatSessions


class SessionOpsServicer:
    """The whole-session RPCs, mixed into ChatServicer."""

    _chats: ChatSessions

    async def UpdateSession(
        self, request: pb.UpdateSessionRequest, context: Context
    ) -> pb.UpdateSessionResponse:
        session_id = request.session.session_id
        structlog.contextvars.bind_contextvars(session_id=session_id)
        if not session_id:
            raise InvalidArgument("session.session_id", "is required", reason="FIELD_REQUIRED")
        tenant = _tenant(context)
        etag = parse_etag(request.etag or request.session.etag)
        check_id("session.session_id", session_id)
        session = await self._chats.history.update(
            tenant, session_id, lambda current: updated_settings(current, request), etag
        )
        response = pb.UpdateSessionResponse()
        session_to_pb(session, response.session)
        return response

    async def ForkSession(
        self, request: pb.ForkSessionRequest, context: Context
    ) -> pb.ForkSessionResponse:
        _bind(request)
        upto = parse_message_id("message_id", request.message_id) if request.message_id else None
        with deferred_full_collection():
            session = await self._chats.fork(
                _tenant(context),
                request.session_id,
                upto,
                request.new_session_id,
                request_key("ForkSession", request),
            )
        response = pb.ForkSessionResponse()
        session_to_pb(session, response.session)
        return response

    async def ClearHistory(
        self, request: pb.ClearHistoryRequest, context: Context
    ) -> pb.ClearHistoryResponse:
        _bind(request)
        check_id("session_id", request.session_id)
        session = await self._chats.history.clear(_tenant(context), request.session_id)
        response = pb.ClearHistoryResponse()
        session_to_pb(session, response.session)
        return response

    async def ExportSession(
        self, request: pb.ExportSessionRequest, context: Context
    ) -> pb.ExportSessionResponse:
        _bind(request)
        check_id("session_id", request.session_id)
        response = pb.ExportSessionResponse()
        with deferred_full_collection():
            document = await self._chats.history.export(_tenant(context), request.session_id)
            await document_to_pb(document, time.time(), response.document)
        return response

    async def StreamExportSession(
        self, request: pb.StreamExportSessionRequest, context: Context
    ) -> AsyncIterator[pb.StreamExportSessionResponse]:
        _bind(request)
        check_id("session_id", request.session_id)
        with deferred_full_collection():
            document = await self._chats.history.export(_tenant(context), request.session_id)
            async for part in document_parts(document, time.time()):
                yield pb.StreamExportSessionResponse(document=part)

    async def ImportSession(
        self, request: pb.ImportSessionRequest, context: Context
    ) -> pb.ImportSessionResponse:
        tenant = _tenant(context)
        with deferred_full_collection():
            document = await document_from_pb(request.document, tenant)
            session = await self._chats.import_session(
                tenant, document, request.session_id, request_key("ImportSession", request)
            )
        structlog.contextvars.bind_contextvars(session_id=session.session_id)
        response = pb.ImportSessionResponse()
        session_to_pb(session, response.session)
        return response

    async def StreamImportSession(
        self, requests: AsyncIterator[pb.StreamImportSessionRequest], context: Context
    ) -> pb.StreamImportSessionResponse:
        """Nothing is stored until the client half-closes: a broken stream stores nothing."""
        tenant = _tenant(context)
        assembler = DocumentAssembler(tenant)
        fingerprint = StreamFingerprint("StreamImportSession")
        session_id: str | None = None
        with deferred_full_collection():
            async for request in requests:
                if session_id is None:
                    session_id = request.session_id
                fingerprint.add(request)
                await assembler.add(request.document)
            document = assembler.finish()
            session = await self._chats.import_session(
                tenant, document, session_id or "", fingerprint.key()
            )
        structlog.contextvars.bind_contextvars(session_id=session.session_id)
        response = pb.StreamImportSessionResponse()
        session_to_pb(session, response.session)
        return response

    async def AppendMessages(
        self, request: pb.AppendMessagesRequest, context: Context
    ) -> pb.AppendMessagesResponse:
        _bind(request)
        check_id("session_id", request.session_id)
        messages = tuple(
            message_from_pb(m, f"messages[{i}]", keep_ids=False)
            for i, m in enumerate(request.messages)
        )
        stored, session = await self._chats.append(
            _tenant(context), request.session_id, messages, request_key("AppendMessages", request)
        )
        response = pb.AppendMessagesResponse()
        messages_to_pb(stored, response.messages)
        session_to_pb(session, response.session)
        return response

    async def CancelReply(
        self, request: pb.CancelReplyRequest, context: Context
    ) -> pb.CancelReplyResponse:
        if request.session_id:
            _bind(request)
        cancelled = await self._chats.cancel(_tenant(context), request.session_id, request.reply_id)
        return pb.CancelReplyResponse(cancelled=cancelled)
