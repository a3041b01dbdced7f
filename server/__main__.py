"""Command line: `chatd serve [flags]` (also `python -m server serve`)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable

import structlog

from server import config, logs
from server.startup import StartupError


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] != "serve":
        print("usage: chatd serve [--help] [flags]", file=sys.stderr)
        raise SystemExit(2)
    try:
        settings = config.load(args[1:])
    except config.SettingsError as exc:
        raise SystemExit(f"chatd: {exc}") from None
    # Before grpc is imported (server.app): its C-core's start-up lines are captured too.
    logs.configure(settings.log_format, settings.log_level, capture=True)
    from server import app

    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(app.serve(settings))
    except StartupError as exc:
        # The one place a start-up problem becomes an exit code: one record, no traceback.
        structlog.get_logger("chatd").error(
            "cannot start", path=exc.path, cause=exc.cause, fix=exc.fix
        )
        raise SystemExit(1) from None


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where it is installed: it makes the event loop's own work cheaper."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


if __name__ == "__main__":
    main()
