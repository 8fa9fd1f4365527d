"""Zero leaks: random contact graphs, visibility settings, blocks and presence changes.

Hypothesis draws a fan-out mode, a symmetric contact graph, visibility and
block lists, and a sequence of connects, disconnects, status changes, privacy
changes, blocks, contact edits and subscriptions. After every step, each
connected session's pushes and its answers to queries (get_presence,
get_all_users, get_online_count) must equal what a reference model says that
watcher may see — a hidden user looks exactly like one that does not exist.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from presence_actors.actors.messages import AddContact, RemoveContact
from presence_actors.model import Status, Visibility
from presence_actors.protocol import (
    AllUsers,
    Block,
    Blocked,
    GetAllUsers,
    GetOnlineCount,
    GetPresence,
    Logout,
    OnlineCount,
    Presence,
    PresenceState,
    PrivacyUpdated,
    SetPrivacy,
    SetStatus,
    StatusUpdated,
    Subscribe,
    Unblock,
    Unblocked,
)

from .engine_harness import FakeTransport, connect, make_settings, running_engine, settle

USERS = ("u0", "u1", "u2", "u3")
STATUSES = (Status.ONLINE, Status.BUSY, Status.AWAY, Status.OFFLINE)
HIDDEN = (Status.OFFLINE, None, None, None)  # status, statusMessage, username, lastSeen


class Model:
    def __init__(
        self,
        contacts_mode: bool,
        edges: Iterable[frozenset[str]],
        visibility: dict[str, Visibility],
        blocks: Iterable[tuple[str, str]],
    ) -> None:
        self.contacts_mode = contacts_mode
        self.edges = set(edges)
        self.visibility = dict(visibility)
        self.blocks = set(blocks)
        self.status: dict[str, Status] = {}  # connected users and their session's status
        self.message: dict[str, str | None] = {}
        self.face: dict[str, str | None] = {}
        self.known: set[str] = set()
        self.subscriptions: dict[str, set[str]] = {}
        self.expected: dict[str, list[tuple[Any, ...]]] = {}

    # --- rules ---------------------------------------------------------------------

    def may_see(self, watcher: str, user: str) -> bool:
        if watcher == user:
            return True
        if (user, watcher) in self.blocks:
            return False
        visibility = self.visibility.get(user, Visibility.EVERYONE)
        if visibility is Visibility.EVERYONE:
            return True
        return visibility is Visibility.CONTACTS and frozenset((user, watcher)) in self.edges

    def watches(self, watcher: str, user: str) -> bool:
        if not self.contacts_mode or watcher == user:
            return True
        return frozenset((user, watcher)) in self.edges or user in self.subscriptions[watcher]

    def shown(self, user: str) -> tuple[Any, ...]:
        """What others see; a user showing offline (gone, or invisible) keeps the
        status message it last showed while visible."""
        status = self.status.get(user, Status.OFFLINE)
        if status is not Status.OFFLINE:
            self.face[user] = self.message.get(user)
        return (status, self.face.get(user), None)

    def seen_by(self, watcher: str, user: str) -> tuple[Any, ...]:
        """(status, statusMessage, username) of ``user`` as ``watcher`` sees it."""
        if user not in self.known or not self.may_see(watcher, user):
            return HIDDEN[:3]
        if watcher == user:  # itself as it is, invisible or not
            return (self.status.get(user, Status.OFFLINE), self.message.get(user), None)
        return self.shown(user)

    # --- changes ---------------------------------------------------------------------

    def changed(self, user: str, before: tuple[Any, ...]) -> None:
        if self.shown(user) == before:
            return
        for watcher in self.status:
            if watcher != user and self.watches(watcher, user) and self.may_see(watcher, user):
                self.expected[watcher].append((user, *self.shown(user)))

    def policy(self, targets: Iterable[str], change: Any) -> None:
        before = {
            (w, t): (self.watches(w, t) and self.may_see(w, t), self.may_see(w, t))
            for t in targets
            for w in self.status
        }
        change()
        for (watcher, target), (could, _) in sorted(before.items()):
            if watcher == target:
                continue
            can = self.watches(watcher, target) and self.may_see(watcher, target)
            if could and not self.may_see(watcher, target):
                self.expected[watcher].append((target, *HIDDEN[:3]))
            elif can and not could and target in self.known:
                self.expected[watcher].append((target, *self.shown(target)))


def push_key(push: Any) -> tuple[Any, ...]:
    view = push.view
    if view.status is Status.OFFLINE and view.last_seen is None:
        assert (view.status_message, view.username) == (None, None)
    return (view.user_id, view.status, view.status_message, view.username)


actions = st.lists(
    st.one_of(
        st.tuples(st.just("connect"), st.sampled_from(USERS)),
        st.tuples(st.just("disconnect"), st.sampled_from(USERS)),
        st.tuples(
            st.just("status"),
            st.sampled_from(USERS),
            st.sampled_from(STATUSES),
            st.sampled_from([None, "lunch", "in a call"]),
        ),
        st.tuples(st.just("privacy"), st.sampled_from(USERS), st.sampled_from(list(Visibility))),
        st.tuples(st.just("block"), st.sampled_from(USERS), st.sampled_from(USERS)),
        st.tuples(st.just("unblock"), st.sampled_from(USERS), st.sampled_from(USERS)),
        st.tuples(st.just("befriend"), st.sampled_from(USERS), st.sampled_from(USERS)),
        st.tuples(st.just("unfriend"), st.sampled_from(USERS), st.sampled_from(USERS)),
        st.tuples(st.just("subscribe"), st.sampled_from(USERS), st.sampled_from(USERS)),
    ),
    max_size=25,
)
pairs = st.lists(st.tuples(st.sampled_from(USERS), st.sampled_from(USERS)), max_size=6)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    contacts_mode=st.booleans(),
    edges=pairs,
    visibility=st.dictionaries(st.sampled_from(USERS), st.sampled_from(list(Visibility))),
    blocks=pairs,
    steps=actions,
)
def test_no_session_ever_sees_more_than_it_may(
    contacts_mode: bool,
    edges: list[tuple[str, str]],
    visibility: dict[str, Visibility],
    blocks: list[tuple[str, str]],
    steps: list[tuple[Any, ...]],
) -> None:
    model = Model(
        contacts_mode,
        {frozenset(e) for e in edges if e[0] != e[1]},
        visibility,
        {b for b in blocks if b[0] != b[1]},
    )
    with tempfile.TemporaryDirectory() as tmp:
        trio.run(_run, model, Path(tmp), steps, clock=trio.testing.MockClock(autojump_threshold=0))


async def _run(model: Model, tmp: Path, steps: list[tuple[Any, ...]]) -> None:
    settings = make_settings(
        tmp,
        presence={"grace_period": 0.0, "fanout": "contacts" if model.contacts_mode else "everyone"},
        limits={"status_changes_per_10s": 10_000},
    )
    async with running_engine(settings) as engine:
        for edge in sorted(tuple(sorted(e)) for e in model.edges):
            await engine.command(AddContact(*edge))
        live: dict[str, FakeTransport] = {}

        async def setup_session(user: str) -> FakeTransport:
            session = await connect(engine, user)
            if model.contacts_mode:
                await session.expect(PresenceState)
            return session

        for user, visibility in sorted(model.visibility.items()):
            session = await setup_session(user)
            await session.send(SetPrivacy(visibility=visibility))
            await session.expect(PrivacyUpdated)
            await session.send(Logout())
            await settle()
        for blocker, blocked in sorted(model.blocks):
            session = await setup_session(blocker)
            await session.send(Block(target_user_id=blocked))
            await session.expect(Blocked)
            await session.send(Logout())
            await settle()
        model.known = set(model.visibility) | {b for b, _ in model.blocks}

        for step in steps:
            await _apply(step, model, engine, live)
            await settle()
            await _check(model, live)


async def _apply(
    step: tuple[Any, ...], model: Model, engine: Any, live: dict[str, FakeTransport]
) -> None:
    kind, user = step[0], step[1]
    before = model.shown(user)
    if kind == "connect" and user not in live:
        live[user] = await connect(engine, user)
        model.status[user] = Status.ONLINE
        model.subscriptions[user] = set()
        model.expected[user] = []
        model.known.add(user)
        if model.contacts_mode:
            state = await live[user].expect(PresenceState)
            contacts = sorted(c for e in model.edges if user in e for c in e if c != user)
            assert [v.user_id for v in state.users] == contacts
            for view in state.users:
                assert (view.status, view.status_message, view.username) == model.seen_by(
                    user, view.user_id
                )
        model.changed(user, before)
    elif kind == "disconnect" and user in live:
        await live.pop(user).drop()
        del model.status[user], model.subscriptions[user], model.expected[user]
        model.changed(user, before)
    elif kind == "status" and user in live:
        _, _, status, message = step
        await live[user].send(SetStatus(status=status, status_message=message))
        await live[user].expect(StatusUpdated)
        model.status[user] = status
        if message is not None:
            model.message[user] = message or None
        model.changed(user, before)
    elif kind == "privacy" and user in live:
        await live[user].send(SetPrivacy(visibility=step[2]))
        await live[user].expect(PrivacyUpdated)
        model.policy([user], lambda: model.visibility.__setitem__(user, step[2]))
    elif kind in ("block", "unblock") and user in live and step[2] != user:
        other = step[2]
        message = Block(target_user_id=other) if kind == "block" else Unblock(target_user_id=other)
        await live[user].send(message)
        await live[user].expect(Blocked if kind == "block" else Unblocked)
        change = model.blocks.add if kind == "block" else model.blocks.discard
        model.policy([user], lambda: change((user, other)))
    elif kind in ("befriend", "unfriend") and step[2] != user:
        other = step[2]
        edge = frozenset((user, other))
        if kind == "befriend":
            await engine.command(AddContact(user, other))
            model.policy([user, other], lambda: model.edges.add(edge))
        else:
            await engine.command(RemoveContact(user, other))
            model.policy([user, other], lambda: model.edges.discard(edge))
    elif kind == "subscribe" and user in live:
        target = step[2]
        await live[user].send(Subscribe(user_ids=(target,)))
        state = await live[user].expect(PresenceState)
        [view] = state.users
        assert (view.status, view.status_message, view.username) == model.seen_by(user, target)
        model.subscriptions[user].add(target)  # answered by the state above, not a push


async def _check(model: Model, live: dict[str, FakeTransport]) -> None:
    for watcher, session in live.items():
        got = sorted(push_key(p) for p in session.pushes())
        expected, model.expected[watcher] = sorted(model.expected[watcher]), []
        assert got == expected, f"pushes to {watcher}"

        await session.send(GetPresence(user_ids=USERS))
        views = (await session.expect(Presence)).users
        for view in views:
            wanted = model.seen_by(watcher, view.user_id)
            assert (view.status, view.status_message, view.username) == wanted, (watcher, view)
            if view.user_id not in model.known or not model.may_see(watcher, view.user_id):
                assert (view.last_seen, view.devices) == (None, ()), (watcher, view)

        await session.send(GetAllUsers())
        listed = {v.user_id for v in (await session.expect(AllUsers)).users}
        assert listed == {u for u in model.known if model.may_see(watcher, u)}, watcher

        await session.send(GetOnlineCount())
        count = (await session.expect(OnlineCount)).count
        online = {u for u, s in model.status.items() if s is not Status.OFFLINE}
        assert count == sum(model.may_see(watcher, u) for u in online), watcher
