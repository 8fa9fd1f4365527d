"""Which connections the port takes, and how it says no.

Every open connection holds a file descriptor. Left unbounded, slow or idle
clients use them all up; then ``accept`` fails with EMFILE, and so does
everything else that opens a file (the database, the log). So connections are
capped below the process's descriptor limit (``server.max_connections``,
derived from RLIMIT_NOFILE when 0), a connection past the cap gets a short HTTP
503 and is closed at once (never left waiting in the backlog), and an accept
that fails for lack of resources is retried after a pause and logged at most
once per :data:`LOG_INTERVAL`, with how often it happened.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import resource
from collections.abc import Awaitable, Callable

import orjson
import trio

from ..protocol import ErrorCode

log = logging.getLogger("presence_actors.admission")

# Descriptors the process needs besides its connections: the SQLite writer and up
# to 40 reader threads (trio's default thread limit) with up to 3 files each (the
# database, -wal, -shm), the log file, the event loop (epoll, wake-up socket pair),
# the listening sockets and stdio.
FD_RESERVE = 160
# What trio's serve_listeners waits after EMFILE; the backlog keeps the clients.
ACCEPT_RETRY = 0.1
# One log line per kind of trouble per this many seconds at most.
LOG_INTERVAL = 10.0
# A refusal is ~200 bytes on a fresh socket: the kernel takes it at once, unless
# the peer is already gone. This only bounds the pathological case.
_REFUSAL_SEND_TIMEOUT = 0.5
_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

_REFUSAL_BODY = orjson.dumps(
    {
        "success": False,
        "error": {
            "code": ErrorCode.LIMIT_EXCEEDED.value,
            "message": "the server is at its connection limit; try again later",
        },
    }
)
# What a connection past the cap reads: plain HTTP/1.1, which WebSocket and
# HTTP clients both understand as "not now".
REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"content-type: application/json\r\n"
    b"content-length: " + str(len(_REFUSAL_BODY)).encode() + b"\r\n"
    b"retry-after: 1\r\n"
    b"connection: close\r\n\r\n" + _REFUSAL_BODY
)


def descriptor_limit() -> int:
    """The process's soft RLIMIT_NOFILE (a large number when unlimited)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 1 << 20 if soft == resource.RLIM_INFINITY else soft


def default_max_connections(nofile: int) -> int:
    """The connection cap for a descriptor limit of ``nofile``: all but the reserve,
    or half when the limit is so low that the reserve would leave too few."""
    return max(nofile - FD_RESERVE, nofile // 2, 1)


def connection_cap(configured: int, nofile: int | None = None) -> int:
    """``server.max_connections``, or the default for the descriptor limit when 0.

    A configured cap above the default is kept (the operator may know better),
    with a warning that accepts may then fail for lack of descriptors.
    """
    nofile = descriptor_limit() if nofile is None else nofile
    fitting = default_max_connections(nofile)
    if configured == 0:
        log.info(
            "accepting at most %d connections (RLIMIT_NOFILE = %d; server.max_connections)",
            fitting,
            nofile,
        )
        return fitting
    if configured > fitting:
        log.warning(
            "server.max_connections = %d leaves less than %d descriptors of RLIMIT_NOFILE = %d"
            " for the database, logs and threads; accepts may fail with EMFILE",
            configured,
            FD_RESERVE,
            nofile,
        )
    return configured


class ThrottledLog:
    """A warning logged at most once per ``interval`` seconds, saying how many times
    it happened since the last line. Not thread-safe: one trio task notes it."""

    def __init__(self, message: str, interval: float = LOG_INTERVAL) -> None:
        self._message = message
        self._interval = interval
        self._last = -math.inf
        self._count = 0

    def note(self, detail: str) -> None:
        self._count += 1
        now = trio.current_time()
        if now - self._last >= self._interval:
            log.warning(
                "%s: %s (%d time(s) since the last report)", self._message, detail, self._count
            )
            self._last = now
            self._count = 0


class Admission:
    """Counts open connections against a cap. Owned by the accepting tasks of one
    port (trio tasks of one thread: no lock needed)."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.open = 0
        self.refused = 0
        self._refusals = ThrottledLog("connection limit reached; new connections get 503")

    def admit(self) -> bool:
        if self.open >= self.cap:
            self.refused += 1
            self._refusals.note(f"{self.open} open, server.max_connections = {self.cap}")
            return False
        self.open += 1
        return True

    def release(self) -> None:
        self.open -= 1


async def accept_forever(
    listener: trio.SocketListener,
    admission: Admission,
    serve: Callable[[trio.SocketStream], Awaitable[None]],
    connections: trio.Nursery,
    *,
    refusal: bytes | None,
) -> None:
    """Accept connections on ``listener`` until cancelled, serving each admitted one
    with ``serve`` in ``connections``; refuse the others with ``refusal`` (bytes
    written before the close, or None to just close).

    Never returns on its own. Accept errors from a lack of resources pause the
    loop for :data:`ACCEPT_RETRY` and are logged throttled; any other error ends
    it (a listener that is closed, a bug).
    """
    accept_errors = ThrottledLog("accepting a connection failed; retrying")
    while True:
        try:
            stream = await listener.accept()
        except OSError as exc:
            if exc.errno not in _CAPACITY_ERRNOS:
                raise
            accept_errors.note(f"{errno.errorcode[exc.errno]} ({exc.strerror})")
            await trio.sleep(ACCEPT_RETRY)
            continue
        if not admission.admit():
            await _refuse(stream, refusal)
            continue
        connections.start_soon(_serve_admitted, serve, stream, admission)


async def _serve_admitted(
    serve: Callable[[trio.SocketStream], Awaitable[None]],
    stream: trio.SocketStream,
    admission: Admission,
) -> None:
    try:
        await serve(stream)
    finally:
        admission.release()
        # Closing twice is harmless; a stream never served (cancelled first) is closed here.
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(stream)


async def _refuse(stream: trio.SocketStream, refusal: bytes | None) -> None:
    if refusal is not None:
        with (
            trio.move_on_after(_REFUSAL_SEND_TIMEOUT),
            contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError),
        ):
            await stream.send_all(refusal)
    await trio.aclose_forcefully(stream)
