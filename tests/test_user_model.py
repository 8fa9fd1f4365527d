"""Stateful test: one user's actor against a small reference model of PROTOCOL.md section 1.

Hypothesis drives random connects, drops, logouts, status changes, heartbeats,
activity and clock jumps. The engine runs in its own thread on a MockClock that
only moves when the ``advance`` rule steps it from deadline to deadline (what
the autojump clock would do), so every timer fires at its exact moment. After
each step the user's status and lastSeen as a watcher sees them, the pushes the
watcher received and the close codes of the sessions must equal the model's.
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import trio
import trio.testing
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from presence_actors.actors import ViewsQuery
from presence_actors.model import Status
from presence_actors.protocol import Activity, Heartbeat, Logout, Scope, SetStatus

from .engine_harness import EPOCH, FakeTransport, connect, make_settings, running_engine

T = TypeVar("T")

GRACE, TIMEOUT, AWAY = 10.0, 30.0, 60.0
DEVICES = ("a", "b", "c")
PRIORITY = {Status.OFFLINE: 0, Status.AWAY: 1, Status.BUSY: 2, Status.ONLINE: 3}


def wall_ms(t: float) -> int:
    return int((t + EPOCH) * 1000)


class Model:
    """The presence rules, written out as plainly as possible."""

    def __init__(self) -> None:
        self.now = 0.0
        # device -> [chosen status, last message, last activity]; insertion = attach order
        self.sessions: dict[str, list[Any]] = {}
        self.departed: dict[str, tuple[Status, float]] = {}
        self.grace: tuple[Status, float] | None = None
        self.offline_seen: int | None = None
        self.active_seen: int | None = None
        self.alive_seen: int | None = None
        self.status_message: str | None = None
        # What others see of the message: the one shown while last visible, so an
        # invisible user looks exactly like an offline one.
        self.shown_message: str | None = None
        self.shown = Status.OFFLINE
        self.pushed: tuple[Status, str | None] = (Status.OFFLINE, None)
        self.pushes: list[tuple[Status, int | None]] = []
        self.closes: dict[str, list[int]] = {d: [] for d in DEVICES}

    def device_status(self, device: str, at: float) -> Status:
        chosen, _, last_activity = self.sessions[device]
        if chosen is Status.ONLINE and at >= last_activity + AWAY:
            return Status.AWAY
        return chosen  # type: ignore[no-any-return]

    def status(self, at: float) -> Status:
        if self.sessions:
            return max((self.device_status(d, at) for d in self.sessions), key=PRIORITY.get)  # type: ignore[arg-type]
        return self.grace[0] if self.grace else Status.OFFLINE

    def last_seen(self) -> int | None:
        return self.offline_seen if self.shown is Status.OFFLINE else self.active_seen

    def touch(self, device: str, active: bool, visible: bool | None = None) -> None:
        session = self.sessions[device]
        session[1] = self.now
        if active:
            session[2] = self.now
        if visible is None:
            visible = session[0] is not Status.OFFLINE
        if visible:
            self.alive_seen = wall_ms(self.now)
            if active or self.active_seen is None:
                self.active_seen = wall_ms(self.now)

    def settle(self) -> None:
        """Publish what changed at ``now``, as watchers would see it."""
        status = self.status(self.now)
        if status is Status.OFFLINE and self.shown is not Status.OFFLINE:
            self.offline_seen = self.alive_seen or self.offline_seen
        self.shown = status
        if status is not Status.OFFLINE:
            self.shown_message = self.status_message
        part = (status, self.shown_message)
        if part != self.pushed:
            self.pushed = part
            self.pushes.append((status, self.last_seen()))

    def remove(self, device: str, *, logout: bool = False) -> None:
        held = self.status(self.now)
        chosen = self.sessions.pop(device)[0]
        if not logout:
            self.departed[device] = (chosen, self.now + GRACE)
        if not self.sessions and not logout:
            self.grace = (held, self.now + GRACE)
        if not self.sessions and self.grace is None:
            self.departed.clear()

    # --- actions ------------------------------------------------------------------

    def connect(self, device: str) -> None:
        status = Status.ONLINE
        if device in self.sessions:
            status = self.sessions.pop(device)[0]
            self.closes[device].append(4000)
        elif device in self.departed and self.departed[device][1] > self.now:
            status = self.departed[device][0]
        self.departed.pop(device, None)
        self.sessions[device] = [status, self.now, self.now]
        self.grace = None
        self.touch(device, True)
        self.settle()

    def drop(self, device: str) -> None:
        self.remove(device)
        self.settle()

    def logout(self, device: str) -> None:
        self.touch(device, True)
        self.remove(device, logout=True)
        self.closes[device].append(1000)
        self.settle()

    def set_status(self, device: str, status: Status, scope: Scope, message: str | None) -> None:
        was_visible = self.sessions[device][0] is not Status.OFFLINE
        for name, session in self.sessions.items():
            if scope is Scope.ALL or name == device:
                session[0] = status
        if message is not None:
            self.status_message = message or None
        self.touch(device, True, visible=was_visible or status is not Status.OFFLINE)
        self.settle()

    def heartbeat(self, device: str, active: bool) -> None:
        self.touch(device, active)
        self.settle()

    def advance(self, seconds: float) -> None:
        target = self.now + seconds
        while True:
            moments = [s[1] + TIMEOUT for s in self.sessions.values()]
            moments += [
                s[2] + AWAY
                for s in self.sessions.values()
                if s[0] is Status.ONLINE and s[2] + AWAY > self.now
            ]
            if self.grace is not None:
                moments.append(self.grace[1])
            due = min((m for m in moments if m <= target), default=None)
            if due is None:
                break
            self.now = due
            for device in list(self.sessions):
                if self.sessions[device][1] + TIMEOUT <= self.now:
                    self.closes[device].append(4002)
                    self.remove(device)
                    if self.sessions:
                        self.settle()
            if self.grace is not None and self.grace[1] <= self.now:
                self.grace = None
                self.departed.clear()
            self.settle()
        self.now = target


class EngineThread:
    """An engine on a non-autojumping MockClock, running in its own thread."""

    def __init__(self, path: Path) -> None:
        self.clock = trio.testing.MockClock()
        self.settings = make_settings(
            path,
            presence={"grace_period": GRACE, "heartbeat_timeout": TIMEOUT,
                      "heartbeat_interval": 15.0, "away_after": AWAY},
            limits={"status_changes_per_10s": 10_000},
        )  # fmt: skip
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError(f"engine did not start: {self._failure!r}")

    def _run(self) -> None:
        try:
            trio.run(self._main, clock=self.clock)
        except BaseException as exc:  # reported by the test thread
            self._failure = exc
            self._ready.set()

    async def _main(self) -> None:
        self.token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        async with running_engine(self.settings) as engine:
            self.engine = engine
            self.watcher = await connect(engine, "watcher")
            self._ready.set()
            await self._stop.wait()

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        return trio.from_thread.run(fn, *args, trio_token=self.token)

    async def advance(self, seconds: float) -> None:
        """Move the clock to each due deadline in turn, then to ``now + seconds``."""
        target = trio.current_time() + seconds
        while True:
            await trio.testing.wait_all_tasks_blocked()
            step = trio.lowlevel.current_statistics().seconds_to_next_deadline
            if trio.current_time() + step > target:
                break
            self.clock.jump(max(step, 0.0))
            await trio.lowlevel.checkpoint()
        self.clock.jump(target - trio.current_time())
        await trio.testing.wait_all_tasks_blocked()

    def stop(self) -> None:
        trio.from_thread.run_sync(self._stop.set, trio_token=self.token)
        self._thread.join(10)
        if self._failure is not None:
            raise self._failure


class PresenceMachine(RuleBasedStateMachine):
    @initialize()
    def start(self) -> None:
        self.tmp = tempfile.TemporaryDirectory()
        self.runtime = EngineThread(Path(self.tmp.name))
        self.model = Model()
        self.live: dict[str, FakeTransport] = {}
        self.closes: dict[str, list[int]] = {d: [] for d in DEVICES}

    def teardown(self) -> None:
        if hasattr(self, "runtime"):
            self.runtime.stop()
            self.tmp.cleanup()

    async def _settle(self) -> None:
        await trio.testing.wait_all_tasks_blocked()

    def _record_closes(self) -> None:
        for device, transport in list(self.live.items()):
            if transport.closes:
                self.closes[device].append(transport.closes[0][0])
                del self.live[device]

    # --- rules ----------------------------------------------------------------------

    @rule(device=st.sampled_from(DEVICES))
    def connect(self, device: str) -> None:
        async def go() -> FakeTransport:
            return await connect(self.runtime.engine, "u", device)

        old = self.live.get(device)
        transport = self.runtime.call(go)
        if old is not None:
            self.closes[device].append(old.closes[0][0])
        self.live[device] = transport
        self.model.connect(device)

    @precondition(lambda self: bool(self.live))
    @rule(data=st.data())
    def drop(self, data: st.DataObject) -> None:
        device = data.draw(st.sampled_from(sorted(self.live)))
        transport = self.live.pop(device)
        self.runtime.call(transport.drop)
        self.runtime.call(self._settle)
        self.model.drop(device)

    @precondition(lambda self: bool(self.live))
    @rule(data=st.data())
    def logout(self, data: st.DataObject) -> None:
        device = data.draw(st.sampled_from(sorted(self.live)))
        self.runtime.call(self.live[device].send, Logout())
        self.runtime.call(self._settle)
        self._record_closes()
        self.model.logout(device)

    @precondition(lambda self: bool(self.live))
    @rule(
        data=st.data(),
        status=st.sampled_from(list(Status)),
        scope=st.sampled_from(list(Scope)),
        message=st.sampled_from([None, None, "", "lunch", "call"]),
    )
    def set_status(
        self, data: st.DataObject, status: Status, scope: Scope, message: str | None
    ) -> None:
        device = data.draw(st.sampled_from(sorted(self.live)))
        request = SetStatus(status=status, scope=scope, status_message=message)
        self.runtime.call(self.live[device].send, request)
        self.runtime.call(self._settle)
        self.model.set_status(device, status, scope, message)

    @precondition(lambda self: bool(self.live))
    @rule(data=st.data(), kind=st.sampled_from(["bare", "active", "activity"]))
    def heartbeat(self, data: st.DataObject, kind: str) -> None:
        device = data.draw(st.sampled_from(sorted(self.live)))
        request = Activity() if kind == "activity" else Heartbeat(active=kind == "active")
        self.runtime.call(self.live[device].send, request)
        self.runtime.call(self._settle)
        self.model.heartbeat(device, kind != "bare")

    @rule(seconds=st.sampled_from([0.5, 1.0, 5.0, 9.5, 10.0, 15.0, 20.0, 25.0, 29.5]))
    def advance(self, seconds: float) -> None:
        # The watcher stays alive: every jump is shorter than the heartbeat timeout.
        self.runtime.call(self.runtime.watcher.send, Heartbeat())
        self.runtime.call(self.runtime.advance, seconds)
        self._record_closes()
        self.model.advance(seconds)

    # --- observables -------------------------------------------------------------------

    @invariant()
    def observables_match_the_model(self) -> None:
        if not hasattr(self, "runtime"):
            return

        async def observe() -> tuple[Any, list[Any]]:
            [view] = await self.runtime.engine.ask(ViewsQuery("watcher", ("u",)))
            return view, self.runtime.watcher.pushes("u")

        view, pushes = self.runtime.call(observe)
        expected_pushes, self.model.pushes = self.model.pushes, []
        assert [(p.view.status, p.view.last_seen) for p in pushes] == expected_pushes
        assert view.status is self.model.shown
        assert view.last_seen == self.model.last_seen()
        assert view.status_message == self.model.shown_message
        assert self.closes == self.model.closes


PresenceMachine.TestCase.settings = settings(
    max_examples=300, stateful_step_count=30, deadline=None
)
TestUserActorAgainstModel = PresenceMachine.TestCase
