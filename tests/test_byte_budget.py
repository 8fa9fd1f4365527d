"""Queues bounded in bytes as well as messages: the registry's intake of requests."""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

from presence_actors.actors import SessionHandle
from presence_actors.actors.byte_budget import ByteBudget
from presence_actors.actors.clock import WallClock
from presence_actors.actors.messages import Request
from presence_actors.actors.registry import INTAKE_BYTES, Registry, request_weight
from presence_actors.actors.user_state import Rules
from presence_actors.model import DeviceType
from presence_actors.protocol import GetPresence

from .engine_harness import make_settings


async def test_a_budget_lets_through_what_fits_and_one_oversized_item_alone() -> None:
    budget = ByteBudget(100)
    record: list[str] = []

    async def take(name: str, weight: int) -> None:
        await budget.take(weight)
        record.append(name)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(take, "a", 60)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(take, "b", 60)  # 120 > 100: waits
        await trio.testing.wait_all_tasks_blocked()
        assert record == ["a"]
        budget.give(60)
        await trio.testing.wait_all_tasks_blocked()
        assert record == ["a", "b"]
        budget.give(60)
        nursery.start_soon(take, "huge", 500)  # alone, it goes
        await trio.testing.wait_all_tasks_blocked()
        assert record == ["a", "b", "huge"]
        assert budget.used == 500


class _Writer:
    problem = None

    async def submit(self, intent: object) -> None: ...

    def submit_nowait(self, intent: object) -> None: ...

    def free_slots(self) -> int:
        return 1000


async def test_requests_naming_many_users_cannot_fill_memory_while_the_registry_is_busy(
    tmp_path: Path,
) -> None:
    """Thousands of sessions each sending get_presence for 1,000 long ids while the
    registry does not take them: the intake holds at most INTAKE_BYTES of them."""
    settings = make_settings(tmp_path)
    registry = Registry(settings, Rules(WallClock(0.0)), _Writer())  # not running
    session = SessionHandle("s", "u", "d", DeviceType.OTHER, outbox=None)  # type: ignore[arg-type]
    big = Request(session, GetPresence(user_ids=tuple(f"{i:0128d}" for i in range(1000))))
    weight = request_weight(big)
    assert weight > 150_000
    sent = 0

    async def sender() -> None:
        nonlocal sent
        await registry.tell(big)
        sent += 1

    async with trio.open_nursery() as nursery:
        for _ in range(1000):
            nursery.start_soon(sender)
        await trio.testing.wait_all_tasks_blocked()
        assert sent == INTAKE_BYTES // weight
        nursery.cancel_scope.cancel()
