"""A user's presence as plain data, and its transitions as pure functions.

Every transition takes the state, an event and ``now`` (trio time) and returns
the next state plus the effects the :class:`~presence_actors.actors.user.UserActor`
must carry out, in order. The state passed in is never modified: a transition
works on one copy of it (a copy per message is much cheaper than rebuilding a
frozen record per field). Nothing here awaits or touches a clock, so the rules
are tested directly and the actor that applies them can be restarted from the
last state it committed.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from attrs import define, frozen

from ..config import Settings
from ..model import DeviceView, Status, UserView, strongest
from ..persistence.intents import PresenceEvent, PresenceRow
from ..protocol import (
    ClientMessage,
    Error,
    ErrorCode,
    Heartbeat,
    HeartbeatAck,
    Identified,
    Identify,
    Logout,
    Scope,
    ServerMessage,
    SetStatus,
    StatusUpdated,
)
from .clock import WallClock
from .session import (
    CLOSE_HEARTBEAT_TIMEOUT,
    CLOSE_NORMAL,
    CLOSE_POLICY,
    CLOSE_SUPERSEDED,
    SessionHandle,
)

# PROTOCOL.md: at most N pushed changes per user per 10 s.
PUSH_WINDOW = 10.0


@frozen
class Rules:
    """The settings the presence rules depend on."""

    clock: WallClock
    grace_period: float = 10.0
    heartbeat_interval: float = 15.0
    heartbeat_timeout: float = 30.0
    away_after: float = 300.0
    max_sessions: int = 10
    pushes_per_window: int = 10
    # A node of a cluster: the last session here need not be the user's last one,
    # so the start of a hold is published (see _remove).
    publish_holds: bool = False
    # A testing seam (open_engine's ``seams``): called with the user id and the
    # message before each transition of a user actor; what it raises crashes the
    # actor there, like a bug in a transition. None in a server.
    before_transition: Callable[[str, object], None] | None = None

    @classmethod
    def from_settings(cls, settings: Settings, clock: WallClock) -> Rules:
        presence = settings.presence
        return cls(
            clock=clock,
            grace_period=presence.grace_period,
            heartbeat_interval=presence.heartbeat_interval,
            heartbeat_timeout=presence.heartbeat_timeout,
            away_after=presence.away_after,
            max_sessions=presence.max_sessions_per_user,
            pushes_per_window=settings.limits.status_changes_per_10s,
        )


@frozen
class SessionState:
    handle: SessionHandle
    status: Status  # as chosen by the client; OFFLINE means invisible
    last_message: float  # any message, heartbeats included
    last_activity: float  # any message but a bare heartbeat

    def shown(self, now: float, away_after: float) -> Status:
        # Same expression as the timer's deadline, so float rounding cannot split them.
        if self.status is Status.ONLINE and now >= self.last_activity + away_after:
            return Status.AWAY
        return self.status


@frozen
class Grace:
    """The user lost its last session; ``held`` is shown until ``deadline``."""

    held: Status
    deadline: float
    reason: str
    device_id: str


@frozen
class Departed:
    """A device that left recently; a reconnect within the grace period keeps its status."""

    device_id: str
    status: Status
    until: float


@define
class UserState:
    """One user's presence. Transitions copy it before changing anything."""

    user_id: str
    username: str | None = None
    status_message: str | None = None
    # Shown while the user is offline: when it was last known present.
    last_seen: int | None = None
    # Unix ms of the latest activity / message of a visible (not invisible) session.
    seen_active: int | None = None
    seen_alive: int | None = None
    sessions: tuple[SessionState, ...] = ()
    grace: Grace | None = None
    departed: tuple[Departed, ...] = ()
    # The username and status message others see while the user shows offline:
    # those it last showed while visible. An invisible user is then
    # indistinguishable from an offline one, whatever it changes meanwhile.
    face: tuple[str | None, str | None] = (None, None)
    # The view last published to the registry and the parts of it last pushed to
    # the user's own sessions and to everyone else.
    shown: UserView | None = None
    pushed: tuple[Status, str | None, str | None] | None = None
    pushed_public: tuple[Status, str | None, str | None] | None = None
    push_times: tuple[float, ...] = ()
    push_due: float | None = None
    push_cause: SessionHandle | None = None
    # While a push is held: whether the own / public part left what was last
    # pushed (answers showed it meanwhile, so the final state is pushed even if
    # it is back where the last push left it).
    held_own: bool = False
    held_public: bool = False

    @classmethod
    def from_view(cls, view: UserView, public: UserView | None = None) -> UserState:
        """The state of a user not attached anywhere, as the directory knows it
        (``public``: what others see of it, when that differs)."""
        public = public or view
        return cls(
            user_id=view.user_id,
            username=view.username,
            status_message=view.status_message,
            last_seen=view.last_seen,
            face=(public.username, public.status_message),
            shown=view,
            pushed=view.pushed_part(),
            pushed_public=public.pushed_part(),
        )

    def copy(self) -> UserState:
        return UserState(
            self.user_id,
            self.username,
            self.status_message,
            self.last_seen,
            self.seen_active,
            self.seen_alive,
            self.sessions,
            self.grace,
            self.departed,
            self.face,
            self.shown,
            self.pushed,
            self.pushed_public,
            self.push_times,
            self.push_due,
            self.push_cause,
            self.held_own,
            self.held_public,
        )

    def session_of(self, handle: SessionHandle) -> SessionState | None:
        for session in self.sessions:
            if session.handle is handle:
                return session
        return None

    @property
    def idle(self) -> bool:
        """Nothing left to own: the actor may retire."""
        return not self.sessions and self.grace is None and self.push_due is None


# --- effects -------------------------------------------------------------------


@frozen
class Deliver:
    session: SessionHandle
    message: ServerMessage


@frozen
class CloseSession:
    session: SessionHandle
    code: int
    reason: str


@frozen
class Accepted:
    """Tell the registry: this session is live; index it and welcome it."""

    session: SessionHandle


@frozen
class Ended:
    """Tell the registry: this session is gone; stop delivering to it."""

    session: SessionHandle


@frozen
class Publish:
    """Tell the registry the user's new view (``public``: what others see of it, the
    same object when nothing is hidden); the pushes go to the user's own sessions
    (``push_own``) and to the other watchers (``push_public``).

    In a cluster the view is this node's share of the user: ``alive`` (when a
    visible session was last heard from) and ``profile_changed`` (a request here
    changed the username or status message) go into the node's report.
    """

    view: UserView
    public: UserView
    push_own: bool
    push_public: bool
    cause: SessionHandle | None
    alive: int | None = None
    profile_changed: bool = False


@frozen
class Persist:
    intent: PresenceRow | PresenceEvent


Effect = Deliver | CloseSession | Accepted | Ended | Publish | Persist
Outcome = tuple[UserState, list[Effect]]


# --- derived values -------------------------------------------------------------


def current_status(state: UserState, now: float, rules: Rules) -> Status:
    if state.sessions:
        return strongest([s.shown(now, rules.away_after) for s in state.sessions])
    if state.grace is not None:
        return state.grace.held
    return Status.OFFLINE


def _devices(state: UserState, now: float, rules: Rules) -> tuple[DeviceView, ...]:
    away_after = rules.away_after
    return tuple(
        DeviceView(s.handle.device_id, s.handle.device_type, s.shown(now, away_after))
        for s in state.sessions
    )


def _status_of(state: UserState, devices: tuple[DeviceView, ...]) -> Status:
    """:func:`current_status`, given the devices :func:`_devices` made at the same moment."""
    if devices:
        return strongest([d.status for d in devices])
    if state.grace is not None:
        return state.grace.held
    return Status.OFFLINE


def view_of(state: UserState, now: float, rules: Rules) -> UserView:
    """The user as its watchers (and itself) see it; devices include invisible ones.

    ``lastSeen`` is the latest activity while the user shows a status, and the
    moment it was last known present once it shows offline.
    """
    devices = _devices(state, now, rules)
    return _view(state, devices, _status_of(state, devices))


def _view(state: UserState, devices: tuple[DeviceView, ...], status: Status) -> UserView:
    last_seen = state.last_seen if status is Status.OFFLINE else state.seen_active
    return UserView(state.user_id, status, state.username, state.status_message, last_seen, devices)


def public_view(state: UserState, view: UserView) -> UserView:
    """``view`` as others see it: a user showing offline keeps the username and status
    message it last showed while visible, and no devices, whether it is really gone
    or only invisible. ``view`` itself when nothing differs."""
    if view.status is not Status.OFFLINE:
        return view
    username, status_message = state.face
    if not view.devices and view.username == username and view.status_message == status_message:
        return view
    return UserView(view.user_id, Status.OFFLINE, username, status_message, view.last_seen, ())


def _last_heard(session: SessionState) -> float:
    # Bare heartbeats are answered without reaching the actor (Engine.request);
    # the handle records when the last message of any kind arrived.
    return max(session.last_message, session.handle.last_message)


def next_deadline(state: UserState, now: float, rules: Rules) -> float:
    """The earliest moment a timer of this user fires (``inf`` when none).

    Reads each session's ``handle.last_message``, so it moves with heartbeats
    the actor never saw.
    """
    deadline = math.inf
    # Asked after every message an actor handles: the devices shown away are
    # only looked up when a session is online.
    shown_away: set[str] | None = None
    for session in state.sessions:
        deadline = min(deadline, _last_heard(session) + rules.heartbeat_timeout)
        if session.status is Status.ONLINE:
            if shown_away is None:
                shown_away = (
                    {d.device_id for d in state.shown.devices if d.status is Status.AWAY}
                    if state.shown is not None
                    else set()
                )
            # Away detection is pending until the session is shown away.
            if session.handle.device_id not in shown_away:
                deadline = min(deadline, session.last_activity + rules.away_after)
    if state.grace is not None:
        deadline = min(deadline, state.grace.deadline)
    if state.push_due is not None:
        deadline = min(deadline, state.push_due)
    return deadline


# --- transitions ------------------------------------------------------------------
# Public transitions copy the state once; the helpers below them change that copy.


def attach(state: UserState, handle: SessionHandle, now: float, rules: Rules) -> Outcome:
    """A new session; the same deviceId replaces its old session without a flap."""
    effects: list[Effect] = []
    status = Status.ONLINE
    replaced = next((s for s in state.sessions if s.handle.device_id == handle.device_id), None)
    if replaced is not None:
        status = replaced.status
        effects += [
            Ended(replaced.handle),
            CloseSession(replaced.handle, CLOSE_SUPERSEDED, "superseded by a new connection"),
        ]
    elif len(state.sessions) >= rules.max_sessions:
        refusal = Error(
            timestamp=rules.clock.ms(now),
            code=ErrorCode.LIMIT_EXCEEDED,
            message=f"at most {rules.max_sessions} sessions per user",
        )
        return state, [
            Deliver(handle, refusal),
            CloseSession(handle, CLOSE_POLICY, "too many sessions"),
        ]
    else:
        for departed in state.departed:
            if departed.device_id == handle.device_id and departed.until > now:
                status = departed.status
    if handle.initial_status is not None:
        status = handle.initial_status
    state = state.copy()
    session = SessionState(handle, status, now, now)
    state.sessions = (*(s for s in state.sessions if s is not replaced), session)
    state.grace = None
    state.departed = tuple(
        d for d in state.departed if d.until > now and d.device_id != handle.device_id
    )
    _touch(state, session, now, rules, active=True, visible=status is not Status.OFFLINE)
    effects.insert(0, Accepted(handle))
    return _finish(state, effects, now, rules, cause=handle, reason="connect")


def detach(state: UserState, handle: SessionHandle, now: float, rules: Rules) -> Outcome:
    """The transport lost the session (drop, close, server-side close): grace applies."""
    if state.session_of(handle) is None:
        return state, []
    state = _synced(state, rules)
    session = state.session_of(handle)
    assert session is not None
    return _remove(state, session, now, rules, reason="disconnect", effects=[])


def seen(state: UserState, handle: SessionHandle, now: float, rules: Rules) -> Outcome:
    """The session sent a request handled elsewhere: it is alive and active."""
    if state.session_of(handle) is None:
        return state, []
    state = _synced(state, rules)
    session = state.session_of(handle)
    assert session is not None
    _touch(state, session, now, rules, active=True)
    return _finish(state, [], now, rules, cause=handle, reason="active")


def request(
    state: UserState, handle: SessionHandle, message: ClientMessage, now: float, rules: Rules
) -> Outcome:
    """A client request addressed to the user itself."""
    if state.session_of(handle) is None:
        return state, []
    state = _synced(state, rules)
    session = state.session_of(handle)
    assert session is not None
    stamp = rules.clock.ms(now)
    rid = message.request_id
    match message:
        case Heartbeat(active=active):
            _touch(state, session, now, rules, active=active)
            ack = HeartbeatAck(
                timestamp=stamp, request_id=rid, next_heartbeat_in_seconds=rules.heartbeat_interval
            )
            return _finish(state, [Deliver(handle, ack)], now, rules, cause=handle, reason="active")
        case SetStatus():
            return _set_status(state, session, message, now, rules)
        case Identify(username=username):
            _touch(state, session, now, rules, active=True)
            state.username = username
            reply = Identified(
                timestamp=stamp, request_id=rid, user_id=state.user_id, username=username
            )
            return _finish(
                state, [Deliver(handle, reply)], now, rules, cause=handle, reason="identify"
            )
        case Logout():
            session = _touch(state, session, now, rules, active=True)
            closing: list[Effect] = [CloseSession(handle, CLOSE_NORMAL, "logged out")]
            return _remove(
                state, session, now, rules, reason="logout", effects=closing, logout=True
            )
        case _:  # Activity, and anything else that only shows the session is in use
            _touch(state, session, now, rules, active=True)
            return _finish(state, [], now, rules, cause=handle, reason="active")


def sync_profile(state: UserState, username: str | None, status_message: str | None) -> Outcome:
    """The cluster shows another username or status message (set on another node):
    take it without publishing anything (it is what everyone already sees)."""
    if (state.username, state.status_message) == (username, status_message):
        return state, []
    state = state.copy()
    state.username, state.status_message = username, status_message
    if state.shown is not None:
        shown = state.shown
        state.shown = UserView(
            shown.user_id, shown.status, username, status_message, shown.last_seen, shown.devices
        )
        state.pushed = state.shown.pushed_part()
    return state, []


def expire(state: UserState, now: float, rules: Rules) -> Outcome:
    """Fire every timer that is due at ``now``: heartbeat timeouts, grace, away, pushes."""
    state = _synced(state, rules)
    effects: list[Effect] = []
    for session in state.sessions:
        if session.last_message + rules.heartbeat_timeout <= now:
            effects.append(
                CloseSession(session.handle, CLOSE_HEARTBEAT_TIMEOUT, "heartbeat timeout")
            )
            state, effects = _remove(state, session, now, rules, reason="timeout", effects=effects)
    reason, device = "idle", None
    if state.grace is not None and state.grace.deadline <= now:
        reason, device = state.grace.reason, state.grace.device_id
        state.grace = None
        state.departed = ()
    return _finish(state, effects, now, rules, cause=state.push_cause, reason=reason, device=device)


# --- helpers (they change the state they are given) ---------------------------------


def last_alive(state: UserState, rules: Rules) -> int | None:
    """When a visible session of this user was last heard from (wall ms), counting
    bare heartbeats the actor has not folded in yet; None if never. Reads only (no
    copy of the state): a cluster node asks it for every local user each second."""
    alive = state.seen_alive
    for session in state.sessions:
        heard = session.handle.last_message
        if heard > session.last_message and session.status is not Status.OFFLINE:
            stamp = rules.clock.ms(heard)
            if alive is None or stamp > alive:
                alive = stamp
    return alive


def _synced(state: UserState, rules: Rules) -> UserState:
    """A copy of ``state`` with what its sessions heard that the actor did not see.

    A visible session's bare heartbeats count for lastSeen (as the moment it
    was last known present); an invisible one's never do.
    """
    state = state.copy()
    sessions = list(state.sessions)
    for index, session in enumerate(sessions):
        heard = session.handle.last_message
        if heard > session.last_message:
            sessions[index] = SessionState(
                session.handle, session.status, heard, session.last_activity
            )
            if session.status is not Status.OFFLINE:
                stamp = rules.clock.ms(heard)
                if state.seen_alive is None or stamp > state.seen_alive:
                    state.seen_alive = stamp
    state.sessions = tuple(sessions)
    return state


def _touch(
    state: UserState,
    session: SessionState,
    now: float,
    rules: Rules,
    *,
    active: bool,
    visible: bool | None = None,
) -> SessionState:
    """Record that ``session`` showed life; an invisible session moves no lastSeen."""
    updated = SessionState(
        session.handle, session.status, now, now if active else session.last_activity
    )
    state.sessions = tuple(updated if s is session else s for s in state.sessions)
    if visible is None:
        visible = session.status is not Status.OFFLINE
    if visible:
        stamp = rules.clock.ms(now)
        state.seen_alive = stamp
        if active or state.seen_active is None:
            state.seen_active = stamp
    return updated


def _set_status(
    state: UserState, session: SessionState, message: SetStatus, now: float, rules: Rules
) -> Outcome:
    new = message.status
    was_visible = session.status is not Status.OFFLINE
    every = message.scope is Scope.ALL
    # The session itself is touched (active now) in the same pass: one new record.
    touched = SessionState(session.handle, new, now, now)
    state.sessions = tuple(
        touched
        if s is session
        else SessionState(s.handle, new, s.last_message, s.last_activity)
        if every
        else s
        for s in state.sessions
    )
    if message.status_message is not None:
        state.status_message = message.status_message or None
    if was_visible or new is not Status.OFFLINE:  # what _touch records of a visible session
        stamp = rules.clock.ms(now)
        state.seen_alive = state.seen_active = stamp
    state, effects = _finish(state, [], now, rules, cause=session.handle, reason="set_status")
    assert state.shown is not None
    reply = StatusUpdated(
        timestamp=rules.clock.ms(now),
        request_id=message.request_id,
        status=new,
        effective_status=state.shown.status,
        status_message=state.status_message,
    )
    effects.insert(0, Deliver(session.handle, reply))
    return state, effects


def _remove(
    state: UserState,
    session: SessionState,
    now: float,
    rules: Rules,
    *,
    reason: str,
    effects: list[Effect],
    logout: bool = False,
) -> Outcome:
    held = current_status(state, now, rules)
    state.sessions = tuple(s for s in state.sessions if s.handle is not session.handle)
    if not logout:
        state.departed = (
            *(
                d
                for d in state.departed
                if d.until > now and d.device_id != session.handle.device_id
            ),
            Departed(session.handle.device_id, session.status, now + rules.grace_period),
        )
    state.grace = None
    if not state.sessions and not logout and rules.grace_period > 0:
        state.grace = Grace(held, now + rules.grace_period, reason, session.handle.device_id)
    if not state.sessions and state.grace is None:
        state.departed = ()  # the user is offline now: a later connect starts afresh
    effects = [*effects, Ended(session.handle)]
    if state.grace is not None:
        if rules.publish_holds and state.shown is not None:
            # This node's share becomes a hold without devices; the cluster's merge
            # shows it only if no other node has a session of the user. The shown
            # view stays, so the end of the hold is still a change.
            held_view = view_of(state, now, rules)
            public = public_view(state, held_view)
            effects.append(Publish(held_view, public, False, False, None, state.seen_alive))
        return state, effects  # nothing visible changes until the grace period ends
    return _finish(state, effects, now, rules, cause=session.handle, reason=reason)


def _finish(
    state: UserState,
    effects: list[Effect],
    now: float,
    rules: Rules,
    *,
    cause: SessionHandle | None,
    reason: str,
    device: str | None = None,
) -> Outcome:
    """Publish the view if it changed, persist it, and push within the flap limit.

    ``cause`` is the session whose request led here: it got a reply, so the
    push skips it. ``reason`` and ``device`` go into the audit log.
    """
    before = state.shown
    # Each session's shown status is worked out once, for the status and the devices.
    devices = _devices(state, now, rules)
    status = _status_of(state, devices)
    if status is Status.OFFLINE and (before is None or before.status is not Status.OFFLINE):
        state.last_seen = state.seen_alive or state.last_seen
    view = _view(state, devices, status)
    if status is not Status.OFFLINE:
        state.face = (view.username, view.status_message)
    public = public_view(state, view)
    stamp = rules.clock.ms(now)
    changed = view != before
    if changed:
        if before is None or _row_of(before) != _row_of(view):
            face = (public.username, public.status_message)
            row = PresenceRow(
                user_id=view.user_id,
                status=view.status,
                username=view.username,
                status_message=view.status_message,
                last_seen=view.last_seen,
                updated_at=stamp,
                shown=None if face == (view.username, view.status_message) else face,
            )
            effects.append(Persist(row))
        if before is None or before.status is not view.status:
            if device is None and cause is not None:
                device = cause.device_id
            if reason == "set_status" and view.status is Status.OFFLINE:
                reason = "invisible"
            elif reason == "set_status" and before is not None and not before.online:
                reason = "visible"
            effects.append(Persist(PresenceEvent(view.user_id, view.status, stamp, reason, device)))
    push_own = push_public = False
    own_part, public_part = view.pushed_part(), public.pushed_part()
    own_moved = state.held_own or own_part != state.pushed
    public_moved = state.held_public or public_part != state.pushed_public
    if not own_moved and not public_moved:
        state.push_due = state.push_cause = None
    else:
        if state.push_due is not None and state.push_cause is not cause:
            # A held push carries changes of other sessions (or of none) too: the
            # session that caused only the latest learned nothing of them from its
            # reply, so nobody is skipped.
            cause = None
        # At most pushes_per_window times are kept, so this stays small. The same
        # expression as push_due below: `t > now - PUSH_WINDOW` rounds differently,
        # and kept the first push in the window at the very moment it was due to
        # leave it (the push held again, due now: a livelock under MockClock).
        times = state.push_times
        # Kept in time order: when the oldest is still in the window, all are.
        if not times or times[0] + PUSH_WINDOW > now:
            recent = times
        else:
            recent = tuple(t for t in times if t + PUSH_WINDOW > now)
        if len(recent) < rules.pushes_per_window:
            # A part that moved while held is pushed even if it came back: whoever
            # asked meanwhile was answered the state in between.
            push_own, push_public = own_moved, public_moved
            state.pushed, state.pushed_public = own_part, public_part
            state.push_times = (*recent, now)
            state.push_due = state.push_cause = None
            state.held_own = state.held_public = False
        else:
            state.push_times = recent
            state.push_due = recent[0] + PUSH_WINDOW
            state.push_cause = cause
            state.held_own, state.held_public = own_moved, public_moved
    if changed or push_own or push_public:
        profile_changed = before is not None and (view.username, view.status_message) != (
            before.username,
            before.status_message,
        )
        state.shown = view
        effects.append(
            Publish(view, public, push_own, push_public, cause, state.seen_alive, profile_changed)
        )
    return state, effects


def _row_of(view: UserView) -> tuple[object, ...]:
    return (view.status, view.username, view.status_message, view.last_seen)
