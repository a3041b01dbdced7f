"""Hypothesis strategies for every RPC's request, built from the generated descriptors, and
`draw`/`spread`, which collect examples without running a hypothesis test."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from itertools import zip_longest
from typing import Any, cast

from google.protobuf import descriptor as d
from google.protobuf import message as pbmessage
from google.protobuf import message_factory, struct_pb2
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from chatd.v1 import chat_service_pb2, content_pb2, session_pb2
from tests.reliability.fuzz_values import (
    FD,
    Pools,
    Strategy,
    deep_json,
    json_values,
    scalar,
    weighted,
)


@dataclass(frozen=True)
class Method:
    """One RPC: its full path, request and response classes and whether the server streams
    the response."""

    path: str
    request: type[pbmessage.Message]
    response: type[pbmessage.Message]
    streaming: bool
    endless: bool = False  # health Watch never ends by itself


def methods() -> list[Method]:
    """Every ChatService RPC plus the health service's, from the descriptors."""
    found: list[Method] = []
    services = [
        chat_service_pb2.DESCRIPTOR.services_by_name["ChatService"],
        health_pb2.DESCRIPTOR.services_by_name["Health"],
    ]
    for service in services:
        for rpc in service.methods:
            found.append(
                Method(
                    f"/{service.full_name}/{rpc.name}",
                    message_factory.GetMessageClass(rpc.input_type),
                    message_factory.GetMessageClass(rpc.output_type),
                    rpc.server_streaming,
                    endless=rpc.name == "Watch",
                )
            )
    return found


MAX_DEPTH = 4


def descriptor_of(cls: type[pbmessage.Message] | pbmessage.Message) -> d.Descriptor:
    """The message's descriptor (protobuf's stubs also name the C implementation's type,
    which has the same API)."""
    return cast(d.Descriptor, cls.DESCRIPTOR)


def _message_type(field: d.FieldDescriptor) -> d.Descriptor:
    """The descriptor of a message-typed field's message."""
    assert field.message_type is not None, field.full_name
    return field.message_type


def _struct(value: dict[str, Any]) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(value)
    return message


def _value(value: Any) -> struct_pb2.Value:
    message = struct_pb2.Value()
    struct = struct_pb2.Struct()
    struct.update({"v": value})
    message.CopyFrom(struct.fields["v"])
    return message


def deep_value(depth: int) -> struct_pb2.Value:
    """A google.protobuf.Value nested `depth` lists deep (past protobuf's recursion limit)."""
    value = struct_pb2.Value(string_value="bottom")
    for _ in range(depth):
        outer = struct_pb2.Value()
        outer.list_value.values.add().CopyFrom(value)
        value = outer
    return value


def _build(cls: type[pbmessage.Message], values: dict[str, Any]) -> pbmessage.Message:
    """A `cls` with `values` set; a value too deep to fit where it goes (protobuf's own
    recursion limit, which the malformed tier covers) is left out."""
    message = cls()
    for name, value in values.items():
        try:
            _set(message, name, value)
        except DecodeError:
            message.ClearField(name)
    return message


def _set(message: pbmessage.Message, name: str, value: Any) -> None:
    field = descriptor_of(message).fields_by_name[name]
    target = getattr(message, name)
    if _is_map(field):
        value_field = _message_type(field).fields_by_name["value"]
        for key, item in value.items():
            if value_field.type == FD.TYPE_MESSAGE:
                target[key].CopyFrom(item)
            else:
                target[key] = item
    elif field.is_repeated:
        target.extend(value)
    elif field.type == FD.TYPE_MESSAGE:
        target.CopyFrom(value)
    else:
        setattr(message, name, value)


def _is_map(field: d.FieldDescriptor) -> bool:
    return (
        field.type == FD.TYPE_MESSAGE
        and field.is_repeated
        and _message_type(field).GetOptions().map_entry
    )


def messages(descriptor: d.Descriptor, pools: Pools, depth: int = 0) -> Strategy[Any]:
    """Messages of `descriptor`: any subset of fields set, each to a fuzzed value."""
    return _messages(descriptor.full_name, descriptor, pools, depth)


def _kindless_inside(value: Any) -> struct_pb2.Value:
    """`value` as a Value with a Value of no kind set added at its innermost container."""
    message = _value(value)
    inner = message
    while True:
        kind = inner.WhichOneof("kind")
        if kind == "struct_value" and inner.struct_value.fields:
            inner = next(iter(inner.struct_value.fields.values()))
        elif kind == "list_value" and inner.list_value.values:
            inner = inner.list_value.values[0]
        else:
            break
    if inner.WhichOneof("kind") == "list_value":
        inner.list_value.values.add()
    else:
        inner.struct_value.fields["unset"].Clear()
    return message


def _struct_of(value: struct_pb2.Value) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.fields["a"].CopyFrom(value)
    return message


@cache
def _json_values() -> Strategy[Any]:
    """Values: plain JSON, JSON nested around chatd's limit, and Values with no kind set at
    the top or deep inside."""
    return weighted(
        (5, json_values().map(_value)),
        (1, st.just(struct_pb2.Value())),
        (2, deep_json().map(_value)),
        (1, deep_json(26).map(_kindless_inside)),
    )


@cache
def _json_structs() -> Strategy[Any]:
    plain = st.dictionaries(st.text(max_size=8), json_values(), max_size=5).map(_struct)
    return weighted((5, plain), (2, _json_values().map(_struct_of)))


def _messages(name: str, descriptor: d.Descriptor, pools: Pools, depth: int) -> Strategy[Any]:
    cls = message_factory.GetMessageClass(descriptor)
    if name == "google.protobuf.Struct":
        return _json_structs()
    if name == "google.protobuf.Value":
        return _json_values()
    optional: dict[str, Strategy[Any]] = {}
    for field in descriptor.fields:
        strategy = _field_values(field, pools, depth)
        if strategy is not None:
            optional[field.name] = strategy
    return st.fixed_dictionaries({}, optional=optional).map(lambda values: _build(cls, values))


def _field_values(field: d.FieldDescriptor, pools: Pools, depth: int) -> Strategy[Any] | None:
    if _is_map(field):
        entry = _message_type(field)
        keys = scalar(entry.fields_by_name["key"], pools)
        value_field = entry.fields_by_name["value"]
        values = _single(value_field, pools, depth + 1)
        if values is None:
            return None
        small = st.dictionaries(keys, values, max_size=4)
        many = st.dictionaries(st.text(min_size=1, max_size=6), values, min_size=60, max_size=80)
        return weighted((6, small), (1, many))
    single = _single(field, pools, depth)
    if single is None:
        return None
    if not field.is_repeated:
        return single
    repeated = st.builds(lambda item, n: [item] * n, single, st.integers(60, 130))
    return weighted((8, st.lists(single, max_size=3)), (1, repeated))


def _single(field: d.FieldDescriptor, pools: Pools, depth: int) -> Strategy[Any] | None:
    if field.type != FD.TYPE_MESSAGE:
        return scalar(field, pools)
    if depth >= MAX_DEPTH:
        return None
    return messages(_message_type(field), pools, depth + 1)


MAX_REQUEST_BYTES = 10 * 1024 * 1024  # a little past the server's 8 MiB limit


def requests(method: Method, pools: Pools) -> Strategy[Any]:
    """Request messages of `method` (none far past the server's size limit); ImportSession
    also gets real exported documents with fuzzed messages and settings, which get past the
    message-id checks that random documents never pass."""
    fuzzed = messages(descriptor_of(method.request), pools)
    if method.request is chat_service_pb2.ImportSessionRequest and pools.documents:
        fuzzed = weighted((1, fuzzed), (2, _imports(pools)))
    return fuzzed.filter(lambda r: r.ByteSize() <= MAX_REQUEST_BYTES)


def _imports(pools: Pools) -> Strategy[Any]:
    def build(
        raw: bytes, index: int, message: Any, session: Any, session_id: str
    ) -> chat_service_pb2.ImportSessionRequest:
        document = session_pb2.SessionDocument.FromString(raw)
        if document.messages:
            target = document.messages[index % len(document.messages)]
            kept = target.message_id
            target.MergeFrom(message)
            target.message_id = kept
        document.session.MergeFrom(session)
        try:
            return chat_service_pb2.ImportSessionRequest(document=document, session_id=session_id)
        except DecodeError:
            # The fuzzed message nests past protobuf's own limit, so the request cannot even
            # be built (the copy re-parses it): import the document as exported instead.
            exported = session_pb2.SessionDocument.FromString(raw)
            return chat_service_pb2.ImportSessionRequest(document=exported, session_id=session_id)

    return st.builds(
        build,
        st.sampled_from(list(pools.documents)),
        st.integers(0, 1000),
        messages(content_pb2.Message.DESCRIPTOR, pools),
        messages(session_pb2.Session.DESCRIPTOR, pools),
        st.from_regex(r"imp-[a-z0-9]{1,12}", fullmatch=True),
    )


def spread(
    all_methods: Sequence[Method],
    strategy: Callable[[Method], Strategy[Any]],
    total: int,
    seed_value: int,
) -> list[tuple[Method, Any]]:
    """About `total` examples, the same number for every method, methods interleaved,
    reproducible from `seed_value`."""
    per_method = -(-total // len(all_methods))
    groups = [
        [(method, example) for example in draw(strategy(method), per_method, seed_value + i)]
        for i, method in enumerate(all_methods)
    ]
    interleaved = [case for row in zip_longest(*groups) for case in row if case is not None]
    return interleaved[:total]


def draw(strategy: Strategy[Any], count: int, seed_value: int) -> list[Any]:
    """`count` examples of `strategy` from hypothesis's generation phase (no test, no
    shrinking), reproducible from `seed_value`; a small space's examples are repeated."""
    found: list[Any] = []
    attempt = 0
    while len(found) < count and attempt < 20:

        @seed(seed_value + attempt)
        @settings(
            max_examples=count - len(found),
            phases=[Phase.generate],
            database=None,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(strategy)
        def collect(example: Any) -> None:
            found.append(example)

        collect()
        attempt += 1
    while found and len(found) < count:
        found += found[: count - len(found)]
    return found[:count]
