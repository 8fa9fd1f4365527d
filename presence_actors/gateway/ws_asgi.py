"""A WebSocket connection served through hypercorn's ASGI interface.

Used for upgrades the direct path does not take (TLS, a second request on a
kept-alive connection). Every message goes through the session's memory
outbox and a writer task.
"""

from __future__ import annotations

import trio

from .. import codec
from ..actors import MemoryOutbox
from ..actors.session import CLOSE_TRY_AGAIN_LATER, Outgoing
from ..metrics import Metrics
from ..protocol import Push, PushBatch
from .asgi import Receive, Send
from .wsconn import TOO_LARGE, Incoming, count_out


class AsgiConnection:
    def __init__(
        self, receive: Receive, send: Send, metrics: Metrics, capacity: int, max_bytes: int
    ) -> None:
        self._receive = receive
        self._send = send
        self._metrics = metrics
        self._max_bytes = max_bytes
        self.outbox = MemoryOutbox(capacity)

    async def receive(self) -> Incoming:
        event = await self._receive()
        if event["type"] != "websocket.receive":
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
        async for item in self.outbox.receive:
            await self._write(item)

    async def finish(self, code: int | None, reason: str) -> None:
        """Send what is queued (unless the peer is not reading) and the close frame;
        nothing when the peer left (``code`` None): hypercorn ends the connection."""
        if code is None:
            return
        if code != CLOSE_TRY_AGAIN_LATER:
            while True:
                try:
                    item = self.outbox.receive.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                await self._write(item)
        with trio.CancelScope(shield=True):
            await self._send({"type": "websocket.close", "code": code, "reason": reason[:120]})

    async def _write(self, item: Outgoing) -> None:
        if isinstance(item, PushBatch):
            for push in item.pushes:
                await self._write(push)
            return
        text = item.frame if isinstance(item, Push) else codec.encode(item)
        count_out(self._metrics, item)
        # Shielded: a send cancelled half-way loses the frame inside hypercorn
        # (the frame is encoded before the socket lock is taken). Cancellation
        # lands between messages instead.
        with trio.CancelScope(shield=True):
            await self._send({"type": "websocket.send", "text": text})
