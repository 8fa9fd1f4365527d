"""A WebSocket connection served on its own socket, past hypercorn.

What the server sends is written by whoever offers it — the registry fanning
out a push, an actor replying — straight into the socket's kernel buffer with
one non-blocking ``write``; only what the kernel does not take right now waits,
in order, for a writer task started for the occasion. A push's frame bytes
are built once and written to every watcher as they are. That is the whole
send path: no task switch, no per-watcher encoding, and an idle connection
costs one task (its reader).
"""

from __future__ import annotations

import os
from collections import deque

import trio

from .. import codec
from ..actors.session import CLOSE_TRY_AGAIN_LATER, Outgoing
from ..metrics import Metrics
from ..protocol import Push, PushBatch
from .frames import OP_PONG, FrameReader, Kind, close_frame, frame
from .wsconn import TOO_LARGE, Incoming, count_out

_RECEIVE_SIZE = 65536
# How long finishing (queued frames, then the close frame) may take.
FINISH_TIMEOUT = 1.0


class DirectConnection:
    """The session's outbox is the connection itself: ``offer`` writes at once."""

    def __init__(
        self, stream: trio.SocketStream, metrics: Metrics, capacity: int, max_bytes: int
    ) -> None:
        self._stream = stream
        self._fd = stream.socket.fileno()
        self._metrics = metrics
        self._capacity = capacity
        self._reader = FrameReader(max_bytes)
        self._backlog: deque[bytes] = deque()
        self._nursery: trio.Nursery | None = None
        self._writing = False  # a writer task owns the socket's sends: offers must queue
        self._broken = False  # the socket failed, or a send was cut short: write nothing more
        self._closed_by_peer = False

    @property
    def outbox(self) -> DirectConnection:
        return self

    def feed(self, data: bytes) -> None:
        """Bytes that came with the handshake (frames a client sent early)."""
        self._reader.feed(data)

    # --- sending ---------------------------------------------------------------------

    def offer(self, item: Outgoing) -> bool:
        """Write ``item`` now, or queue it; False when the queue is full (slow consumer)."""
        if isinstance(item, Push):
            data = item.wire
            if data is None:
                data = item.wire = frame(item.payload)
        elif isinstance(item, PushBatch):
            data = item.wire
            if data is None:
                data = item.wire = b"".join(frame(push.payload) for push in item.pushes)
        else:
            data = frame(codec.encode_bytes(item))
        count_out(self._metrics, item)
        return self._put(data)

    def _put(self, data: bytes) -> bool:
        if self._broken:
            return True  # the session is ending; there is nobody to keep it for
        if not self._writing:
            try:
                sent = os.write(self._fd, data)
            except BlockingIOError:
                sent = 0
            except OSError:
                self._broken = True  # reset or closed: the reader sees it next
                return True
            if sent == len(data):
                return True
            data = data[sent:]
            if self._nursery is None:  # finishing: no writer any more
                self._broken = True
                return True
            self._writing = True
            self._nursery.start_soon(self._write_backlog)
        elif len(self._backlog) >= self._capacity:
            return False
        self._backlog.append(data)
        return True

    async def serve_writes(self, nursery: trio.Nursery) -> None:
        """Where a writer task is started when the kernel buffer is full."""
        self._nursery = nursery

    async def _write_backlog(self) -> None:
        """Send the queue as the socket takes it; direct writes resume once it is empty."""
        try:
            while self._backlog and not self._broken:
                data = b"".join(self._backlog)
                self._backlog.clear()
                await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._broken = True
        except BaseException:
            self._broken = True  # cut short (cancelled): part of a frame may be out
            raise
        finally:
            self._writing = False

    async def finish(self, code: int | None, reason: str) -> None:
        """End the connection: queued frames and the close frame first (``code`` None:
        the peer left; 1013: it is not reading, so only a best-effort close frame),
        then the socket."""
        self._nursery = None  # the session's nursery is closed by now
        try:
            if code is not None and not self._broken and not self._closed_by_peer:
                with trio.move_on_after(FINISH_TIMEOUT):
                    if code == CLOSE_TRY_AGAIN_LATER:
                        self._backlog.clear()
                        if not self._writing:
                            self._put(close_frame(code, reason))
                    else:
                        if self._backlog and not self._writing:
                            await self._stream.send_all(b"".join(self._backlog))
                            self._backlog.clear()
                        if not self._writing and not self._broken:
                            await self._stream.send_all(close_frame(code, reason))
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
            pass
        finally:
            with trio.CancelScope(shield=True):
                await self._stream.aclose()

    # --- receiving -------------------------------------------------------------------

    async def receive(self) -> Incoming:
        """The next complete message; answers pings and the close handshake itself."""
        reader = self._reader
        while True:
            received = reader.next()
            if received is None:
                try:
                    data = await self._stream.receive_some(_RECEIVE_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return None
                if not data:
                    return None
                reader.feed(data)
                continue
            kind = received.kind
            if kind is Kind.TEXT or kind is Kind.BINARY:
                return received.data
            if kind is Kind.PING:
                assert isinstance(received.data, bytes)
                self._put(frame(received.data, OP_PONG))
            elif kind is Kind.TOO_BIG:
                return TOO_LARGE
            else:  # CLOSE from the peer, or a protocol violation (FAILED)
                self._closed_by_peer = True
                echo = received.code if kind is Kind.CLOSE and received.code != 1005 else 1000
                self._put(
                    close_frame(echo if kind is Kind.CLOSE else received.code, received.reason)
                )
                return None
