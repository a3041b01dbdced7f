"""The output relay: a small process of its own that turns what `chatd serve` writes to
its file descriptors 1 and 2 into records in the configured log format.

`chatd serve` (server.logs.configure with capture) forks it, before any thread runs and
before grpc is imported, with the read ends of two pipes, then makes those pipes its own
fds 1 and 2 (`run` is the child's whole life). The relay writes every record to the
stderr it inherited, the real one. Being another process, it drains the pipes whatever
chatd does: grpc's C-core writes its log lines with the GIL held, so a reader thread
inside chatd could not drain a full pipe (a deadlock), and it died with chatd, losing
the lines of a crash.

- It uses nothing of chatd's but server.logs (structlog); grpc is not loaded when it forks.
- It ignores SIGINT, SIGTERM and SIGHUP, so a signal sent to the whole process group
  (Ctrl-C, a supervisor) stops chatd but not the relay of its last lines.
- It exits once every pipe is at end of file: when chatd and every child that inherited
  fds 1 and 2 (a tool's subprocess) have closed them, so such a child can still write
  after chatd exits instead of dying of SIGPIPE.
- Line kinds: a grpc C-core line (absl's "I1130 13:54:57.844285   19394 file.cc:91] text",
  the level by its first letter) is a record of logger "grpc" with `source`; a Python
  traceback written as text is one record (`error`, `exception`); faulthandler's "Fatal
  Python error: ..." dump with its thread stacks is one critical record (`error`, `stack`),
  ended by the first line that is not part of it, by end of file, or by 0.2 s without
  output on that pipe (a dying process says nothing more); any other line is a record of
  logger "stdout" (info) or "stderr" (warning). Blank lines are dropped.
- On the ack pipe, for each line equal to the marker on a pipe, it writes "o" (stdout)
  or "e" (stderr) once everything before it on that pipe has been written out
  (server.logs.flush waits for those).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import selectors
import signal
from collections.abc import Iterator, Mapping
from typing import TextIO

import structlog

from server import logs

# grpc C-core (absl) log lines: level letter, date, time, thread id, file:line, message.
C_CORE_LINE = re.compile(r"^([DIWEF])\d{4} \d\d:\d\d:\d\d\.\d+\s+\d+\s+(\S+?)\] ?(.*)$")
C_CORE_LEVELS = {"D": "debug", "I": "info", "W": "warning", "E": "error", "F": "critical"}

TRACEBACK_START = "Traceback (most recent call last):"
FATAL_START = "Fatal Python error: "
# What follows faulthandler's header (Python/faulthandler.c, Python/pylifecycle.c): blank
# lines, "Current thread 0x...", "Thread 0x...", indented frames, "Extension modules: ...".
FATAL_GOES_ON = re.compile(
    r"^(\s|$|Current thread|Thread 0x|Extension modules|Python runtime state|Stack \(|"
    r"Garbage-collecting|<)"
)
# A line longer than this without a newline is relayed in pieces of this size.
MAX_LINE = 1 << 20
READ_SIZE = 1 << 16
# Seconds without output after which a pending "Fatal Python error" dump is written.
FATAL_IDLE = 0.2

Group = tuple[str, list[str]]


class Reemit:
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
                logs.LEVELS[C_CORE_LEVELS[level].upper()], message, logger="grpc", source=source
            )
        elif stream == "stdout":
            self._log.info(text, logger="stdout")
        else:
            self._log.warning(text, logger="stderr")

    def traceback(self, lines: list[str], stream: str = "stderr") -> None:
        self._log.error(
            "uncaught exception", logger=stream, error=lines[-1], exception="\n".join(lines)
        )

    def fatal(self, lines: list[str], stream: str = "stderr") -> None:
        self._log.critical(
            lines[0],
            logger=stream,
            error=lines[0].removeprefix(FATAL_START),
            stack="\n".join(lines[1:]).strip("\n"),
        )

    def group(self, group: Group, stream: str) -> None:
        kind, lines = group
        if kind == "traceback":
            self.traceback(lines, stream)
        elif kind == "fatal":
            self.fatal(lines, stream)
        elif lines[0].strip():
            self.line(lines[0], stream)


class Grouper:
    """The lines of one stream in, groups out: ("line", [text]) for each line,
    ("traceback", lines) for a Python traceback, ("fatal", lines) for a fatal error dump."""

    def __init__(self) -> None:
        self._kind = ""
        self._block: list[str] = []

    @property
    def pending(self) -> str:
        """The kind of the unfinished group ("traceback", "fatal"), or ""."""
        return self._kind

    def feed(self, text: str) -> list[Group]:
        done: list[Group] = []
        if self._kind == "traceback":
            self._block.append(text)
            # A traceback ends at its first unindented line after the header, the
            # "Type: message" line ("During handling..." and chained ones go on).
            if (
                not text.startswith((" ", "\t"))
                and not text.startswith((TRACEBACK_START, "During handling", "The above exception"))
                and text.strip()
            ):
                done += self.flush()
            return done
        if self._kind == "fatal":
            if FATAL_GOES_ON.match(text):
                self._block.append(text)
                return done
            done += self.flush()
        if text.startswith(TRACEBACK_START):
            self._kind, self._block = "traceback", [text]
        elif text.startswith(FATAL_START):
            self._kind, self._block = "fatal", [text]
        else:
            done.append(("line", [text]))
        return done

    def flush(self) -> list[Group]:
        """The unfinished group, if any, as it stands."""
        if not self._kind:
            return []
        group = (self._kind, self._block)
        self._kind, self._block = "", []
        return [group]


def grouped(lines: Iterator[str]) -> Iterator[Group]:
    """Grouper over a whole sequence of lines."""
    grouper = Grouper()
    for text in lines:
        yield from grouper.feed(text)
    yield from grouper.flush()


class Relay:
    """Reads the pipes `streams` ({fd: "stdout" | "stderr"}) until all are at end of file,
    writing their lines through `reemit`; acknowledges each `marker` line on `ack_fd`."""

    def __init__(
        self, streams: Mapping[int, str], reemit: Reemit, ack_fd: int, marker: str
    ) -> None:
        self._streams = dict(streams)
        self._reemit = reemit
        self._ack_fd = ack_fd
        self._marker = marker
        self._groupers = {fd: Grouper() for fd in streams}
        self._partial = {fd: b"" for fd in streams}
        self._out_gone = False

    def run(self) -> None:
        with selectors.DefaultSelector() as selector:
            for fd in self._streams:
                selector.register(fd, selectors.EVENT_READ)
            while selector.get_map():
                fatal = [fd for fd, g in self._groupers.items() if g.pending == "fatal"]
                ready = selector.select(FATAL_IDLE if fatal else None)
                if not ready:
                    for fd in fatal:
                        self._emit(fd, self._groupers[fd].flush())
                    continue
                for key, _events in ready:
                    fd = key.fd
                    try:
                        data = os.read(fd, READ_SIZE)
                    except OSError:
                        data = b""
                    if data:
                        self._take(fd, data)
                    else:
                        selector.unregister(fd)
                        self._end(fd)

    def _take(self, fd: int, data: bytes) -> None:
        *lines, rest = (self._partial[fd] + data).split(b"\n")
        while len(rest) > MAX_LINE:
            lines.append(rest[:MAX_LINE])
            rest = rest[MAX_LINE:]
        self._partial[fd] = rest
        for raw in lines:
            self._line(fd, raw)

    def _end(self, fd: int) -> None:
        if self._partial[fd]:
            self._line(fd, self._partial[fd])
            self._partial[fd] = b""
        self._emit(fd, self._groupers[fd].flush())
        os.close(fd)

    def _line(self, fd: int, raw: bytes) -> None:
        text = raw.decode("utf-8", errors="replace").rstrip("\r")
        grouper = self._groupers[fd]
        if text == self._marker:
            self._emit(fd, grouper.flush())
            self._ack(b"o" if self._streams[fd] == "stdout" else b"e")
        else:
            self._emit(fd, grouper.feed(text))

    def _emit(self, fd: int, groups: list[Group]) -> None:
        if self._out_gone:
            return  # nobody reads the output: keep draining, write nothing
        for group in groups:
            try:
                self._reemit.group(group, self._streams[fd])
            except OSError:
                self._out_gone = True
                return
            except Exception:  # pragma: no cover - the relay must outlive a bad line
                continue

    def _ack(self, byte: bytes) -> None:
        with contextlib.suppress(OSError):  # chatd has gone: nothing waits for it
            os.write(self._ack_fd, byte)


def run(
    streams: Mapping[int, str], ack_fd: int, marker: str, log_format: str, colors: bool
) -> None:
    """The relay process's whole life, in a child forked by server.logs: closes every
    other file descriptor it inherited (chatd's write ends of the pipes above all, or they
    would never reach end of file) but stderr, ignores SIGINT, SIGTERM and SIGHUP, relays
    `streams` until they are all at end of file; records are `log_format` ("json" or
    "console", with `colors`) written to fd 2."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    keep = sorted({2, ack_fd, *streams})
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.close(devnull)
    low = 3
    for fd in keep:
        if fd >= low:
            os.closerange(low, fd)
            low = fd + 1
    os.closerange(low, os.sysconf("SC_OPEN_MAX"))
    # `ps -o comm`, top: which process this is (its command line is chatd's).
    with contextlib.suppress(OSError), open("/proc/self/comm", "w") as comm:
        comm.write("chatd-logs")
    out = os.fdopen(2, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)
    reemit = Reemit(logs._processors(log_format == "json", colors=colors), out)
    Relay(streams, reemit, ack_fd, marker).run()
