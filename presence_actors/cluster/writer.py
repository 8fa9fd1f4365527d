"""The engine's writer in cluster mode: intents go to Redis, not to a local SQLite.

The engine submits the same intents in both modes. Here a user's presence rows
need no writing (the merge of the node's report is the record), the reason of
a status change goes with the next report into the user's history, and policy
changes (contacts, blocks, visibility) are written to Redis in order by the
link's policy task; ``flush`` returns once everything submitted before it is
in Redis (durable as Redis is configured: see docs/ARCHITECTURE.md).
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

import trio

from ..persistence.backlog import Loss
from ..persistence.batch import BatchResult
from ..persistence.intents import Intent, PresenceEvent, PresenceRow
from ..persistence.writer import WriterNotRunning, WriterStatistics
from . import policy_store
from .policy_store import PolicyIntent

if TYPE_CHECKING:
    from .link import ClusterLink

# Policy changes waiting for Redis at most (the registry refuses more: STORE_ERROR).
POLICY_QUEUE = 10_000


class ClusterWriter:
    def __init__(self, link: ClusterLink) -> None:
        self._link = link
        self._queue: deque[PolicyIntent] = deque()
        self._submitted = 0
        self._written = 0
        self._progress = trio.Event()
        self._wake = trio.Event()
        self._stopped = False
        self.loss: Loss | None = None
        self.failures = 0

    # --- what the engine and the gateway use, as with the PersistenceActor -------------

    @property
    def writable(self) -> bool:
        return self._link.connected and not self._stopped

    @property
    def problem(self) -> str | None:
        if self._stopped:
            return "the cluster link has stopped"
        return self._link.problem

    def statistics(self) -> WriterStatistics:
        return WriterStatistics(
            pending_intents=len(self._queue) + self._link.publisher.pending,
            batches_committed=self._link.merger.merges,
            committed=BatchResult(),
            commit_failures=self.failures,
            failing=not self._link.connected,
            last_error=self._link.problem,
            last_commit_seconds=None,
            events_pruned=0,
        )

    def submit_nowait(self, intent: Intent) -> None:
        """Never waits: rows are not needed, events ride with the next report, policy
        changes queue (the registry reserves room first with ``free_slots``)."""
        if self._stopped:
            raise WriterNotRunning("the cluster link has stopped")
        match intent:
            case PresenceRow():
                return
            case PresenceEvent(user_id=user_id, reason=reason, device_id=device):
                self._link.publisher.note_event(user_id, reason, device)
            case _:
                assert isinstance(intent, policy_store.POLICY_INTENTS)
                self._queue.append(intent)
                self._submitted += 1
                self._wake.set()

    async def submit(self, intent: Intent) -> None:
        self.submit_nowait(intent)
        await trio.lowlevel.checkpoint()

    def free_slots(self) -> int:
        """Policy changes accepted now: none while Redis is away (refused up front, so
        nothing is acknowledged that might be lost)."""
        if not self.writable:
            return 0
        return max(0, POLICY_QUEUE - len(self._queue))

    async def flush(self) -> None:
        """Return once every policy change submitted before is in Redis."""
        target = self._submitted
        while self._written < target:
            if self._stopped:
                raise WriterNotRunning("the cluster link stopped before the change was written")
            await self._progress.wait()

    def stop_at(self, deadline: float) -> None:
        pass  # policy changes wait for Redis in the link, bounded by the stop itself

    def note_failure(self, error: str) -> None:
        self.failures += 1

    # --- the link's policy task --------------------------------------------------------

    async def write_policy(self, client: Any, origin: str) -> None:
        """Write queued policy changes in order until cancelled or Redis fails (the
        change being written stays queued and is written again)."""
        while True:
            if not self._queue:
                await self._wake.wait()
                self._wake = trio.Event()
                continue
            await policy_store.write(client, self._queue[0], origin)
            self._queue.popleft()
            self._written += 1
            self._progress.set()
            self._progress = trio.Event()

    def stop(self) -> None:
        """The link stopped: what is still queued is lost (counted for the exit)."""
        self._stopped = True
        if self._queue:
            self.loss = Loss(policy=len(self._queue))
        self._progress.set()
