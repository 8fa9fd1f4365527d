"""PersistenceActor: the only task that writes to SQLite.

Submitting never waits. ``submit_nowait`` coalesces the intent into the pending
batch of the :class:`~.backlog.Backlog` on the spot (a row per user, events and
policy changes in order, all bounded), so no actor ever stalls on the store, not
even while it fails. The one task, the *committer*, takes the pending batch when
it is due (``batch_size`` intents, ``flush_interval`` after its first intent, or
a ``flush()``), commits it in a worker thread, retries a failure with backoff
while the next batch keeps coalescing, and afterwards checkpoints the WAL once
it has grown past ``checkpoint_bytes``, and prunes old events every
``prune_interval``.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import time
from collections.abc import Callable
from typing import Protocol, TypeVar, TypeVarTuple

import trio
from attrs import frozen

from ..config import PersistenceSettings
from .backlog import Backlog, Flush, Held, Loss, loss_of
from .batch import BatchResult
from .intents import Intent
from .store import Store

logger = logging.getLogger("presence_actors.persistence")

# First retry soon (a lock is usually released within milliseconds), then back
# off so that a full disk is not hammered; 5 s keeps recovery prompt.
RETRY_INITIAL_DELAY = 0.1
RETRY_MAX_DELAY = 5.0
# A stop whose deadline has passed still gets this long for a last attempt: the
# shutdown records of sessions that ended late need one commit of milliseconds.
LAST_ATTEMPT = 1.0

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


class RunBlocking(Protocol):
    """How the store's blocking calls run: ``trio.to_thread.run_sync`` (the default),
    or inline in the deterministic simulation (a seam)."""

    async def __call__(self, fn: Callable[[*Ts], T], /, *args: *Ts) -> T: ...


async def in_thread(fn: Callable[[*Ts], T], /, *args: *Ts) -> T:
    """``trio.to_thread.run_sync``, looked up at each call (tests may replace it)."""
    return await trio.to_thread.run_sync(fn, *args)


class WriterNotRunning(RuntimeError):
    """The writer is not (or no longer) running, so it cannot accept or flush intents."""


class WritesLost(Exception):
    """The writer stopped with writes it could not commit; the message says which."""

    def __init__(self, loss: Loss, error: str | None) -> None:
        because = f" ({error})" if error else ""
        super().__init__(
            f"the store could not be written before the stop{because}: {loss.describe()}"
            " were not committed and are lost"
        )
        self.loss = loss


@frozen
class WriterStatistics:
    """A snapshot of the writer; ``committed`` sums the results of every commit."""

    pending_intents: int
    batches_committed: int
    committed: BatchResult
    commit_failures: int
    failing: bool
    last_error: str | None
    last_commit_seconds: float | None
    events_pruned: int
    held_bytes: int = 0
    events_dropped: int = 0
    checkpoints: int = 0


class PersistenceActor:
    """Batches write intents into SQLite transactions; see the module docstring.

    Ordering: intents become durable in submission order (row intents of one
    user coalesce, later columns winning); a batch is committed only after every
    earlier one. Nothing accepted is dropped while running, except presence
    events past the backlog's bounds (counted, and logged when the store catches
    up or the writer stops). ``run()`` may be called once; before it starts and
    after it ends, ``submit``/``submit_nowait``/``flush`` raise
    :class:`WriterNotRunning`. ``on_commit(result, seconds)`` runs in the
    committer task after each successful commit (``seconds`` is wall time spent
    in the thread); it must not block, and an exception from it crashes the writer.
    ``run_blocking`` runs each store call (commit, checkpoint, prune); it must
    finish the call even when cancelled, as ``trio.to_thread.run_sync`` does.
    """

    def __init__(
        self,
        store: Store,
        settings: PersistenceSettings,
        *,
        now_ms: Callable[[], int],
        on_commit: Callable[[BatchResult, float], None] | None = None,
        shutdown_timeout: float = 5.0,
        run_blocking: RunBlocking = in_thread,
    ) -> None:
        if settings.batch_size < 1 or settings.queue_size < 1:
            raise ValueError("persistence.batch_size and persistence.queue_size must be >= 1")
        if settings.retention > 0 and settings.prune_interval <= 0:
            raise ValueError("persistence.prune_interval must be > 0 when retention is on")
        self._store = store
        self._settings = settings
        self._now_ms = now_ms
        self._on_commit = on_commit
        self._shutdown_timeout = shutdown_timeout
        self._run_blocking = run_blocking
        self._backlog = Backlog(
            max_items=settings.queue_size,
            max_bytes=settings.queue_bytes,
            flush_interval=settings.flush_interval,
        )
        self._due = trio.Event()  # set when the pending batch's due time changed
        self._running = False
        self._stopped = False
        self._stop_deadline: float | None = None
        self._batches_committed = 0
        self._committed = BatchResult()
        self._commit_failures = 0
        self._failing = False
        self._last_error: str | None = None
        self._last_commit_seconds: float | None = None
        self._events_pruned = 0
        self._checkpoints = 0
        self._checkpoint_failing = False
        self.loss: Loss | None = None
        """After ``run()`` ended: what it could not commit (empty if nothing)."""

    @property
    def writable(self) -> bool:
        """True while running with commits succeeding (for a readiness probe)."""
        return self._running and not self._failing

    @property
    def problem(self) -> str | None:
        """Why the store is not writable now, in a few words; None while it is."""
        if not self._running:
            return f"the persistence writer {'has stopped' if self._stopped else 'is not started'}"
        return self._last_error if self._failing else None

    def statistics(self) -> WriterStatistics:
        """A consistent snapshot; cheap enough for every metrics scrape."""
        backlog = self._backlog
        return WriterStatistics(
            pending_intents=backlog.intents,
            batches_committed=self._batches_committed,
            committed=self._committed,
            commit_failures=self._commit_failures,
            failing=self._failing,
            last_error=self._last_error,
            last_commit_seconds=self._last_commit_seconds,
            events_pruned=self._events_pruned,
            held_bytes=backlog.bytes,
            events_dropped=backlog.dropped_total,
            checkpoints=self._checkpoints,
        )

    def submit_nowait(self, intent: Intent) -> None:
        """Accept ``intent`` now; never blocks and never raises ``trio.WouldBlock``.

        A presence event past the backlog's bounds is dropped and counted (the
        first drop of an episode is logged). Not a checkpoint.
        """
        self._check_running()
        backlog = self._backlog
        if not backlog.add(intent, trio.current_time()) and backlog.dropped == 1:
            logger.warning(
                "the store is behind (%s): %d events and policy changes held, %d bytes;"
                " further presence events are dropped (and counted) until it catches up",
                self._last_error or "commits are behind",
                backlog.items,
                backlog.bytes,
            )
        intents = backlog.pending.batch.intents
        # The first intent starts the batch's flush_interval: the committer parks anew.
        if intents == 1 or intents >= self._settings.batch_size:
            self._due.set()

    async def submit(self, intent: Intent) -> None:
        """:meth:`submit_nowait`, then a checkpoint; it never waits for the store."""
        self.submit_nowait(intent)
        await trio.lowlevel.checkpoint()

    def free_slots(self) -> int:
        """How many policy changes (contacts, blocks, visibility) are accepted now.

        0 while the store is failing or the writer is not running, so that such
        changes are refused up front instead of being acknowledged and then lost.
        """
        if not self.writable:
            return 0
        return self._backlog.free_slots()

    async def flush(self) -> None:
        """Return once every intent submitted before this call is committed.

        Waits through commit retries for as long as they take: callers that need
        a bound use ``trio.fail_after``. Cancelling it abandons only the wait.
        Raises :class:`WriterNotRunning` if the writer stops before the commit.
        """
        self._check_running()
        marker = Flush()
        self._backlog.add_flush(marker)
        self._due.set()
        await marker.done.wait()
        if not marker.committed:
            raise WriterNotRunning("the persistence writer stopped before the flush completed")

    def note_failure(self, error: str) -> None:
        """The store refused a write made outside the writer (recovery at start):
        not writable until a commit succeeds."""
        self._failing = True
        self._last_error = error

    def stop_at(self, deadline: float) -> None:
        """The final flush after cancellation gives up at ``deadline`` (trio time),
        apart from one :data:`LAST_ATTEMPT`; default: ``shutdown_timeout`` after it starts."""
        self._stop_deadline = deadline

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled; ready (``started()``) as soon as intents are accepted.

        On cancellation, a commit already in its thread finishes (threads are
        never abandoned), then everything still held is committed in order under
        a shielded scope that ends at the :meth:`stop_at` deadline. What could not
        be committed is logged in one error line and kept in :attr:`loss`;
        waiting ``flush()`` calls raise :class:`WriterNotRunning`.
        """
        if self._running or self._stopped:
            raise RuntimeError("PersistenceActor.run() can only be called once")
        self._running = True
        try:
            task_status.started()
            await self._commit_loop()
        finally:
            self._running = False
            self._stopped = True
            await self._final_flush()

    def _check_running(self) -> None:
        if not self._running:
            state = "has stopped" if self._stopped else "has not been started"
            raise WriterNotRunning(f"the persistence writer {state}")

    async def _commit_loop(self) -> None:
        settings = self._settings
        pruning = settings.retention > 0
        next_prune = trio.current_time() if pruning else math.inf
        while True:
            if trio.current_time() >= next_prune:
                await self._prune()
                next_prune = trio.current_time() + settings.prune_interval
            pending = self._backlog.pending
            if not pending.is_due(trio.current_time(), settings.batch_size):
                # No checkpoint between the check above and parking here.
                self._due = trio.Event()
                with trio.move_on_at(min(pending.due_at, next_prune)):
                    await self._due.wait()
                continue
            await self._make_durable(self._backlog.take())
            await self._checkpoint_if_due()

    async def _make_durable(self, held: Held) -> None:
        """Commit ``held``, retrying with backoff until it succeeds.

        Only ``sqlite3.OperationalError`` (locked, busy, full, I/O, ...) is
        retried; any other error is a bug and propagates. Cancellation during a
        backoff leaves the batch uncommitted; a commit already in its thread
        always completes (the thread is not abandoned).
        """
        delay = RETRY_INITIAL_DELAY
        failures = 0
        while held.batch.intents:
            started = time.perf_counter()
            try:
                result = await self._run_blocking(self._store.commit, held.batch)
            except sqlite3.OperationalError as exc:
                failures += 1
                self._commit_failures += 1
                self._failing = True
                self._last_error = str(exc)
                logger.warning(
                    "committing %d intents failed (%s); retrying in %.1f s",
                    held.batch.intents,
                    exc,
                    delay,
                )
                await trio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_DELAY)
                continue
            seconds = time.perf_counter() - started
            # Settle it before any checkpoint, so a cancellation arriving now
            # cannot make the final flush write it a second time.
            self._backlog.settle(held)
            if failures:
                logger.info("commit succeeded after %d failed attempts", failures)
            self._caught_up()
            self._batches_committed += 1
            self._committed += result
            self._last_commit_seconds = seconds
            if self._on_commit is not None:
                self._on_commit(result, seconds)
        self._backlog.settle(held)  # also a batch of flushes only
        held.finish(committed=True)

    def _caught_up(self) -> None:
        self._failing = False
        backlog = self._backlog
        if backlog.dropped:
            logger.warning(
                "the store caught up; %d presence events were dropped while it was behind",
                backlog.dropped,
            )
            backlog.dropped = 0

    async def _checkpoint_if_due(self) -> None:
        """Checkpoint and truncate the WAL once it is ``checkpoint_bytes`` or more.

        A failure (a full disk: the database file cannot grow) is logged once per
        episode and retried after the next commit; the WAL keeps every commit.
        """
        store = self._store
        if store.wal_bytes() < self._settings.checkpoint_bytes:
            return
        try:
            done = await self._run_blocking(store.checkpoint)
        except sqlite3.OperationalError as exc:
            if not self._checkpoint_failing:
                logger.warning("checkpointing the WAL failed (%s); retrying after commits", exc)
            self._checkpoint_failing = True
            return
        self._checkpoint_failing = False
        self._checkpoints += done

    async def _prune(self) -> None:
        cutoff = self._now_ms() - round(self._settings.retention * 1000)
        try:
            pruned = await self._run_blocking(self._store.prune_events, cutoff)
        except sqlite3.OperationalError as exc:
            logger.warning(
                "pruning presence events failed (%s); next attempt in %.0f s",
                exc,
                self._settings.prune_interval,
            )
            return
        self._events_pruned += pruned

    async def _final_flush(self) -> None:
        backlog = self._backlog
        now = trio.current_time()
        deadline = self._stop_deadline
        if deadline is None:
            deadline = now + self._shutdown_timeout
        queue = [h for h in (backlog.in_flight, backlog.pending) if h is not None]
        try:
            with trio.CancelScope(deadline=max(deadline, now + LAST_ATTEMPT), shield=True):
                while queue:
                    await self._make_durable(queue[0])
                    queue.pop(0)
        finally:
            self.loss = loss_of(queue, backlog.dropped)
            if self.loss:
                logger.error("%s", WritesLost(self.loss, self._last_error))
            for held in queue:
                held.finish(committed=False)
