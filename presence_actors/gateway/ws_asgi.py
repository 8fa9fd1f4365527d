"""A WebSocket connection served through hypercorn's ASGI interface.

Used for upgrades the direct path does not take (TLS, a second request on a
kept-alive connection). Every message goes through the session's memory
outbox (bounded in messages and bytes) and a writer task. Hypercorn owns the
socket; what this side guarantees is the order: once the close started
(:meth:`AsgiConnection.begin_close`), the outbox takes nothing more, and the
close message is the last thing handed to hypercorn.
"""

from __future__ import annotations

import trio

from .. import codec
from ..actors import MemoryOutbox
from ..actors.session import CLOSE_TRY_AGAIN_LATER, Outgoing
from ..config import LimitSettings
from ..metrics import Metrics
from ..protocol import Push, PushBatch
from .asgi import Receive, Send
from .wsconn import FINISH_TIMEOUT, SLOW_FINISH_TIMEOUT, TOO_LARGE, Incoming, count_out


class AsgiConnection:
    def __init__(
        self, receive: Receive, send: Send, metrics: Metrics, limits: LimitSettings
    ) -> None:
        self._receive = receive
        self._send = send
        self._metrics = metrics
        self._max_bytes = limits.max_message_bytes
        self.outbox = MemoryOutbox(limits.outbound_queue, limits.outbound_bytes)
        self._closing = False
        # Once the close started, every send must be done by then (a peer that does
        # not read cannot hold the session); the send in progress gets it too.
        self._deadline = float("inf")
        self._sending: trio.CancelScope | None = None

    async def receive(self) -> Incoming:
        event = await self._receive()
        if event["type"] != "websocket.receive":
            self.begin_close(None, "")
            return None  # websocket.disconnect: the client left
        text: str | None = event.get("text")
        if text is None:
            data: bytes = event.get("bytes") or b""
            return TOO_LARGE if len(data) > self._max_bytes else data
        most = self._max_bytes
        if len(text) > most or (len(text) * 4 > most and len(text.encode()) > most):
            return TOO_LARGE
        return text

    async def serve_writes(self, nursery: trio.Nursery) -> None:
        nursery.start_soon(self._writer)

    async def _writer(self) -> None:
        receive = self.outbox.receive
        while True:
            try:
                item, data = await receive.receive_entry()
            except trio.EndOfChannel:
                return
            await self._write(item, data)

    def begin_close(self, code: int | None, reason: str) -> None:
        """The latch: the outbox takes nothing more; a slow consumer's backlog is dropped."""
        if self._closing:
            return
        self._closing = True
        self.outbox.close()
        slow = code is None or code == CLOSE_TRY_AGAIN_LATER
        if slow:
            self.outbox.clear()
        self._deadline = trio.current_time() + (SLOW_FINISH_TIMEOUT if slow else FINISH_TIMEOUT)
        if self._sending is not None:
            self._sending.deadline = self._deadline

    async def finish(self, code: int | None, reason: str) -> None:
        """Send what was queued before the close started (unless the peer is not
        reading) and the close frame, each within a bounded time; nothing when
        the peer left (``code`` None): hypercorn ends the connection.

        Hypercorn shields its own socket writes, so a peer that reads nothing
        at all holds a send (and this task) until it reads or its TCP
        connection dies; the engine has let the session go by then.
        """
        self.begin_close(code, reason)
        if code is None:
            return
        receive = self.outbox.receive
        with trio.move_on_at(self._deadline):
            while True:
                try:
                    item, data = receive.receive_entry_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                await self._write(item, data)
        with trio.move_on_after(FINISH_TIMEOUT):
            await self._send({"type": "websocket.close", "code": code, "reason": reason[:120]})

    async def _write(self, item: Outgoing, data: bytes | None = None) -> None:
        """Send one item; ``data`` is its JSON when the outbox measured it (not twice)."""
        if isinstance(item, PushBatch):
            for push in item.pushes:
                await self._write(push)
            return
        if isinstance(item, Push):
            text = item.frame
        else:
            text = data.decode() if data is not None else codec.encode(item)
        count_out(self._metrics, item)
        # Shielded: a send cancelled half-way loses the frame inside hypercorn
        # (the frame is encoded before the socket lock is taken). Cancellation
        # lands between messages instead; once the close started, the shield
        # has a deadline.
        with trio.CancelScope(shield=True, deadline=self._deadline) as self._sending:
            await self._send({"type": "websocket.send", "text": text})
        self._sending = None
