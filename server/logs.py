"""structlog setup: JSON lines when not on a terminal, readable lines on one.

Everything the process prints comes out in that one format:
- chatd's own records go through structlog, written to the real stderr;
- stdlib `logging` records (libraries, asyncio, the OpenTelemetry SDK) and Python
  warnings (`logging.captureWarnings`) go through a handler that re-emits them through
  structlog, as do uncaught exceptions in the main thread and in other threads;
- with `capture=True`, file descriptors 1 and 2 become pipes read by a thread each, which
  re-emits every line through structlog: grpc's C-core writes its log lines straight to
  fd 2 (format "I1130 13:54:57.844285   19394 trace.cc:91] message", the level by its
  first letter), and anything else written to stdout or stderr (print, a traceback) is
  caught the same way. A Python traceback written as text is kept together as one record.

A record logged with an exception carries its message in `error` ("ValueError: bad"),
beside the formatted traceback in `exception`.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import re
import sys
import threading
import uuid
from collections.abc import Iterator
from types import TracebackType
from typing import Any, TextIO

import structlog
from structlog.types import EventDict, ExcInfo, WrappedLogger

# grpc C-core (absl) log lines: level letter, date, time, thread id, file:line, message.
C_CORE_LINE = re.compile(r"^([DIWEF])\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+\s+(\S+?)\] ?(.*)$")
C_CORE_LEVELS = {"D": "debug", "I": "info", "W": "warning", "E": "error", "F": "critical"}
LEVELS = logging.getLevelNamesMapping()


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


class _Reemit:
    """Writes foreign lines as records, unfiltered: their source already chose to print."""

    def __init__(self, processors: list[structlog.types.Processor], out: TextIO) -> None:
        self._log = structlog.wrap_logger(
            structlog.WriteLogger(out),
            processors=processors,
            wrapper_class=structlog.make_filtering_bound_logger(logging.NOTSET),
        )

    def line(self, text: str, stream: str) -> None:
        match = C_CORE_LINE.match(text)
        if match:
            level, source, message = match.groups()
            self._log.log(
                LEVELS[C_CORE_LEVELS[level].upper()], message, logger="grpc", source=source
            )
        elif stream == "stdout":
            self._log.info(text, logger="stdout")
        else:
            self._log.warning(text, logger="stderr")

    def traceback(self, lines: list[str]) -> None:
        self._log.error(
            "uncaught exception", logger="stderr", error=lines[-1], exception="\n".join(lines)
        )


def _grouped(lines: Iterator[str]) -> Iterator[tuple[str, list[str]]]:
    """("line", [text]) for each line, ("traceback", [lines]) for a Python traceback."""
    block: list[str] = []
    for text in lines:
        if block:
            block.append(text)
            # A traceback ends at its first unindented line after the header, the
            # "Type: message" line ("During handling..." and chained ones go on).
            if (
                not text.startswith((" ", "\t"))
                and not text.startswith(
                    ("Traceback (most recent call last):", "During handling", "The above exception")
                )
                and text.strip()
            ):
                yield "traceback", block
                block = []
            continue
        if text.startswith("Traceback (most recent call last):"):
            block = [text]
            continue
        yield "line", [text]
    if block:
        yield "traceback", block


class _Capture:
    """fd 1 and fd 2 redirected into pipes, each read by a daemon thread."""

    def __init__(self, reemit: _Reemit) -> None:
        self._reemit = reemit
        self._marker = f"chatd-log-flush-{uuid.uuid4().hex}"
        self._flushed: dict[str, threading.Event] = {}

    def start(self) -> None:
        for fd, stream in ((1, "stdout"), (2, "stderr")):
            read, write = os.pipe()
            os.dup2(write, fd)
            os.close(write)
            self._flushed[stream] = threading.Event()
            threading.Thread(
                target=self._read, args=(read, stream), name=f"chatd-{stream}", daemon=True
            ).start()
        atexit.register(self.flush)

    def _lines(self, read: int, stream: str) -> Iterator[str]:
        with os.fdopen(read, "r", encoding="utf-8", errors="replace", newline=None) as pipe:
            for raw in pipe:
                text = raw.rstrip("\r\n")
                if text == self._marker:
                    self._flushed[stream].set()
                    continue
                yield text

    def _read(self, read: int, stream: str) -> None:
        for kind, lines in _grouped(self._lines(read, stream)):
            try:
                if kind == "traceback":
                    self._reemit.traceback(lines)
                elif lines[0].strip():
                    self._reemit.line(lines[0], stream)
            except Exception:  # pragma: no cover - the reader must outlive a bad line
                continue

    def flush(self, timeout: float = 2.0) -> None:
        """Waits until what was written to fd 1 and 2 so far has been re-emitted."""
        for stream in ("stdout", "stderr"):
            target = sys.stdout if stream == "stdout" else sys.stderr
            with contextlib.suppress(OSError, ValueError):
                target.flush()
        for fd, stream in ((1, "stdout"), (2, "stderr")):
            event = self._flushed[stream]
            event.clear()
            try:
                os.write(fd, f"\n{self._marker}\n".encode())
            except OSError:
                continue
            event.wait(timeout)


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


def configure(log_format: str = "auto", level: str = "info", *, capture: bool = False) -> None:
    """Sets the format ("json", "console", or "auto": JSON unless stderr is a terminal)
    and the level ("debug".."critical") of chatd's records; routes stdlib logging at that
    level but at least "warning" (library INFO lines, such as one per HTTP request, are
    chatd's own records' business), Python warnings and uncaught exceptions through them.

    `capture=True` (the `chatd serve` process, once) also redirects fds 1 and 2 into
    pipes re-emitted line by line, so that grpc's C-core lines and any other stray output
    are records too; call it before grpc is imported to catch its start-up lines.
    """
    global _capture
    tty = sys.stderr.isatty()
    as_json = log_format == "json" or (log_format == "auto" and not tty)
    processors = _processors(as_json, colors=tty)
    out: TextIO = sys.stderr
    if capture and _capture is None:
        # chatd's own records go to the real stderr, a duplicate kept before fd 2 becomes
        # the capture pipe.
        out = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8", errors="replace")
        _capture = _Capture(_Reemit(processors, out))
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level.upper()]),
        logger_factory=structlog.WriteLoggerFactory(file=out),
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
    if capture and _capture is not None and out is not sys.stderr:
        _capture.start()


def flush() -> None:
    """Waits until captured output written so far is re-emitted (no-op without capture)."""
    if _capture is not None:
        _capture.flush()
