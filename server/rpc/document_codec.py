"""SessionDocument <-> domain: ExportSession's output and ImportSession's input, losslessly."""

from __future__ import annotations

from chatd.v1 import session_pb2 as pb
from server.rpc.content_codec import (
    function_call_from_pb,
    function_call_to_pb,
    function_response_from_pb,
    function_response_to_pb,
    message_from_pb,
    messages_to_pb,
    timestamp,
)
from server.rpc.session_codec import session_to_pb, settings_from_pb
from server.sessions.errors import InvalidArgument
from server.sessions.history_ops import SessionDocument
from server.sessions.ids import message_id, parse_message_id
from server.sessions.model import PendingTurn, Session

FORMAT_VERSION = 1


def document_to_pb(document: SessionDocument, export_time: float, out: pb.SessionDocument) -> None:
    out.format_version = FORMAT_VERSION
    session_to_pb(document.session, out.session)
    messages_to_pb(document.messages, out.messages)
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


def document_from_pb(document: pb.SessionDocument, tenant: str) -> SessionDocument:
    if document.format_version != FORMAT_VERSION:
        raise InvalidArgument(
            "document.format_version",
            f"{document.format_version} is not a format this server reads ({FORMAT_VERSION})",
        )
    messages = tuple(
        message_from_pb(m, f"document.messages[{i}]", keep_ids=True)
        for i, m in enumerate(document.messages)
    )
    pending = None
    if document.HasField("pending_turn"):
        turn = document.pending_turn
        pending = PendingTurn(
            turn_id=turn.turn_id,
            first_seq=parse_message_id(
                "document.pending_turn.first_message_id", turn.first_message_id
            ),
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
    session = Session(
        tenant=tenant,
        session_id=document.session.session_id,
        settings=settings_from_pb(document.session),
        create_time=0.0,
        update_time=0.0,
        pending=pending,
    )
    return SessionDocument(session, messages)
