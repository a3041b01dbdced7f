"""`chatd health`: asks a running chatd over grpc.health.v1 whether it is SERVING.

It reads the server's own settings (CHATD_LISTEN, CHATD_TLS_CERT, CHATD_TLS_CLIENT_CA), so a
container's HEALTHCHECK needs no address or certificate of its own. Health is open to
every caller (no API key, server.rpc.interceptors.OPEN_SERVICES).
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.config import Settings

# What chatd reports SERVING for besides "" (server.app.SERVICE_NAME).
DEFAULT_SERVICE = "chatd.v1.ChatService"
_WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1", "[::]": "[::1]", "": "127.0.0.1"}


class ProbeError(Exception):
    """The probe cannot be made as configured (e.g. a port chosen at random); the message
    is the one-line reason."""


@dataclass(frozen=True, slots=True)
class Probe:
    """What `chatd health` connects to and how. Empty strings take the defaults below."""

    address: str = ""  # host:port; default: CHATD_LISTEN, a wildcard host as loopback
    service: str = DEFAULT_SERVICE
    timeout: float = 3.0  # seconds for the whole check
    ca_cert: str = ""  # PEM roots; default: CHATD_TLS_CERT itself when TLS is on
    server_name: str = ""  # the name the certificate must hold; default: the address's host
    client_cert: str = ""  # for mutual TLS (CHATD_TLS_CLIENT_CA set)
    client_key: str = ""


def target(settings: Settings, probe: Probe) -> str:
    """The address to dial: `probe.address`, or CHATD_LISTEN with a wildcard host
    (0.0.0.0, ::) replaced by loopback. Raises ProbeError for port 0."""
    if probe.address:
        return probe.address
    host, _, port = settings.listen.rpartition(":")
    if port == "0":
        raise ProbeError(
            f"CHATD_LISTEN={settings.listen} picks a free port at start: pass --address"
        )
    return f"{_WILDCARDS.get(host, host)}:{port}"


def check(settings: Settings, probe: Probe) -> tuple[bool, str]:
    """(True, line) when the server at `target` answers SERVING for `probe.service`, else
    (False, line) with the reason in one line: unreachable, TLS refused, NOT_SERVING, the
    service unknown, or no answer within `probe.timeout` seconds. Raises ProbeError when
    the probe cannot be configured (files unreadable, mutual TLS without a client pair)."""
    address = target(settings, probe)
    with _channel(settings, probe, address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(
                health_pb2.HealthCheckRequest(service=probe.service), timeout=probe.timeout
            )
        except grpc.RpcError as exc:
            code: grpc.StatusCode = exc.code()
            details = " ".join(str(exc.details() or "").split())
            if code == grpc.StatusCode.NOT_FOUND:
                return False, f"{address}: service {probe.service!r} is unknown to the server"
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                return False, f"{address}: no answer within {probe.timeout:g}s"
            return False, f"{address}: {code.name}: {details}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    served = probe.service or "the server"
    if reply.status == health_pb2.HealthCheckResponse.SERVING:
        return True, f"{address}: {served} is SERVING"
    return False, f"{address}: {served} is {status} (shutting down, or not started)"


def _channel(settings: Settings, probe: Probe, address: str) -> grpc.Channel:
    if not settings.tls_cert:
        return grpc.insecure_channel(address)
    if settings.tls_client_ca and not (probe.client_cert and probe.client_key):
        raise ProbeError(
            "mutual TLS is on (CHATD_TLS_CLIENT_CA): pass --client-cert and --client-key"
        )
    # The server's own chain is a trust root that always fits its certificate.
    roots = _read(probe.ca_cert or settings.tls_cert, "--ca-cert or CHATD_TLS_CERT")
    pair: tuple[bytes | None, bytes | None] = (None, None)
    if probe.client_cert:
        pair = (
            _read(probe.client_key, "--client-key"),
            _read(probe.client_cert, "--client-cert"),
        )
    credentials = grpc.ssl_channel_credentials(roots, *pair)
    options = []
    if probe.server_name:
        options.append(("grpc.ssl_target_name_override", probe.server_name))
    return grpc.secure_channel(address, credentials, options)


def _read(path: str, source: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as exc:
        raise ProbeError(f"cannot read {path} ({source}): {exc.strerror}") from exc
