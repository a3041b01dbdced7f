"""UpdateSession's field mask applied to a session's settings (AIP-134)."""

from __future__ import annotations

import re

from google.protobuf import field_mask_pb2

from chatd.v1 import chat_service_pb2 as pb
from chatd.v1 import session_pb2
from server.rpc.session_codec import session_to_pb, settings_from_pb
from server.sessions.errors import InvalidArgument
from server.sessions.history_ops import Etag
from server.sessions.model import Session, SessionSettings

UPDATABLE = (
    "model",
    "system_instruction",
    "generation_config",
    "tools",
    "function_declarations",
    "labels",
    "display_name",
    "context_policy",
    "safety_settings",
    "builtin_tools",
    "ttl",
    "expire_time",
)
# Values that only make sense whole: a mask path may not name a part of them.
_WHOLE = frozenset({"ttl", "expire_time"})
# W/"<version>-<uid>": the uid keeps an etag of one life of a session from matching
# the next one, whose versions start again at 1.
_ETAG = re.compile(r'W/"(\d{1,18})-([0-9a-f]{1,64})"')


def updated_settings(current: Session, request: pb.UpdateSessionRequest) -> SessionSettings:
    """`current`'s settings with the masked fields of request.session written over them.

    Without a mask, every field the request sets is written; "*" writes all of them.
    """
    paths = list(request.update_mask.paths)
    if not paths:
        paths = [f.name for f, _ in request.session.ListFields() if f.name in UPDATABLE]
        if not paths:
            raise InvalidArgument(
                "update_mask", "name the fields to update", reason="UPDATE_MASK_INVALID"
            )
    if "*" in paths:
        if paths != ["*"]:
            raise InvalidArgument(
                "update_mask",
                '"*" cannot be combined with other paths',
                reason="UPDATE_MASK_INVALID",
            )
        paths = list(UPDATABLE)
    for path in paths:
        head, _, rest = path.partition(".")
        if head not in UPDATABLE:
            raise InvalidArgument(
                "update_mask",
                f"{path[:64]!r} is not an updatable field; use: {', '.join(UPDATABLE)}",
                reason="UPDATE_MASK_INVALID",
            )
        if rest and head in _WHOLE:
            # A part of a time is no time: expire_time.nanos alone would set the
            # expiry to 1970 and end the session at once.
            raise InvalidArgument(
                "update_mask",
                f"{path[:64]!r}: {head} is updated whole; name {head!r}",
                reason="UPDATE_MASK_INVALID",
            )
    mask = field_mask_pb2.FieldMask(paths=paths)
    if not mask.IsValidForDescriptor(session_pb2.Session.DESCRIPTOR):
        raise InvalidArgument(
            "update_mask",
            f"{', '.join(paths)[:200]} names unknown fields",
            reason="UPDATE_MASK_INVALID",
        )
    merged = session_pb2.Session()
    session_to_pb(current, merged)
    mask.MergeMessage(
        request.session, merged, replace_message_field=True, replace_repeated_field=True
    )
    return settings_from_pb(merged)


def parse_etag(etag: str) -> Etag | None:
    """The session version and life an etag names (None when the caller sent none)."""
    if not etag:
        return None
    match = _ETAG.fullmatch(etag)
    if match is None:
        raise InvalidArgument(
            "etag", f"{etag[:64]!r} is not an etag returned by this server", reason="ETAG_INVALID"
        )
    return Etag(int(match[1]), match[2])
