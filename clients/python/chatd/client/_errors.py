"""Rich error details: chatd sends a google.rpc.Status in `grpc-status-details-bin`."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2, status_pb2

STATUS_DETAILS_KEY = "grpc-status-details-bin"


def error_details(
    error: grpc.RpcError,
) -> tuple[error_details_pb2.ErrorInfo | None, error_details_pb2.BadRequest | None]:
    """The `ErrorInfo` and `BadRequest` of a failed call (sync or asyncio), each None when
    the status carries none.

    `ErrorInfo.reason` is chatd's machine-readable reason (for example `ID_MALFORMED`, see
    docs/errors.md) and `ErrorInfo.domain` is "chatd"; `BadRequest.field_violations` name
    the request fields at fault (INVALID_ARGUMENT only). Raises
    `google.protobuf.message.DecodeError` if the trailer is not a google.rpc.Status.
    """
    trailing = getattr(error, "trailing_metadata", None)
    entries = trailing() if callable(trailing) else None
    info: error_details_pb2.ErrorInfo | None = None
    bad: error_details_pb2.BadRequest | None = None
    for key, value in entries or ():
        if key != STATUS_DETAILS_KEY:
            continue
        status = status_pb2.Status.FromString(value if isinstance(value, bytes) else b"")
        for detail in status.details:
            if info is None and detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
            elif bad is None and detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
    return info, bad
