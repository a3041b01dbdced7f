"""Malformed request bytes: random, truncated or corrupted valid messages, bad UTF-8, wrong
wire types, lying lengths and nesting past protobuf's recursion limit."""

from __future__ import annotations

from hypothesis import strategies as st

from tests.reliability.fuzz_values import FD, Pools, Strategy, weighted
from tests.reliability.fuzzing import Method, deep_value, descriptor_of, messages


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _tag(number: int, wire_type: int) -> bytes:
    return _varint((number << 3) | wire_type)


def _string_fields(method: Method) -> list[int]:
    fields = method.request.DESCRIPTOR.fields
    return [f.number for f in fields if f.type == FD.TYPE_STRING] or [1]


def _message_fields(method: Method) -> list[int]:
    fields = method.request.DESCRIPTOR.fields
    return [f.number for f in fields if f.type == FD.TYPE_MESSAGE] or [1]


def malformed(method: Method, pools: Pools) -> Strategy[bytes]:
    """Bytes that are not a valid serialized request of `method`: random, truncated or
    corrupted valid messages, bad UTF-8, wrong wire types, lying lengths, deep nesting."""
    valid = messages(descriptor_of(method.request), pools).map(lambda m: m.SerializeToString())
    strings = st.sampled_from(_string_fields(method))
    nested = st.sampled_from(_message_fields(method))

    def truncate(data: bytes, at: int) -> bytes:
        return data[: at % len(data)] if data else b"\x0a"

    def flip(data: bytes, at: int, mask: int) -> bytes:
        if not data:
            return b"\xff"
        at %= len(data)
        return data[:at] + bytes([data[at] ^ mask]) + data[at + 1 :]

    def bad_utf8(number: int, junk: bytes) -> bytes:
        return _tag(number, 2) + _varint(len(junk)) + junk

    def wrong_wire(number: int, wire_type: int) -> bytes:
        return _tag(number, wire_type) + b"\x01\x02\x03\x04\x05\x06\x07\x08"

    def lying_length(number: int, claimed: int) -> bytes:
        return _tag(number, 2) + _varint(claimed) + b"abc"

    def deeply_nested(number: int, depth: int) -> bytes:
        data = deep_value(depth).SerializeToString()
        return _tag(number, 2) + _varint(len(data)) + data

    utf8_junk = st.sampled_from(
        [b"\xc3\x28", b"\xff", b"\xed\xa0\x80", b"a\x80b", b"\xf8\x88\x80\x80\x80"]
    )
    return weighted(
        (3, st.binary(min_size=1, max_size=128)),
        (4, st.builds(truncate, valid, st.integers(0, 10**6))),
        (3, st.builds(flip, valid, st.integers(0, 10**6), st.integers(1, 255))),
        (1, st.builds(lambda v, junk: v + junk, valid, st.binary(min_size=1, max_size=8))),
        (2, st.builds(bad_utf8, strings, utf8_junk)),
        (1, st.builds(wrong_wire, st.integers(1, 20), st.sampled_from([1, 3, 4, 5, 6, 7]))),
        (1, st.builds(lying_length, st.integers(1, 20), st.integers(4, 2**32))),
        (1, st.builds(deeply_nested, nested, st.integers(101, 200))),
    )
