"""Alarms: one task that wakes user actors when their next timer is due.

Every user actor has a next deadline (a heartbeat timeout, away detection, the
end of a grace period, a held-back push). Waiting on it with a cancel scope of
its own costs one scope per wait, which measured as the largest single cost of
an actor's turn; instead each actor *sets* its alarm (a heap push) and waits on
its inbox alone. This task sleeps until the earliest alarm and delivers a wake
call into that actor's inbox, so timers are ordinary messages: ordered with the
actor's other messages, and deterministic under ``trio.testing.MockClock``.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable

import trio

# Rebuild the heap once stale entries (alarms moved or cancelled) outnumber live ones
# by this much, so memory stays proportional to the number of actors.
_STALE_SLACK = 1024


class Alarms:
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, str]] = []
        self._due: dict[str, tuple[float, Callable[[], None]]] = {}
        self._sequence = 0  # tie-break: equal deadlines ring in the order they were set
        self._wakeup: trio.CancelScope | None = None

    def __len__(self) -> int:
        return len(self._due)

    def set(self, key: str, deadline: float, ring: Callable[[], None]) -> None:
        """Ring ``ring()`` once at ``deadline`` (replacing ``key``'s previous alarm).

        ``math.inf`` cancels. ``ring`` runs in the alarm task and must not block.
        """
        if deadline == math.inf:
            self._due.pop(key, None)
            return
        current = self._due.get(key)
        if current is not None and current[0] == deadline:
            self._due[key] = (deadline, ring)
            return
        self._due[key] = (deadline, ring)
        self._sequence += 1
        heapq.heappush(self._heap, (deadline, self._sequence, key))
        if len(self._heap) > 2 * len(self._due) + _STALE_SLACK:
            self._heap = [(d, i, k) for d, i, k in self._heap if self._due.get(k, (None,))[0] == d]
            heapq.heapify(self._heap)
        if self._wakeup is not None and deadline < self._wakeup.deadline:
            self._wakeup.deadline = deadline

    def cancel(self, key: str) -> None:
        self._due.pop(key, None)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Ring alarms as they come due, until cancelled.

        Alarms due at the same moment ring in deadline order, then in the order
        they were set.
        """
        task_status.started()
        while True:
            with trio.CancelScope(deadline=self._next()) as self._wakeup:
                await trio.sleep_forever()
            self._wakeup = None
            now = trio.current_time()
            while self._heap and self._heap[0][0] <= now:
                deadline, _, key = heapq.heappop(self._heap)
                current = self._due.get(key)
                if current is not None and current[0] == deadline:
                    del self._due[key]
                    current[1]()

    def _next(self) -> float:
        while self._heap:
            deadline, _, key = self._heap[0]
            current = self._due.get(key)
            if current is not None and current[0] == deadline:
                return deadline
            heapq.heappop(self._heap)  # stale: moved or cancelled
        return math.inf
