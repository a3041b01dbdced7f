"""Command line: `chatd serve | health | version` (also `python -m server ...`).

`chatd --help` lists the commands, `chatd COMMAND --help` their flags.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable
from importlib import metadata

import structlog

from server import config, logs
from server.startup import StartupError

# The service `chatd health` asks about (server.app.SERVICE_NAME, spelled out so that the
# command line does not import grpc before logging captures its output).
CHAT_SERVICE = "chatd.v1.ChatService"


def version() -> str:
    """The installed distribution's version (pyproject.toml's `version`)."""
    try:
        return metadata.version("chatd")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def parser() -> argparse.ArgumentParser:
    """The whole command line: one subparser per command."""
    top = argparse.ArgumentParser(
        prog="chatd",
        description="chatd: durable multi-turn Gemini chat sessions as a gRPC service.",
        epilog="Run `chatd COMMAND --help` for a command's flags and their defaults.",
    )
    top.add_argument("--version", action="version", version=f"chatd {version()}")
    commands = top.add_subparsers(dest="command", metavar="COMMAND", required=True)
    serve = commands.add_parser(
        "serve",
        help="run the gRPC server (flags, or their CHATD_* environment variables)",
        description="Run the chatd gRPC server.",
    )
    config.add_serve_arguments(serve)
    health = commands.add_parser(
        "health",
        help="ask a running chatd whether it is SERVING (exit 0) or not (exit 1)",
        description=(
            "Ask the chatd that the same settings describe (CHATD_LISTEN, CHATD_TLS_CERT, "
            "CHATD_TLS_CLIENT_CA) over grpc.health.v1 whether it is SERVING: exit 0 if so, "
            "else exit 1 with a one-line reason. Made for container health checks."
        ),
    )
    health.add_argument(
        "--address",
        default="",
        help="host:port to ask (default: CHATD_LISTEN, with 0.0.0.0 or :: as loopback)",
    )
    health.add_argument(
        "--service",
        default=CHAT_SERVICE,
        help="service to check, '' for the whole server (default: %(default)s)",
    )
    health.add_argument(
        "--timeout", type=float, default=3.0, help="seconds to wait (default: %(default)s)"
    )
    health.add_argument(
        "--ca-cert",
        default="",
        help="PEM roots to trust (default: CHATD_TLS_CERT itself, when TLS is on)",
    )
    health.add_argument(
        "--server-name",
        default="",
        help="name the server certificate must hold (default: the address's host)",
    )
    health.add_argument("--client-cert", default="", help="client certificate, for mutual TLS")
    health.add_argument("--client-key", default="", help="client private key, for mutual TLS")
    commands.add_parser("version", help="print the version", description="Print the version.")
    return top


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.command == "version":
        print(f"chatd {version()}")
    elif args.command == "health":
        raise SystemExit(_health(args))
    else:
        _serve(args)


def _serve(args: argparse.Namespace) -> None:
    try:
        settings = config.from_arguments(args)
    except config.SettingsError as exc:
        # A refused setting is a usage error, as argparse's own (exit 2).
        print(f"chatd: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    # Before grpc is imported (server.app): its C-core's start-up lines are captured too.
    logs.configure(settings.log_format, settings.log_level, capture=True)
    log = structlog.get_logger("chatd")
    for name, closest in config.unknown_variables(os.environ):
        hint = f"did you mean {closest}?" if closest else "see `chatd serve --help`"
        log.warning("unknown setting ignored", variable=name, hint=hint)
    from server import app

    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(app.serve(settings))
    except StartupError as exc:
        # The one place a start-up problem becomes an exit code: one record, no traceback.
        log.error("cannot start", path=exc.path, cause=exc.cause, fix=exc.fix)
        raise SystemExit(1) from None


def _health(args: argparse.Namespace) -> int:
    # Imported here: `serve` never needs the synchronous grpc client.
    from server.healthcheck import Probe, ProbeError, check

    try:
        settings = config.read(argparse.Namespace())
        probe = Probe(
            address=args.address,
            service=args.service,
            timeout=args.timeout,
            ca_cert=args.ca_cert,
            server_name=args.server_name,
            client_cert=args.client_cert,
            client_key=args.client_key,
        )
        ok, line = check(settings, probe)
    except (config.SettingsError, ProbeError) as exc:
        ok, line = False, f"cannot check: {exc}"
    print(f"chatd health: {line}", file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where it is installed: it makes the event loop's own work cheaper."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


if __name__ == "__main__":
    main()
