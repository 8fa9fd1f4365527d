"""Short turns: a long piece of engine work yields to the rest of the server as it goes.

trio runs one task at a time, so a fan-out to thousands of sessions, a bulk
answer of ten thousand users or a privacy change seen by every watcher would
hold every other connection (heartbeats, handshakes, the persistence
batcher) for as long as it takes. Such work spends *units* as it goes (about
one per delivery or view handled, a few microseconds each) and yields once a
turn's worth is spent. Counting units rather than measuring time keeps the
engine deterministic under ``trio.testing.MockClock``: the same work yields at
the same points on any machine.
"""

from __future__ import annotations

import trio

# Units a task may spend before it yields: at a few microseconds a unit (a push
# written into a socket, a view looked up and encoded) a turn stays around
# two milliseconds, so a heartbeat waits at most a few turns.
UNITS_PER_TURN = 500


class Turn:
    """The work budget of one task's turn; that task alone uses it."""

    def __init__(self, units: int = UNITS_PER_TURN) -> None:
        self._units = units
        self._used = 0

    @property
    def spent(self) -> bool:
        return self._used >= self._units

    def restart(self) -> None:
        """A new turn: the task just came back from waiting."""
        self._used = 0

    def charge(self, units: int) -> None:
        """Count ``units`` of work without yielding (the caller checks :attr:`spent`)."""
        self._used += units

    async def spend(self, units: int = 1) -> None:
        """Count ``units`` of work; yield (a checkpoint) once the turn is used up.

        A checkpoint: the caller may be cancelled here, and other tasks run
        before it continues. State the caller walks must be snapshotted or
        owned, since other tasks run in between.
        """
        self._used += units
        if self._used >= self._units:
            self._used = 0
            await trio.lowlevel.checkpoint()
