"""No unit of engine work holds the event loop: floods, bulk answers, privacy changes.

Each test runs a load that used to be handled in one go by one task (2,000
sessions arriving in ``everyone`` mode is 2 million pushes) and records, with a
trio instrument, how long every task step took in real time. The bound is far
above what one turn costs (a few milliseconds) and far below what the old
engine took (seconds), so the tests hold on a loaded machine.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import trio
import trio.abc
import trio.lowlevel

from presence_actors import codec
from presence_actors.actors import ListQuery, StatsQuery
from presence_actors.actors.messages import ReplaceContacts
from presence_actors.config import Settings
from presence_actors.model import Status
from presence_actors.persistence.intents import PresenceRow
from presence_actors.persistence.store import Batch, Store
from presence_actors.protocol import (
    AllUsers,
    Block,
    Blocked,
    GetAllUsers,
    Push,
    PushBatch,
    SetStatus,
    StatusUpdated,
    Welcome,
)

from .engine_harness import FakeTransport, make_settings, running_engine

# CPU seconds: far above a turn (~2 ms), far below what one step took before turns
# (0.1 s to 20 s in these tests).
LONGEST_STEP = 0.02


class StepClock(trio.abc.Instrument):
    """The longest task step seen, in CPU time of the event loop's thread, and whose.

    CPU time, so that other processes on a busy machine (and worker threads
    holding the GIL) do not count as the engine's work. Time spent in the
    garbage collector is left out too: when it runs depends on every
    allocation of the test process (the server tunes it, see
    ``tune_garbage_collector``), not on how the engine divides its work.
    """

    def __init__(self) -> None:
        self.longest = 0.0
        self.culprit = ""
        self._started: float | None = None  # added mid-step: that step is not timed
        self._collecting = 0.0
        self._in_gc = 0.0

    def gc_callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._collecting = time.thread_time()
        else:
            self._in_gc += time.thread_time() - self._collecting

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self._started = time.thread_time()
        self._in_gc = 0.0

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if self._started is None:
            return
        took = time.thread_time() - self._started - self._in_gc
        if took > self.longest:
            self.longest, self.culprit = took, task.name


@contextmanager
def timing_steps() -> Iterator[StepClock]:
    clock = StepClock()
    gc.callbacks.append(clock.gc_callback)
    trio.lowlevel.add_instrument(clock)
    try:
        yield clock
    finally:
        trio.lowlevel.remove_instrument(clock)
        gc.callbacks.remove(clock.gc_callback)


async def attach_all(engine, transports: list[FakeTransport]) -> None:
    for transport in transports:
        await engine.attach(transport.handle)
    with trio.fail_after(120):
        for transport in transports:
            await transport.expect(Welcome)


def latest_status(transport: FakeTransport) -> dict[str, Status]:
    seen: dict[str, Status] = {}
    for push in transport.pushes():
        seen[push.view.user_id] = push.view.status
    return seen


async def test_a_flood_of_sessions_in_everyone_mode_never_holds_the_loop(tmp_path: Path) -> None:
    count = 2000
    settings = make_settings(tmp_path, presence={"fanout": "everyone"})
    async with running_engine(settings) as engine:
        transports = [FakeTransport(engine, f"u{i}", "d", capacity=1_000_000) for i in range(count)]
        late = [FakeTransport(engine, f"late{i}", "d") for i in range(10)]
        with timing_steps() as clock:
            await attach_all(engine, transports)
            await attach_all(engine, late)
            with trio.fail_after(120):
                while (await engine.ask(StatsQuery())).online_users < count + len(late):
                    await trio.sleep(0.01)
                await engine.writer.flush()  # what the flood changed is committed
                # Coalesced in ticks or not, every watcher learns who came after
                # it (the last tick may wait its turn), and nobody is ever shown offline.
                seen: dict[str, dict[str, Status]] = {t.handle.user_id: {} for t in transports}
                for transport in transports:
                    while not all(
                        seen[transport.handle.user_id].get(t.handle.user_id) is Status.ONLINE
                        for t in late
                    ):
                        await trio.sleep(0.01)
                        seen[transport.handle.user_id].update(latest_status(transport))
        assert clock.longest < LONGEST_STEP, (clock.longest, clock.culprit)
        assert all(Status.OFFLINE not in shown.values() for shown in seen.values())


async def test_a_watcher_owed_several_pushes_in_a_tick_gets_one_item(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, presence={"fanout": "everyone"})
    async with running_engine(settings) as engine:
        watcher = FakeTransport(engine, "watcher", "d")
        others = [FakeTransport(engine, f"o{i}", "d") for i in range(20)]
        await attach_all(engine, [watcher, *others])
        watcher.drain()
        # Twenty changes made at once reach the watcher in far fewer writes.
        for other in others:
            await other.send(SetStatus(status=Status.BUSY))
        for other in others:
            await other.expect(StatusUpdated)
        await trio.testing.wait_all_tasks_blocked()
        items = []
        while True:
            try:
                items.append(watcher.outbox.receive.receive_nowait())
            except trio.WouldBlock:
                break
        pushes = [
            p for item in items for p in (item.pushes if isinstance(item, PushBatch) else (item,))
        ]
        assert {p.view.user_id for p in pushes if isinstance(p, Push)} == {
            f"o{i}" for i in range(20)
        }
        assert all(p.view.status is Status.BUSY for p in pushes)
        assert len(items) < 20


def seed_users(settings: Settings, count: int) -> None:
    """``count`` offline users with the longest username and status message there are."""
    batch = Batch()
    for i in range(count):
        batch.add(
            PresenceRow(f"u{i:05d}", Status.OFFLINE, "n" * 64, "m" * 140, 1_800_000_000_000 + i, 1)
        )
    with Store.open(settings.persistence.path) as store:
        store.commit(batch)


async def test_a_bulk_answer_of_ten_thousand_users_is_made_in_short_turns(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, presence={"fanout": "everyone"})
    seed_users(settings, 10_000)
    async with running_engine(settings) as engine:
        # A memory outbox encodes what it is offered, as the direct WebSocket path does.
        asker = FakeTransport(engine, "asker", "d")
        await attach_all(engine, [asker])
        with timing_steps() as clock:
            await asker.send(GetAllUsers(limit=10_000))
            page = await asker.expect(AllUsers)
            # What REST does with its answer: encode it in the request's task.
            listed = await engine.ask(ListQuery(None, None, 10_000))
            codec.encode_bytes(AllUsers(timestamp=0, users=listed.users, next_cursor=None))
        assert len(page.users) == 10_000
        assert len(listed.users) == 10_000
        assert clock.longest < LONGEST_STEP, (clock.longest, clock.culprit)


async def test_a_privacy_change_seen_by_thousands_is_made_in_short_turns(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, presence={"fanout": "everyone"})
    async with running_engine(settings) as engine:
        transports = [FakeTransport(engine, f"u{i}", "d", capacity=1_000_000) for i in range(3000)]
        await attach_all(engine, transports)
        await trio.sleep(0.5)
        blocker = transports[0]
        with timing_steps() as clock:
            await blocker.send(Block(target_user_id="u1"))
            await blocker.expect(Blocked)
            await engine.command(ReplaceContacts("u2", frozenset(f"u{i}" for i in range(3, 3000))))
        assert clock.longest < LONGEST_STEP, (clock.longest, clock.culprit)
        hidden = [p for p in transports[1].pushes("u0") if p.view.status is Status.OFFLINE]
        assert hidden, "the blocked watcher saw u0 go away"
