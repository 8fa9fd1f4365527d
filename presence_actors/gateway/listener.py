"""One port, two doors.

Each plain connection is read up to the end of its first request head. A
WebSocket upgrade to ``/ws`` is served on its own socket (:mod:`ws_direct`):
that is where pushes go out by the thousand, and a push through ASGI costs
several times as much. Everything else — HTTP/1.1, HTTP/2 with prior
knowledge (gRPC), and every TLS connection — goes to hypercorn's connection
handler with the bytes already read put back in front.

This replaces ``hypercorn.trio.serve`` with the same moving parts (its
``TCPServer``, ``WorkerContext`` and app wrapper; hypercorn is pinned to the
minor version these were read from), plus what it lacks: a connection that
fails is logged and dropped, and never takes the server down; connections are
capped below the descriptor limit and accept errors do not flood the log
(:mod:`.admission`).
"""

from __future__ import annotations

import logging
import re
import ssl
from collections.abc import Awaitable, Callable
from functools import partial
from typing import cast

import trio
from hypercorn.config import Config
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ASGIFramework, ConnectionState
from hypercorn.utils import repr_socket_addr, wrap_app

from .admission import REFUSAL, Admission, accept_forever
from .handshake import request_path
from .http_direct import DirectQueries, is_presence_read
from .websocket import WebSocketGateway

log = logging.getLogger("presence_actors.listener")

# A request head longer than this is not a WebSocket upgrade we serve directly.
_HEAD_LIMIT = 16 * 1024
_UPGRADE = re.compile(rb"\r\nupgrade:[ \t]*websocket[ \t]*\r\n", re.IGNORECASE)


def is_direct_upgrade(head: bytes) -> bool:
    """A complete ``GET /ws`` HTTP/1.1 request head asking for a WebSocket.

    The target may be in origin-form (``/ws?...``) or absolute-form
    (``http://host:port/ws?...``, RFC 7230 5.3.2); the handshake itself is
    checked by :func:`handshake.accept_upgrade`, which answers what is wrong.
    """
    end = head.find(b"\r\n\r\n")
    if end < 0:
        return False
    line_end = head.find(b"\r\n")
    method, _, rest = head[:line_end].partition(b" ")
    target, _, version = rest.partition(b" ")
    return (
        method == b"GET"
        and version == b"HTTP/1.1"
        and request_path(target.decode("latin-1")) == "/ws"
        and _UPGRADE.search(head[line_end : end + 2]) is not None
    )


class PortServer:
    def __init__(
        self,
        app: Callable[..., Awaitable[None]],
        websockets: WebSocketGateway,
        config: Config,
        max_connections: int,
    ) -> None:
        self._config = config
        self.admission = Admission(max_connections)
        self._websockets = websockets
        self._context = WorkerContext(None)
        self._state = ConnectionState({})
        self._app = wrap_app(cast(ASGIFramework, app), config.wsgi_max_body_size, "asgi")
        # Bulk presence reads over HTTP/1.1 are served past hypercorn too (issue 13).
        self._queries = DirectQueries(app, config)

    async def serve(
        self,
        shutdown_trigger: Callable[[], Awaitable[None]],
        *,
        task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept until ``shutdown_trigger`` returns; then give connections
        ``graceful_timeout`` to end before cancelling them.

        Reports the bound URLs (real ports, also when 0 was asked for). At most
        ``max_connections`` are open at once; past it a plain connection reads a
        short 503 and a TLS one is closed, both at once.
        """
        config = self._config
        sockets = config.create_sockets()
        # (listener, how its connections are served, what a refused one is told)
        listeners: list[
            tuple[trio.SocketListener, Callable[[trio.SocketStream], Awaitable[None]], bytes | None]
        ] = []
        binds: list[str] = []
        for sock in sockets.secure_sockets:
            sock.listen(config.backlog)
            context = config.create_ssl_context()
            assert context is not None  # secure sockets exist only with a certificate
            listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
            listeners.append((listener, partial(self._tls_connection, context=context), None))
            binds.append(f"https://{repr_socket_addr(sock.family, sock.getsockname())}")
        for sock in sockets.insecure_sockets:
            sock.listen(config.backlog)
            listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
            listeners.append((listener, partial(self._connection, direct=True), REFUSAL))
            binds.append(f"http://{repr_socket_addr(sock.family, sock.getsockname())}")

        async with trio.open_nursery() as connections:
            async with trio.open_nursery() as accepting:
                for listener, serve, refusal in listeners:
                    accepting.start_soon(
                        partial(
                            accept_forever,
                            listener,
                            self.admission,
                            serve,
                            connections,
                            refusal=refusal,
                        )
                    )
                task_status.started(binds)
                await shutdown_trigger()
                accepting.cancel_scope.cancel()
            await self._context.terminated.set()  # hypercorn closes its idle connections
            self._queries.close_idle()
            connections.cancel_scope.deadline = trio.current_time() + config.graceful_timeout

    async def _tls_connection(self, stream: trio.SocketStream, *, context: ssl.SSLContext) -> None:
        """A TLS connection: hypercorn does the handshake (bounded by its
        ``ssl_handshake_timeout``) and serves it."""
        await self._connection(
            trio.SSLStream(stream, context, server_side=True, https_compatible=True), direct=False
        )

    async def _connection(self, stream: trio.abc.Stream, *, direct: bool) -> None:
        try:
            if direct:
                assert isinstance(stream, trio.SocketStream)
                head = await self._read_head(stream)
                if not head:
                    await stream.aclose()
                    return
                if is_direct_upgrade(head):
                    await self._websockets.serve_direct(stream, head)
                    return
                if is_presence_read(head):
                    rest = await self._queries.serve(stream, head)
                    if rest is None:
                        await stream.aclose()
                        return
                    head = rest  # another request: hypercorn goes on from it
                stream = _Replay(stream, head)
            # hypercorn types its stream as an SSLStream but takes any stream (it
            # asks for do_handshake and falls back to plain on AttributeError).
            server = TCPServer(
                self._app,
                self._config,
                self._context,
                self._state,
                cast("trio.SSLStream[trio.SocketStream]", stream),
            )
            try:
                await server
            finally:
                # hypercorn's server and its protocol hold each other (the
                # protocol sends through the server's bound method): unlinked,
                # the connection is freed by reference counting when it ends,
                # not by a full collection long after (the soak's RSS growth).
                vars(server).pop("protocol", None)
        except Exception:
            log.exception("a connection failed; the server goes on")
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream)

    async def _read_head(self, stream: trio.SocketStream) -> bytes:
        """What the client sent up to the end of its first request head (or the limit)."""
        head = b""
        with trio.move_on_after(self._config.keep_alive_timeout):
            while b"\r\n\r\n" not in head and len(head) < _HEAD_LIMIT:
                try:
                    chunk = await stream.receive_some(_HEAD_LIMIT)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return b""
                if not chunk:
                    break
                head += chunk
        return head


class _Replay(trio.abc.HalfCloseableStream):
    """A socket stream with bytes already read put back in front.

    Plain on purpose (no ``do_handshake``): hypercorn takes a stream without it
    for a cleartext connection, and reads the peer's address from ``socket``.
    """

    def __init__(self, stream: trio.SocketStream, head: bytes) -> None:
        self._stream = stream
        self._head = head
        self.socket = stream.socket

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._head:
            size = len(self._head) if max_bytes is None else max_bytes
            data, self._head = self._head[:size], self._head[size:]
            await trio.lowlevel.checkpoint()
            return data
        return await self._stream.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self._stream.send_eof()

    async def aclose(self) -> None:
        await self._stream.aclose()
