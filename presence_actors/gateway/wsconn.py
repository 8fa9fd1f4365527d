"""What a WebSocket session needs from its connection, whichever way it is served."""

from __future__ import annotations

import enum
from typing import Protocol

from ..actors.session import Outbox, Outgoing
from ..metrics import Metrics
from ..protocol import Error, Push


class _TooLarge(enum.Enum):
    TOO_LARGE = "too large"


TOO_LARGE = _TooLarge.TOO_LARGE
# A received message: text, a binary frame, one over the size limit, or None when
# the peer has left.
Incoming = str | bytes | _TooLarge | None


class Connection(Protocol):
    """One accepted WebSocket connection.

    ``outbox`` is what the engine offers to (it never waits); ``run_writer``
    sends what the outbox queues until cancelled; ``finish`` ends the
    connection from the server's side with a close code.
    """

    @property
    def outbox(self) -> Outbox: ...

    async def receive(self) -> Incoming: ...

    async def run_writer(self) -> None: ...

    async def finish(self, code: int | None, reason: str) -> None: ...


def count_out(metrics: Metrics, item: Outgoing) -> None:
    if isinstance(item, Push):
        metrics.messages_out["user_status_change"] += 1
        return
    metrics.messages_out[item.TYPE] += 1
    if isinstance(item, Error):
        metrics.errors[item.code.value] += 1
