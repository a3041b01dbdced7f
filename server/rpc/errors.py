"""Domain errors as gRPC statuses (each error names its code), with google.rpc rich details."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

from server.sessions import errors

DOMAIN = "chatd"


STATUS_DETAILS_KEY = "grpc-status-details-bin"


def code_for(exc: errors.ChatdError) -> grpc.StatusCode:
    """The status code an error names (every ChatdError carries its code's name)."""
    return grpc.StatusCode[exc.code]


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def rich_status(code: grpc.StatusCode, message: str, exc: errors.ChatdError) -> status_pb2.Status:
    """A google.rpc.Status carrying ErrorInfo (reason `exc.reason`), plus BadRequest or
    RetryInfo where they apply."""
    numeric: int = code.value[0]
    status = status_pb2.Status(code=numeric, message=message)
    info = error_details_pb2.ErrorInfo(reason=exc.reason, domain=DOMAIN)
    if isinstance(exc, errors.ResourceExhausted) and exc.limit is not None:
        info.metadata["limit"], value = exc.limit
        info.metadata["limit_value"] = str(value)
    status.details.append(_pack(info))
    if isinstance(exc, errors.InvalidArgument):
        bad = error_details_pb2.BadRequest()
        for v in exc.violations:
            bad.field_violations.add(field=v.field, description=v.description)
        status.details.append(_pack(bad))
    if isinstance(exc, errors.ResourceExhausted) and exc.retry_after is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(round(exc.retry_after * 1e9))
        status.details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    return status


def trailing_metadata(status: status_pb2.Status) -> tuple[tuple[str, bytes], ...]:
    return ((STATUS_DETAILS_KEY, status.SerializeToString()),)
