"""``GET /api/presence`` on its own socket, past hypercorn (issue 13).

A bulk presence read is the REST API's hot path: the polling fallback asks it
over and over on a keep-alive connection. Through hypercorn, h11 and the ASGI
machinery, the protocol costs more than the answer (measured: about 1 ms of
server CPU for one user, where the engine's answer of a hundred takes 0.2 ms).
So the listener hands a plain HTTP/1.1 connection whose first request is such a
read to :meth:`DirectQueries.serve`, which parses each request head itself and
runs the very same ASGI application on it (:class:`~.app.PresenceApp`: the same
route, parameter checks, bounds, authentication and error answers), writing the
answer straight into the socket.

Only the simplest requests are served here: ``GET /api/presence`` with a
well-formed head in HTTP/1.1, a ``Host`` and no body. Anything else — another
path, a body, ``Expect``, an upgrade, a head this parser is not sure of — is
handed back, with every byte read so far, and the connection goes on in
hypercorn from that request (the listener's ``_Replay``), which answers it as
it always did. Bounds are hypercorn's: a head of at most 16 KiB, the keep-alive
timeout between requests, ``keep_alive_max_requests`` requests per connection
(the last answer says ``connection: close``); and an answer the client does not
take within the keep-alive timeout drops the connection.

Ordering: requests on a connection are answered one after the other, in order
(pipelined ones wait in the receive buffer). Cancellation: the connection is
closed by the caller; an answer is written whole or the connection is dropped.
"""

from __future__ import annotations

import functools
import logging
import re
import time
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any
from wsgiref.handlers import format_date_time

import trio
from hypercorn.config import Config

from ..protocol import ErrorCode
from .asgi import Message, Receive, Scope, Send, respond_error

_HEAD_LIMIT = 16 * 1024
_RECEIVE_SIZE = 65536
_PATH = b"/api/presence"
# RFC 9110 5.6.2 token: a header name.
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# Field values: visible ASCII and Latin-1 text, spaces and tabs (no controls).
_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")
# Headers that ask for something this path does not do: hypercorn serves those.
_HANDED_OVER = frozenset({b"content-length", b"transfer-encoding", b"expect", b"upgrade"})

log = logging.getLogger("presence_actors.http_direct")

App = Callable[[Scope, Receive, Send], Awaitable[None]]


def is_presence_read(data: bytes) -> bool:
    """Whether the first request head in ``data`` is one this path serves."""
    end = data.find(b"\r\n\r\n")
    return 0 <= end <= _HEAD_LIMIT and _parse(data[:end]) is not None


def _parse(head: bytes) -> tuple[bytes, list[tuple[bytes, bytes]], bool] | None:
    """(query string, headers with lower-case names, close after it) of a request
    head (without its blank line) this path serves; None for any other."""
    line, _, rest = head.partition(b"\r\n")
    parts = line.split(b" ")
    if len(parts) != 3 or parts[0] != b"GET" or parts[2] != b"HTTP/1.1":
        return None
    path, _, query = parts[1].partition(b"?")
    if path != _PATH or b"#" in query or _VALUE.fullmatch(query) is None:
        return None
    headers: list[tuple[bytes, bytes]] = []
    hosts = 0
    close = False
    for field in rest.split(b"\r\n") if rest else ():
        name, colon, value = field.partition(b":")
        value = value.strip(b" \t")
        if not colon or _TOKEN.fullmatch(name) is None or _VALUE.fullmatch(value) is None:
            return None
        name = name.lower()
        if name in _HANDED_OVER:
            return None
        if name == b"host":
            hosts += 1
        elif name == b"connection":
            close = close or b"close" in value.lower()
        headers.append((name, value))
    if hosts != 1:
        return None
    return query, headers, close


class DirectQueries:
    """Serves bulk presence reads on connections the listener hands over."""

    def __init__(self, app: App, config: Config) -> None:
        self._app = app
        self._keep_alive = config.keep_alive_timeout
        self._max_requests = config.keep_alive_max_requests
        self._server_header = config.include_server_header
        self._idle: set[trio.CancelScope] = set()
        self._closing = False

    def close_idle(self) -> None:
        """On shutdown: connections waiting for their next request close now, the
        others once their answer is written."""
        self._closing = True
        for scope in self._idle:
            scope.cancel()

    async def serve(self, stream: trio.SocketStream, data: bytes) -> bytes | None:
        """Answer requests from ``data`` (at least one complete head) and the stream
        until one is not for this path: return the bytes read from it on (for
        hypercorn), or None once the connection is done with (the caller closes it)."""
        served = 0
        peer = _address(stream, "getpeername")
        local = _address(stream, "getsockname")
        # A head must be complete this long after the last answer (slow heads are bounded).
        deadline = trio.current_time() + self._keep_alive
        start = 0  # where the next request begins in data (pipelined ones are not copied)
        while True:
            end = data.find(b"\r\n\r\n", start)
            if end < 0:
                data = data[start:]
                start = 0
                if len(data) >= _HEAD_LIMIT:
                    return data  # hypercorn refuses it as before
                if self._closing:
                    return None
                more = await self._receive(stream, deadline, idle=not data)
                if more is None:  # too slow, or the server stops: dropped
                    return None
                if not more:
                    return data or None  # hypercorn answers a partial head, as before
                data += more
                continue
            parsed = _parse(data[start:end]) if end - start <= _HEAD_LIMIT else None
            if parsed is None:
                return data[start:]
            query, headers, close = parsed
            start = end + 4
            served += 1
            close = close or served >= self._max_requests or self._closing
            answer = await self._answer(_scope(query, headers, peer, local), close)
            # A client that asks and never reads would hold its descriptor for
            # ever in a blocked write: an answer not taken in time drops it.
            with trio.move_on_after(self._keep_alive) as writing:
                await stream.send_all(answer)
            if close or writing.cancelled_caught:
                return None
            deadline = trio.current_time() + self._keep_alive

    async def _receive(
        self, stream: trio.SocketStream, deadline: float, *, idle: bool
    ) -> bytes | None:
        """The next bytes (b"" at the end or on a broken connection); None past
        ``deadline`` or, between requests (``idle``), once the server stops."""
        with trio.move_on_at(deadline) as waiting:
            if idle:
                self._idle.add(waiting)
            try:
                return await stream.receive_some(_RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return b""
            finally:
                self._idle.discard(waiting)
        return None

    async def _answer(self, scope: dict[str, Any], close: bool) -> bytes:
        """The application's whole answer to one request, as HTTP/1.1 bytes."""
        start: Message = {}
        body: list[bytes] = []
        asked = False

        async def receive() -> Message:
            nonlocal asked
            if asked:  # the body was empty; after it, as in ASGI, the client is gone
                return {"type": "http.disconnect"}
            asked = True
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: Message) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            else:
                body.append(message.get("body", b""))

        try:
            await self._app(scope, receive, send)
        except Exception:  # hypercorn's answer to a failed request: 500, and go on
            log.exception("a direct /api/presence request failed")
            start.clear()
            body.clear()
            await respond_error(send, 500, ErrorCode.INTERNAL, "the request failed")
        status = int(start["status"])
        lines = [b"HTTP/1.1 %d %s" % (status, HTTPStatus(status).phrase.encode())]
        lines += [name + b": " + value for name, value in start.get("headers", ())]
        lines.append(_date_header(int(time.time())))
        if self._server_header:
            lines.append(b"server: hypercorn-h11")
        if close:
            lines.append(b"connection: close")
        return b"\r\n".join(lines) + b"\r\n\r\n" + b"".join(body)


@functools.lru_cache(maxsize=4)
def _date_header(unix_seconds: int) -> bytes:
    """hypercorn's ``date`` header; formatted once a second."""
    return b"date: " + format_date_time(unix_seconds).encode()


def _scope(
    query: bytes, headers: list[tuple[bytes, bytes]], peer: Any, local: Any
) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": _PATH.decode(),
        "raw_path": _PATH,
        "query_string": query,
        "root_path": "",
        "headers": headers,
        "client": peer,
        "server": local,
        "extensions": {},
    }


def _address(stream: trio.SocketStream, which: str) -> tuple[str, int] | None:
    try:
        address = getattr(stream.socket, which)()
    except OSError:
        return None
    return (address[0], address[1]) if isinstance(address, tuple) else None
