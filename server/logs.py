"""structlog setup: JSON lines when not on a terminal, readable lines on one.

Everything the process prints comes out in that one format:
- chatd's own records go through structlog, written to the real stderr;
- stdlib `logging` records (libraries, asyncio, the OpenTelemetry SDK) and Python
  warnings (`logging.captureWarnings`) go through a handler that re-emits them through
  structlog, as do uncaught exceptions in the main thread and in other threads;
- with `capture=True` (`chatd serve`), file descriptors 1 and 2 become pipes into a
  small process forked for it, the relay (server.logs_relay), which writes every line as
  a record to the real stderr: grpc's C-core writes its log lines straight to fd 2 (format
  "I1130 13:54:57.844285   19394 trace.cc:91] message", the level by its first letter),
  and anything else written to stdout or stderr (print, a traceback, faulthandler's dump
  of a crash, which is enabled onto fd 2) is caught the same way. A Python traceback or a
  "Fatal Python error" dump written as text is kept together as one record.

Why a process and not a thread: grpc's Cython code writes C-core lines holding the GIL,
so once a pipe is full the writer waits for a reader that needs the GIL (a deadlock); a
reader inside chatd also dies with it, losing a crash's last lines, and children that
inherited the pipes would die of SIGPIPE after chatd exits. The relay ignores SIGINT,
SIGTERM and SIGHUP, drains the pipes until every writer has closed them (chatd and any
child), then exits. At exit chatd waits until the relay has written out everything chatd
wrote before (`flush`), for at most FLUSH_TIMEOUT seconds; it never waits for the relay
to exit, so a child still holding the pipes does not hold chatd's exit.

A record logged with an exception carries its message in `error` ("ValueError: bad"),
beside the formatted traceback in `exception`.
"""

from __future__ import annotations

import atexit
import contextlib
import faulthandler
import logging
import os
import select
import sys
import threading
import time
import uuid
from types import TracebackType
from typing import Any, TextIO

import structlog
from structlog.types import EventDict, ExcInfo, WrappedLogger

LEVELS = logging.getLevelNamesMapping()
# Seconds `chatd serve` waits at exit for the relay to catch up.
FLUSH_TIMEOUT = 5.0


def _exc_info(value: object) -> ExcInfo | None:
    if value is True:
        info = sys.exc_info()
        return None if info[0] is None else info
    if isinstance(value, BaseException):
        return (type(value), value, value.__traceback__)
    if isinstance(value, tuple) and len(value) == 3 and value[0] is not None:
        return value
    return None


def add_error_message(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    """Sets `error` to "Type: message" of a record's exception, so that the line says
    what went wrong without reading its traceback."""
    if "error" not in event:
        info = _exc_info(event.get("exc_info"))
        if info is not None:
            kind, exc, _tb = info
            message = str(exc)
            event["error"] = f"{kind.__qualname__}: {message}" if message else kind.__qualname__
    return event


def _processors(as_json: bool, colors: bool) -> list[structlog.types.Processor]:
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(colors=colors)
    )
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        add_error_message,
        structlog.processors.format_exc_info,
        renderer,
    ]


class _Capture:
    """fd 1 and fd 2 redirected into pipes read by the relay process (server.logs_relay)."""

    def __init__(self, log_format: str, colors: bool) -> None:
        self._format = log_format
        self._colors = colors
        self._marker = f"chatd-log-flush-{uuid.uuid4().hex}"
        self._ack = -1
        self._unacked = 0
        self._lock = threading.Lock()

    def start(self) -> str:
        """Forks the relay and hands it fds 1 and 2; "" once done, else why not.

        A fork without exec: the relay needs no interpreter start-up, import path or
        permission to run the interpreter again (chatd may run as a user who cannot), and
        has server.logs loaded already. Forking is safe only while this process has no
        other thread (and before grpc is imported): otherwise capture stays off."""
        from server import logs_relay

        if threading.active_count() > 1:
            return "threads were already running; output capture must start before them"
        for target in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError, AttributeError):
                target.flush()
        out_read, out_write = os.pipe()
        err_read, err_write = os.pipe()
        ack_read, ack_write = os.pipe()
        try:
            pid = os.fork()
        except OSError as exc:
            for fd in (out_read, out_write, err_read, err_write, ack_read, ack_write):
                os.close(fd)
            return f"cannot start the relay: {exc}"
        if pid == 0:  # the relay; it never returns into chatd's code
            code = 1
            try:
                logs_relay.run(
                    {out_read: "stdout", err_read: "stderr"},
                    ack_write,
                    self._marker,
                    self._format,
                    self._colors,
                )
                code = 0
            finally:
                os._exit(code)
        for fd in (out_read, err_read, ack_write):
            os.close(fd)
        self._ack = ack_read
        for target in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError, AttributeError):
                target.flush()
        os.dup2(out_write, 1)
        os.dup2(err_write, 2)
        os.close(out_write)
        os.close(err_write)
        # sys.stdout on a pipe is block-buffered: a stray print() would wait for 8 KiB.
        with contextlib.suppress(AttributeError, ValueError):
            sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
        # A crash's "Fatal Python error" and every thread's stack go through the relay too.
        faulthandler.enable(file=sys.stderr, all_threads=True)
        atexit.register(self.flush)
        return ""

    def _wait_acks(self, kinds: bytes, count: int, timeout: float) -> int:
        """Reads the ack pipe until `count` bytes among `kinds` came, or `timeout` seconds
        passed, or the relay has gone; how many came."""
        deadline = time.monotonic() + timeout
        seen = 0
        while seen < count:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._ack], [], [], left)[0]:
                break
            data = os.read(self._ack, 64)
            if not data:
                break
            seen += sum(data.count(k) for k in kinds)
        return seen

    def flush(self, timeout: float = FLUSH_TIMEOUT) -> bool:
        """Waits until what was written to fd 1 and 2 so far has been written out by the
        relay, at most `timeout` seconds (a relay whose own output is blocked, nobody
        reading it, must not hold chatd's exit forever). True if it has."""
        with self._lock:
            for target in (sys.stdout, sys.stderr):
                with contextlib.suppress(OSError, ValueError, AttributeError):
                    target.flush()
            sent = 0
            for fd in (1, 2):
                try:
                    os.write(fd, f"\n{self._marker}\n".encode())
                    sent += 1
                except OSError:
                    continue
            # Acks of an earlier flush that timed out may still come: wait for them too.
            self._unacked += sent
            self._unacked -= self._wait_acks(b"oe", self._unacked, timeout)
            return self._unacked == 0


class _ToStructlog(logging.Handler):
    """Re-emits stdlib logging records (and captured warnings) through structlog."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            log = structlog.get_logger(record.name)
            fields: dict[str, Any] = {"logger": record.name}
            if record.exc_info and record.exc_info[0] is not None:
                fields["exc_info"] = record.exc_info
            log.log(record.levelno, record.getMessage(), **fields)
        except Exception:  # pragma: no cover - logging must not raise
            self.handleError(record)


def _excepthook(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    structlog.get_logger("chatd").critical("uncaught exception", exc_info=(kind, exc, tb))


def _thread_excepthook(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit or args.exc_value is None:
        return
    structlog.get_logger("chatd").error(
        "uncaught exception in a thread",
        thread=args.thread.name if args.thread else "",
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
    )


_capture: _Capture | None = None
# The real stderr (a duplicate of fd 2 kept before fd 2 became the capture pipe), where
# chatd's own records go straight, once capture is on.
_real_stderr: TextIO | None = None


def configure(log_format: str = "auto", level: str = "info", *, capture: bool = False) -> None:
    """Sets the format ("json", "console", or "auto": JSON unless stderr is a terminal)
    and the level ("debug".."critical") of chatd's records; routes stdlib logging at that
    level but at least "warning" (library INFO lines, such as one per HTTP request, are
    chatd's own records' business), Python warnings and uncaught exceptions through them.

    `capture=True` (the `chatd serve` process, once) also forks the relay process
    (server.logs_relay) and makes fds 1 and 2 pipes into it, so that grpc's C-core lines,
    any other stray output and a crash's faulthandler dump are records too; call it before
    grpc is imported and before any thread starts. Should the relay not start (a thread
    already runs, fork fails), output stays as it is and a warning record says why.
    """
    global _capture, _real_stderr
    tty = (_real_stderr or sys.stderr).isatty()
    as_json = log_format == "json" or (log_format == "auto" and not tty)
    processors = _processors(as_json, colors=tty)
    not_captured = ""
    if capture and _capture is None:
        real = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8", errors="replace")
        relay = _Capture("json" if as_json else "console", colors=tty)
        not_captured = relay.start()
        if not_captured:
            real.close()
        else:
            _capture, _real_stderr = relay, real
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level.upper()]),
        logger_factory=structlog.WriteLoggerFactory(file=_real_stderr or sys.stderr),
        cache_logger_on_first_use=True,
    )
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _ToStructlog):
            root.removeHandler(handler)
    root.addHandler(_ToStructlog())
    root.setLevel(max(LEVELS[level.upper()], logging.WARNING))
    logging.captureWarnings(True)
    sys.excepthook = _excepthook
    threading.excepthook = _thread_excepthook
    if not_captured:
        structlog.get_logger("chatd").warning(
            "output capture off: stray output and grpc's own lines are printed as they are",
            reason=not_captured,
        )


def flush(timeout: float = FLUSH_TIMEOUT) -> bool:
    """Waits until what was written to fds 1 and 2 so far has been written out by the
    relay, at most `timeout` seconds; True if it has (or capture is off)."""
    return _capture.flush(timeout) if _capture is not None else True
