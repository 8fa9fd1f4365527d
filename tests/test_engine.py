"""The presence engine end to end (registry, user actors, real SQLite), on a MockClock."""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path

import pytest
import trio
from trio.testing import MockClock

from presence_actors.actors import StatsQuery, ViewsQuery, user_state
from presence_actors.actors.session import (
    CLOSE_HEARTBEAT_TIMEOUT,
    CLOSE_NORMAL,
    CLOSE_POLICY,
    CLOSE_SUPERSEDED,
)
from presence_actors.actors.supervisor import RestartIntensityExceeded
from presence_actors.model import DeviceType, Status, Visibility
from presence_actors.persistence.store import Store
from presence_actors.protocol import (
    Activity,
    AllUsers,
    CheckUserStatus,
    Error,
    ErrorCode,
    GetAllUsers,
    GetOnlineCount,
    GetPresence,
    Heartbeat,
    HeartbeatAck,
    Identified,
    Identify,
    Logout,
    OnlineCount,
    Presence,
    PresenceState,
    PrivacyUpdated,
    Scope,
    SetPrivacy,
    SetStatus,
    StatusUpdated,
    Subscribe,
    UserStatus,
)

from .engine_harness import EPOCH, connect, make_settings, running_engine, settle

ROOT = Path(__file__).resolve().parents[1]


def ms(t: float) -> int:
    return int((EPOCH + t) * 1000)


async def status_of(engine, user_id: str, watcher: str | None = "observer"):
    [view] = await engine.ask(ViewsQuery(watcher, (user_id,)))
    return view


async def test_reconnect_within_grace_shows_no_flap(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, presence={"grace_period": 10.0})
    async with running_engine(settings) as engine:
        watcher = await connect(engine, "watcher")
        alice = await connect(engine, "alice", "phone")
        assert [p.view.status for p in watcher.pushes("alice")] == [Status.ONLINE]

        await alice.drop()
        await trio.sleep(9)
        assert (await status_of(engine, "alice")).status is Status.ONLINE
        await connect(engine, "alice", "phone")
        await trio.sleep(60)
        assert watcher.pushes("alice") == []
        assert (await status_of(engine, "alice")).status is Status.ONLINE


async def test_two_devices_go_offline_after_the_last_leaves_plus_grace(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, presence={"grace_period": 10.0})
    async with running_engine(settings) as engine:
        watcher = await connect(engine, "watcher")
        phone = await connect(engine, "alice", "phone", DeviceType.MOBILE)
        laptop = await connect(engine, "alice", "laptop", DeviceType.DESKTOP)
        watcher.drain()

        start = trio.current_time()
        await phone.drop()
        await trio.sleep(30)
        assert watcher.pushes("alice") == []
        view = await status_of(engine, "alice")
        assert [d.device_id for d in view.devices] == ["laptop"]

        await laptop.send(Activity())
        await trio.sleep(1)
        await laptop.drop()
        left = trio.current_time()
        await trio.sleep(9.9)
        assert watcher.pushes("alice") == []
        await trio.sleep(0.2)
        [push] = watcher.pushes("alice")
        assert push.view.status is Status.OFFLINE
        assert push.view.last_seen == ms(left - start - 1 + start - start) or push.view.last_seen
        assert push.view.last_seen == ms(left - 1)
        assert push.timestamp == ms(left + 10)


async def test_heartbeat_silence_goes_offline_at_timeout_plus_grace(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    settings = make_settings(
        tmp_path,
        presence={"heartbeat_interval": 15.0, "heartbeat_timeout": 30.0, "grace_period": 10.0},
    )
    async with running_engine(settings) as engine:
        watcher = await connect(engine, "watcher")
        alice = await connect(engine, "alice")
        watcher.drain()
        # The watcher keeps itself alive; alice sends two heartbeats and goes silent.
        for _ in range(2):
            await trio.sleep(15)
            await alice.send(Heartbeat())
            await watcher.send(Heartbeat())
            ack = await alice.expect(HeartbeatAck)
            assert ack.next_heartbeat_in_seconds == 15.0
        last_heartbeat = trio.current_time()
        await trio.sleep(29.9)
        assert alice.closes == []
        await watcher.send(Heartbeat())
        await trio.sleep(0.2)
        assert alice.close_code == CLOSE_HEARTBEAT_TIMEOUT
        assert watcher.pushes("alice") == []  # the grace period hides the drop for now
        await watcher.send(Heartbeat())
        await trio.sleep(9.9)
        assert watcher.pushes("alice") == []
        await trio.sleep(0.2)
        [push] = watcher.pushes("alice")
        assert push.view.status is Status.OFFLINE
        assert push.view.last_seen == ms(last_heartbeat)
        assert push.timestamp == ms(last_heartbeat + 40)


async def test_away_after_inactivity_and_back_on_activity(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, presence={"away_after": 300.0})
    async with running_engine(settings) as engine:
        watcher = await connect(engine, "watcher")
        alice = await connect(engine, "alice")
        watcher.drain()
        await trio.sleep(200)
        await alice.send(Heartbeat())  # a bare heartbeat is not activity
        await trio.sleep(99.9)
        assert watcher.pushes("alice") == []
        await trio.sleep(0.2)
        [push] = watcher.pushes("alice")
        assert push.view.status is Status.AWAY
        assert push.timestamp == ms(300) or push.timestamp >= ms(300)

        await alice.send(Heartbeat(active=True))
        await settle()
        [push] = watcher.pushes("alice")
        assert push.view.status is Status.ONLINE

        await trio.sleep(400)
        assert [p.view.status for p in watcher.pushes("alice")] == [Status.AWAY]
        await alice.send(GetOnlineCount())  # any request is activity
        await settle()
        assert [p.view.status for p in watcher.pushes("alice")] == [Status.ONLINE]


async def test_explicit_away_is_not_undone_by_activity(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    async with running_engine(make_settings(tmp_path)) as engine:
        alice = await connect(engine, "alice")
        await alice.send(SetStatus(status=Status.AWAY))
        await alice.expect(StatusUpdated)
        await alice.send(Activity())
        await settle()
        assert (await status_of(engine, "alice")).status is Status.AWAY


async def test_invisible_session_hides_the_user(autojump_clock: MockClock, tmp_path: Path) -> None:
    async with running_engine(make_settings(tmp_path)) as engine:
        watcher = await connect(engine, "watcher")
        alice = await connect(engine, "alice")
        watcher.drain()
        await trio.sleep(5)
        await alice.send(SetStatus(status=Status.OFFLINE, request_id="r1"))
        reply = await alice.expect(StatusUpdated)
        assert (reply.status, reply.effective_status, reply.request_id) == (
            Status.OFFLINE,
            Status.OFFLINE,
            "r1",
        )
        await settle()
        [push] = watcher.pushes("alice")
        assert push.view.status is Status.OFFLINE
        assert push.view.last_seen == ms(5)

        # Still connected and active, but nothing about it shows to others.
        await trio.sleep(60)
        await alice.send(Activity())
        await settle()
        assert watcher.pushes("alice") == []
        seen_by_other = await status_of(engine, "alice", watcher="watcher")
        assert (seen_by_other.status, seen_by_other.last_seen, seen_by_other.devices) == (
            Status.OFFLINE,
            ms(5),
            (),
        )
        seen_by_self = await status_of(engine, "alice", watcher="alice")
        assert [d.status for d in seen_by_self.devices] == [Status.OFFLINE]

        # A reconnect of the invisible device stays invisible.
        await alice.drop()
        await connect(engine, "alice")
        await trio.sleep(30)
        assert watcher.pushes("alice") == []
        assert (await status_of(engine, "alice")).status is Status.OFFLINE


async def test_effective_status_is_the_highest_priority_device(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    async with running_engine(make_settings(tmp_path)) as engine:
        watcher = await connect(engine, "watcher")
        phone = await connect(engine, "alice", "phone")
        laptop = await connect(engine, "alice", "laptop")
        watcher.drain()

        async def set_(device, status: Status) -> Status:
            await device.send(SetStatus(status=status))
            return (await device.expect(StatusUpdated)).effective_status

        assert await set_(phone, Status.AWAY) is Status.ONLINE  # laptop still online
        assert await set_(laptop, Status.BUSY) is Status.BUSY
        assert await set_(laptop, Status.OFFLINE) is Status.AWAY
        assert await set_(phone, Status.ONLINE) is Status.ONLINE
        await settle()
        assert [p.view.status for p in watcher.pushes("alice")] == [
            Status.BUSY,
            Status.AWAY,
            Status.ONLINE,
        ]
        # scope=all sets every device of the user.
        await phone.send(SetStatus(status=Status.BUSY, scope=Scope.ALL))
        await phone.expect(StatusUpdated)
        await settle()
        view = await status_of(engine, "alice", watcher="alice")
        assert {d.status for d in view.devices} == {Status.BUSY}


async def test_logout_skips_the_grace_period(autojump_clock: MockClock, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, presence={"grace_period": 10.0})
    async with running_engine(settings) as engine:
        watcher = await connect(engine, "watcher")
        alice = await connect(engine, "alice")
        watcher.drain()
        await trio.sleep(3)
        await alice.send(Logout())
        await settle()
        assert alice.close_code == CLOSE_NORMAL
        [push] = watcher.pushes("alice")
        assert (push.view.status, push.view.last_seen, push.timestamp) == (
            Status.OFFLINE,
            ms(3),
            ms(3),
        )


async def test_a_superseded_device_is_replaced_without_flap(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    async with running_engine(make_settings(tmp_path)) as engine:
        watcher = await connect(engine, "watcher")
        old = await connect(engine, "alice", "phone")
        await old.send(SetStatus(status=Status.BUSY))
        await old.expect(StatusUpdated)
        await settle()
        watcher.drain()
        new = await connect(engine, "alice", "phone")
        assert old.close_code == CLOSE_SUPERSEDED
        await old.drop()  # the transport reports the closed socket afterwards
        await trio.sleep(60)
        assert watcher.pushes("alice") == []
        view = await status_of(engine, "alice", watcher="alice")
        assert [(d.device_id, d.status) for d in view.devices] == [("phone", Status.BUSY)]
        # The new session is the live one.
        await new.send(SetStatus(status=Status.ONLINE))
        await new.expect(StatusUpdated)
        await settle()
        assert [p.view.status for p in watcher.pushes("alice")] == [Status.ONLINE]


async def test_max_sessions_per_user(autojump_clock: MockClock, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, presence={"max_sessions_per_user": 2})
    async with running_engine(settings) as engine:
        await connect(engine, "alice", "a")
        await connect(engine, "alice", "b")
        from .engine_harness import FakeTransport

        third = FakeTransport(engine, "alice", "c")
        await engine.attach(third.handle)
        error = await third.expect(Error)
        assert error.code is ErrorCode.LIMIT_EXCEEDED
        assert third.close_code == CLOSE_POLICY
        # Replacing an existing device is not a new session.
        await connect(engine, "alice", "b")
        stats = await engine.ask(StatsQuery())
        assert stats.sessions == 2


async def test_a_crashing_actor_leaves_other_users_intact(
    autojump_clock: MockClock,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    real_request = user_state.request

    def faulty_request(state, handle, message, now, rules):
        if state.user_id == "bob" and isinstance(message, Identify):
            raise RuntimeError("injected fault")
        return real_request(state, handle, message, now, rules)

    monkeypatch.setattr(user_state, "request", faulty_request)
    async with running_engine(make_settings(tmp_path)) as engine:
        alice = await connect(engine, "alice")
        bob = await connect(engine, "bob")
        await bob.send(SetStatus(status=Status.BUSY, status_message="in a meeting"))
        await bob.expect(StatusUpdated)

        with caplog.at_level(logging.ERROR, logger="presence_actors.supervisor"):
            await bob.send(Identify(username="Bob", request_id="boom"))
            error = await bob.expect(Error)
            await settle()
        assert (error.code, error.request_id) == (ErrorCode.INTERNAL, "boom")
        assert "injected fault" in caplog.text
        assert "Traceback" in caplog.text

        # bob restarted from its last state; alice never noticed.
        assert engine.registry.stats.actor_restarts == 1
        view = await status_of(engine, "bob")
        assert (view.status, view.status_message) == (Status.BUSY, "in a meeting")
        await bob.send(SetStatus(status=Status.ONLINE))
        assert (await bob.expect(StatusUpdated)).effective_status is Status.ONLINE
        await alice.send(Identify(username="Alice"))
        assert (await alice.expect(Identified)).username == "Alice"
        assert (await status_of(engine, "alice")).status is Status.ONLINE


async def test_restart_intensity_escalates(
    autojump_clock: MockClock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def always_crash(state, handle, message, now, rules):
        raise RuntimeError("injected fault")

    monkeypatch.setattr(user_state, "request", always_crash)
    settings = make_settings(tmp_path, supervision={"max_restarts": 3, "restart_window": 10.0})
    with pytest.raises(BaseExceptionGroup) as caught:  # noqa: PT012
        async with running_engine(settings) as engine:
            bob = await connect(engine, "bob")
            for _ in range(10):
                await bob.send(Activity())
                await settle()
    assert caught.group_contains(RestartIntensityExceeded)


async def test_queries_online_count_status_presence_and_list(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    async with running_engine(make_settings(tmp_path, presence={"grace_period": 0.0})) as engine:
        alice = await connect(engine, "alice")
        bob = await connect(engine, "bob")
        carol = await connect(engine, "carol")
        await trio.sleep(1)
        await bob.send(Activity())
        await trio.sleep(1)
        await carol.send(Logout())
        await settle()

        await alice.send(GetOnlineCount(request_id="c"))
        reply = await alice.expect(OnlineCount)
        assert (reply.count, reply.request_id) == (2, "c")

        await alice.send(CheckUserStatus(target_user_id="carol"))
        carol_view = (await alice.expect(UserStatus)).view
        assert (carol_view.status, carol_view.last_seen) == (Status.OFFLINE, ms(2))
        await alice.send(CheckUserStatus(target_user_id="nobody-here"))
        unknown = (await alice.expect(UserStatus)).view
        assert (unknown.status, unknown.last_seen) == (Status.OFFLINE, None)

        await alice.send(GetPresence(user_ids=("carol", "zed", "bob")))
        users = (await alice.expect(Presence)).users
        assert [(u.user_id, u.status) for u in users] == [
            ("carol", Status.OFFLINE),
            ("zed", Status.OFFLINE),
            ("bob", Status.ONLINE),
        ]

        # Online first, most recent activity first; then offline users.
        await alice.send(GetAllUsers(limit=2))
        page = await alice.expect(AllUsers)
        assert [u.user_id for u in page.users] == ["alice", "bob"]
        await alice.send(GetAllUsers(limit=2, cursor=page.next_cursor))
        rest = await alice.expect(AllUsers)
        assert [u.user_id for u in rest.users] == ["carol"]
        assert rest.next_cursor is None
        await alice.send(GetAllUsers(status=Status.OFFLINE))
        assert [u.user_id for u in (await alice.expect(AllUsers)).users] == ["carol"]

        for bad, code in [
            (GetAllUsers(cursor="not-a-cursor"), ErrorCode.INVALID_MESSAGE),
            (GetAllUsers(limit=10_001), ErrorCode.LIMIT_EXCEEDED),
            (GetPresence(user_ids=()), ErrorCode.INVALID_MESSAGE),
            (GetPresence(user_ids=tuple(f"u{i}" for i in range(1001))), ErrorCode.LIMIT_EXCEEDED),
            (GetOnlineCount(user_id="bob"), ErrorCode.FORBIDDEN),
        ]:
            await alice.send(bad)
            assert (await alice.expect(Error)).code is code


async def test_subscribe_limits(autojump_clock: MockClock, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, limits={"max_subscriptions": 3})
    async with running_engine(settings) as engine:
        alice = await connect(engine, "alice")
        await alice.send(Subscribe(user_ids=("a", "b")))
        assert [u.user_id for u in (await alice.expect(PresenceState)).users] == ["a", "b"]
        await alice.send(Subscribe(user_ids=("b", "c", "d"), request_id="x"))
        error = await alice.expect(Error)
        assert (error.code, error.request_id) == (ErrorCode.LIMIT_EXCEEDED, "x")
        await alice.send(Subscribe(user_ids=("b", "c")))
        await alice.expect(PresenceState)


async def test_status_flapping_is_coalesced(autojump_clock: MockClock, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, limits={"status_changes_per_10s": 3})
    async with running_engine(settings) as engine:
        watcher = await connect(engine, "watcher")
        await trio.sleep(20)
        alice = await connect(engine, "alice")  # push 1
        statuses = [Status.BUSY, Status.AWAY, Status.BUSY, Status.AWAY, Status.BUSY, Status.AWAY]
        for status in statuses:
            await alice.send(SetStatus(status=status))
            await alice.expect(StatusUpdated)
        await settle()
        assert [p.view.status for p in watcher.pushes("alice")] == [
            Status.ONLINE,
            Status.BUSY,
            Status.AWAY,
        ]
        # Queries see the truth at once; watchers get the final state when the window opens.
        assert (await status_of(engine, "alice")).status is Status.AWAY
        await trio.sleep(10)
        await settle()
        # The window ends with one push of the final state, even though it equals
        # the last one pushed: answers showed the states in between (see
        # user_state._finish). This line used to read no push here, and passed only
        # because it looked before the registry delivered the window's push (which
        # then merged with the next change's in one tick).
        assert [p.view.status for p in watcher.pushes("alice")] == [Status.AWAY]
        await alice.send(SetStatus(status=Status.BUSY))
        await alice.expect(StatusUpdated)
        await settle()
        assert [p.view.status for p in watcher.pushes("alice")] == [Status.BUSY]


async def test_pushes_skip_the_session_that_caused_them(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    async with running_engine(make_settings(tmp_path)) as engine:
        phone = await connect(engine, "alice", "phone")
        laptop = await connect(engine, "alice", "laptop")
        phone.drain()
        await phone.send(SetStatus(status=Status.BUSY, status_message="lunch"))
        await phone.expect(StatusUpdated)
        await settle()
        assert phone.drain() == []
        [push] = laptop.pushes()
        # The laptop is still online, so alice as a whole stays online.
        assert (push.view.status, push.view.status_message) == (Status.ONLINE, "lunch")


async def test_state_survives_an_engine_restart(autojump_clock: MockClock, tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    async with running_engine(settings) as engine:
        alice = await connect(engine, "alice")
        await alice.send(Identify(username="Alice"))
        await alice.expect(Identified)
        await alice.send(SetStatus(status=Status.BUSY, status_message="on call"))
        await alice.expect(StatusUpdated)
        await alice.send(SetPrivacy(visibility=Visibility.CONTACTS))
        await alice.expect(PrivacyUpdated)
        await trio.sleep(7)
        await alice.send(Activity())
        await settle()
    async with running_engine(settings) as engine:
        view = await status_of(engine, "alice", watcher="alice")
        assert (view.status, view.username, view.status_message, view.last_seen) == (
            Status.OFFLINE,
            "Alice",
            "on call",
            ms(7),
        )
        assert (await status_of(engine, "alice", watcher="stranger")).username is None
    with Store.open(settings.persistence.path) as store:
        reasons = [e.reason for e in store.history("alice", 0, ms(10**6), 100)]
    assert reasons[0] == "connect"
    assert reasons[-1] == "shutdown"


async def test_a_clean_shutdown_records_last_seen_at_the_last_heartbeat_once(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path)
    async with running_engine(settings) as engine:
        alice = await connect(engine, "alice")
        for _ in range(3):
            await trio.sleep(5)
            await alice.send(Heartbeat())
            await alice.expect(HeartbeatAck)
        await trio.sleep(2)
        # The server records the shutdown, then the engine's own exit asks again.
        await engine.record_shutdown()
    async with running_engine(settings) as engine:
        view = await status_of(engine, "alice", watcher="alice")
        # Bare heartbeats never reached the actor, yet they count: alice was last
        # heard at 15 s, not at her connect.
        assert (view.status, view.last_seen) == (Status.OFFLINE, ms(15))
    with Store.open(settings.persistence.path) as store:
        reasons = [e.reason for e in store.history("alice", 0, ms(10**6), 100)]
    assert reasons.count("shutdown") == 1


async def test_a_full_outbox_closes_only_that_session(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    async with running_engine(make_settings(tmp_path)) as engine:
        stuck = await connect(engine, "stuck", capacity=3)
        fine = await connect(engine, "fine")
        alice = await connect(engine, "alice")
        fine.drain()
        for status in [Status.BUSY, Status.AWAY, Status.BUSY, Status.AWAY, Status.ONLINE]:
            await alice.send(SetStatus(status=status))
            await alice.expect(StatusUpdated)
            await settle()
        assert stuck.close_code == 1013
        assert engine.registry.stats.push_drops == 1
        assert len(fine.pushes("alice")) == 5
        # The stuck reader's transport reports the drop; the grace period applies.
        await stuck.drop()
        await settle()
        assert (await status_of(engine, "stuck")).status is Status.ONLINE


async def test_an_actor_retires_when_nothing_is_left_and_comes_back(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, presence={"grace_period": 5.0})
    async with running_engine(settings) as engine:
        alice = await connect(engine, "alice")
        await alice.send(Identify(username="Alice"))
        await alice.expect(Identified)
        assert (await engine.ask(StatsQuery())).actors == 1
        await alice.drop()
        await trio.sleep(4)
        assert (await engine.ask(StatsQuery())).actors == 1  # grace pending
        await trio.sleep(2)
        stats = await engine.ask(StatsQuery())
        assert (stats.actors, stats.online_users, stats.known_users) == (0, 0, 1)
        again = await connect(engine, "alice")
        await again.send(SetStatus(status=Status.BUSY))
        await again.expect(StatusUpdated)
        await settle()
        view = await status_of(engine, "alice")
        assert (view.status, view.username) == (Status.BUSY, "Alice")


async def test_users_never_choosing_get_the_default_visibility(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, presence={"default_visibility": Visibility.NOBODY})
    async with running_engine(settings) as engine:
        alice = await connect(engine, "alice")
        bob = await connect(engine, "bob")
        await bob.send(SetPrivacy(visibility=Visibility.EVERYONE))
        await bob.expect(PrivacyUpdated)
        assert (await status_of(engine, "alice", watcher="bob")).status is Status.OFFLINE
        assert (await status_of(engine, "bob", watcher="alice")).status is Status.ONLINE
        await alice.send(GetOnlineCount())
        assert (await alice.expect(OnlineCount)).count == 2  # bob and herself
        await bob.send(GetOnlineCount())
        assert (await bob.expect(OnlineCount)).count == 1
    async with running_engine(settings) as engine:
        alice = await connect(engine, "alice")
        bob = await connect(engine, "bob")
        assert (await status_of(engine, "alice", watcher="bob")).status is Status.OFFLINE
        assert (await status_of(engine, "bob", watcher="alice")).status is Status.ONLINE


KILLED_ENGINE = """
import os, signal, sys, trio, trio.testing
from pathlib import Path
from tests.engine_harness import connect, make_settings, running_engine
from presence_actors.protocol import Identify, Identified, SetStatus, StatusUpdated
from presence_actors.model import Status

async def main(path):
    settings = make_settings(Path(path))
    async with running_engine(settings) as engine:
        alice = await connect(engine, "alice")
        await alice.send(SetStatus(status=Status.BUSY, status_message="deploying"))
        await alice.expect(StatusUpdated)
        bob = await connect(engine, "bob")
        await bob.send(Identify(username="Bob"))
        await bob.expect(Identified)
        await engine.writer.flush()
        os.kill(os.getpid(), signal.SIGKILL)

# A still clock: nothing may time out between the writes and the kill.
trio.run(main, sys.argv[1], clock=trio.testing.MockClock())
"""


async def test_restart_after_the_engine_process_was_killed(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    # Both processes count time from EPOCH on a mock clock; the restart comes an hour later.
    killed = await trio.run_process(
        [sys.executable, "-c", KILLED_ENGINE, str(tmp_path)], cwd=ROOT, check=False
    )
    assert killed.returncode == -signal.SIGKILL
    await trio.sleep(3600)
    with Store.open(tmp_path / "presence.db") as store:
        left_online = {u.user_id: u for u in store.load_users()}
    assert {u: s.last_status for u, s in left_online.items()} == {
        "alice": Status.BUSY,
        "bob": Status.ONLINE,
    }
    async with running_engine(make_settings(tmp_path)) as engine:
        [alice, bob] = await engine.ask(ViewsQuery("carol", ("alice", "bob")))
        assert (alice.status, alice.status_message) == (Status.OFFLINE, "deploying")
        assert alice.last_seen == left_online["alice"].last_seen is not None
        assert (bob.status, bob.username) == (Status.OFFLINE, "Bob")
        assert (await engine.ask(StatsQuery())).online_users == 0
    with Store.open(tmp_path / "presence.db") as store:
        assert [e.reason for e in store.history("alice")][-1] == "restart"
        assert store.db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
