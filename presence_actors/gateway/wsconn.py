"""What a WebSocket session needs from its connection, whichever way it is served."""

from __future__ import annotations

import enum
from typing import Protocol

import trio

from ..actors.session import Outbox, Outgoing
from ..metrics import Metrics
from ..protocol import Error, Push, PushBatch


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
    needs (the session cancels it when it ends); ``finish`` ends the
    connection, from the server's side when it has a close code.
    """

    @property
    def outbox(self) -> Outbox: ...

    async def receive(self) -> Incoming: ...

    async def serve_writes(self, nursery: trio.Nursery) -> None: ...

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
