"""A TCP proxy in the test's trio loop, put between a server process and Redis to
partition them: :meth:`TcpProxy.blackhole` stops forwarding without closing anything,
:meth:`TcpProxy.heal` resumes.

A blackhole behaves like a network partition that TCP outlives: both ends keep their
connections and hear nothing; what they sent meanwhile waits (in the kernel's buffers
and at most one chunk per direction here) and arrives, in order, when the partition
heals. New connections are accepted but not connected onward until then.
:meth:`TcpProxy.drop_connections` is the partition that outlived the connections.

The proxy runs in the test's own event loop: a test that blocks that loop (a
synchronous HTTP call, a ``time.sleep``) stalls every proxied connection with it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

# One read's worth: what a paused direction can hold beyond the kernel's buffers.
_CHUNK = 64 * 1024
_CONNECT_TIMEOUT = 5.0


class TcpProxy:
    """Forwards every connection to its ``port`` to ``target_host:target_port``."""

    def __init__(self, port: int, target_host: str, target_port: int) -> None:
        self.port = port
        self.target_host = target_host
        self.target_port = target_port
        self._flowing = trio.Event()
        self._flowing.set()
        self._connections: set[trio.CancelScope] = set()
        self.accepted = 0

    @property
    def url(self) -> str:
        """A Redis URL that reaches the target through the proxy."""
        return f"redis://127.0.0.1:{self.port}"

    @property
    def blackholed(self) -> bool:
        return not self._flowing.is_set()

    def blackhole(self) -> None:
        """Stop forwarding in both directions, closing nothing."""
        if self._flowing.is_set():
            self._flowing = trio.Event()

    def heal(self) -> None:
        """Forward again; what waited is delivered first, in order."""
        self._flowing.set()

    def drop_connections(self) -> None:
        """Close every proxied connection (both sides see it end); new ones are served."""
        for scope in list(self._connections):
            scope.cancel()

    async def _wait_flowing(self) -> None:
        # Re-read each time: blackhole() replaces the event.
        while not self._flowing.is_set():
            await self._flowing.wait()

    async def serve_connection(self, client: trio.SocketStream) -> None:
        """Forward one connection until either side ends it or it is dropped."""
        self.accepted += 1
        with trio.CancelScope() as scope:
            self._connections.add(scope)
            try:
                async with client:
                    await self._wait_flowing()
                    with trio.fail_after(_CONNECT_TIMEOUT):
                        upstream = await trio.open_tcp_stream(self.target_host, self.target_port)
                    async with upstream, trio.open_nursery() as pumps:
                        pumps.start_soon(self._pump, client, upstream, pumps.cancel_scope)
                        pumps.start_soon(self._pump, upstream, client, pumps.cancel_scope)
            except (OSError, trio.TooSlowError):
                pass  # the target refused: the client sees its connection end
            finally:
                self._connections.discard(scope)

    async def _pump(
        self, source: trio.SocketStream, sink: trio.SocketStream, both: trio.CancelScope
    ) -> None:
        try:
            while True:
                await self._wait_flowing()
                data = await source.receive_some(_CHUNK)
                if not data:
                    break
                await self._wait_flowing()
                await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        both.cancel()  # one side ended: end the other too


@asynccontextmanager
async def open_tcp_proxy(
    target_port: int, target_host: str = "127.0.0.1"
) -> AsyncIterator[TcpProxy]:
    """A proxy on a free loopback port to ``target_host:target_port`` for the block;
    every connection through it is closed when the block ends."""
    [listener] = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listener.socket.getsockname()[1]
    proxy = TcpProxy(port, target_host, target_port)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, proxy.serve_connection, [listener])
        try:
            yield proxy
        finally:
            nursery.cancel_scope.cancel()
