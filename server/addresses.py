"""host:port listen addresses, parsed in one place for every listener and check."""

from __future__ import annotations

from typing import NamedTuple


class HostPort(NamedTuple):
    """A listen address: `host` without brackets ("::1", "127.0.0.1", "localhost", or
    "" for a bare ":port"), `port` 0-65535 (0 asks the system for a free one)."""

    host: str
    port: int

    @property
    def ipv6(self) -> bool:
        """Whether `host` is an IPv6 address (it holds a colon)."""
        return ":" in self.host


def parse_host_port(address: str) -> HostPort:
    """`address` as "host:port" or "[v6 host]:port"; ValueError naming it when it is not.

    The port must be decimal digits up to 65535; an IPv6 host must be bracketed; no
    whitespace anywhere. The host may only be empty where the caller allows it (see
    `require_host`)."""
    host, sep, port = address.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    if bracketed:
        host = host[1:-1]
    if (
        not sep
        or not port.isdigit()
        or int(port) > 65535
        or (":" in host and not bracketed)  # "::1:50051" is ambiguous: write [::1]:50051
        or any(c.isspace() or c in "[]" for c in host)
    ):
        raise ValueError(f"{address!r} is not host:port")
    return HostPort(host, int(port))


def require_host(address: str) -> HostPort:
    """As parse_host_port, and the host must be given."""
    parsed = parse_host_port(address)
    if not parsed.host:
        raise ValueError(f"{address!r} has no host")
    return parsed
