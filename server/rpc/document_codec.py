"""SessionDocument <-> domain: ExportSession's output and ImportSession's input, losslessly.

Documents can hold hundreds of thousands of messages, so messages are converted in paced
slices (see server.sessions.pacing): a big export or import never holds the event loop for
more than a few milliseconds at a time. StreamExportSession and StreamImportSession carry
the same document in parts: a header (everything but the messages), then the messages.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

from chatd.v1 import content_pb2
from chatd.v1 import session_pb2 as pb
from server.rpc.content_codec import (
    function_call_from_pb,
    function_call_to_pb,
    function_response_from_pb,
    function_response_to_pb,
    message_from_pb,
    message_to_pb,
    timestamp,
)
from server.rpc.session_codec import session_to_pb, settings_from_pb
from server.sessions.errors import InvalidArgument
from server.sessions.history_ops import SessionDocument
from server.sessions.ids import message_id, parse_message_id
from server.sessions.model import Message, PendingTurn, Session
from server.sessions.pacing import Pacer

FORMAT_VERSION = 1
# Messages per StreamExportSession part: about this many bytes (a part holds at least one
# message, so one bigger than this travels alone).
PART_BYTES = 1024 * 1024
# A repeated-field entry costs its tag and length prefix beside its own bytes.
_ENTRY_OVERHEAD = 6


def header_to_pb(document: SessionDocument, export_time: float, out: pb.SessionDocument) -> None:
    """Everything of the document but its messages."""
    out.format_version = FORMAT_VERSION
    session_to_pb(document.session, out.session)
    timestamp(export_time, out.export_time)
    pending = document.session.pending
    if pending is not None:
        turn = out.pending_turn
        turn.turn_id = pending.turn_id
        turn.first_message_id = message_id(pending.first_seq)
        turn.rounds = pending.rounds
        for call in pending.calls:
            function_call_to_pb(call, turn.calls.add())
        for response in pending.answered:
            function_response_to_pb(response, turn.answered.add())


async def document_to_pb(
    document: SessionDocument, export_time: float, out: pb.SessionDocument
) -> None:
    header_to_pb(document, export_time, out)
    pacer = Pacer()
    add = out.messages.add
    for message in document.messages:
        message_to_pb(message, add())
        await pacer.tick()


async def document_parts(
    document: SessionDocument, export_time: float, part_bytes: int = PART_BYTES
) -> AsyncIterator[pb.SessionDocument]:
    """The document as StreamExportSession sends it: the header, then parts of messages."""
    header = pb.SessionDocument()
    header_to_pb(document, export_time, header)
    yield header
    pacer = Pacer()
    part = pb.SessionDocument()
    size = 0
    for message in document.messages:
        entry = part.messages.add()
        message_to_pb(message, entry)
        size += entry.ByteSize() + _ENTRY_OVERHEAD
        if size >= part_bytes:
            yield part
            part, size = pb.SessionDocument(), 0
        await pacer.tick()
    if size:
        yield part


def _pending_from_pb(document: pb.SessionDocument) -> PendingTurn | None:
    if not document.HasField("pending_turn"):
        return None
    turn = document.pending_turn
    return PendingTurn(
        turn_id=turn.turn_id,
        first_seq=parse_message_id("document.pending_turn.first_message_id", turn.first_message_id),
        rounds=turn.rounds,
        calls=tuple(
            function_call_from_pb(c, f"document.pending_turn.calls[{i}]")
            for i, c in enumerate(turn.calls)
        ),
        answered=tuple(
            function_response_from_pb(r, f"document.pending_turn.answered[{i}]")
            for i, r in enumerate(turn.answered)
        ),
    )


def header_from_pb(document: pb.SessionDocument, tenant: str) -> Session:
    """The session a document describes (its settings and pending turn), not yet stored."""
    if document.format_version != FORMAT_VERSION:
        raise InvalidArgument(
            "document.format_version",
            f"{document.format_version} is not a format this server reads ({FORMAT_VERSION})",
            reason="FORMAT_VERSION_UNSUPPORTED",
        )
    return Session(
        tenant=tenant,
        session_id=document.session.session_id,
        settings=settings_from_pb(document.session),
        create_time=0.0,
        update_time=0.0,
        pending=_pending_from_pb(document),
    )


async def messages_from_pb(
    messages: Sequence[content_pb2.Message], first_index: int, out: list[Message]
) -> None:
    """Appends the domain form of `messages`, the document's from `first_index` on."""
    pacer = Pacer()
    for i, message in enumerate(messages, first_index):
        out.append(message_from_pb(message, f"document.messages[{i}]", keep_ids=True))
        await pacer.tick()


async def document_from_pb(document: pb.SessionDocument, tenant: str) -> SessionDocument:
    session = header_from_pb(document, tenant)
    messages: list[Message] = []
    await messages_from_pb(document.messages, 0, messages)
    return SessionDocument(session, tuple(messages))


class DocumentAssembler:
    """Builds one SessionDocument from StreamImportSession's parts, converting each part's
    messages as it arrives so no part is kept in its wire form."""

    def __init__(self, tenant: str) -> None:
        self._tenant = tenant
        self._session: Session | None = None
        self._messages: list[Message] = []

    async def add(self, part: pb.SessionDocument) -> None:
        if self._session is None:
            self._session = header_from_pb(part, self._tenant)
        elif part.format_version or part.HasField("session") or part.HasField("pending_turn"):
            raise InvalidArgument(
                "document",
                "only the first request of the stream carries format_version, session and "
                "pending_turn; later requests carry only messages",
                reason="DOCUMENT_PART_INVALID",
            )
        await messages_from_pb(part.messages, len(self._messages), self._messages)

    def finish(self) -> SessionDocument:
        if self._session is None:
            raise InvalidArgument(
                "document", "is required: the stream sent no document", reason="DOCUMENT_MISSING"
            )
        return SessionDocument(self._session, tuple(self._messages))
