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

:func:`still_clock` is the simulation's :class:`trio.testing.MockClock`: one
that never moves by itself and jumps to the next deadline whenever every task
waits, read without asking the real clock each time (trio and the engine read
the time hundreds of thousands of times a run).
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar, TypeVarTuple

import trio
import trio.testing

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


def still_clock() -> trio.testing.MockClock:
    """``MockClock(autojump_threshold=0)`` (rate 0), cheaper to read.

    At rate 0 MockClock's time is its virtual base plus ``0 * (real offset)``:
    exactly the base, which this clock returns without reading the real clock.
    Its autojump reads the next deadline from the runner instead of building
    :func:`trio.lowlevel.current_statistics` (the same subtraction, so the same
    time to the last bit). trio's run loop autojumps only a MockClock, which is
    final: the shortcuts are set on the instance. Where this trio lacks the
    attributes they rely on, it is a plain MockClock. The rate must stay 0:
    nothing in the simulation changes it.
    """
    from trio._core import _run

    clock = trio.testing.MockClock(autojump_threshold=0)
    context = getattr(_run, "GLOBAL_RUN_CONTEXT", None)
    if not isinstance(getattr(clock, "_virtual_base", None), float) or context is None:
        return clock

    def current_time() -> float:
        return clock._virtual_base

    def deadline_to_sleep_time(deadline: float) -> float:
        # MockClock's own answer at rate 0: now, or "not by the passing of time".
        return 0 if deadline - clock._virtual_base <= 0 else 999999999

    def autojump() -> None:
        jump = context.runner.deadlines.next_deadline() - clock._virtual_base
        if 0 < jump < math.inf:
            clock._virtual_base += jump

    setattr(clock, "current_time", current_time)  # noqa: B010 (mypy: a method)
    setattr(clock, "deadline_to_sleep_time", deadline_to_sleep_time)  # noqa: B010
    setattr(clock, "_autojump", autojump)  # noqa: B010
    return clock


async def pass_time(clock: trio.testing.MockClock, until: float, *, idle: bool = False) -> None:
    """Let the clock run to ``until``, each deadline on the way firing at its own
    moment; return once every task waits at ``until`` (timers due then have run).

    What ``trio.sleep_until(until)`` and then ``wait_all_tasks_blocked()`` do on an
    autojumping MockClock, without a deadline of the caller's own: that costs a
    cancel scope and a Cancelled exception each time (50-90 µs here, a tenth of a
    simulated event). Instead, whenever every task waits, the clock jumps to the
    earliest deadline, or to ``until`` if none comes first, by the subtraction
    autojump makes (the same times to the last bit). The caller is not among the
    tasks a deadline wakes, so ready tasks are ordered as the seed draws them
    among the engine's tasks alone. Where this trio does not show its deadlines,
    it is the sleep and the wait.

    ``idle``: the caller has not yielded since a ``wait_all_tasks_blocked`` of its
    own returned (it was woken alone, so every other task still waits) and has
    woken no task since; the first wait, which would return at the next round
    with nothing run in between, is skipped. (Checked: no task may be runnable.)
    """
    next_deadline = _next_deadline_reader()
    if next_deadline is None:
        await trio.sleep_until(until)
        await trio.testing.wait_all_tasks_blocked()
        return
    if idle and trio.lowlevel.current_statistics().tasks_runnable:
        idle = False
    while True:
        if not idle:
            await trio.testing.wait_all_tasks_blocked()
        idle = False
        deadline = next_deadline()
        jump = min(deadline, until) - clock.current_time()
        if jump > 0:
            clock.jump(jump)
        if deadline > until:
            return


def _next_deadline_reader() -> Callable[[], float] | None:
    """The run's ``Deadlines.next_deadline`` (the earliest live deadline), if this
    trio has it where trio 0.35 keeps it."""
    from trio._core import _run

    runner = getattr(getattr(_run, "GLOBAL_RUN_CONTEXT", None), "runner", None)
    reader = getattr(getattr(runner, "deadlines", None), "next_deadline", None)
    return reader if callable(reader) else None


class Watchdog(trio.abc.Instrument):
    """Cancels ``scope`` when trio's clock stops moving: a livelock.

    Under MockClock time passes only when every task waits; tasks that keep
    waking each other at one moment (an alarm ringing an actor whose deadline
    never moves, say) hang the run. After ``rounds`` scheduler rounds at one
    moment (a busy moment takes a few dozen), the run is stopped and
    :attr:`stuck_at` says when.
    """

    def __init__(self, clock: trio.abc.Clock, rounds: int = 100_000) -> None:
        self.clock = clock
        self.rounds = rounds
        self.scope: trio.CancelScope | None = None
        self.stuck_at: float | None = None
        self.on_stuck: Callable[[float], None] | None = None
        self._at = math.nan
        self._count = 0

    def after_io_wait(self, timeout: float) -> None:
        now = self.clock.current_time()  # called every scheduler round: the shortest way
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
