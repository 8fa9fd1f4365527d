"""What a simulated client sends for each event, and what it makes of each answer.

Every request carries a request id; the answer it expects depends on its kind
(``status`` expects ``status_updated``, ``presence`` a ``presence`` list, ...).
An answer updates the truth when it is the engine's word that a change was
made (a session's status, a username, a privacy setting), and every view it
carries is checked against the visibility rules and recorded as what the
client now knows. An unexpected answer or error is a ``reply`` violation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from ..actors.user_state import PUSH_WINDOW
from ..model import Status, UserView
from ..protocol import (
    Activity,
    AllUsers,
    Blocked,
    CheckUserStatus,
    ClientMessage,
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
    ProtocolError,
    Scope,
    ServerMessage,
    SetPrivacy,
    SetStatus,
    StatusUpdated,
    Subscribe,
    Unblocked,
    Unsubscribe,
    Unsubscribed,
    UserStatus,
    Welcome,
)
from ..protocol import Block as BlockMessage
from ..protocol import Unblock as UnblockMessage
from . import events as ev
from .truth import TruePolicy

if TYPE_CHECKING:
    from .clients import SimSession
    from .world import World

__all__ = ["PUSH_WINDOW", "ErrorCode", "ProtocolError"]

HEARTBEAT = Heartbeat()


def everyone(user_ids: list[str]) -> GetPresence:
    return GetPresence(user_ids=tuple(user_ids))


def request_of(event: ev.ClientEvent, user_ids: list[str]) -> tuple[str, ClientMessage]:
    """The kind of request a client event is, and its message (without a request id)."""
    match event:
        case ev.SetStatus(status=status, message=message, every_session=every):
            scope = Scope.ALL if every else Scope.SESSION
            return "status", SetStatus(status=status, status_message=message, scope=scope)
        case ev.Identify(username=username):
            return "identify", Identify(username=username)
        case ev.Active(heartbeat=True):
            return "active", Heartbeat(active=True)
        case ev.Active():
            return "activity", Activity()
        case ev.Logout():
            return "logout", Logout()
        case ev.Privacy(visibility=visibility):
            return "privacy", SetPrivacy(visibility=visibility)
        case ev.Block(target=target, on=on):
            name = ev.user_name(target)
            made = BlockMessage(target_user_id=name) if on else UnblockMessage(target_user_id=name)
            return "block", made
        case ev.Subscribe(targets=targets, on=on):
            names = tuple(ev.user_name(t) for t in targets)
            if on:
                return "subscribe", Subscribe(user_ids=names)
            return "unsubscribe", Unsubscribe(user_ids=names)
        case ev.Query(kind="presence"):
            return "presence", everyone(user_ids)
        case ev.Query(kind="check", target=target):
            return "check", CheckUserStatus(target_user_id=ev.user_name(target))
        case ev.Query(kind="count"):
            return "count", GetOnlineCount()
        case ev.Query():
            return "list", GetAllUsers(limit=len(user_ids))
    raise AssertionError(f"no request for {event!r}")


def policy_change(event: ev.ClientEvent, user_id: str) -> Callable[[TruePolicy], None]:
    """What a privacy or block request changes in the policy."""
    if isinstance(event, ev.Privacy):
        visibility = event.visibility

        def set_visibility(policy: TruePolicy) -> None:
            policy.visibility[user_id] = visibility

        return set_visibility
    assert isinstance(event, ev.Block)
    target, on = ev.user_name(event.target), event.on

    def set_block(policy: TruePolicy) -> None:
        policy.set_block(user_id, target, on)

    return set_block


# The answer each kind of request expects.
_EXPECTED: dict[str, type[ServerMessage]] = {
    "status": StatusUpdated,
    "identify": Identified,
    "active": HeartbeatAck,
    "privacy": PrivacyUpdated,
    "block": Blocked,
    "unblock": Unblocked,
    "subscribe": PresenceState,
    "unsubscribe": Unsubscribed,
    "presence": Presence,
    "check": UserStatus,
    "count": OnlineCount,
    "list": AllUsers,
}
_POLICY = ("privacy", "block")


def answered(world: World, session: SimSession, item: ServerMessage) -> None:
    """Check an answer the engine offered to ``session`` and learn from it."""
    now = trio.current_time()
    rid = item.request_id
    if isinstance(item, Welcome):
        world.welcomed(session, now)
        return
    if rid is None:
        if isinstance(item, PresenceState) and world.contacts_mode:
            _views(world, session, item.users, None)  # the contacts' state after the welcome
        elif isinstance(item, HeartbeatAck):
            pass  # a bare heartbeat's
        elif (
            isinstance(item, Error)
            and item.code is ErrorCode.INTERNAL
            and world.crashed(f"attach:{session.handle.session_id}")
        ):
            session.closed = session.handle.closing = True  # a transport closes it (1008)
            world.reactions.append(lambda: world.detach_later(session))
        else:
            world.violation("reply", f"{session!r} got an unasked {_describe(item)}")
        return
    pending = world.pending.pop(rid, None)
    if pending is None:
        world.violation("reply", f"{session!r} got {_describe(item)} for no pending request")
        return
    kind = pending.kind
    if isinstance(item, Error):
        _refused(world, session, kind, rid, item)
        return
    if kind == "block" and isinstance(item, Unblocked):
        kind = "unblock"
    if not isinstance(item, _EXPECTED.get(kind, ())):
        world.violation("reply", f"{session!r} got {_describe(item)} to a {kind} request")
        return
    truth = world.truth
    match item:
        case StatusUpdated(effective_status=effective):
            want = truth.status(session.user_id, now)
            if effective is not want:
                world.violation(
                    "reply",
                    f"{session!r} was told its effective status is {effective.value};"
                    f" the truth is {want.value}",
                )
            message = item.status_message
            world.told_own(session, lambda known: (effective, message, known[2]))
        case Identified(username=username):
            world.told_own(session, lambda known: (known[0], known[1], username))
        case PrivacyUpdated() | Blocked() | Unblocked():
            world.confirm(rid, (session.user_id,))
        case PresenceState(users=users) | Presence(users=users) | AllUsers(users=users):
            event = pending.event
            if isinstance(event, ev.Subscribe):  # in force from its answer on
                session.subscriptions.update(ev.user_name(t) for t in event.targets)
            _views(world, session, users, rid)
        case UserStatus(view=view):
            _views(world, session, (view,), rid)
        case Unsubscribed(user_ids=user_ids):
            world.unsubscribed(session, user_ids)
        case OnlineCount(count=count):
            _count(world, session, count, now)


def _refused(world: World, session: SimSession, kind: str, rid: str, error: Error) -> None:
    if kind in _POLICY:
        world.withdraw(rid)
    if error.code is ErrorCode.INTERNAL and world.crashed(rid):
        return  # the injected crash hit this request: it was not applied
    if kind in _POLICY and world.store_refusal_expected(error.code):
        return
    world.violation("reply", f"{session!r}'s {kind} request got {_describe(error)}")


def _views(world: World, session: SimSession, views: tuple[UserView, ...], rid: str | None) -> None:
    for view in views:
        world.told_in_answer(session, view, rid)


def _count(world: World, session: SimSession, count: int, now: float) -> None:
    if world.truth.changed or world.policy_in_flight:
        return  # a change of this moment may or may not be counted yet
    world.counters.checks += 1
    want = sum(
        1
        for user_id in world.user_ids
        if world.truth.status(user_id, now) is not Status.OFFLINE
        and world.policy.may_see(session.user_id, user_id)
    )
    if count != want:
        world.violation(
            "online-count", f"{session!r} was told {count} users are online; the truth is {want}"
        )


def _describe(item: ServerMessage) -> str:
    if isinstance(item, Error):
        return f"error {item.code.value} ({item.message})"
    return item.TYPE
