"""A WebSocket connection served on its own socket, past hypercorn.

wsproto parses what the client sends. What the server sends is written by
whoever offers it — the registry fanning out a push, an actor replying —
straight into the socket's kernel buffer with one non-blocking ``write``; only
what the kernel does not take right now waits, in order, for the writer task.
A push's frame bytes are built once and written to every watcher as they are.
That is the whole send path: no task switch, no per-watcher encoding.
"""

from __future__ import annotations

import os
from collections import deque

import trio
from wsproto import WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import BytesMessage, CloseConnection, Event, Ping, TextMessage
from wsproto.utilities import LocalProtocolError

from .. import codec
from ..actors.session import CLOSE_TRY_AGAIN_LATER, Outgoing
from ..metrics import Metrics
from ..protocol import Push
from .frames import frame, text_frame
from .wsconn import TOO_LARGE, Incoming, count_out

_RECEIVE_SIZE = 65536
# How long finishing (queued frames, then the close frame) may take.
FINISH_TIMEOUT = 1.0


class DirectConnection:
    """The session's outbox is the connection itself: ``offer`` writes at once."""

    def __init__(
        self,
        stream: trio.SocketStream,
        ws: WSConnection,
        metrics: Metrics,
        capacity: int,
        max_bytes: int,
    ) -> None:
        self._stream = stream
        self._fd = stream.socket.fileno()
        self._ws = ws
        self._metrics = metrics
        self._capacity = capacity
        self._max_bytes = max_bytes
        self._backlog: deque[bytes] = deque()
        self._writer_wakeup = trio.lowlevel.ParkingLot()
        self._sending = False  # the writer task is inside send_all: offers must queue
        self._broken = False  # the socket failed, or a send was cut short: write nothing more
        self._events: deque[Event] = deque()
        self._parts: list[str | bytes] = []
        self._size = 0

    @property
    def outbox(self) -> DirectConnection:
        return self

    def push_back(self, events: list[Event]) -> None:
        """Events wsproto parsed along with the handshake, to be received first."""
        self._events.extend(events)

    # --- sending ---------------------------------------------------------------------

    def offer(self, item: Outgoing) -> bool:
        """Write ``item`` now, or queue it; False when the queue is full (slow consumer)."""
        if isinstance(item, Push):
            data = item.wire
            if data is None:
                data = item.wire = frame(item.payload)
        else:
            data = text_frame(codec.encode(item))
        count_out(self._metrics, item)
        return self._put(data)

    def _put(self, data: bytes) -> bool:
        if self._broken:
            return True  # the session is ending; there is nobody to keep it for
        if not self._backlog and not self._sending:
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
        if len(self._backlog) >= self._capacity:
            return False
        self._backlog.append(data)
        self._writer_wakeup.unpark_all()
        return True

    async def run_writer(self) -> None:
        """Send what the kernel did not take at once, as it takes it, until cancelled."""
        while True:
            while not self._backlog:
                await self._writer_wakeup.park()
            if not await self._send_backlog():
                return

    async def _send_backlog(self) -> bool:
        data = b"".join(self._backlog)
        self._backlog.clear()
        self._sending = True
        try:
            await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._broken = True
            return False
        except BaseException:
            self._broken = True  # cut short (cancelled): part of a frame may be out
            raise
        finally:
            self._sending = False
        return True

    async def finish(self, code: int | None, reason: str) -> None:
        """End the connection: queued frames and the close frame first (``code`` None:
        the peer left; 1013: it is not reading, so nothing is sent), then the socket."""
        try:
            if code is not None and not self._broken:
                with trio.move_on_after(FINISH_TIMEOUT):
                    if code != CLOSE_TRY_AGAIN_LATER and self._backlog:
                        await self._send_backlog()
                    if not self._broken:
                        try:
                            closing = self._ws.send(CloseConnection(code=code, reason=reason[:120]))
                        except LocalProtocolError:
                            closing = b""  # the close handshake already happened
                        if code == CLOSE_TRY_AGAIN_LATER:
                            self._backlog.clear()
                            self._put(closing)  # best effort; the buffer is likely full
                        elif closing:
                            await self._stream.send_all(closing)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            with trio.CancelScope(shield=True):
                await self._stream.aclose()

    # --- receiving -------------------------------------------------------------------

    async def receive(self) -> Incoming:
        """The next complete message; answers pings and the close handshake itself."""
        while True:
            while self._events:
                event = self._events.popleft()
                if isinstance(event, TextMessage | BytesMessage):
                    self._size += len(event.data)
                    if self._size > self._max_bytes:
                        return TOO_LARGE
                    self._parts.append(
                        event.data if isinstance(event.data, str) else bytes(event.data)
                    )
                    if event.message_finished:
                        return self._message()
                elif isinstance(event, Ping):
                    self._put(self._ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    self._close_handshake(event)
                    return None
            try:
                data = await self._stream.receive_some(_RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return None
            if not data:
                return None
            self._ws.receive_data(data)
            self._events.extend(self._ws.events())

    def _message(self) -> str | bytes:
        parts, self._parts, self._size = self._parts, [], 0
        if isinstance(parts[0], str):
            return "".join(parts)  # type: ignore[arg-type]
        return b"".join(parts)  # type: ignore[arg-type]

    def _close_handshake(self, event: CloseConnection) -> None:
        if self._ws.state is ConnectionState.REMOTE_CLOSING:
            self._put(self._ws.send(event.response()))
        else:
            # wsproto failed the connection (e.g. invalid UTF-8: 1007): say why.
            self._put(self._ws.send(CloseConnection(code=event.code, reason=event.reason)))
