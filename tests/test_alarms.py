"""The alarm task: exact rings, postponed deadlines re-armed without a ring."""

from __future__ import annotations

import math

import trio
from trio.testing import MockClock

from presence_actors.actors.alarms import Alarms


class Sleeper:
    def __init__(self, name: str, record: list[tuple[float, str]]) -> None:
        self.name = name
        self.deadline = math.inf
        self.record = record

    def ring(self) -> None:
        self.record.append((trio.current_time(), self.name))


async def test_alarms_ring_at_the_deadline_asked_now(autojump_clock: MockClock) -> None:
    record: list[tuple[float, str]] = []
    alarms = Alarms()
    async with trio.open_nursery() as nursery:
        await nursery.start(alarms.run)
        a, b, c = Sleeper("a", record), Sleeper("b", record), Sleeper("c", record)
        a.deadline, b.deadline = 10.0, 5.0
        alarms.ensure("a", 10.0, a)
        alarms.ensure("b", 5.0, b)
        # c's alarm is set for 3, but by then c only needs waking at 12: no ring at 3.
        alarms.ensure("c", 3.0, c)
        c.deadline = 12.0
        # A later deadline for a keeps the alarm at 10; an earlier one moves it.
        alarms.ensure("a", 20.0, a)
        alarms.ensure("b", 4.0, b)
        b.deadline = 4.0
        await trio.sleep(30)
        assert record == [(4.0, "b"), (10.0, "a"), (12.0, "c")]
        # A new sleeper for the same key replaces the old one, even at a later time.
        old, new = Sleeper("old", record), Sleeper("new", record)
        old.deadline = new.deadline = trio.current_time() + 5
        alarms.ensure("k", old.deadline, old)
        old.deadline = math.inf  # retired: never rings
        alarms.ensure("k", new.deadline, new)
        await trio.sleep(10)
        assert record[-1] == (35.0, "new")
        assert len(record) == 4
        nursery.cancel_scope.cancel()


async def test_alarms_close_together_ring_each_at_its_own_moment(
    autojump_clock: MockClock,
) -> None:
    """A wake also re-arms alarms due within the look-ahead, but never rings them early."""
    record: list[tuple[float, str]] = []
    alarms = Alarms()
    async with trio.open_nursery() as nursery:
        await nursery.start(alarms.run)
        sleepers = [Sleeper(f"s{i}", record) for i in range(5)]
        for i, sleeper in enumerate(sleepers):
            sleeper.deadline = 2.0 + i * 0.1
            alarms.ensure(sleeper.name, sleeper.deadline, sleeper)
        # s1 was postponed by a heartbeat the alarm never heard of.
        sleepers[1].deadline = 7.0
        await trio.sleep(10)
        assert record == [(2.0, "s0"), (2.2, "s2"), (2.3, "s3"), (2.4, "s4"), (7.0, "s1")]
        nursery.cancel_scope.cancel()
