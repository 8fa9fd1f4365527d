"""A WebSocket connection served on its own socket, past hypercorn.

What the server sends is written by whoever offers it — the registry fanning
out a push, an actor replying — straight into the socket's kernel buffer with
one non-blocking ``write``; only what the kernel does not take right now waits,
in order, for a writer task started for the occasion. A push's frame bytes
are built once and written to every watcher as they are. That is the whole
send path: no task switch, no per-watcher encoding, and an idle connection
costs one task (its reader).

Ownership (issue 11, item 1): only this object writes to its socket, and only
until its close starts. :meth:`DirectConnection.begin_close` is a one-way latch,
set synchronously in the step that starts the close (the engine or the session
asking to close, the peer's Close frame, the peer leaving); from then on every
offer is dropped, so the close frame, if one is sent, is the last frame
(RFC 6455 5.5.1). Writes take the descriptor from the socket object at the
moment of writing, never a cached number: once the socket is closed that is
-1 and a write fails instead of reaching whatever socket the kernel gave the
number to next.
"""

from __future__ import annotations

import itertools
import os
import socket
import struct
from collections import deque

import trio

from .. import codec
from ..actors.session import CLOSE_TRY_AGAIN_LATER, Outgoing
from ..config import LimitSettings
from ..metrics import Metrics
from ..protocol import Push, PushBatch
from .frames import OP_PONG, FrameReader, Kind, close_frame, frame
from .wsconn import FINISH_TIMEOUT, SLOW_FINISH_TIMEOUT, TOO_LARGE, Incoming, count_out

_RECEIVE_SIZE = 65536
# Every direct connection reads into this one buffer: the event loop's thread is the
# only reader, and each read is decoded or copied out before the next can start.
_READ_VIEW = memoryview(bytearray(_RECEIVE_SIZE))
# After the close frame, how long and how much of the peer's input is read and
# dropped while waiting for it to close (see DirectConnection._end_input).
DRAIN_TIMEOUT = 2.0
DRAIN_BYTES = 1 << 20
# Frames one write hands the kernel at most (writev's IOV_MAX is 1024 on Linux).
_WRITE_FRAMES = 256


class DirectConnection:
    """The session's outbox is the connection itself: ``offer`` writes at once.

    ``_frames`` are whole frames not yet written; the first may be partly
    written (``_sent`` bytes of it), the rest wait behind it. A frame is never
    cut: a write resumes where the last one stopped, and cancellation can only
    land between writes, where the count is exact.
    """

    def __init__(self, stream: trio.SocketStream, metrics: Metrics, limits: LimitSettings) -> None:
        self._stream = stream
        # The socket's own fileno method: asked at every write, it answers -1 once the
        # socket is closed. Never a number kept from before (see the module docstring).
        self._fileno = stream.socket.fileno
        self._metrics = metrics
        self._capacity = limits.outbound_queue
        self._max_bytes = limits.outbound_bytes
        self._reader = FrameReader(limits.max_message_bytes, limits.max_fragments)
        self._frames: deque[bytes] = deque()
        self._sent = 0  # bytes of _frames[0] already written
        self._waiting = 0  # bytes of the frames behind _frames[0]
        self._nursery: trio.Nursery | None = None
        self._writing = False  # a writer task owns the sends: offers must queue
        self._failed = False  # the socket failed: nothing more is written
        self._closing = False  # the latch: the close started, no offer is taken
        self._close_code: int | None = None

    @property
    def outbox(self) -> DirectConnection:
        return self

    def feed(self, data: bytes) -> None:
        """Bytes that came with the handshake (frames a client sent early)."""
        self._reader.feed(data)

    # --- sending ---------------------------------------------------------------------

    def offer(self, item: Outgoing) -> bool:
        """Write ``item`` now, or queue it; False when the queue is full (slow consumer).

        Once the close started the item is dropped (True: there is nobody to
        keep it for, and the session is ending anyway).
        """
        if self._closing:
            return True
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
        if not self._put(data):
            return False
        count_out(self._metrics, item)
        return True

    def _put(self, data: bytes) -> bool:
        frames = self._frames
        if frames:
            behind = len(frames) - 1
            if behind >= self._capacity or (behind and self._waiting + len(data) > self._max_bytes):
                return False
            frames.append(data)
            self._waiting += len(data)
            return True
        if self._failed:
            return True
        sent = self._write(data)
        if sent < len(data) and not self._failed:
            frames.append(data)
            self._sent = sent
            if not self._writing and self._nursery is not None:
                self._writing = True
                self._nursery.start_soon(self._write_backlog)
        return True

    def _write(self, data: bytes | list[bytes | memoryview]) -> int:
        """One non-blocking write of ``data`` (or of several buffers at once); the bytes
        written (0: the kernel buffer is full)."""
        try:
            fd = self._fileno()  # the socket's descriptor now: -1 once it is closed
            return os.write(fd, data) if isinstance(data, bytes) else os.writev(fd, data)
        except BlockingIOError:
            return 0
        except OSError:
            self._failed = True  # reset, or closed: the reader sees it next
            self._frames.clear()
            self._sent = self._waiting = 0
            return 0

    def _wrote(self, count: int) -> None:
        frames = self._frames
        while count:
            rest = len(frames[0]) - self._sent
            if count < rest:
                self._sent += count
                return
            count -= rest
            frames.popleft()
            self._sent = 0
            if frames:
                self._waiting -= len(frames[0])

    async def _flush(self) -> None:
        """Write the queue as the socket takes it. Cancellation lands between writes."""
        frames = self._frames
        while frames and not self._failed:
            buffers: list[bytes | memoryview] = [memoryview(frames[0])[self._sent :]]
            buffers.extend(itertools.islice(frames, 1, _WRITE_FRAMES))
            sent = self._write(buffers)
            if sent:
                self._wrote(sent)
                await trio.lowlevel.checkpoint()
            elif not self._failed:
                await trio.lowlevel.wait_writable(self._stream.socket)

    async def serve_writes(self, nursery: trio.Nursery) -> None:
        """Where a writer task is started when the kernel buffer is full."""
        self._nursery = nursery

    async def _write_backlog(self) -> None:
        """Send the queue as the socket takes it; direct writes resume once it is empty."""
        try:
            await self._flush()
        finally:
            self._writing = False

    def begin_close(self, code: int | None, reason: str) -> None:
        """Start closing: from now on every offer is dropped. Synchronous, idempotent.

        With a ``code`` the close frame is queued after what is already queued
        (1013, a peer that is not reading: after the rest of the frame in
        flight only; frames not started are dropped). ``code`` None: the peer
        left, nothing more is sent.
        """
        if self._closing:
            return
        self._closing = True
        self._close_code = code
        if code is None or self._failed:
            self._frames.clear()
            self._sent = self._waiting = 0
            return
        frames = self._frames
        if code == CLOSE_TRY_AGAIN_LATER and frames:
            started = frames[0] if self._sent else None
            frames.clear()
            self._waiting = 0
            if started is None:
                self._sent = 0
            else:
                frames.append(started)
        closing = close_frame(code, reason)
        if frames:
            frames.append(closing)
            self._waiting += len(closing)
        else:
            sent = self._write(closing)
            if sent < len(closing) and not self._failed:
                frames.append(closing)  # the running writer, or finish, sends the rest
                self._sent = sent

    async def finish(self, code: int | None, reason: str) -> None:
        """End the connection: what is queued and the close frame first, within
        :data:`FINISH_TIMEOUT` (:data:`SLOW_FINISH_TIMEOUT` after 1013), then the socket.

        If the peer did not take a frame whole in time, the connection is reset
        rather than ended normally, so no peer reads a cut frame as the end.
        Call it once the session's nursery (and so the writer task) is done.
        """
        self._nursery = None
        self.begin_close(code, reason)
        try:
            if self._frames and not self._failed:
                slow = self._close_code == CLOSE_TRY_AGAIN_LATER
                with trio.move_on_after(SLOW_FINISH_TIMEOUT if slow else FINISH_TIMEOUT):
                    await self._flush()
                if self._frames and not self._failed and self._sent:
                    self._stream.socket.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
            if self._close_code is not None and not self._frames and not self._failed:
                await self._end_input()
        except OSError:
            pass
        finally:
            self._frames.clear()
            with trio.CancelScope(shield=True):
                await self._stream.aclose()

    async def _end_input(self) -> None:
        """Once the close frame is out whole: send FIN, then read and drop what the
        peer still sends until it closes too, within :data:`DRAIN_TIMEOUT` and
        :data:`DRAIN_BYTES`.

        Closing a socket with unread input makes the kernel reset the
        connection, and the reset can destroy the close frame the peer has not
        read yet: a slow consumer that keeps its heartbeat going would read a
        reset instead of 1013. Past either bound the socket is closed as it is.
        """
        stream = self._stream
        dropped = 0
        with trio.move_on_after(DRAIN_TIMEOUT):
            try:
                await stream.send_eof()
                while dropped < DRAIN_BYTES:
                    data = await stream.receive_some(_RECEIVE_SIZE)
                    if not data:
                        return
                    dropped += len(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return

    # --- receiving -------------------------------------------------------------------

    async def receive(self) -> Incoming:
        """The next complete message; answers pings and the close handshake itself.

        None once the peer closed, failed the protocol or left (the close is
        then started: see :meth:`begin_close`).

        Waits for the socket to be readable before reading: more is asked for
        only when what was read holds no whole message, and then the kernel
        has almost never more yet (an idle connection's next heartbeat is
        seconds away), so reading first, as ``receive_some`` does, would cost a
        failed read and an exception per message. A read that is exactly one
        small text frame (a heartbeat) is decoded straight from the read
        buffer (:meth:`FrameReader.whole_text`). A checkpoint, always.
        """
        reader = self._reader
        socket_ = self._stream.socket
        while True:
            received = reader.next()
            if received is None:
                try:
                    await trio.lowlevel.wait_readable(socket_)
                except (trio.ClosedResourceError, trio.BusyResourceError):
                    count = 0
                else:
                    try:
                        # The descriptor now, as for writes: -1 once closed, and the read fails.
                        count = os.readv(self._fileno(), (_READ_VIEW,))
                    except BlockingIOError:
                        continue  # woken with nothing to read (another event on the socket)
                    except OSError:
                        count = 0
                if not count:
                    self.begin_close(None, "")
                    return None
                # Taken out of the shared buffer (decoded, or copied into the reader)
                # before any other read can start.
                text = reader.whole_text(_READ_VIEW[:count])
                if text is not None:
                    return text
                continue
            kind = received.kind
            if kind is Kind.TEXT or kind is Kind.BINARY:
                return received.data
            if kind is Kind.PING:
                assert isinstance(received.data, bytes)
                if not self._closing:
                    self._put(frame(received.data, OP_PONG))
            elif kind is Kind.TOO_BIG:
                return TOO_LARGE
            else:  # CLOSE from the peer (echo its code), or a protocol violation (FAILED)
                echo = received.code if kind is Kind.CLOSE and received.code != 1005 else 1000
                self.begin_close(
                    echo if kind is Kind.CLOSE else received.code,
                    received.reason,
                )
                return None
