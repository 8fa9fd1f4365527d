"""A bound in bytes for a queue that trio bounds in items.

A memory channel holds at most N messages, however large each one is. Where
messages differ in size by orders of magnitude (a request naming a thousand
users against a heartbeat), the senders also take their message's weight from
a :class:`ByteBudget` before sending, and the receiver gives it back once it
took the message.
"""

from __future__ import annotations

import trio


class ByteBudget:
    def __init__(self, most: int) -> None:
        self._most = most
        self._used = 0
        self._waiting = trio.lowlevel.ParkingLot()

    @property
    def used(self) -> int:
        return self._used

    async def take(self, weight: int) -> None:
        """Wait until ``weight`` fits, then take it; an item larger than the whole
        budget is let through alone. Cancellation takes nothing. Not a checkpoint
        when it fits at once."""
        if self._fits(weight) and not self._waiting:
            self._used += weight
            return
        while True:
            await self._waiting.park()
            if self._fits(weight):
                break
        self._used += weight

    def give(self, weight: int) -> None:
        """Give back what a received item took, and let the waiters try again."""
        self._used -= weight
        self._waiting.unpark_all()

    def _fits(self, weight: int) -> bool:
        return not self._used or self._used + weight <= self._most
