"""Wall-clock timestamps derived from the trio clock.

The engine measures every interval on ``trio.current_time()`` so that it runs
under ``trio.testing.MockClock``; the moments clients see (lastSeen, message
timestamps) are that time shifted by a fixed offset taken once at start.
"""

from __future__ import annotations

import time

import trio
from attrs import frozen


@frozen
class WallClock:
    offset: float  # unix seconds minus trio seconds

    @classmethod
    def start(cls) -> WallClock:
        return cls(time.time() - trio.current_time())

    def ms(self, trio_time: float) -> int:
        """Unix milliseconds of a moment on the trio clock."""
        return int((trio_time + self.offset) * 1000)

    def now_ms(self) -> int:
        return self.ms(trio.current_time())
