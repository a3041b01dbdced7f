"""Domain errors as gRPC statuses (each error names its code), with google.rpc rich details.

The details travel as gRPC's richer error model
(https://grpc.io/docs/guides/error/#richer-error-model): a google.rpc.Status in the
`grpc-status-details-bin` trailer, whose code and message repeat the call's. grpcio-status
(`grpc_status.rpc_status.to_status`) builds that trailer and the grpc.Status a handler aborts
with; what stays here is chatd's own part, which details an error carries.
"""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from server.sessions import errors

DOMAIN = "chatd"


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


def grpc_status(exc: errors.ChatdError, *trailers: tuple[str, str | bytes]) -> grpc.Status:
    """The grpc.Status to end a call with for `exc` (ServicerContext.abort_with_status): its
    code and message, and trailing metadata of `grpc-status-details-bin` (rich_status,
    serialized) followed by `trailers`.

    Aborting replaces whatever trailing metadata the call had set, so trailers it must keep
    (its request id) are passed here.
    """
    status = rpc_status.to_status(rich_status(code_for(exc), exc.message, exc))
    if not trailers:
        return status  # type: ignore[no-any-return]
    # to_status returns a namedtuple (code, details, trailing_metadata).
    return status._replace(  # type: ignore[no-any-return]
        trailing_metadata=(*status.trailing_metadata, *trailers)
    )
