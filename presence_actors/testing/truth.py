"""The ground truth: each user's presence as PROTOCOL.md defines it, from what clients did.

Written from the protocol, not from the engine's code (it shares only the
vocabulary of :mod:`presence_actors.model`): a session starts ``online`` (or
with the status its device had when it left within the grace period, or that
of the connection it supersedes); it is alive until ``heartbeat_timeout``
after the last thing it sent; ``online`` turns ``away`` after ``away_after``
without activity; the user's status is the strongest of its sessions', held
for ``grace_period`` after the last one is lost (not after a logout); an
invisible session shows nothing to others, who see the username and status
message the user last showed while visible; lastSeen is the last sign of life
of a visible session once the user is offline, its latest activity before.

The simulation tells the truth what a client did when the engine takes it up
(a user actor about to handle it, through the engine's ``before_transition``
seam), so that the order of concurrent changes is the engine's; what each
change does is the truth's own business, and so are the timers:
:meth:`Truth.advance` fires every deadline up to ``now`` in time order.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable

from attrs import define, field, frozen

from ..actors import WallClock
from ..model import Status, Visibility

Part = tuple[Status, str | None, str | None]  # what a push carries: status, message, username
HIDDEN: Part = (Status.OFFLINE, None, None)

_PRIORITY = {Status.ONLINE: 3, Status.BUSY: 2, Status.AWAY: 1, Status.OFFLINE: 0}


@frozen
class Timing:
    grace_period: float
    heartbeat_timeout: float
    away_after: float
    max_sessions: int = 10


@frozen
class StoredProfile:
    """What the store keeps of a user across a restart."""

    username: str | None = None
    message: str | None = None
    face: tuple[str | None, str | None] = (None, None)
    last_seen: int | None = None


@define(slots=True, eq=False)
class TrueSession:
    device: str
    number: int  # which connection of the device (a new one supersedes it)
    status: Status  # as the client chose it; offline is invisible
    last_heard: float  # anything the engine received from it
    last_activity: float  # anything but a bare heartbeat

    def shown(self, now: float, away_after: float) -> Status:
        if self.status is Status.ONLINE and now >= self.last_activity + away_after:
            return Status.AWAY
        return self.status


@define(slots=True, eq=False)
class TrueUser:
    user_id: str
    sessions: dict[str, TrueSession]  # by device, in the order they were accepted
    grace: tuple[Status, float] | None = None  # held status, until
    departed: dict[str, tuple[Status, float]] = field(factory=dict)
    username: str | None = None
    message: str | None = None
    face: tuple[str | None, str | None] = (None, None)  # what others see while offline
    seen_alive: int | None = None  # ms: last sign of life of a visible session
    seen_active: int | None = None  # ms: last activity of a visible session
    last_seen: int | None = None  # ms: shown while offline
    was_offline: bool = True


class Truth:
    """Every user's presence; :meth:`advance` must reach ``now`` before it is read."""

    def __init__(self, user_ids: list[str], timing: Timing, clock: WallClock) -> None:
        self.timing = timing
        self.clock = clock
        self.users = {u: TrueUser(u, {}) for u in user_ids}
        self._alarms: list[tuple[float, str]] = []
        self._armed: dict[str, float] = {}
        # Users whose truth may have changed, with the earliest moment it did.
        self.changed: dict[str, float] = {}
        self._online: set[str] = set()

    # --- reading -----------------------------------------------------------------

    def status(self, user_id: str, now: float) -> Status:
        user = self.users[user_id]
        if user.sessions:
            away = self.timing.away_after
            best = Status.OFFLINE
            for session in user.sessions.values():
                shown = session.shown(now, away)
                if _PRIORITY[shown] > _PRIORITY[best]:
                    best = shown
            return best
        if user.grace is not None:
            return user.grace[0]
        return Status.OFFLINE

    def own_part(self, user_id: str, now: float) -> Part:
        user = self.users[user_id]
        return (self.status(user_id, now), user.message, user.username)

    def public_part(self, user_id: str, now: float) -> Part:
        user = self.users[user_id]
        status = self.status(user_id, now)
        if status is Status.OFFLINE:
            return (status, user.face[1], user.face[0])
        return (status, user.message, user.username)

    def parts(self, user_id: str, now: float) -> tuple[Part, Part]:
        """``(own_part, public_part)`` of a user, its status worked out once."""
        user = self.users[user_id]
        status = self.status(user_id, now)
        own = (status, user.message, user.username)
        if status is Status.OFFLINE:
            return own, (status, user.face[1], user.face[0])
        return own, own

    def last_seen(self, user_id: str, now: float) -> int | None:
        user = self.users[user_id]
        return user.last_seen if self.status(user_id, now) is Status.OFFLINE else user.seen_active

    def online(self) -> list[str]:
        """The users shown online (any status but offline), as of the last change."""
        return sorted(self._online)

    # --- what the engine accepted ------------------------------------------------------

    def session(self, user_id: str, device: str, number: int) -> TrueSession | None:
        session = self.users[user_id].sessions.get(device)
        return session if session is not None and session.number == number else None

    def accept(self, user_id: str, device: str, number: int, now: float) -> bool:
        """A session attaches (one on the same device is superseded); False if it is
        refused: the user has ``max_sessions`` already."""
        user = self.users[user_id]
        if device not in user.sessions and len(user.sessions) >= self.timing.max_sessions:
            return False
        replaced = user.sessions.pop(device, None)
        status = Status.ONLINE
        if replaced is not None:
            status = replaced.status
        else:
            left = user.departed.get(device)
            if left is not None and left[1] > now:
                status = left[0]
        user.sessions[device] = TrueSession(device, number, status, now, now)
        user.grace = None
        user.departed = {d: v for d, v in user.departed.items() if v[1] > now and d != device}
        self._alive(user, status, now, active=True)
        self._changed(user, now)
        return True

    def heard(self, user_id: str, device: str, number: int, now: float, *, active: bool) -> None:
        """The engine received a message of a live session (``active``: not a bare heartbeat)."""
        user = self.users[user_id]
        session = self.session(user_id, device, number)
        if session is None:
            return
        session.last_heard = now
        if active:
            was_away = session.shown(now, self.timing.away_after) is Status.AWAY
            session.last_activity = now
            if was_away:
                self._changed(user, now)
        self._alive(user, session.status, now, active=active)

    def set_status(
        self,
        user_id: str,
        device: str,
        number: int,
        status: Status,
        message: str | None,
        every: bool,
        now: float,
    ) -> None:
        user = self.users[user_id]
        session = self.session(user_id, device, number)
        if session is None:
            return  # it ended before the engine got to it: the engine ignores it too
        visible = session.status is not Status.OFFLINE or status is not Status.OFFLINE
        for other in user.sessions.values():
            if every or other is session:
                other.status = status
        if message is not None:
            user.message = message or None
        session.last_heard = session.last_activity = now
        self._alive(user, Status.ONLINE if visible else Status.OFFLINE, now, active=True)
        self._changed(user, now)

    def identify(self, user_id: str, device: str, number: int, username: str, now: float) -> None:
        user = self.users[user_id]
        if self.session(user_id, device, number) is None:
            return
        user.username = username
        self.heard(user_id, device, number, now, active=True)
        self._changed(user, now)

    def remove(self, user_id: str, device: str, number: int, now: float, *, logout: bool) -> bool:
        """The session ended: lost (grace applies to the last one) or logged out.

        False if the truth has no such session (it ended already)."""
        user = self.users[user_id]
        session = self.session(user_id, device, number)
        if session is None:
            return False
        if logout:
            self.heard(user_id, device, number, now, active=True)
        held = self.status(user_id, now)
        del user.sessions[device]
        user.departed = {d: v for d, v in user.departed.items() if v[1] > now and d != device}
        if not logout:
            user.departed[device] = (session.status, now + self.timing.grace_period)
        user.grace = None
        if not user.sessions and not logout and self.timing.grace_period > 0:
            user.grace = (held, now + self.timing.grace_period)
        if not user.sessions and user.grace is None:
            user.departed = {}
        self._changed(user, now)
        return True

    def restarted(self, stored: dict[str, StoredProfile]) -> None:
        """The process restarted: nobody is connected, and each user is what the store
        kept of it (a user it does not know is new)."""
        self._alarms.clear()
        self._armed.clear()
        self._online.clear()
        for user_id in self.users:
            profile = stored.get(user_id, StoredProfile())
            self.users[user_id] = TrueUser(
                user_id,
                {},
                username=profile.username,
                message=profile.message,
                face=profile.face,
                last_seen=profile.last_seen,
            )
            self.changed[user_id] = -math.inf

    # --- timers ------------------------------------------------------------------------

    def advance(self, now: float) -> None:
        """Fire every timer due at or before ``now``, each at its own moment."""
        alarms = self._alarms
        while alarms and alarms[0][0] <= now:
            at, user_id = heapq.heappop(alarms)
            if self._armed.get(user_id) != at:
                continue  # moved since
            del self._armed[user_id]
            user = self.users[user_id]
            if self._expire(user, at):
                self._changed(user, at)
            self._arm(user, at)

    def _expire(self, user: TrueUser, now: float) -> bool:
        """Timeouts, the end of the grace period and away, due at ``now``; whether any was."""
        timing = self.timing
        fired = False
        for session in list(user.sessions.values()):
            if session.last_heard + timing.heartbeat_timeout <= now:
                self.remove(user.user_id, session.device, session.number, now, logout=False)
                fired = True
            elif session.status is Status.ONLINE:
                fired = fired or session.last_activity + timing.away_after == now
        if user.grace is not None and user.grace[1] <= now:
            user.grace = None
            user.departed = {}
            fired = True
        return fired

    def _deadline(self, user: TrueUser, now: float) -> float:
        """The next moment after ``now`` a timer of ``user`` fires (inf: none)."""
        deadline = math.inf
        timing = self.timing
        for session in user.sessions.values():
            deadline = min(deadline, session.last_heard + timing.heartbeat_timeout)
            if session.status is Status.ONLINE:
                away = session.last_activity + timing.away_after
                if away > now:
                    deadline = min(deadline, away)
        if user.grace is not None:
            deadline = min(deadline, user.grace[1])
        return deadline

    def _arm(self, user: TrueUser, now: float) -> None:
        deadline = self._deadline(user, now)
        if deadline < self._armed.get(user.user_id, math.inf):
            self._armed[user.user_id] = deadline
            heapq.heappush(self._alarms, (deadline, user.user_id))

    # --- helpers --------------------------------------------------------------------

    def _alive(self, user: TrueUser, status: Status, now: float, *, active: bool) -> None:
        if status is Status.OFFLINE:
            return
        stamp = self.clock.ms(now)
        user.seen_alive = stamp
        if active or user.seen_active is None:
            user.seen_active = stamp

    def _changed(self, user: TrueUser, now: float) -> None:
        status = self.status(user.user_id, now)
        if status is not Status.OFFLINE:
            user.face = (user.username, user.message)
            user.was_offline = False
            self._online.add(user.user_id)
        elif not user.was_offline:
            user.was_offline = True
            user.last_seen = user.seen_alive or user.last_seen
            self._online.discard(user.user_id)
        if user.user_id not in self.changed:
            self.changed[user.user_id] = now
        self._arm(user, now)


class TruePolicy:
    """Who may see whom (PROTOCOL.md "Visibility"), written from the protocol."""

    def __init__(self, default: Visibility) -> None:
        self.default = default
        self.visibility: dict[str, Visibility] = {}
        self.contacts: dict[str, set[str]] = {}
        self.blocks: dict[str, set[str]] = {}

    def copy(self) -> TruePolicy:
        policy = TruePolicy(self.default)
        policy.visibility = dict(self.visibility)
        policy.contacts = {u: set(c) for u, c in self.contacts.items()}
        policy.blocks = {u: set(b) for u, b in self.blocks.items()}
        return policy

    def may_see(self, watcher: str, user_id: str) -> bool:
        if watcher == user_id:
            return True
        if watcher in self.blocks.get(user_id, ()):
            return False
        visibility = self.visibility.get(user_id, self.default)
        if visibility is Visibility.EVERYONE:
            return True
        return visibility is Visibility.CONTACTS and watcher in self.contacts.get(user_id, ())

    def viewer_test(self, user_id: str) -> Callable[[str], bool]:
        """``may_see(watcher, user_id)`` as a test of the watcher alone: the policy of
        ``user_id`` looked up once, for a check that asks it of every watcher."""
        blocked = self.blocks.get(user_id, ())
        visibility = self.visibility.get(user_id, self.default)
        if visibility is Visibility.EVERYONE:
            return lambda watcher: watcher == user_id or watcher not in blocked
        if visibility is Visibility.CONTACTS:
            contacts = self.contacts.get(user_id, ())
            return lambda watcher: (
                watcher == user_id or (watcher not in blocked and watcher in contacts)
            )
        return lambda watcher: watcher == user_id

    def set_contact(self, a: str, b: str, on: bool) -> None:
        if a == b:
            return
        for x, y in ((a, b), (b, a)):
            mine = self.contacts.setdefault(x, set())
            if on:
                mine.add(y)
            else:
                mine.discard(y)

    def set_block(self, user_id: str, target: str, on: bool) -> None:
        if user_id == target:
            return
        mine = self.blocks.setdefault(user_id, set())
        if on:
            mine.add(target)
        else:
            mine.discard(target)


class KnownPolicy:
    """The policy as answered (``confirmed``), and as it may be while changes wait for
    their answers: the engine applies them in the order they were sent, so each
    prefix of them may be in force for a while."""

    def __init__(self, default: Visibility) -> None:
        self.confirmed = TruePolicy(default)
        self.proposed: list[TruePolicy] = []  # after the first, the first two, ...
        self._in_flight: dict[str, Callable[[TruePolicy], None]] = {}

    @property
    def in_flight(self) -> bool:
        return bool(self._in_flight)

    def may_see(self, watcher: str, user_id: str) -> bool:
        """Allowed by the confirmed policy or by one the changes in flight pass through."""
        if self.confirmed.may_see(watcher, user_id):
            return True
        return any(policy.may_see(watcher, user_id) for policy in self.proposed)

    def propose(self, key: str, change: Callable[[TruePolicy], None]) -> None:
        self._in_flight[key] = change
        self._rebuild()

    def withdraw(self, key: str) -> None:
        if self._in_flight.pop(key, None) is not None:
            self._rebuild()

    def confirm(self, key: str) -> bool:
        change = self._in_flight.pop(key, None)
        if change is None:
            return False
        change(self.confirmed)
        self._rebuild()
        return True

    def reset(self, policy: TruePolicy) -> None:
        self.confirmed = policy
        self.proposed = []
        self._in_flight.clear()

    def _rebuild(self) -> None:
        self.proposed = []
        policy = self.confirmed
        for change in self._in_flight.values():
            policy = policy.copy()
            change(policy)
            self.proposed.append(policy)
