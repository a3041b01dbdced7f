"""Connection options shared by the sync and asyncio clients: credentials and metadata."""

from __future__ import annotations

import grpc

Metadata = tuple[tuple[str, str], ...]

# Seconds a unary call may take unless the client is given another timeout.
DEFAULT_TIMEOUT = 30.0


def metadata(api_key: str | None) -> Metadata:
    """The per-call metadata: `authorization: Bearer <api_key>` when a key is given."""
    return (("authorization", f"Bearer {api_key}"),) if api_key else ()


def credentials(tls: bool, root_certificates: bytes | None) -> grpc.ChannelCredentials | None:
    """TLS credentials (verified against `root_certificates` PEM, else the system's roots),
    or None for a plaintext channel."""
    if not tls and root_certificates is None:
        return None
    return grpc.ssl_channel_credentials(root_certificates=root_certificates)
