"""The world around the engine: simulated clients and operator, and what they observe.

:class:`World` turns schedule events into what transports and the admin API
do to the engine (attach, request, detach, commands) and receives everything
the engine does back: each message offered to a session's outbox
(:meth:`delivered`), each close it asks for (:meth:`closed`), and, through the
``before_transition`` seam, each message a user actor is about to handle
(:meth:`before_transition`, where actor crashes are injected and detaches
reach the truth). From those it keeps the truth (:mod:`.truth`) up to date
and checks each message as it arrives: who may see whom, lastSeen, the answer
each request expects (:mod:`.exchanges`).

Everything runs in trio's one thread. The engine calls :meth:`delivered` and
:meth:`closed` synchronously from its own tasks, so they never await: what
needs the engine (a detach after a close, a new client's first query) is
queued in :attr:`reactions` for the driver.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from functools import partial

import attrs
import trio

from ..actors import Engine, WallClock
from ..actors.messages import (
    AddContact,
    Attach,
    Detach,
    PolicyQuery,
    RemoveContact,
    Request,
    Seen,
    SetVisibility,
    Told,
)
from ..actors.session import (
    CLOSE_GOING_AWAY,
    CLOSE_HEARTBEAT_TIMEOUT,
    CLOSE_NORMAL,
    CLOSE_POLICY,
    CLOSE_SUPERSEDED,
    Outgoing,
)
from ..config import Settings
from ..model import Status, UserView
from ..persistence.writer import RETRY_MAX_DELAY
from ..protocol import (
    Activity,
    ClientMessage,
    ErrorCode,
    Identify,
    Logout,
    ProtocolError,
    Push,
    PushBatch,
    Scope,
    SetStatus,
)
from . import events as ev
from . import exchanges
from .checks import Ledger, ViewLag
from .clients import SimSession
from .epochs import StoreState
from .report import Counters, Violation
from .scheduler import InlineStore
from .truth import HIDDEN, KnownPolicy, Part, Timing, TruePolicy, Truth

Reaction = Callable[[], Awaitable[object]]

# Clients' heartbeats go out on a grid of this many seconds, each up to that much
# after it is due: one moment for many heartbeats instead of one each (a moment
# costs a few scheduler rounds). Well within the slack of heartbeat_timeout.
HEARTBEAT_GRID = 1.0


@attrs.frozen
class Moment:
    """What a researcher's invariant sees at the end of a moment, once every task
    waits: the time, the engine (its registry, directory, writer: read, never
    change), the truth, and the live client sessions (each one's ``views``: what
    it was told of each user it follows)."""

    now: float
    engine: Engine
    truth: Truth
    sessions: tuple[SimSession, ...]


# A researcher's invariant: the problems it sees at a moment (none: it holds).
Invariant = Callable[[Moment], Iterable[str]]


class SimulatedCrash(Exception):
    """Raised in a user actor by the crash fault (its supervisor restarts it)."""


@attrs.define(slots=True)
class Pending:
    session: SimSession
    kind: str
    event: ev.Event | None


class World:
    def __init__(
        self,
        settings: Settings,
        users: int,
        clock: WallClock,
        counters: Counters,
        store: InlineStore,
        invariants: Mapping[str, Invariant] | None = None,
    ) -> None:
        presence = settings.presence
        self.invariants = dict(invariants or {})
        self.settings = settings
        self.contacts_mode = presence.fanout == "contacts"
        self.clock = clock
        self.counters = counters
        self.store = store
        self.user_ids = [ev.user_name(u) for u in range(users)]
        timing = Timing(presence.grace_period, presence.heartbeat_timeout, presence.away_after)
        self.truth = Truth(self.user_ids, timing, clock)
        self.policy = KnownPolicy(presence.default_visibility)
        window = exchanges.PUSH_WINDOW
        self.lag = ViewLag(presence.heartbeat_timeout + presence.grace_period + window)
        self.ledger = Ledger(2 * settings.persistence.flush_interval, window)
        self.violations: list[Violation] = []
        self.step = -1
        self.engine: Engine | None = None
        self.stopping = False
        self.sessions: dict[tuple[int, int], SimSession] = {}  # the latest per device
        self.live: dict[int, SimSession] = {}  # welcomed, not closed, by number
        self._by_handle: dict[object, SimSession] = {}
        self._watchers: dict[str, set[SimSession]] = {u: set() for u in self.user_ids}
        self._dirty: set[tuple[SimSession, str]] = set()
        self.pending: dict[str, Pending] = {}
        self.reactions: deque[Reaction] = deque()
        self._numbers = 0
        self._requests = 0
        self._heartbeats: list[tuple[float, int]] = []
        self._crash_armed: set[str] = set()
        self._crashes: dict[str, deque[float]] = {}
        self._crashed: set[str] = set()  # request ids, and "attach:<session id>"
        self._refused: set[int] = set()  # sessions the truth refused (too many)
        self._unwelcomed: set[SimSession] = set()  # attached, neither welcomed nor closed
        self._count = -1  # the online count last checked
        self._sorted = 0  # violations before this index are in their final order
        self.stuck_at: float | None = None
        self.epoch_start = 0

    def stuck(self, at: float) -> None:
        """The watchdog stops the run (a livelock at ``at``): what fails as the engine
        is torn down at a random point is not reported."""
        self.stuck_at = at

    def violation(self, invariant: str, detail: str) -> None:
        self.violations.append(Violation(invariant, trio.current_time(), self.step, detail))

    # --- the engine's side ---------------------------------------------------------

    def before_transition(self, user_id: str, message: object) -> None:
        """The engine's seam: a user actor is about to handle ``message``. An armed
        crash fires here; otherwise the truth takes up what the message does."""
        if user_id in self._crash_armed and _crashable(message):
            self._crash_armed.discard(user_id)
            self.counters.crashes += 1
            if isinstance(message, Request | Told):
                if message.message.request_id is not None:
                    self._crashed.add(message.message.request_id)
            elif isinstance(message, Attach):
                self._crashed.add(f"attach:{message.session.session_id}")
            raise SimulatedCrash(f"injected crash of {user_id}'s actor")
        if isinstance(message, Attach | Detach | Seen | Request | Told):
            session = self._by_handle.get(message.session)
            if session is not None:
                self._take_up(session, message, trio.current_time())

    def _take_up(
        self, session: SimSession, message: Attach | Detach | Seen | Request | Told, now: float
    ) -> None:
        truth = self.truth
        user_id, device, number = session.user_id, session.device, session.number
        match message:
            case Attach():
                if not truth.accept(user_id, device, number, now):
                    self._refused.add(number)
            case Detach():
                truth.remove(user_id, device, number, now, logout=False)
            case Seen():
                truth.heard(user_id, device, number, now, active=True)
                self._knows_own_status(session, now)
            case Request(message=body) | Told(message=body):
                match body:
                    case SetStatus(status=status, status_message=text, scope=scope):
                        every = scope is Scope.ALL
                        truth.set_status(user_id, device, number, status, text, every, now)
                        self.acknowledged_profile(user_id, now)
                    case Identify(username=username):
                        truth.identify(user_id, device, number, username, now)
                        self.acknowledged_profile(user_id, now)
                        # Activity too: back from away, unpushed to this session.
                        self._knows_own_status(session, now)
                    case Logout():
                        truth.remove(user_id, device, number, now, logout=True)
                    case _:  # activity, an active heartbeat
                        truth.heard(user_id, device, number, now, active=True)
                        self._knows_own_status(session, now)

    def _knows_own_status(self, session: SimSession, now: float) -> None:
        """Activity that brings its user back from away is not pushed to the session
        that made it (docs/PROTOCOL.md: it "got the reply"; the page asks for its own
        row instead): that client knows its status, nothing more."""
        status = self.truth.status(session.user_id, now)
        self.told_own(session, lambda known: (status, known[1], known[2]))

    def delivered(self, session: SimSession, item: Outgoing) -> None:
        if isinstance(item, Push):
            self._pushed(session, item)
        elif isinstance(item, PushBatch):
            for push in item.pushes:
                self._pushed(session, push)
        else:
            exchanges.answered(self, session, item)

    def closed(self, session: SimSession, code: int, reason: str) -> None:
        now = trio.current_time()
        was = "closed" if session.closed else "live"
        session.closed = True
        self._forget(session)
        expected = code == CLOSE_GOING_AWAY and self.stopping
        if code == CLOSE_SUPERSEDED:
            expected = self.sessions.get(session.key) is not session
        elif code == CLOSE_POLICY:
            expected = session.number in self._refused
        elif code == CLOSE_HEARTBEAT_TIMEOUT:
            truth = self.truth.session(session.user_id, session.device, session.number)
            timeout = self.truth.timing.heartbeat_timeout
            expected = truth is None or truth.last_heard + timeout <= now
        elif code == CLOSE_NORMAL:
            rid = next(
                (r for r, p in self.pending.items() if p.session is session and p.kind == "logout"),
                None,
            )
            expected = rid is not None
            if rid is not None:
                del self.pending[rid]
        if not expected:
            self.violation("reply", f"the engine closed {session!r} ({was}) with {code} {reason!r}")
        self.reactions.append(lambda: self.detach_later(session))

    async def detach_later(self, session: SimSession) -> None:
        """The transport of a session the server closed detaches it."""
        if self.engine is not None and not self.stopping:
            await self.engine.detach(session.handle)

    # --- what clients and the operator do ----------------------------------------------

    async def apply(self, event: ev.Event) -> bool:
        """Carry out ``event``; False if it does not apply now (nothing was done)."""
        engine = self.engine
        assert engine is not None
        now = trio.current_time()
        if isinstance(event, ev.ClientEvent):
            return await self._client(engine, event, now)
        match event:
            case ev.Contact(user=user, other=other, on=on):
                a, b = ev.user_name(user), ev.user_name(other)
                command = AddContact(a, b) if on else RemoveContact(a, b)
                return await self._admin(engine, command, lambda p: p.set_contact(a, b, on), (a, b))
            case ev.AdminPrivacy(user=user, visibility=visibility):
                name = ev.user_name(user)

                def change(policy: TruePolicy) -> None:
                    policy.visibility[name] = visibility

                return await self._admin(engine, SetVisibility(name, visibility), change, (name,))
            case ev.Crash(user=user):
                return self._arm_crash(ev.user_name(user), now)
            case ev.CommitErrors(duration=duration):
                self.store.failing_until = max(self.store.failing_until, now + duration)
                self.ledger.fault(now, self.store.failing_until + RETRY_MAX_DELAY)
                return True
            case ev.SlowCommits(duration=duration, delay=delay):
                self.store.slow_until = max(self.store.slow_until, now + duration)
                self.store.delay = delay
                self.ledger.fault(now, self.store.slow_until + delay)
                return True
        raise AssertionError(f"the world cannot apply {event!r}")

    async def _client(self, engine: Engine, event: ev.ClientEvent, now: float) -> bool:
        key = (event.user, event.device)
        if isinstance(event, ev.Connect):
            self._numbers += 1
            new = SimSession(self, event.user, event.device, self._numbers)
            self.sessions[key] = new
            self._unwelcomed.add(new)
            self._by_handle[new.handle] = new
            await engine.attach(new.handle)
            return True
        found = self.sessions.get(key)
        if found is None or not found.welcomed or found.closed:
            return False
        session = found
        if isinstance(event, ev.Drop):
            await self.drop(session)
            return True
        if session.silent:
            return False
        if isinstance(event, ev.Silence):
            session.silent = True
            self._forget(session)
            return True
        kind, message = exchanges.request_of(event, self.user_ids)
        if isinstance(message, Activity):
            self.counters.requests += 1  # nothing answers it
            await self._send(engine, session, message, now)
            return True
        change = None
        if kind in ("privacy", "block"):
            change = exchanges.policy_change(event, session.user_id)
        await self.request(engine, session, kind, message, event, change)
        return True

    def open_sessions(self) -> list[SimSession]:
        """Every connection not closed yet, oldest first (a device may hold two: a
        new one whose attach failed leaves the old one open)."""
        return sorted(
            {*self.live.values(), *self._unwelcomed, *self.sessions.values()},
            key=lambda s: s.number,
        )

    async def drop(self, session: SimSession) -> None:
        """The client's connection is gone: its transport detaches it."""
        assert self.engine is not None
        session.closed = True
        session.handle.closing = True  # as a transport does before it detaches
        self._forget(session)
        await self.engine.detach(session.handle)

    async def request(
        self,
        engine: Engine,
        session: SimSession,
        kind: str,
        message: ClientMessage,
        event: ev.Event | None = None,
        change: Callable[[TruePolicy], None] | None = None,
    ) -> None:
        self._requests += 1
        rid = f"r{self._requests}"
        self.pending[rid] = Pending(session, kind, event)
        if change is not None:
            self.policy.propose(rid, change)
        self.counters.requests += 1
        now = trio.current_time()
        await self._send(engine, session, attrs.evolve(message, request_id=rid), now)

    async def _send(
        self, engine: Engine, session: SimSession, message: ClientMessage, now: float
    ) -> None:
        # Every message is a sign of life: Engine.request stamps the handle.
        self.truth.heard(session.user_id, session.device, session.number, now, active=False)
        await engine.request(session.handle, message)

    async def heartbeats(self, now: float) -> None:
        """Every client whose heartbeat is due sends it (a bare heartbeat)."""
        engine = self.engine
        assert engine is not None
        interval = self.settings.presence.heartbeat_interval
        beats = self._heartbeats
        while beats and beats[0][0] <= now:
            _, number = heapq.heappop(beats)
            session = self.live.get(number)
            if session is None:
                continue
            session.next_heartbeat += interval
            heapq.heappush(beats, (session.next_heartbeat, number))
            self.counters.heartbeats += 1
            await self._send(engine, session, exchanges.HEARTBEAT, now)

    def next_heartbeat(self) -> float:
        """When the next heartbeats go out: those due within a second go together."""
        if not self._heartbeats:
            return math.inf
        return math.ceil(self._heartbeats[0][0] / HEARTBEAT_GRID) * HEARTBEAT_GRID

    async def _admin(
        self,
        engine: Engine,
        command: AddContact | RemoveContact | SetVisibility,
        change: Callable[[TruePolicy], None],
        users: tuple[str, ...],
    ) -> bool:
        self._requests += 1
        key = f"admin{self._requests}"
        self.policy.propose(key, change)
        try:
            await engine.command(command)
        except ProtocolError as exc:
            self.policy.withdraw(key)
            if not self.store_refusal_expected(exc.code):
                self.violation("reply", f"admin {command!r} refused: {exc.code.value} {exc}")
            return True
        self.confirm(key, users)
        return True

    def _arm_crash(self, user_id: str, now: float) -> bool:
        """Arm a crash unless it could pass the restart intensity, which escalates by
        design (the engine stops, loudly): not what this fault is about."""
        supervision = self.settings.supervision
        recent = self._crashes.setdefault(user_id, deque())
        while recent and recent[0] <= now - supervision.restart_window:
            recent.popleft()
        if len(recent) + 1 >= supervision.max_restarts or user_id in self._crash_armed:
            return False
        recent.append(now)
        self._crash_armed.add(user_id)
        return True

    def refused(self, session: SimSession) -> bool:
        """Whether the truth refused the session (the user had too many)."""
        return session.number in self._refused

    def crashed(self, key: str) -> bool:
        """Whether the injected crash hit this request id (or ``attach:<session id>``)."""
        if key in self._crashed:
            self._crashed.discard(key)
            return True
        return False

    # --- the policy ------------------------------------------------------------------

    @property
    def policy_in_flight(self) -> bool:
        return self.policy.in_flight

    def follows(self, session: SimSession, user_id: str, policy: TruePolicy | None = None) -> bool:
        """Whether ``session`` is pushed ``user_id``'s changes (``contacts`` fan-out:
        its own user, its contacts and its subscriptions; otherwise everyone)."""
        if not self.contacts_mode or session.user_id == user_id:
            return True
        if user_id in session.subscriptions:
            return True
        policy = policy or self.policy.confirmed
        return user_id in policy.contacts.get(session.user_id, ())

    def confirm(self, key: str, users: tuple[str, ...]) -> None:
        """The engine answered a policy change: it is in force."""
        if not self.policy.confirm(key):
            return
        now = trio.current_time()
        policy = self.policy.confirmed
        for user_id in users:
            self.truth.changed.setdefault(user_id, now)
            self.ledger.acknowledged(user_id, "policy", policy_value(policy, user_id), now)
            self.ledger.acknowledged(user_id, "contacts", contacts_value(policy, user_id), now)
        if self.contacts_mode:
            for session in list(self.live.values()):
                for target in list(session.views):
                    if not self.follows(session, target):
                        self._unlearn(session, target)

    def withdraw(self, key: str) -> None:
        self.policy.withdraw(key)

    def store_refusal_expected(self, code: ErrorCode) -> bool:
        """STORE_ERROR is the answer to a policy change while commits fail: from a
        failed commit to the next that succeeds (retried with backoff, maybe slow)."""
        store = self.store
        failing = store.failing or store.recovered_at == trio.current_time()
        return code is ErrorCode.STORE_ERROR and failing

    async def resolve_policy(self, user_id: str) -> None:
        """A policy request whose session closed before its answer: adopt what the
        engine did (the client cannot know either)."""
        if self.engine is None:
            return
        answer = await self.engine.ask(PolicyQuery(user_id))
        policy = self.policy.confirmed
        # The engine answers the visibility in force; one equal to what was in force
        # changed nothing, and the store keeps "not set" for the default.
        if answer.visibility != policy.visibility.get(user_id, policy.default):
            policy.visibility[user_id] = answer.visibility
        policy.blocks[user_id] = set(answer.blocked)
        now = trio.current_time()
        self.truth.changed.setdefault(user_id, now)
        self.ledger.acknowledged(user_id, "policy", policy_value(policy, user_id), now)

    # --- what sessions are told ---------------------------------------------------------

    def _pushed(self, session: SimSession, push: Push) -> None:
        self.counters.pushes += 1
        view = push.view
        target = view.user_id
        hidden = is_hidden(view)
        if target != session.user_id and not hidden:
            self._visible(session, view, "pushed")
            if session.live:
                self.ledger.pushed(target, self.clock.ms(trio.current_time()), view.status)
        self._told(session, view, hidden)

    def told_in_answer(self, session: SimSession, view: UserView, rid: str | None) -> None:
        own = view.user_id == session.user_id
        if own and rid is not None and int(rid[1:]) <= session.own_known:
            # Asked before the client learned its own change (from the reply to it):
            # answered as of before that change, so it tells the client nothing new.
            return
        hidden = is_hidden(view)
        if view.user_id != session.user_id and not hidden:
            self._visible(session, view, "answered")
        self._told(session, view, hidden)

    def _visible(self, session: SimSession, view: UserView, how: str) -> None:
        self.counters.checks += 1
        target = view.user_id
        if not self.policy.may_see(session.user_id, target):
            self.violation(
                "visibility",
                f"{session!r} was {how} {target} ({view.status.value}), whom"
                f" {session.user_id} may not see",
            )
        elif how == "pushed" and not (
            self.follows(session, target)
            or any(self.follows(session, target, p) for p in self.policy.proposed)
        ):
            self.violation(
                "visibility", f"{session!r} was pushed {target}, whom it does not follow"
            )

    def _told(self, session: SimSession, view: UserView, hidden: bool) -> None:
        """Record what ``session`` now knows of a user, and check its lastSeen."""
        target = view.user_id
        told = session.last_seen
        if hidden:
            told.pop(target, None)
        else:
            self.counters.checks += 1
            last_seen = view.last_seen
            before = told.get(target)
            if before is not None and (last_seen is None or last_seen < before):
                self.violation(
                    "last-seen",
                    f"{session!r} was told lastSeen {last_seen} of {target} after {before}",
                )
            told[target] = last_seen
        # follows(), its answer for the everyone fan-out without a call.
        if session.live and (not self.contacts_mode or self.follows(session, target)):
            views = session.views
            if target not in views:
                self._watchers[target].add(session)
            views[target] = (view.status, view.status_message, view.username)  # pushed_part()
            self._dirty.add((session, target))

    def told_own(self, session: SimSession, change: Callable[[Part], Part]) -> None:
        """A reply about the session's own user, whose change it caused (and so is
        not pushed): ``change`` makes what it knew into what it knows now."""
        session.own_known = self._requests
        known = session.views.get(session.user_id)
        if known is not None and session.live:
            session.views[session.user_id] = change(known)
            self._dirty.add((session, session.user_id))

    def unsubscribed(self, session: SimSession, user_ids: tuple[str, ...]) -> None:
        session.subscriptions.difference_update(user_ids)
        for target in user_ids:
            if target in session.views and not self.follows(session, target):
                self._unlearn(session, target)

    def _unlearn(self, session: SimSession, target: str) -> None:
        session.views.pop(target, None)
        self._watchers[target].discard(session)
        self.lag.forget_pair((session, target))

    def _forget(self, session: SimSession) -> None:
        """The session is no longer read: nothing it knows is checked any more."""
        self.live.pop(session.number, None)
        watchers = self._watchers
        forget_pair = self.lag.forget_pair
        for target in session.views:  # _unlearn of each, in one loop
            watchers[target].discard(session)
            forget_pair((session, target))
        session.views.clear()

    def welcomed(self, session: SimSession, now: float) -> None:
        if session.closed:
            return  # superseded before its welcome was handled
        session.welcomed = True
        self.live[session.number] = session
        session.next_heartbeat = now + self.settings.presence.heartbeat_interval
        heapq.heappush(self._heartbeats, (session.next_heartbeat, session.number))
        self.reactions.append(lambda: self._first_query(session))

    async def _first_query(self, session: SimSession) -> None:
        """A new client reads everyone (and keeps those it follows), as the page does."""
        if self.engine is not None and session.live:
            await self.request(self.engine, session, "presence", exchanges.everyone(self.user_ids))

    def acknowledged_profile(self, user_id: str, now: float) -> None:
        """The profile as the engine just applied it: the same path makes it durable
        whether or not the answer reaches the client (it may have gone)."""
        user = self.truth.users[user_id]
        self.ledger.acknowledged(user_id, "profile", (user.username, user.message), now)

    # --- epochs: from a start of the process to its stop ------------------------------

    def begin_epoch(self, state: StoreState) -> None:
        """The process starts on a store holding ``state``: nobody is connected."""
        self._unwelcomed.clear()
        self.truth.restarted(state.profiles())
        self.policy.reset(state.policy(self.settings.presence.default_visibility))
        self.ledger.begin(
            {(u, what): state.value(u, what) for u in self.user_ids for what in _STORED}
        )
        self.epoch_start = self.clock.ms(trio.current_time())
        self.stopping = False
        self.sessions.clear()
        self.live.clear()
        self._by_handle.clear()
        for watchers in self._watchers.values():
            watchers.clear()
        self._dirty.clear()
        self.pending.clear()
        self.reactions.clear()
        self._heartbeats.clear()
        self._crash_armed.clear()
        self._crashed.clear()
        self.lag.clear()

    def end_epoch(self, state: StoreState, stopped: float, *, killed: bool) -> None:
        """The process stopped (``killed``: without its final flush) leaving ``state``:
        hold it to what was acknowledged and pushed."""
        for problem in self.ledger.durability(state.value, stopped, killed):
            self.violation("durability", problem)
        since = self.epoch_start
        for problem in self.ledger.audit(
            lambda user_id: state.events_since(user_id, since), self.clock.ms, stopped, killed
        ):
            self.violation("audit", problem)
        self.counters.checks += 2 * len(self.user_ids)
        self._sorted = len(self.violations)

    # --- checks at the end of each moment ------------------------------------------------

    def check(self, now: float) -> None:
        """Every request answered; views compared with the truth where either changed;
        differences older than the bound reported."""
        happened = self.pending or self._unwelcomed or self.truth.changed or self._dirty
        engine = self.engine
        if not (happened or self.lag) and (
            engine is None or engine.registry.directory.online == self._count
        ):
            return  # nothing happened that a check could see
        for rid, pending in list(self.pending.items()):
            del self.pending[rid]
            asker = pending.session
            if not asker.closed:
                self.violation("reply", f"{asker!r} got no answer to its {pending.kind} request")
            elif pending.kind in ("privacy", "block"):
                self.policy.withdraw(rid)
                self.reactions.append(partial(self.resolve_policy, asker.user_id))
        for waiting in sorted(self._unwelcomed, key=lambda s: s.number):
            if not waiting.welcomed and not waiting.closed:
                waiting.closed = True
                self.violation("reply", f"{waiting!r} was never welcomed (nor refused)")
        self._unwelcomed.clear()
        self._check_count(now)
        cache: dict[str, tuple[Part, Part]] = {}
        changed = self.truth.changed
        for user_id, since in changed.items():
            watchers = self._watchers[user_id]
            if watchers:
                self._compare_watchers(user_id, watchers, now, since, cache)
        self._compare_dirty(changed, now, cache)
        changed.clear()
        self._dirty.clear()
        self._overdue(now, cache)
        if self.invariants and self.engine is not None:
            moment = Moment(now, self.engine, self.truth, tuple(self.live.values()))
            for name, invariant in self.invariants.items():
                self.counters.checks += 1
                for problem in invariant(moment):
                    self.violation(name, problem)
        # Found in the order the engine offered things: reported in a stable order.
        self.violations[self._sorted :] = sorted(
            self.violations[self._sorted :], key=lambda v: (v.invariant, v.detail)
        )
        self._sorted = len(self.violations)

    def _overdue(self, now: float, cache: dict[str, tuple[Part, Part]]) -> None:
        for (late, user_id), since in self.lag.overdue(now):
            assert isinstance(late, SimSession)
            got = late.views.get(user_id)
            want = self._expected(late, user_id, now, cache)
            self.violation(
                "view",
                f"{late!r} has shown {user_id} as {_part(got)} since {since:.6f};"
                f" the truth is {_part(want)}",
            )

    def _check_count(self, now: float) -> None:
        """The engine's online count (what /api/stats shows) against the truth's."""
        if self.engine is None:
            return
        count = self.engine.registry.directory.online
        if count == self._count and not self.truth.changed:
            return
        self._count = count
        self.counters.checks += 1
        online = self.truth.online()
        if count != len(online):
            shown = sorted(v.user_id for v in self.engine.registry.directory.views() if v.online)
            self.violation(
                "online-count",
                f"the engine counts {count} users online {shown}; the truth {len(online)} {online}",
            )

    def _compare_watchers(
        self,
        user_id: str,
        watchers: set[SimSession],
        now: float,
        since: float,
        cache: dict[str, tuple[Part, Part]],
    ) -> None:
        """:meth:`_compare` of every watcher of a user whose truth changed, in one
        loop: the hottest check (a change in a crowd is compared for each watcher)."""
        self.counters.checks += len(watchers)
        own, public = self._parts(user_id, now, cache)
        may_see = self.policy.confirmed.viewer_test(user_id)
        start = since if since > -math.inf else now
        lag = self.lag
        for session in watchers:
            watcher = session.user_id
            if watcher == user_id:
                want = own
            elif may_see(watcher):
                want = public
            else:
                want = HIDDEN
            if session.views.get(user_id) == want:
                lag.agree((session, user_id))
            else:
                lag.differ((session, user_id), start)

    def _compare_dirty(
        self, changed: dict[str, float], now: float, cache: dict[str, tuple[Part, Part]]
    ) -> None:
        """Compare each view a session was told at this moment with the truth (those
        of users whose truth changed were compared with every watcher already)."""
        may_see = self.policy.confirmed.may_see
        lag = self.lag
        checks = 0
        for pair in self._dirty:
            session, user_id = pair
            if user_id in changed:
                continue
            got = session.views.get(user_id)
            if got is None:
                continue  # unlearned since
            checks += 1
            own, public = self._parts(user_id, now, cache)
            watcher = session.user_id
            if watcher == user_id:
                want = own
            elif may_see(watcher, user_id):
                want = public
            else:
                want = HIDDEN
            if got == want:
                lag.agree(pair)
            else:
                lag.differ(pair, now)
        self.counters.checks += checks

    def _expected(
        self, session: SimSession, user_id: str, now: float, cache: dict[str, tuple[Part, Part]]
    ) -> Part:
        parts = self._parts(user_id, now, cache)
        if session.user_id == user_id:
            return parts[0]
        if self.policy.confirmed.may_see(session.user_id, user_id):
            return parts[1]
        return HIDDEN

    def _parts(
        self, user_id: str, now: float, cache: dict[str, tuple[Part, Part]]
    ) -> tuple[Part, Part]:
        """What the user and what others should see of ``user_id`` now (cached per check)."""
        parts = cache.get(user_id)
        if parts is None:
            parts = self.truth.parts(user_id, now)
            cache[user_id] = parts
        return parts


_STORED = ("profile", "policy", "contacts")


def _crashable(message: object) -> bool:
    """Every message but activity alone (``activity``, and the registry's Seen), whose
    loss no client could notice."""
    if isinstance(message, Seen):
        return False
    if isinstance(message, Request | Told):
        return not isinstance(message.message, Activity)
    return True


def is_hidden(view: UserView) -> bool:
    """How a user the watcher may not see (or that does not exist) is shown."""
    return (
        view.last_seen is None
        and view.status is Status.OFFLINE
        and view.username is None
        and view.status_message is None
    )


def policy_value(policy: TruePolicy, user_id: str) -> tuple[object, ...]:
    visibility = policy.visibility.get(user_id)
    blocked = tuple(sorted(policy.blocks.get(user_id, ())))
    return (None if visibility is None else visibility.value, blocked)


def contacts_value(policy: TruePolicy, user_id: str) -> tuple[object, ...]:
    return tuple(sorted(policy.contacts.get(user_id, ())))


def _part(part: Part | None) -> str:
    if part is None:
        return "nothing"
    status, message, username = part
    return f"{status.value} (message {message!r}, username {username!r})"
