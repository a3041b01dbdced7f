"""StartupError: why chatd cannot start, as one line naming the file, the cause and the fix.

Raised by whatever finds the problem and caught once, in `server.__main__`, which logs it
as a single record and exits 1: an operator reads one line instead of a traceback.
"""

from __future__ import annotations

import errno
import socket

from server.addresses import parse_host_port


class StartupError(Exception):
    """chatd cannot start: `path` (a file, directory or address) is unusable because of
    `cause`; `fix` says what the operator can do about it."""

    def __init__(self, path: str, cause: str, fix: str) -> None:
        super().__init__(path, cause, fix)
        self.path = path
        self.cause = cause
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.path}: {self.cause}; {self.fix}"


def bind_error(
    address: str, setting: str, flag: str, exc: BaseException, *, off: str = ""
) -> StartupError:
    """The StartupError for a listener that cannot bind `address`: it names the setting
    (`setting`, e.g. CHATD_LISTEN, and its `flag`) that moves the listener, and `off`, how
    to turn the listener off where it can be (e.g. "an empty value turns metrics off").

    `exc` is what the bind raised: an OSError (asyncio, socket) or the RuntimeError of
    grpc's add_*_port, which carries no errno. Whether the port is taken is found by binding
    it once more with a plain socket, so the cause says so in words either way.
    """
    busy = _in_use(address) if not isinstance(exc, OSError) else exc.errno == errno.EADDRINUSE
    if busy:
        cause = "the address is already in use by another process"
        fix = f"stop that process, or set {setting} (or {flag}) to a free host:port"
    else:
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        cause = f"cannot listen: {detail}"
        fix = f"set {setting} (or {flag}) to an address of this host, as host:port"
    return StartupError(address, cause, f"{fix}; {off}" if off else fix)


def _in_use(address: str) -> bool:
    try:
        host, port = parse_host_port(address)
    except ValueError:
        return False
    if port == 0:
        return False
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM)
    except OSError:
        return False
    for family, kind, proto, _, sockaddr in infos:
        with socket.socket(family, kind, proto) as probe:
            # As servers bind: a port left in TIME_WAIT by a closed connection is free.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(sockaddr)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return True
    return False
