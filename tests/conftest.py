"""Shared fixtures."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypeVar

import pytest
import trio
import trio.testing

T = TypeVar("T")


@pytest.fixture
def autojump_clock(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> trio.testing.MockClock:
    """pytest-trio's ``autojump_clock``, held still while a worker thread runs.

    Autojump treats a task waiting for a thread as blocked and would jump to the
    next deadline (a retry backoff, a test's fail_after) in the middle of a real
    commit. With autojump paused during threads, virtual time only passes where
    the code waits on purpose, which keeps these tests deterministic.
    """
    run_sync = trio.to_thread.run_sync
    in_threads = 0

    async def run_sync_holding_clock(fn: Callable[..., T], *args: object) -> T:
        nonlocal in_threads
        in_threads += 1
        autojump_clock.autojump_threshold = math.inf
        try:
            return await run_sync(fn, *args)
        finally:
            in_threads -= 1
            if not in_threads:
                autojump_clock.autojump_threshold = 0

    monkeypatch.setattr(trio.to_thread, "run_sync", run_sync_holding_clock)
    return autojump_clock
