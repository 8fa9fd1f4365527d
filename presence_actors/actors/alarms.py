"""Alarms: one task that wakes user actors when their next timer is due.

Every user actor has a next deadline (a heartbeat timeout, away detection, the
end of a grace period, a held-back push). Waiting on it with a cancel scope of
its own costs one scope per wait, which measured as the largest single cost of
an actor's turn; instead each actor makes sure an alarm is set no later than
its deadline and waits on its inbox alone. This task sleeps until the earliest
alarm, asks the actor for its deadline *now* — a heartbeat has usually moved
it later, and then the alarm is simply set again, without waking the actor —
and otherwise rings: the actor gets a :class:`Tick` in its inbox, in order with
everything else, deterministic under ``trio.testing.MockClock``.
"""

from __future__ import annotations

import heapq
import math
from typing import Protocol

import trio

# Rebuild the heap once stale entries (alarms moved or cancelled) outnumber live ones
# by this much, so memory stays proportional to the number of actors.
_STALE_SLACK = 1024
# How far ahead of now a wake also checks alarms (seconds): see ``run``.
LOOK_AHEAD = 1.0


class Sleeper(Protocol):
    """What an alarm is for."""

    @property
    def deadline(self) -> float:
        """When it needs waking now (``math.inf``: not at all); read by the alarm task."""
        ...

    def ring(self) -> None:
        """Wake it (from the alarm task; must not block)."""
        ...


class Alarms:
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, str]] = []
        self._due: dict[str, tuple[float, Sleeper]] = {}
        self._sequence = 0  # tie-break: equal deadlines ring in the order they were set
        self._wakeup: trio.CancelScope | None = None

    def __len__(self) -> int:
        return len(self._due)

    def ensure(self, key: str, deadline: float, sleeper: Sleeper) -> None:
        """Make sure ``key`` has an alarm no later than ``deadline``.

        A no-op when one is set already at or before it (the common case: a
        heartbeat only postpones the deadline). ``math.inf`` never sets one.
        """
        current = self._due.get(key)
        if deadline == math.inf or (
            current is not None and current[0] <= deadline and current[1] is sleeper
        ):
            return
        self._schedule(key, deadline, sleeper)
        if self._wakeup is not None and deadline < self._wakeup.deadline:
            self._wakeup.deadline = deadline

    def _schedule(self, key: str, deadline: float, sleeper: Sleeper) -> None:
        self._due[key] = (deadline, sleeper)
        self._sequence += 1
        heapq.heappush(self._heap, (deadline, self._sequence, key))
        if len(self._heap) > 2 * len(self._due) + _STALE_SLACK:
            self._heap = [(d, i, k) for d, i, k in self._heap if self._due.get(k, (None,))[0] == d]
            heapq.heapify(self._heap)

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
            # Alarms due soon are looked at now as well: most were set before a
            # heartbeat moved their deadline, and re-setting them here saves a
            # wake (a cancel scope and a task switch) each. Only those really
            # due ring, so no timer fires early.
            horizon = now + LOOK_AHEAD
            due: list[tuple[float, str]] = []
            while self._heap and self._heap[0][0] <= horizon:
                deadline, _, key = heapq.heappop(self._heap)
                due.append((deadline, key))
            for deadline, key in due:
                current = self._due.get(key)
                if current is None or current[0] != deadline:
                    continue  # stale: moved earlier since
                sleeper = current[1]
                actual = sleeper.deadline
                if actual <= now:
                    del self._due[key]
                    sleeper.ring()
                elif actual == math.inf:
                    del self._due[key]
                else:
                    self._schedule(key, actual, sleeper)

    def _next(self) -> float:
        while self._heap:
            deadline, _, key = self._heap[0]
            current = self._due.get(key)
            if current is not None and current[0] == deadline:
                return deadline
            heapq.heappop(self._heap)  # stale: moved or cancelled
        return math.inf
