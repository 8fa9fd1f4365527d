"""Engine defects the deterministic simulation found, each pinned by a regression test.

Each test drives the real engine on a MockClock through its seams (the
``before_transition`` hook crashes an actor exactly where the simulation's
crash fault did) and asserts what a client would notice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
from trio.testing import MockClock

from presence_actors.actors import (
    MemoryOutbox,
    Seams,
    SessionHandle,
    ViewsQuery,
    WallClock,
    open_engine,
    user_state,
)
from presence_actors.actors.messages import Attach, Tick
from presence_actors.actors.session import CLOSE_HEARTBEAT_TIMEOUT
from presence_actors.model import DeviceType, Status, UserView
from presence_actors.protocol import (
    Error,
    ErrorCode,
    GetPresence,
    Heartbeat,
    HeartbeatAck,
    Identify,
    Presence,
    Scope,
    SetStatus,
    StatusUpdated,
)

from .engine_harness import EPOCH, FakeTransport, connect, make_settings, settle


class CrashOnce:
    """A ``before_transition`` hook: crashes ``user``'s actor at the first message
    ``matches`` accepts once armed, as a bug in a transition would."""

    def __init__(self, user: str, matches: Callable[[object], bool]) -> None:
        self.user = user
        self.matches = matches
        self.armed = False
        self.fired = 0

    def __call__(self, user_id: str, message: object) -> None:
        if self.armed and user_id == self.user and self.matches(message):
            self.armed = False
            self.fired += 1
            raise RuntimeError("injected crash")


@pytest.fixture
def quiet_supervisor(caplog: pytest.LogCaptureFixture) -> None:
    # The supervisor logs each crash with its traceback; these crashes are on purpose.
    caplog.set_level(logging.CRITICAL, logger="presence_actors.supervisor")


async def test_a_crash_while_a_timer_fires_does_not_lose_the_users_timers(
    autojump_clock: MockClock, tmp_path: Path, quiet_supervisor: None
) -> None:
    """Found by ``simulate --faults crash`` (seed 3, 3000 steps, 8 users): an actor
    that crashed on the Tick of a heartbeat timeout was restarted, but its alarm
    had been spent and nothing set it again, so the silent session never timed out
    and the user stayed online for good, a ghost. Fails on 8215680: alice is still
    online an hour later."""
    settings = make_settings(
        tmp_path,
        presence={"heartbeat_interval": 15.0, "heartbeat_timeout": 30.0, "grace_period": 10.0},
    )
    crash = CrashOnce("alice", lambda message: isinstance(message, Tick))
    seams = Seams(before_transition=crash)
    async with open_engine(settings, clock=WallClock(EPOCH), seams=seams) as engine:
        watcher = await connect(engine, "watcher")
        alice = await connect(engine, "alice")
        crash.armed = True
        # alice goes silent; the watcher keeps itself alive.
        for _ in range(240):
            await trio.sleep(15)
            await watcher.send(Heartbeat())
        assert crash.fired == 1
        assert alice.close_code == CLOSE_HEARTBEAT_TIMEOUT
        [view] = await engine.ask(ViewsQuery("watcher", ("alice",)))
        assert view.status is Status.OFFLINE
        assert [p.view.status for p in watcher.pushes("alice")][-1] is Status.OFFLINE


async def test_a_crash_while_attaching_refuses_the_session_instead_of_leaving_it_waiting(
    autojump_clock: MockClock, tmp_path: Path, quiet_supervisor: None
) -> None:
    """Found by ``simulate --faults crash`` (seed 1, 3000 steps, 8 users): an actor
    that crashed on an Attach answered nothing, so the session never got its
    welcome nor an error, and a WebSocket session waits for that first message
    before it reads its client: the connection hung open for good. Fails on
    8215680: nothing reaches the outbox. Now the session is refused with
    INTERNAL (the transport closes it), and the next attempt is welcomed."""
    settings = make_settings(tmp_path)
    crash = CrashOnce("alice", lambda message: isinstance(message, Attach))
    seams = Seams(before_transition=crash)
    async with open_engine(settings, clock=WallClock(EPOCH), seams=seams) as engine:
        await connect(engine, "alice", "phone")  # the actor exists
        crash.armed = True
        laptop = FakeTransport(engine, "alice", "laptop")
        await engine.attach(laptop.handle)
        await settle()
        assert crash.fired == 1
        [first] = laptop.drain()
        assert isinstance(first, Error)
        assert first.code is ErrorCode.INTERNAL
        await engine.detach(laptop.handle)  # the transport closes it
        again = await connect(engine, "alice", "laptop")
        assert isinstance(again, FakeTransport)
        [view] = await engine.ask(ViewsQuery("alice", ("alice",)))
        assert sorted(d.device_id for d in view.devices) == ["laptop", "phone"]



def test_a_held_push_goes_out_when_its_window_ends_whatever_the_float_rounding() -> None:
    """Found by ``simulate --faults all`` (seed 6, 4000 steps, 8 users): a user past
    its flap limit has its push held until ``first push + 10 s``. At that moment
    the window was tested as ``t > now - 10``, and for ``t = 10.211331103095945``
    ``(t + 10) - 10`` rounds below ``t``: the first push still counted, the push
    was held again until the same moment, and the alarm rang the actor again at
    once, for ever. Under MockClock the engine livelocked (virtual time never
    moved again); on a real clock it spun until the clock ticked. Fails on
    8215680: the push is held again, due at ``now``."""
    clock = WallClock(EPOCH)
    rules = user_state.Rules(clock)
    first = 10.211331103095945
    now = first + user_state.PUSH_WINDOW
    assert now - user_state.PUSH_WINDOW < first  # the rounding that split them
    handle = SessionHandle("s1", "alice", "d1", DeviceType.WEB, MemoryOutbox(10))
    session = user_state.SessionState(handle, Status.BUSY, now - 1, now - 1)
    view = UserView("alice", Status.BUSY, None, None, clock.ms(now - 1))
    held = user_state.UserState(
        user_id="alice",
        sessions=(session,),
        seen_active=clock.ms(now - 1),
        seen_alive=clock.ms(now - 1),
        shown=view,
        pushed=(Status.ONLINE, None, None),
        pushed_public=(Status.ONLINE, None, None),
        push_times=tuple(first + i * 0.5 for i in range(10)),
        push_due=now,
    )
    assert user_state.next_deadline(held, now, rules) == now
    state, effects = user_state.expire(held, now, rules)
    assert state.push_due is None
    assert user_state.next_deadline(state, now, rules) > now
    [publish] = [e for e in effects if isinstance(e, user_state.Publish)]
    assert publish.push_public
    assert publish.view.status is Status.BUSY


async def test_a_held_push_reaches_the_session_whose_later_request_joined_it(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    """Found by ``simulate --faults all`` (seed 1, 2000 steps, 8 users, shrunk to
    44 events): past the flap limit, alice's phone changed her status message; the
    push was held, and her laptop's active heartbeat then joined the held change
    and became its cause. When the held push went out it skipped the laptop (the
    cause "got the reply"), but the laptop's reply was a heartbeat_ack: it never
    learned the new message. Fails on 8215680: the laptop is pushed nothing."""
    settings = make_settings(tmp_path)
    async with open_engine(settings, clock=WallClock(EPOCH)) as engine:
        phone = await connect(engine, "alice", "phone")
        laptop = await connect(engine, "alice", "laptop")
        # Ten pushed changes within ten seconds reach the flap limit.
        for i in range(10):
            await phone.send(SetStatus(status=Status.ONLINE, status_message=f"m{i}"))
            await phone.expect(StatusUpdated)
            await trio.sleep(0.1)
        await settle()
        laptop.drain()
        await phone.send(SetStatus(status=Status.ONLINE, status_message="lunch"))
        await phone.expect(StatusUpdated)
        await settle()
        assert laptop.pushes("alice") == []  # held back by the flap limit
        await laptop.send(Heartbeat(active=True))
        await laptop.expect(HeartbeatAck)
        await trio.sleep(10)
        pushed = laptop.pushes("alice")
        assert pushed, "the laptop never learned the new status message"
        assert pushed[-1].view.status_message == "lunch"


async def test_a_watcher_that_read_a_held_change_is_pushed_the_state_that_followed(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    """Found by ``simulate --faults all`` (seed 19, 3000 steps, 8 users, shrunk to
    24 events): past the flap limit, alice's change is held back from pushes but
    answers show it at once; a watcher that connected then read it. When alice
    came back to the state last pushed, nothing was pushed ("nothing visible
    changed" for watchers that had seen only pushes), and that watcher showed the
    held state for good. Fails on 8215680: the late watcher still shows alice away."""
    settings = make_settings(tmp_path)
    async with open_engine(settings, clock=WallClock(EPOCH)) as engine:
        alice = await connect(engine, "alice")
        for i in range(9):  # with the connect, ten pushed changes: the flap limit
            await alice.send(SetStatus(status=Status.ONLINE, status_message=f"m{i}"))
            await alice.expect(StatusUpdated)
            await trio.sleep(0.1)
        await alice.send(SetStatus(status=Status.AWAY))  # held back
        await alice.expect(StatusUpdated)
        late = await connect(engine, "late")
        await late.send(GetPresence(user_ids=("alice",)))
        [seen] = (await late.expect(Presence)).users
        assert seen.status is Status.AWAY  # answers show the current state
        await alice.send(SetStatus(status=Status.ONLINE))  # back to what was pushed
        await alice.expect(StatusUpdated)
        await trio.sleep(11)
        pushed = late.pushes("alice")
        assert pushed, "the late watcher still shows alice away"
        assert pushed[-1].view.status is Status.ONLINE


async def test_a_tick_that_coalesces_two_sessions_changes_skips_neither(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    """Found by ``simulate --faults all --users 20`` (seed 53, 3000 steps, shrunk to
    4 events): at one moment alice's phone set her username and her laptop her
    status. The fan-out keeps one push per user per tick, the latest, and skipped
    its cause, the laptop; but the laptop's reply (status_updated) says nothing of
    the username the phone set. Fails on 8215680: the laptop never learns it."""
    settings = make_settings(tmp_path)
    async with open_engine(settings, clock=WallClock(EPOCH)) as engine:
        phone = await connect(engine, "alice", "phone")
        laptop = await connect(engine, "alice", "laptop")
        laptop.drain()
        # Both at once: neither send waits, so one tick carries both changes.
        await phone.send(Identify(username="eve"))
        await laptop.send(SetStatus(status=Status.AWAY, scope=Scope.ALL))
        await settle()
        await laptop.expect(StatusUpdated)
        pushed = laptop.pushes("alice")
        assert pushed, "the laptop never learned alice's username"
        assert pushed[-1].view.username == "eve"
