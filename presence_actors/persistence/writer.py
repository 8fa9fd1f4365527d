"""PersistenceActor: the only task that writes to SQLite.

Two child tasks share the work. The *batcher* owns the pending batch: it takes
intents from the bounded intake and coalesces them. The *committer* owns the
write connection: it commits one batch at a time in a worker thread, retries
failures, and prunes old events. The batcher hands a batch over when it is due
(``batch_size`` intents, ``flush_interval`` since its first intent, or a
``flush()``) and the committer is idle; while a commit runs or is being retried,
new intents keep coalescing into the next batch. The committer announces that it
is idle by putting a wake-up into the intake, so the batcher only ever waits on
one channel; a wake-up that does not fit is not needed, because a full intake
means the batcher is about to receive and re-check anyway.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import math
import sqlite3
import time
from collections.abc import Callable

import trio
from attrs import Factory, define, frozen

from ..config import PersistenceSettings
from .intents import Intent
from .store import Batch, BatchResult, Store

logger = logging.getLogger("presence_actors.persistence")

# First retry soon (a lock is usually released within milliseconds), then back
# off so that a full disk is not hammered; 5 s keeps recovery prompt.
RETRY_INITIAL_DELAY = 0.1
RETRY_MAX_DELAY = 5.0
# Intents the batcher takes from the intake in one go without yielding: a few
# microseconds each, so the event loop is never held for much over a millisecond.
_DRAIN_LIMIT = 256


class WriterNotRunning(RuntimeError):
    """The writer is not (or no longer) running, so it cannot accept or flush intents."""


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


@define(eq=False)
class _Flush:
    """A ``flush()`` waiting for everything submitted before it to be committed."""

    done: trio.Event = Factory(trio.Event)
    committed: bool = False

    def finish(self, *, committed: bool) -> None:
        self.committed = committed
        self.done.set()


class _Wake(enum.Enum):
    """The committer telling the batcher "I am idle": a due batch can be handed over."""

    WAKE = enum.auto()


_Item = Intent | _Flush | _Wake


@define
class _Pending:
    """A batch on its way to the database, with the flushes waiting for it."""

    batch: Batch = Factory(Batch)
    flushes: list[_Flush] = Factory(list)
    due_at: float = math.inf

    def add(self, item: Intent | _Flush, now: float, flush_interval: float) -> None:
        if isinstance(item, _Flush):
            self.flushes.append(item)
            return
        if not self.batch.intents:
            self.due_at = now + flush_interval
        self.batch.add(item)

    def is_due(self, now: float, batch_size: int) -> bool:
        return bool(self.flushes) or self.batch.intents >= batch_size or now >= self.due_at

    def finish(self, *, committed: bool) -> None:
        for flush in self.flushes:
            flush.finish(committed=committed)


class _State(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPED = "stopped"


class PersistenceActor:
    """Batches write intents into SQLite transactions; see the module docstring.

    Ordering: intents become durable in submission order (row intents of one
    user coalesce, later columns winning); a batch is committed only after every
    earlier one. Nothing accepted is dropped while running: failed commits are
    retried with backoff and ``submit`` waits when the intake is full.
    ``run()`` may be called once; before it starts and after it ends,
    ``submit``/``submit_nowait``/``flush`` raise :class:`WriterNotRunning`.
    ``on_commit(result, seconds)`` runs in the committer task after each
    successful commit (``seconds`` is wall time spent in the thread); it must
    not block, and an exception from it crashes the writer.
    """

    def __init__(
        self,
        store: Store,
        settings: PersistenceSettings,
        *,
        now_ms: Callable[[], int],
        on_commit: Callable[[BatchResult, float], None] | None = None,
        shutdown_timeout: float = 5.0,
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
        self._intake_send, self._intake = trio.open_memory_channel[_Item](settings.queue_size)
        self._state = _State.NEW
        # Owned by the batcher while running, by run() once the children are gone.
        self._pending = _Pending()
        # Owned by the committer: the batch it took and has not yet committed.
        self._in_flight: _Pending | None = None
        self._batches_committed = 0
        self._committed = BatchResult()
        self._commit_failures = 0
        self._failing = False
        self._last_error: str | None = None
        self._last_commit_seconds: float | None = None
        self._events_pruned = 0

    @property
    def writable(self) -> bool:
        """True while running with commits succeeding (for a readiness probe)."""
        return self._state is _State.RUNNING and not self._failing

    def statistics(self) -> WriterStatistics:
        """A consistent snapshot; cheap enough for every metrics scrape."""
        in_flight = self._in_flight.batch.intents if self._in_flight else 0
        queued = self._intake.statistics().current_buffer_used
        return WriterStatistics(
            # Queued flush markers and wake-ups count too; close enough for a gauge.
            pending_intents=queued + self._pending.batch.intents + in_flight,
            batches_committed=self._batches_committed,
            committed=self._committed,
            commit_failures=self._commit_failures,
            failing=self._failing,
            last_error=self._last_error,
            last_commit_seconds=self._last_commit_seconds,
            events_pruned=self._events_pruned,
        )

    async def submit(self, intent: Intent) -> None:
        """Queue ``intent``; waits while the intake is full (backpressure).

        Cancel-safe: if cancelled, the intent was not queued.
        """
        await self._put(intent)

    def submit_nowait(self, intent: Intent) -> None:
        """Queue ``intent`` or raise ``trio.WouldBlock`` if the intake is full."""
        self._check_running()
        try:
            self._intake_send.send_nowait(intent)
        except trio.BrokenResourceError:
            raise WriterNotRunning("the persistence writer has stopped") from None

    def free_slots(self) -> int:
        """How many intents ``submit_nowait`` would accept right now."""
        stats = self._intake_send.statistics()
        return max(0, int(stats.max_buffer_size) - stats.current_buffer_used)

    async def flush(self) -> None:
        """Return once every intent submitted before this call is committed.

        Waits through commit retries for as long as they take: callers that need
        a bound use ``trio.fail_after``. Cancelling it abandons only the wait.
        Raises :class:`WriterNotRunning` if the writer stops before the commit.
        """
        marker = _Flush()
        await self._put(marker)
        await marker.done.wait()
        if not marker.committed:
            raise WriterNotRunning("the persistence writer stopped before the flush completed")

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled; ready (``started()``) as soon as intents are accepted.

        On cancellation, a commit already in its thread finishes (threads are
        never abandoned), then everything still pending, intake included, is
        committed in order under a shielded scope bounded by ``shutdown_timeout``;
        intents that still could not be committed are counted in an error log and
        waiting ``flush()`` calls raise :class:`WriterNotRunning`.
        """
        if self._state is not _State.NEW:
            raise RuntimeError("PersistenceActor.run() can only be called once")
        self._state = _State.RUNNING
        handoff_send, handoff_receive = trio.open_memory_channel[_Pending](0)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._batch_loop, handoff_send)
                nursery.start_soon(self._commit_loop, handoff_receive)
                task_status.started()
        finally:
            self._state = _State.STOPPED
            await self._final_flush()

    def _check_running(self) -> None:
        if self._state is _State.NEW:
            raise WriterNotRunning("the persistence writer has not been started")
        if self._state is _State.STOPPED:
            raise WriterNotRunning("the persistence writer has stopped")

    async def _put(self, item: Intent | _Flush) -> None:
        self._check_running()
        try:
            await self._intake_send.send(item)
        except trio.BrokenResourceError:
            raise WriterNotRunning("the persistence writer has stopped") from None

    async def _batch_loop(self, handoff: trio.MemorySendChannel[_Pending]) -> None:
        settings = self._settings
        # A batch stops growing at queue_size intents: with the intake as full
        # again, at most 2 * queue_size intents wait before submit() blocks.
        cap = settings.queue_size
        due_size = min(settings.batch_size, cap)
        while True:
            pending = self._pending
            now = trio.current_time()
            committer_busy = False
            if pending.is_due(now, due_size):
                if pending.batch.intents >= cap:
                    # Full: stop taking intents, so the intake fills and submit waits.
                    await handoff.send(pending)
                    self._pending = _Pending()
                    continue
                try:
                    handoff.send_nowait(pending)  # succeeds only if the committer is idle
                except trio.WouldBlock:
                    committer_busy = True  # keep coalescing until the committer wakes us
                else:
                    self._pending = _Pending()
                    continue
            with trio.move_on_at(math.inf if committer_busy else pending.due_at):
                self._take(await self._intake.receive())
            # Take what is already queued without a trip through the scheduler per
            # item; while the committer is idle, only up to the point the batch is due.
            now = trio.current_time()
            for _ in range(_DRAIN_LIMIT):
                wanted = committer_busy or not pending.is_due(now, due_size)
                if not wanted or pending.batch.intents >= cap:
                    break
                try:
                    item = self._intake.receive_nowait()
                except trio.WouldBlock:
                    break
                self._take(item)

    def _take(self, item: _Item) -> None:
        if not isinstance(item, _Wake):
            self._pending.add(item, trio.current_time(), self._settings.flush_interval)

    async def _commit_loop(self, handoff: trio.MemoryReceiveChannel[_Pending]) -> None:
        pruning = self._settings.retention > 0
        next_prune = trio.current_time()
        while True:
            if pruning and trio.current_time() >= next_prune:
                await self._prune()
                next_prune = trio.current_time() + self._settings.prune_interval
            # A due batch may be waiting for us. If the intake is full the wake is
            # not needed: the batcher is about to receive and re-check anyway.
            # No checkpoint between this and parking in receive() below.
            with contextlib.suppress(trio.WouldBlock):
                self._intake_send.send_nowait(_Wake.WAKE)
            with trio.move_on_at(next_prune if pruning else math.inf):
                self._in_flight = await handoff.receive()
            if self._in_flight is not None:
                await self._make_durable(self._in_flight)
                self._in_flight = None

    async def _make_durable(self, pending: _Pending) -> None:
        """Commit ``pending``, retrying with backoff until it succeeds.

        Only ``sqlite3.OperationalError`` (locked, busy, full, I/O, ...) is
        retried; any other error is a bug and propagates. Cancellation during a
        backoff leaves the batch uncommitted; a commit already in its thread
        always completes (the thread is not abandoned).
        """
        delay = RETRY_INITIAL_DELAY
        failures = 0
        while pending.batch.intents:
            started = time.perf_counter()
            try:
                result = await trio.to_thread.run_sync(self._store.commit, pending.batch)
            except sqlite3.OperationalError as exc:
                failures += 1
                self._commit_failures += 1
                self._failing = True
                self._last_error = str(exc)
                logger.warning(
                    "committing %d intents failed (%s); retrying in %.1f s",
                    pending.batch.intents,
                    exc,
                    delay,
                )
                await trio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_DELAY)
                continue
            seconds = time.perf_counter() - started
            # Mark it committed before any checkpoint, so a cancellation arriving
            # now cannot make the final flush write it a second time.
            pending.batch = Batch()
            if failures:
                logger.info("commit succeeded after %d failed attempts", failures)
            self._failing = False
            self._batches_committed += 1
            self._committed += result
            self._last_commit_seconds = seconds
            if self._on_commit is not None:
                self._on_commit(result, seconds)
        pending.finish(committed=True)

    async def _prune(self) -> None:
        cutoff = self._now_ms() - round(self._settings.retention * 1000)
        try:
            pruned = await trio.to_thread.run_sync(self._store.prune_events, cutoff)
        except sqlite3.OperationalError as exc:
            logger.warning(
                "pruning presence events failed (%s); next attempt in %.0f s",
                exc,
                self._settings.prune_interval,
            )
            return
        self._events_pruned += pruned

    async def _final_flush(self) -> None:
        # Drain what callers queued before the state switched to STOPPED, then
        # close the intake so senders still blocked in submit() get an error.
        while True:
            try:
                item = self._intake.receive_nowait()
            except trio.WouldBlock:
                break
            self._take(item)
        self._intake.close()
        queue = [p for p in (self._in_flight, self._pending) if p is not None]
        try:
            with trio.move_on_after(self._shutdown_timeout, shield=True):
                while queue:
                    await self._make_durable(queue[0])
                    queue.pop(0)
        finally:
            lost = sum(p.batch.intents for p in queue)
            if lost:
                logger.error(
                    "persistence writer stopped with %d intents not committed: they are lost",
                    lost,
                )
            for pending in queue:
                pending.finish(committed=False)
