"""host:port listen addresses: one parser for every listener and check."""

from __future__ import annotations

import pytest

from server.addresses import HostPort, parse_host_port, require_host


def test_listen_addresses_parse_as_host_and_port() -> None:
    assert require_host("127.0.0.1:9464") == HostPort("127.0.0.1", 9464)
    assert require_host("[::1]:0") == HostPort("::1", 0)
    assert require_host("[::1]:0").ipv6
    assert parse_host_port(":50051") == HostPort("", 50051)


@pytest.mark.parametrize(
    "bad",
    [
        "9464",
        "host:",
        "host:99999",
        "host:http",
        "::1:50051",
        " 127.0.0.1:1",
        "127.0.0.1:1 ",
        "127.0.0.1:1\n",
        "[::1:1",
        "a b:1",
    ],
)
def test_malformed_addresses_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="host:port"):
        parse_host_port(bad)


def test_a_host_is_required_where_the_caller_says_so() -> None:
    with pytest.raises(ValueError, match="no host"):
        require_host(":9464")
