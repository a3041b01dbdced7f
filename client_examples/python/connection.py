"""Connection options shared by the chatd examples: address, API key and TLS.

Every example accepts the same flags (each also read from the environment):

    --address HOST:PORT   chatd's address (CHATD_ADDRESS, default 127.0.0.1:50051)
    --api-key KEY         sent as `authorization: Bearer KEY` (CHATD_API_KEY)
    --tls                 use TLS instead of plaintext
    --ca-cert FILE        PEM roots to verify the server with (default: the system's)

The stubs import as `chatd.v1`: install chatd (`pip install -e .` in the repository) or
put its `generated/` directory on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import grpc

DEFAULT_ADDRESS = "127.0.0.1:50051"
# Seconds a unary call may take. A turn waits for the model, so give it room.
TIMEOUT = 120.0

Metadata = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Connection:
    """Where chatd is and how to authenticate to it."""

    address: str = DEFAULT_ADDRESS
    api_key: str = ""
    tls: bool = False
    ca_cert: Path | None = None

    @property
    def metadata(self) -> Metadata:
        """Metadata to send with every call: the API key, when there is one."""
        return (("authorization", f"Bearer {self.api_key}"),) if self.api_key else ()

    def credentials(self) -> grpc.ChannelCredentials:
        roots = self.ca_cert.read_bytes() if self.ca_cert else None
        return grpc.ssl_channel_credentials(root_certificates=roots)

    def channel(self) -> grpc.Channel:
        """A synchronous channel; close it (or use it in a `with` block) when done."""
        if self.tls:
            return grpc.secure_channel(self.address, self.credentials())
        return grpc.insecure_channel(self.address)

    def aio_channel(self) -> grpc.aio.Channel:
        """An asyncio channel; `async with` it, or `await channel.close()`."""
        if self.tls:
            return grpc.aio.secure_channel(self.address, self.credentials())
        return grpc.aio.insecure_channel(self.address)


def argument_parser(description: str | None) -> argparse.ArgumentParser:
    """A parser with the connection flags; add the example's own arguments to it."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    env = os.environ.get
    parser.add_argument(
        "--address",
        default=env("CHATD_ADDRESS", DEFAULT_ADDRESS),
        help="chatd address (env CHATD_ADDRESS, default %(default)s)",
    )
    parser.add_argument(
        "--api-key",
        default=env("CHATD_API_KEY", ""),
        help="API key, sent as 'authorization: Bearer KEY' (env CHATD_API_KEY)",
    )
    parser.add_argument("--tls", action="store_true", help="connect with TLS")
    parser.add_argument("--ca-cert", type=Path, help="PEM file of the CA that signed the server")
    return parser


def connection(args: argparse.Namespace) -> Connection:
    """The Connection the parsed flags describe."""
    return Connection(
        address=args.address,
        api_key=args.api_key,
        tls=args.tls or args.ca_cert is not None,
        ca_cert=args.ca_cert,
    )


def report(error: grpc.RpcError) -> int:
    """Prints a failed call's status code and details to stderr; returns the exit code."""
    code = error.code()
    name = code.name if code is not None else "UNKNOWN"
    sys.stdout.flush()  # keep the error after what was printed before it
    print(f"error: the call failed with {name}: {error.details()}", file=sys.stderr)
    return 1
