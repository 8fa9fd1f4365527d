"""Simulation: the whole engine under a seeded schedule, a mock clock and checks.

``Simulation(seed, users, config).run(steps)`` opens the real engine
(:func:`~presence_actors.actors.open_engine`: registry, user actors,
supervisor, alarms, the persistence actor on a real SQLite file in a
temporary directory) inside ``trio.run`` with a
:class:`trio.testing.MockClock` that jumps to the next deadline whenever every
task waits, and plays a schedule (:mod:`.schedule`) against it through
in-memory sessions (:mod:`.world`). Each moment of the schedule is played out
until every task waits again, then checked (:mod:`.checks`).

What is deterministic, and why: see docs/SIMULATION.md ("Determinism"). In
short, every input is drawn from the seed, time is the mock clock's, the order
of ready tasks is the seeded scheduler's (:mod:`.scheduler`), store calls run
inline, and nothing reads the wall clock except the fan-out's pacing of ticks
of more than 250 deliveries, which the simulation stays under (at most 250
sessions).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
import traceback
from collections.abc import Iterable, Mapping
from pathlib import Path

import attrs
import trio
import trio.testing

from ..actors import Engine, Seams, StatsQuery, WallClock, open_engine
from ..actors.supervisor import RestartIntensityExceeded
from ..config import Settings
from ..persistence import WritesLost
from . import events as ev
from .epochs import StoreState, read_store
from .report import Counters, Result
from .schedule import MEAN_GAP, Schedule, generate
from .scheduler import InlineStore, Watchdog, pass_time, seeded_scheduling, still_clock
from .world import Invariant, World

# Trio time t is unix second EPOCH + t in every timestamp the engine makes.
EPOCH = 1_800_000_000.0
# After the last event every session ends; the simulation then waits this much
# longer than the view bound before it looks for ghosts.
_MARGIN = 1.0


class Simulation:
    """A seeded, reproducible run of the whole engine (see the module docstring).

    ``config`` is the engine's settings (defaults: ``Settings()``); the
    simulation puts the database in its own temporary directory and turns
    retention pruning off (the audit checks read every event). ``faults`` are
    names from :data:`~.schedule.FAULTS`. ``invariants`` are a researcher's own,
    by name: each is called at the end of every moment with a
    :class:`~.world.Moment` and returns the problems it sees (violations under
    its name). ``watchdog_rounds``: scheduler rounds at one moment after which
    the run is stopped as a livelock (a violation of ``engine``).
    """

    def __init__(
        self,
        seed: int,
        users: int = 8,
        config: Settings | None = None,
        *,
        faults: Iterable[str] = (),
        invariants: Mapping[str, Invariant] | None = None,
        watchdog_rounds: int = 100_000,
    ) -> None:
        self.watchdog_rounds = watchdog_rounds
        self._clock = still_clock()  # each run's own, from run()
        self.seed = seed
        self.invariants = dict(invariants or {})
        self.users = users
        self.faults = frozenset(faults)
        base = config or Settings()
        self.settings = attrs.evolve(
            base, persistence=attrs.evolve(base.persistence, retention=0.0)
        )

    def schedule(self, steps: int, pace: float = MEAN_GAP) -> Schedule:
        """The generated schedule of ``steps`` events (``pace``: mean seconds between)."""
        return generate(self.seed, steps, self.users, self.faults, pace)

    def run(self, steps: int | Schedule) -> Result:
        """Play ``steps`` generated events (or a given schedule) and check them."""
        schedule = self.schedule(steps) if isinstance(steps, int) else steps
        result = Result(schedule, Counters())
        quiet = logging.getLogger("presence_actors")
        level = quiet.level
        quiet.setLevel(logging.CRITICAL + 1)  # injected crashes and failures are expected
        started = time.perf_counter()
        try:
            with (
                tempfile.TemporaryDirectory(prefix="presence-sim-", dir=_fast_dir()) as tmp,
                seeded_scheduling(schedule.seed),
            ):
                clock = self._clock = still_clock()
                watchdog = Watchdog(clock, self.watchdog_rounds)
                trio.run(
                    self._main,
                    schedule,
                    result,
                    Path(tmp),
                    watchdog,
                    clock=clock,
                    instruments=[watchdog],
                )
        finally:
            quiet.setLevel(level)
        result.wall_seconds = time.perf_counter() - started
        return result

    async def _main(
        self, schedule: Schedule, result: Result, tmp: Path, watchdog: Watchdog
    ) -> None:
        clock = WallClock(EPOCH)
        store = InlineStore()
        world = World(self.settings, schedule.users, clock, result.counters, store, self.invariants)
        seams = Seams(run_blocking=store, before_transition=world.before_transition)
        watchdog.on_stuck = world.stuck
        with trio.CancelScope() as watchdog.scope:
            await self._epochs(schedule, world, clock, seams, tmp)
        if watchdog.stuck_at is not None:
            world.violation(
                "engine",
                f"livelock: the clock stopped at {watchdog.stuck_at:.6f}, tasks waking"
                f" each other for {watchdog.rounds} scheduler rounds",
            )
        result.violations = world.violations
        result.virtual_seconds = trio.current_time()
        result.counters.commit_failures = store.failures

    async def _epochs(
        self, schedule: Schedule, world: World, clock: WallClock, seams: Seams, tmp: Path
    ) -> None:
        """Start the process, play until it stops, start it again ..., to the end."""
        counters = world.counters
        path = tmp / "presence-0.db"
        timeline = list(zip(schedule.numbers, schedule.events, strict=True))
        index = 0
        epoch = 0
        while True:
            world.begin_epoch(read_store(path) if path.exists() else StoreState.empty())
            settings = attrs.evolve(
                self.settings, persistence=attrs.evolve(self.settings.persistence, path=str(path))
            )
            restart: ev.Restart | None = None
            lost = failed = False
            try:
                async with open_engine(settings, clock=clock, seams=seams) as engine:
                    world.engine = engine
                    index, restart = await self._play(world, timeline, index)
                    if restart is None:
                        await self._finish(world, engine)
                    else:
                        path = await self._stop(
                            world, engine, restart, path, tmp / f"presence-{epoch + 1}.db"
                        )
            except* WritesLost:
                lost = True  # the engine said what it could not commit
            except* RestartIntensityExceeded as group:
                world.violation("engine", f"the engine stopped: {group.exceptions[0]}")
                failed = True
            except* Exception as group:
                if world.stuck_at is None:  # else: the failure of a run stopped at random
                    error = group.exceptions[0]
                    world.violation("engine", f"the engine failed: {_where(error)}")
                failed = True
            world.engine = None
            stopped = trio.current_time()
            if failed:
                break
            if not lost:
                world.end_epoch(
                    read_store(path), stopped, killed=restart is not None and restart.kill
                )
            if restart is None:
                break
            counters.restarts += 1
            epoch += 1

    async def _play(
        self, world: World, timeline: list[tuple[int, ev.Event]], index: int
    ) -> tuple[int, ev.Restart | None]:
        """Play events from ``index`` up to a restart (returned) or the end."""
        counters = world.counters
        idle = False  # at the start of an epoch the engine may still be starting
        while index < len(timeline):
            number, event = timeline[index]
            await self._advance(world, event.at, idle=idle)
            if isinstance(event, ev.Restart):
                world.step = number
                counters.events += 1
                return index + 1, event
            now = trio.current_time()
            world.truth.advance(now)
            moment = event.at
            while index < len(timeline):
                number, event = timeline[index]
                if event.at != moment or isinstance(event, ev.Restart):
                    break
                world.step = number
                if await world.apply(event):
                    counters.events += 1
                else:
                    counters.skipped += 1
                index += 1
            await world.heartbeats(now)
            await self._checked(world, now)
            idle = True
        return index, None

    async def _advance(self, world: World, until: float, *, idle: bool = False) -> None:
        """Let time pass up to ``until``: heartbeats go out and lagging views are
        checked on time; the engine's own timers fire as they come. ``idle``: the
        caller comes straight from :meth:`_checked` (every task waits)."""
        while True:
            wake = min(world.next_heartbeat(), world.lag.next_due(), until)
            # The engine's timers due by then go first.
            await pass_time(self._clock, wake, idle=idle)
            if wake >= until:
                return
            now = trio.current_time()
            world.truth.advance(now)
            await world.heartbeats(now)
            if world.reactions:
                await self._checked(world, now)
                idle = True
            else:
                world.check(now)  # bare heartbeats are answered at once: nothing to settle
                idle = False

    async def _settle(self, world: World) -> None:
        """Until every task waits and nothing more is to be done by the clients."""
        while True:
            await trio.testing.wait_all_tasks_blocked()
            if not world.reactions:
                return
            while world.reactions:
                await world.reactions.popleft()()

    async def _checked(self, world: World, now: float) -> None:
        """The end of a moment: settle, check, and settle what the checks asked for
        (the engine's word on a privacy change whose answer never came)."""
        await self._settle(world)
        world.check(now)
        if world.reactions:
            await self._settle(world)

    async def _finish(self, world: World, engine: Engine) -> None:
        """Quiet: the clients stay and heartbeat until every view had time to catch up.
        Then every session ends; once every timer has run out nobody may be left."""
        await self._advance(world, trio.current_time() + world.lag.bound + _MARGIN)
        now = trio.current_time()
        world.truth.advance(now)
        await self._checked(world, now)
        for session in world.open_sessions():
            if not session.closed:
                await world.drop(session)
        world.truth.advance(trio.current_time())
        await self._checked(world, trio.current_time())
        await self._advance(world, trio.current_time() + world.lag.bound + _MARGIN, idle=True)
        now = trio.current_time()
        world.truth.advance(now)
        await self._checked(world, now)
        stats = engine.registry.answer(StatsQuery())
        world.counters.checks += 1
        if stats.online_users or stats.sessions or stats.actors:
            online = sorted(v.user_id for v in engine.registry.directory.views() if v.online)
            world.violation(
                "no-ghost",
                f"after every session ended: {stats.online_users} users shown online"
                f" {online}, {stats.sessions} sessions and {stats.actors} actors left",
            )

    async def _stop(
        self, world: World, engine: Engine, restart: ev.Restart, path: Path, copy: Path
    ) -> Path:
        """The process stops: cleanly (every session is closed, then the engine records
        the shutdown), or killed (only what is committed survives: the files as
        they are now, copied before the engine's own stop writes anything)."""
        world.stopping = True
        for session in world.open_sessions():
            if not session.closed:
                if restart.kill:
                    session.closed = session.handle.closing = True
                else:
                    await world.drop(session)
        if not restart.kill:
            await self._settle(world)
            return path
        # Blocking file calls, on purpose: the process "dies" at this very moment.
        for suffix in ("", "-wal"):
            if os.path.exists(f"{path}{suffix}"):  # noqa: ASYNC240
                shutil.copyfile(f"{path}{suffix}", f"{copy}{suffix}")
        return copy


def _where(error: BaseException) -> str:
    """``Type: message (file:line)`` of where an exception was raised."""
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    frames = traceback.extract_tb(error.__traceback__)
    place = f" ({Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    return f"{type(error).__name__}: {error}{place}"


def _fast_dir() -> str | None:
    """A memory file system for the database when there is one: the simulation
    commits every flush interval of virtual time, thousands of times a second."""
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else None
