"""Replies on the wire: stored event payloads and ReplyInfo.

A reply's events are stored as the StreamReplyResponse messages StreamReply sent, so a
resumed stream or GetReply returns them as they were first sent. A payload is one
format byte (1) and then, compressed with zlib (deflate, level 1), the messages one
after another, each preceded by its length as 4 bytes, big-endian. A reply repeats its
messages (each completed `message` event, then the final `reply` lists them all) and
text compresses well: a 50-word reply's payload shrinks about 6x, for about 7 us.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable, Sequence

from google.rpc import code_pb2

from chatd.v1 import chat_service_pb2 as pb
from server.rpc.content_codec import timestamp
from server.rpc.turn_codec import event_to_pb
from server.sessions.events import TurnEvent
from server.sessions.ports import ReplyEvents, ReplyRecord, ReplyState
from server.sessions.replies import retryable

_LENGTH = struct.Struct(">I")
_DEFLATE = b"\x01"

STATE_TO_PB = {
    ReplyState.RUNNING: pb.REPLY_STATE_RUNNING,
    ReplyState.AWAITING_TOOL_RESULTS: pb.REPLY_STATE_AWAITING_TOOL_RESULTS,
    ReplyState.COMPLETED: pb.REPLY_STATE_COMPLETED,
    ReplyState.FAILED: pb.REPLY_STATE_FAILED,
    ReplyState.CANCELLED: pb.REPLY_STATE_CANCELLED,
}


def encode_events(first_seq: int, events: Sequence[TurnEvent]) -> bytes:
    """The payload of events numbered first_seq, first_seq + 1, ... (see the module doc)."""
    out = bytearray()
    for seq, event in enumerate(events, first_seq):
        data = event_to_pb(event, seq).SerializeToString()
        out += _LENGTH.pack(len(data))
        out += data
    return _DEFLATE + zlib.compress(out, 1)


def decode_events(payloads: Iterable[ReplyEvents], after: int) -> list[pb.StreamReplyResponse]:
    """The events of stored payloads with a sequence number above `after`, in order."""
    out: list[pb.StreamReplyResponse] = []
    for chunk in payloads:
        if chunk.payload[:1] != _DEFLATE:
            raise ValueError(f"a stored reply payload of an unknown format {chunk.payload[:1]!r}")
        data = zlib.decompress(chunk.payload[1:])
        at = 0
        for seq in range(chunk.first_seq, chunk.last_seq + 1):
            (length,) = _LENGTH.unpack_from(data, at)
            at += _LENGTH.size
            if seq > after:
                out.append(pb.StreamReplyResponse.FromString(data[at : at + length]))
            at += length
    return out


def record_to_pb(record: ReplyRecord, out: pb.ReplyInfo) -> None:
    out.reply_id = record.reply_id
    out.session_id = record.session_id
    out.turn_id = record.turn_id
    out.state = STATE_TO_PB[record.state]
    out.request_id = record.request_id
    out.background = record.background
    timestamp(record.create_time, out.create_time)
    timestamp(record.update_time, out.update_time)
    out.last_sequence_number = record.last_seq
    if record.error is not None:
        error = record.error
        out.error.code = code_pb2.Code.Value(error.code)
        out.error.message = error.message
        out.error.reason = error.reason
        out.error.retryable = retryable(error)
