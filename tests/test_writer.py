"""PersistenceActor: batching, coalescing, ordering, failures, backpressure, shutdown."""

from __future__ import annotations

import itertools
import logging
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

import pytest
import trio
import trio.testing

from presence_actors.config import PersistenceSettings
from presence_actors.model import Status, Visibility
from presence_actors.persistence import (
    Batch,
    BatchResult,
    BlockAdded,
    BlockRemoved,
    ContactAdded,
    ContactRemoved,
    ContactsReplaced,
    PersistenceActor,
    PresenceEvent,
    PresenceRow,
    Store,
    StoreReader,
    VisibilityRow,
    WriterNotRunning,
    open_reader,
)
from presence_actors.persistence.intents import Intent

ROOT = Path(__file__).resolve().parents[1]
BASE_MS = 1_800_000_000_000
# Real time a commit waits for a lock before failing; small so retries are quick.
BUSY_MS = 20
T = TypeVar("T")


def now_ms() -> int:
    return BASE_MS + round(trio.current_time() * 1000)


class CommitLog:
    """Records (trio time, result) of every commit, for ``on_commit``."""

    def __init__(self) -> None:
        self.commits: list[tuple[float, BatchResult]] = []
        self._changed = trio.Event()

    def __call__(self, result: BatchResult, seconds: float) -> None:
        assert seconds >= 0
        self.commits.append((trio.current_time(), result))
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, count: int) -> None:
        while len(self.commits) < count:
            await self._changed.wait()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "presence.db"


@pytest.fixture
def store(path: Path) -> Iterator[Store]:
    with Store.open(path, busy_timeout_ms=BUSY_MS) as store:
        yield store


@pytest.fixture
def reader(store: Store, path: Path) -> Iterator[StoreReader]:
    with open_reader(path) as reader:
        yield reader


@asynccontextmanager
async def running(
    store: Store,
    log: CommitLog | None = None,
    settings: PersistenceSettings | None = None,
    shutdown_timeout: float = 5.0,
) -> AsyncIterator[PersistenceActor]:
    """A started writer, cancelled (and so finally flushed) when the block ends."""
    writer = PersistenceActor(
        store,
        settings or PersistenceSettings(),
        now_ms=now_ms,
        on_commit=log,
        shutdown_timeout=shutdown_timeout,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        yield writer
        nursery.cancel_scope.cancel()


async def wait_until(predicate: Callable[[], bool]) -> None:
    while not predicate():
        await trio.sleep(0.001)


def event(i: int, user_id: str = "u") -> PresenceEvent:
    return PresenceEvent(user_id, Status.ONLINE, BASE_MS + i, f"r{i}", f"dev-{i}")


def stored_events(reader: StoreReader) -> list[PresenceEvent]:
    rows = reader.db.execute(
        "SELECT user_id, status, at, reason, device_id FROM presence_events ORDER BY id"
    )
    return [PresenceEvent(u, Status(s), at, r, d) for u, s, at, r, d in rows]


def wal_size(path: Path) -> int:
    return Path(f"{path}-wal").stat().st_size


def lock_database(path: Path) -> sqlite3.Connection:
    """Hold the write lock from another connection, as a second process would."""
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    return other


async def test_a_full_batch_commits_at_once(
    autojump_clock: trio.testing.MockClock, store: Store
) -> None:
    log = CommitLog()
    async with running(
        store, log, settings=PersistenceSettings(batch_size=3, flush_interval=10.0)
    ) as writer:
        with trio.fail_after(1):
            await writer.flush()  # the committer is done with the start-up prune
        for i in range(3):
            writer.submit_nowait(event(i))
        with trio.fail_after(1):
            await log.wait_for(1)
        assert log.commits[0] == (0.0, BatchResult(intents=3, events=3))
        for i in range(3, 5):
            writer.submit_nowait(event(i))
        with trio.fail_after(20):
            await log.wait_for(2)
        # The remaining two wait for the interval.
        assert log.commits[1] == (10.0, BatchResult(intents=2, events=2))


async def test_a_partial_batch_commits_after_the_interval(
    autojump_clock: trio.testing.MockClock, store: Store, reader: StoreReader
) -> None:
    log = CommitLog()
    async with running(
        store, log, settings=PersistenceSettings(batch_size=100, flush_interval=0.5)
    ) as writer:
        await writer.submit(event(1))
        await trio.sleep(0.499)
        assert log.commits == []
        assert stored_events(reader) == []
        with trio.fail_after(1):
            await log.wait_for(1)
        assert log.commits == [(0.5, BatchResult(intents=1, events=1))]
        assert stored_events(reader) == [event(1)]


async def test_updates_of_one_user_coalesce_into_one_row_write(
    autojump_clock: trio.testing.MockClock, store: Store, reader: StoreReader
) -> None:
    statements: list[str] = []
    store.db.conn.set_trace_callback(statements.append)
    log = CommitLog()
    async with running(store, log) as writer:
        for i in range(50):
            writer.submit_nowait(PresenceRow("a", Status.ONLINE, f"n{i}", f"m{i}", i, 1000 + i))
            if i == 25:
                writer.submit_nowait(VisibilityRow("a", Visibility.CONTACTS, 1025))
        writer.submit_nowait(PresenceRow("a", Status.BUSY, "alice", None, 77, 2000))
        with trio.fail_after(1):
            await writer.flush()
    user_writes = [s for s in statements if s.startswith("INSERT INTO users")]
    assert len(user_writes) == 1
    assert [result for _, result in log.commits] == [BatchResult(intents=52, users=1)]
    (user,) = reader.load_users()
    assert (user.username, user.status_message, user.last_status, user.last_seen) == (
        "alice",
        None,
        Status.BUSY,
        77,
    )
    assert user.visibility is Visibility.CONTACTS
    assert reader.db.execute("SELECT updated_at FROM users").fetchone() == (2000,)


@pytest.mark.parametrize("batch_size", [4, 500])
async def test_events_are_appended_in_submission_order(
    autojump_clock: trio.testing.MockClock, store: Store, reader: StoreReader, batch_size: int
) -> None:
    submitted = [event(i % 3, user_id=f"u{i % 4}") for i in range(30)]
    async with running(store, settings=PersistenceSettings(batch_size=batch_size)) as writer:
        for intent in submitted:
            await writer.submit(intent)
        with trio.fail_after(1):
            await writer.flush()
        assert writer.statistics().committed.events == 30
    assert stored_events(reader) == submitted


@pytest.mark.parametrize("batch_size", [1, 500])
async def test_contact_and_block_changes_apply_in_order_and_stay_symmetric(
    autojump_clock: trio.testing.MockClock, store: Store, reader: StoreReader, batch_size: int
) -> None:
    changes: list[Intent] = [
        ContactsReplaced("a", frozenset({"b", "c"})),
        ContactAdded("d", "a"),
        ContactRemoved("c", "a"),
        ContactsReplaced("b", frozenset({"d"})),
        ContactAdded("e", "f"),
        ContactsReplaced("f", frozenset()),
        BlockAdded("a", "x"),
        BlockAdded("a", "y"),
        BlockRemoved("a", "x"),
        BlockAdded("x", "a"),
    ]
    async with running(store, settings=PersistenceSettings(batch_size=batch_size)) as writer:
        for change in changes:
            await writer.submit(change)
        with trio.fail_after(1):
            await writer.flush()
    contacts = reader.load_contacts()
    assert contacts == {"a": {"d"}, "b": {"d"}, "d": {"a", "b"}}
    assert all(u in contacts[c] for u, cs in contacts.items() for c in cs)
    assert reader.load_blocks() == {"a": {"y"}, "x": {"a"}}


async def test_a_locked_database_is_retried_and_nothing_is_lost(
    autojump_clock: trio.testing.MockClock,
    store: Store,
    reader: StoreReader,
    path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="presence_actors.persistence")
    async with running(store) as writer:
        with trio.fail_after(1):
            await writer.flush()  # the start-up prune is done
        other = lock_database(path)
        for i in range(5):
            await writer.submit(event(i))
        with trio.fail_after(5):
            await wait_until(lambda: writer.statistics().commit_failures >= 2)
        stats = writer.statistics()
        assert (stats.failing, stats.last_error, writer.writable) == (
            True,
            "database is locked",
            False,
        )
        # These coalesce into the next batch while the first one is retried.
        for i in range(5, 10):
            await writer.submit(event(i))
        other.close()  # releases the lock
        with trio.fail_after(10):
            await writer.flush()
        stats = writer.statistics()
        assert (stats.failing, writer.writable, stats.pending_intents) == (False, True, 0)
        assert stats.batches_committed == 2
    assert stored_events(reader) == [event(i) for i in range(10)]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings
    assert all("database is locked" in r.getMessage() for r in warnings)


async def test_a_full_disk_is_retried_and_nothing_is_lost(
    autojump_clock: trio.testing.MockClock, store: Store, reader: StoreReader
) -> None:
    big = [PresenceEvent("u", Status.ONLINE, BASE_MS + i, "x" * 4000) for i in range(20)]
    async with running(store) as writer:
        with trio.fail_after(1):
            await writer.flush()
        conn = store.db.conn
        (pages,) = conn.execute("PRAGMA page_count").fetchone()
        # The committer is idle (flushed), so the test may use its connection.
        conn.execute(f"PRAGMA max_page_count = {pages}")
        for intent in big:
            await writer.submit(intent)
        with trio.fail_after(5):
            await wait_until(lambda: writer.statistics().commit_failures >= 1)
        stats = writer.statistics()
        assert (stats.last_error, stats.failing, writer.writable) == (
            "database or disk is full",
            True,
            False,
        )
        # The committer sleeps 0.1 s before its retry; it is not using the connection.
        conn.execute("PRAGMA max_page_count = 1000000")
        with trio.fail_after(5):
            await writer.flush()
        assert (writer.statistics().failing, writer.writable) == (False, True)
    assert stored_events(reader) == big


async def test_a_failing_store_never_blocks_a_submitter_and_memory_stays_bounded(
    autojump_clock: trio.testing.MockClock,
    store: Store,
    reader: StoreReader,
    path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="presence_actors.persistence")
    users = [f"u{i}" for i in range(50)]
    events = [event(i, user_id=users[i % 50]) for i in range(1000)]
    async with running(store, settings=PersistenceSettings(queue_size=100)) as writer:
        with trio.fail_after(1):
            await writer.flush()
        other = lock_database(path)
        writer.submit_nowait(events[0])
        with trio.fail_after(5):
            await wait_until(lambda: writer.statistics().failing)
        # Every submission is taken at once, and none waits: rows coalesce per
        # user, events stop at queue_size and the rest are counted.
        for round_ in range(20):
            for user_id in users:
                writer.submit_nowait(PresenceRow(user_id, Status.BUSY, None, f"m{round_}", 1, 1))
        for intent in events[1:]:
            writer.submit_nowait(intent)
            await trio.testing.wait_all_tasks_blocked()
        stats = writer.statistics()
        assert (stats.failing, writer.writable, writer.free_slots()) == (True, False, 0)
        assert stats.events_dropped == 900
        assert stats.held_bytes <= PersistenceSettings().queue_bytes
        other.close()  # releases the lock: everything held is committed, in order
        with trio.fail_after(10):
            await writer.flush()
        stats = writer.statistics()
        assert (writer.writable, stats.pending_intents, stats.held_bytes) == (True, 0, 0)
        assert writer.free_slots() == 100
    assert stored_events(reader) == events[:100]
    assert {u.user_id: u.status_message for u in reader.load_users()} == dict.fromkeys(users, "m19")
    drops = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert len(drops) == 2
    assert "further presence events are dropped" in drops[0]
    assert drops[1] == "the store caught up; 900 presence events were dropped while it was behind"


async def test_large_events_are_bounded_in_bytes_while_the_store_fails(
    autojump_clock: trio.testing.MockClock, store: Store, path: Path
) -> None:
    # A hostile device id of 4 KiB on every event: the byte bound (32 MiB by
    # default) is reached long before the count bound (100,000).
    huge = "d" * 4096
    async with running(store) as writer:
        with trio.fail_after(1):
            await writer.flush()
        other = lock_database(path)
        for i in range(30_000):
            writer.submit_nowait(PresenceEvent("u", Status.ONLINE, BASE_MS + i, "connect", huge))
        stats = writer.statistics()
        assert stats.held_bytes <= PersistenceSettings().queue_bytes
        assert 20_000 < stats.events_dropped < 30_000
        other.close()


async def test_policy_changes_are_refused_up_front_while_the_store_fails(
    autojump_clock: trio.testing.MockClock, store: Store, path: Path
) -> None:
    async with running(store) as writer:
        with trio.fail_after(1):
            await writer.flush()
        assert writer.free_slots() > 0
        other = lock_database(path)
        writer.submit_nowait(event(1))
        with trio.fail_after(5):
            await wait_until(lambda: not writer.writable)
        assert writer.free_slots() == 0
        other.close()
        with trio.fail_after(10):
            await writer.flush()
        assert writer.free_slots() > 0


async def test_cancellation_commits_everything_pending(
    autojump_clock: trio.testing.MockClock, store: Store, reader: StoreReader
) -> None:
    async with running(
        store, settings=PersistenceSettings(batch_size=1000, flush_interval=60.0)
    ) as writer:
        for i in range(5):
            writer.submit_nowait(event(i))
        await trio.testing.wait_all_tasks_blocked()  # these sit in the pending batch
        for i in range(5, 10):
            writer.submit_nowait(event(i))  # these are still in the intake
        writer.submit_nowait(ContactAdded("a", "b"))
    assert stored_events(reader) == [event(i) for i in range(10)]
    assert reader.load_contacts() == {"a": {"b"}, "b": {"a"}}
    assert writer.statistics().pending_intents == 0
    assert trio.current_time() < 60
    with pytest.raises(WriterNotRunning, match="has stopped"):
        await writer.submit(event(99))


async def test_shutdown_that_cannot_commit_reports_the_loss(
    autojump_clock: trio.testing.MockClock,
    store: Store,
    path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    outcome: list[str] = []

    async def flush_and_record(writer: PersistenceActor) -> None:
        try:
            await writer.flush()
        except WriterNotRunning as exc:
            outcome.append(str(exc))

    async with trio.open_nursery() as outer:
        async with running(store, shutdown_timeout=1.0) as writer:
            with trio.fail_after(1):
                await writer.flush()
            other = lock_database(path)
            for i in range(5):
                writer.submit_nowait(event(i, user_id=f"u{i % 3}"))
                writer.submit_nowait(PresenceRow(f"u{i % 3}", Status.AWAY, None, None, i, i))
            outer.start_soon(flush_and_record, writer)
            await trio.testing.wait_all_tasks_blocked()
        other.close()  # releases the lock
    assert outcome == ["the persistence writer stopped before the flush completed"]
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [
        "the store could not be written before the stop (database is locked): 3 users'"
        " presence rows and 5 presence events were not committed and are lost"
    ]


async def test_the_wal_is_checkpointed_and_truncated_so_it_stays_small(
    store: Store, reader: StoreReader, path: Path
) -> None:
    # 3 MB of events in ~100 KB commits, default settings: SQLite's own
    # checkpoint (at 4 MB, never truncating) would let the WAL hold all of it.
    limit = 1 << 20  # persistence.checkpoint_bytes
    sizes = []
    async with running(store) as writer:
        for round_ in range(30):
            for i in range(100):
                at = round_ * 100 + i
                writer.submit_nowait(PresenceEvent("u", Status.ONLINE, at, "x" * 1000))
            with trio.fail_after(10):
                await writer.flush()
            sizes.append(wal_size(path))
    assert max(sizes) < limit + 256 * 1024, sizes
    assert any(later < earlier for earlier, later in itertools.pairwise(sizes))  # truncated
    assert len(stored_events(reader)) == 3000


async def test_retention_prunes_at_start_and_every_interval(
    autojump_clock: trio.testing.MockClock, store: Store, reader: StoreReader
) -> None:
    day_ms = 86_400_000
    old, recent = event(-day_ms - 1), event(-day_ms + 1000)
    store.commit(store_batch(old, recent))
    async with running(
        store, settings=PersistenceSettings(retention=86_400.0, prune_interval=60.0)
    ) as writer:
        with trio.fail_after(1):
            await writer.flush()
        assert stored_events(reader) == [recent]
        assert writer.statistics().events_pruned == 1
        await trio.sleep(60.5)  # one interval later, `recent` has aged out too
        assert stored_events(reader) == []
        assert writer.statistics().events_pruned == 2


async def test_zero_retention_never_prunes(
    autojump_clock: trio.testing.MockClock, store: Store, reader: StoreReader
) -> None:
    ancient = event(-(10**12))
    store.commit(store_batch(ancient))
    async with running(
        store, settings=PersistenceSettings(retention=0.0, prune_interval=1.0)
    ) as writer:
        await trio.sleep(10)
        with trio.fail_after(1):
            await writer.flush()
        assert writer.statistics().events_pruned == 0
    assert stored_events(reader) == [ancient]


async def test_a_writer_that_is_not_running_refuses_work(store: Store) -> None:
    writer = PersistenceActor(store, PersistenceSettings(), now_ms=lambda: 0)
    with pytest.raises(WriterNotRunning, match="not been started"):
        await writer.submit(event(1))
    with pytest.raises(WriterNotRunning, match="not been started"):
        writer.submit_nowait(event(1))
    with pytest.raises(WriterNotRunning, match="not been started"):
        await writer.flush()
    writable = [writer.writable]
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        writable.append(writer.writable)
        nursery.cancel_scope.cancel()
    writable.append(writer.writable)
    assert writable == [False, True, False]
    with pytest.raises(RuntimeError, match="only be called once"):
        await writer.run()


def store_batch(*events: PresenceEvent) -> Batch:
    batch = Batch()
    for intent in events:
        batch.add(intent)
    return batch


KILLED_WRITER = """
import os, signal, sys
import trio
from presence_actors.config import PersistenceSettings
from presence_actors.model import Status
from presence_actors.persistence import (
    PersistenceActor, PresenceEvent, PresenceRow, Store,
)

USERS = {users!r}

async def main(path):
    store = Store.open(path)
    settings = PersistenceSettings(path=path, batch_size=100)
    writer = PersistenceActor(store, settings, now_ms=lambda: 0)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        for user_id, (status, seen) in USERS.items():
            await writer.submit(PresenceRow(user_id, Status(status), None, None, seen, seen))
            await writer.submit(PresenceEvent(user_id, Status(status), seen, "connect"))
        await writer.flush()
        # Unacknowledged work in flight when the process dies: it may be lost.
        for i in range(5000):
            await writer.submit(PresenceEvent("extra", Status.ONLINE, i, "burst"))
        await trio.sleep(0.005)
        os.kill(os.getpid(), signal.SIGKILL)

trio.run(main, sys.argv[1])
"""


async def test_restart_recovery_after_the_process_was_killed(tmp_path: Path) -> None:
    users = {"a": ("online", 1000), "b": ("busy", 2000), "c": ("away", 3000), "d": ("offline", 4)}
    path = tmp_path / "killed.db"
    script = KILLED_WRITER.format(users=users)
    with trio.fail_after(60):
        process = await trio.run_process(
            [sys.executable, "-c", script, str(path)], cwd=ROOT, check=False
        )
    assert process.returncode == -signal.SIGKILL
    with Store.open(path) as store:
        assert store.recover(now_ms=9000) == ["a", "b", "c"]
        stored = {u.user_id: (u.last_status, u.last_seen) for u in store.load_users()}
        assert stored == {u: (Status.OFFLINE, seen) for u, (_, seen) in users.items()}
        for user_id in ("a", "b", "c"):
            assert [(e.reason, e.at) for e in store.history(user_id)][-1] == ("restart", 9000)
        assert [e.reason for e in store.history("d")] == ["connect"]
        assert len(store.history("extra", limit=10_000)) <= 5000
        assert store.db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
