"""What a WebSocket session needs from its connection, whichever way it is served."""

from __future__ import annotations

import enum
from typing import Protocol

import trio

from ..actors.session import Outbox, Outgoing
from ..metrics import Metrics
from ..protocol import Error, Push, PushBatch

# How long finishing (what was queued, then the close frame) may take when the
# peer reads; past it the connection is dropped.
FINISH_TIMEOUT = 1.0
# A slow consumer (1013), or a peer that left, is known not to be reading right
# now: it gets longer to come back for the frame in flight and the close frame.
SLOW_FINISH_TIMEOUT = 5.0


class _TooLarge(enum.Enum):
    TOO_LARGE = "too large"


TOO_LARGE = _TooLarge.TOO_LARGE
# A received message: text, a binary frame, one over the size limit, or None when
# the peer has left.
Incoming = str | bytes | _TooLarge | None


class Connection(Protocol):
    """One accepted WebSocket connection.

    ``outbox`` is what the engine offers to (it never waits); ``serve_writes``
    gives the connection the session's nursery for whatever writer task it
    needs (the session cancels it when it ends). ``begin_close`` is the latch
    that starts the end, synchronously and before any await: from then on the
    outbox drops every offer, so nothing follows the close frame (code None:
    the peer left, no close frame); the first call wins. ``finish`` then ends
    the connection, bounded in time: what was queued before the latch, the
    close frame, the socket.
    """

    @property
    def outbox(self) -> Outbox: ...

    async def receive(self) -> Incoming: ...

    async def serve_writes(self, nursery: trio.Nursery) -> None: ...

    def begin_close(self, code: int | None, reason: str) -> None: ...

    async def finish(self, code: int | None, reason: str) -> None: ...


def count_out(metrics: Metrics, item: Outgoing) -> None:
    if isinstance(item, Push):
        metrics.messages_out["user_status_change"] += 1
        return
    if isinstance(item, PushBatch):
        metrics.messages_out["user_status_change"] += len(item.pushes)
        return
    metrics.messages_out[item.TYPE] += 1
    if isinstance(item, Error):
        metrics.errors[item.code.value] += 1
