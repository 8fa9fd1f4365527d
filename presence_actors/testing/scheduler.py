"""What makes a simulated run deterministic: trio's task order and the store's calls.

trio runs the tasks that are ready in batches, and shuffles each batch with a
module-level ``random.Random`` (or only reverses it at random, unless its
deterministic-scheduling flag is set, as trio's own Hypothesis plugin does).
:func:`seeded_scheduling` sets that flag and seeds that generator from the
simulation's seed, so the order of ready tasks — which actor, the registry,
the alarm task or the writer runs first when several can — is drawn from the
seed: different seeds explore different interleavings, the same seed repeats
one exactly.

:class:`InlineStore` is the engine's ``run_blocking`` seam for the simulation:
each store call runs on the event loop's thread instead of a worker thread (a
thread's completion would land at a moment of the operating system's choosing),
followed by a schedule point, as the thread's completion is. It also injects
the store faults: commits that fail, commits that are slow.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar, TypeVarTuple

import trio

from ..persistence import Store

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


@contextmanager
def seeded_scheduling(seed: int) -> Iterator[None]:
    """Within the block, trio orders ready tasks by a generator seeded from ``seed``.

    The previous state (flag and generator) is restored on exit. Must be
    entered outside ``trio.run``. Raises RuntimeError if this trio has no such
    seam (it exists in trio 0.11 to 0.35 at least; see its ``_core/_run.py``).
    """
    from trio._core import _run

    if not hasattr(_run, "_ALLOW_DETERMINISTIC_SCHEDULING") or not hasattr(_run, "_r"):
        raise RuntimeError(
            f"trio {trio.__version__} has no deterministic-scheduling seam;"
            " the simulation cannot order its tasks"
        )
    flag = _run._ALLOW_DETERMINISTIC_SCHEDULING
    state = _run._r.getstate()
    setattr(_run, "_ALLOW_DETERMINISTIC_SCHEDULING", True)  # noqa: B010 (a Final in trio)
    _run._r.seed(f"presence-actors scheduler {seed}")
    try:
        yield
    finally:
        setattr(_run, "_ALLOW_DETERMINISTIC_SCHEDULING", flag)  # noqa: B010
        _run._r.setstate(state)


class Watchdog(trio.abc.Instrument):
    """Cancels ``scope`` when trio's clock stops moving: a livelock.

    Under MockClock time passes only when every task waits; tasks that keep
    waking each other at one moment (an alarm ringing an actor whose deadline
    never moves, say) hang the run. After ``rounds`` scheduler rounds at one
    moment (a busy moment takes a few dozen), the run is stopped and
    :attr:`stuck_at` says when.
    """

    def __init__(self, rounds: int = 100_000) -> None:
        self.rounds = rounds
        self.scope: trio.CancelScope | None = None
        self.stuck_at: float | None = None
        self.on_stuck: Callable[[float], None] | None = None
        self._at = math.nan
        self._count = 0

    def after_io_wait(self, timeout: float) -> None:
        now = trio.current_time()
        if now != self._at:
            self._at, self._count = now, 0
            return
        self._count += 1
        if self._count == self.rounds and self.scope is not None:
            self.stuck_at = now
            if self.on_stuck is not None:
                self.on_stuck(now)
            self.scope.cancel()


class StoreFailure(sqlite3.OperationalError):
    """An injected commit failure (the writer retries it like any OperationalError)."""


class InlineStore:
    """Runs store calls inline, with the store faults in force at the moment.

    While ``failing_until`` is ahead, a commit raises :class:`StoreFailure`
    (nothing is written); while ``slow_until`` is ahead, a commit first waits
    ``delay`` seconds on the trio clock, shielded, as a slow disk would hold a
    thread. Like ``trio.to_thread.run_sync``, a call checks for cancellation
    first and then always completes.
    """

    def __init__(self) -> None:
        self.failing_until = -math.inf
        self.slow_until = -math.inf
        self.delay = 0.0
        self.commits = 0
        self.failures = 0
        # Whether the last commit failed (the writer is "not writable" until one
        # succeeds), and when the first success after failures came.
        self.failing = False
        self.recovered_at = -math.inf

    async def __call__(self, fn: Callable[[*Ts], T], /, *args: *Ts) -> T:
        await trio.lowlevel.checkpoint_if_cancelled()
        if getattr(fn, "__func__", None) is Store.commit:
            if trio.current_time() < self.slow_until:
                with trio.CancelScope(shield=True):
                    await trio.sleep(self.delay)
            if trio.current_time() < self.failing_until:
                self.failures += 1
                self.failing = True
                await trio.lowlevel.cancel_shielded_checkpoint()
                raise StoreFailure("disk I/O error (injected by the simulation)")
            self.commits += 1
            if self.failing:
                self.failing = False
                self.recovered_at = trio.current_time()
        result = fn(*args)
        await trio.lowlevel.cancel_shielded_checkpoint()
        return result
