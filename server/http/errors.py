"""chatd's errors as Connect errors: the same code, message and google.rpc details
(ErrorInfo, BadRequest, RetryInfo) as the gRPC edge's grpc-status-details-bin.

Connect's error JSON carries each detail as {"type", "value" (base64 of the message), "debug"
(the message as JSON)} (https://connectrpc.com/docs/protocol/#error-end-stream); connectrpc
writes "debug" only for details given as its own protobuf-py messages, so the google.rpc
messages are turned into those through a registry built from their descriptors.
"""

from __future__ import annotations

import base64
from typing import Any

import grpc
from connectrpc.code import Code
from connectrpc.errors import ConnectError, ErrorDetail
from google.protobuf import descriptor_pb2, duration_pb2
from google.rpc import error_details_pb2
from protobuf import message_to_json_value
from protobuf.wkt import Any as AnyMessage
from protobuf.wkt import FileDescriptorSet

from server.rpc.errors import code_for, rich_status
from server.sessions.errors import ChatdError


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def _json_names(message: descriptor_pb2.DescriptorProto) -> None:
    # CopyToProto leaves json_name out (protoc fills it in); protobuf-py's JSON needs it.
    for field in message.field:
        field.json_name = field.json_name or _camel(field.name)
    for nested in message.nested_type:
        _json_names(nested)


def _registry() -> Any:
    files = descriptor_pb2.FileDescriptorSet()
    for file in (duration_pb2.DESCRIPTOR, error_details_pb2.DESCRIPTOR):
        proto = files.file.add()
        file.CopyToProto(proto)
        for message in proto.message_type:
            _json_names(message)
    return FileDescriptorSet.from_binary(files.SerializeToString()).to_registry()


_DETAILS = _registry()

# grpc.StatusCode names and Connect codes are the same codes (Connect spells one CANCELED).
_TO_CONNECT = {
    status.name: Code[status.name] for status in grpc.StatusCode if status.name in Code.__members__
}
_TO_CONNECT["CANCELLED"] = Code.CANCELED
_FROM_CONNECT = {code: name for name, code in _TO_CONNECT.items()}


def status_name(code: Code) -> str:
    """The grpc.StatusCode name of a Connect code ("canceled" -> "CANCELLED")."""
    return _FROM_CONNECT[code]


def connect_error(exc: ChatdError) -> ConnectError:
    """`exc` as a ConnectError with the gRPC edge's rich details."""
    code = code_for(exc)
    status = rich_status(code, exc.message, exc)
    details: list[ErrorDetail] = []
    for packed in status.details:
        wire = AnyMessage(type_url=packed.type_url, value=packed.value)
        desc = _DETAILS.message(packed.type_url.rpartition("/")[2])
        message = wire.unpack(desc) if desc is not None else None
        details.append(ErrorDetail(message if message is not None else wire))
    return ConnectError(_TO_CONNECT[code.name], exc.message, details)


def error_json(error: ConnectError) -> dict[str, Any]:
    """Connect's error JSON for `error`: {"code", "message", "details": [{"type", "value",
    "debug"}]}, as the newline-delimited JSON streams end with it."""
    out: dict[str, Any] = {"code": error.code.value, "message": error.message}
    details = []
    for detail in error.details:
        item: dict[str, Any] = {
            "type": detail.type_name,
            "value": base64.b64encode(detail.message_bytes).decode().rstrip("="),
        }
        value = detail.value()
        if value is not None:
            item["debug"] = message_to_json_value(value)
        details.append(item)
    if details:
        out["details"] = details
    return out
