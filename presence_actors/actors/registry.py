"""Registry: the actor that routes by userId and fans changes out to watchers.

It owns the map userId -> user actor inbox (spawning actors in its nursery and
retiring them when idle), the index of live sessions and of who watches whom,
the visibility policy and the directory of every known user's view. It never
waits on anything but its own inbox: actors are told with ``send_nowait`` on
unbounded inboxes (everything reaching them passed this registry's bounded
intake first), outboxes are offered without waiting, and persistence intents
are submitted without waiting (a full writer queue refuses the request with
``STORE_ERROR`` instead of stalling every user).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from typing import Any

import trio
from attrs import define, field

from ..codec import make_push
from ..config import Settings
from ..model import Status, UserView, Visibility, unknown_user
from ..persistence.intents import (
    BlockAdded,
    BlockRemoved,
    ContactAdded,
    ContactRemoved,
    ContactsReplaced,
    Intent,
    PresenceEvent,
    PresenceRow,
    VisibilityRow,
)
from ..protocol import (
    Activity,
    AllUsers,
    Block,
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
    Identify,
    Logout,
    OnlineCount,
    Presence,
    PresenceState,
    PrivacyUpdated,
    ProtocolError,
    Push,
    ServerMessage,
    SetPrivacy,
    SetStatus,
    Subscribe,
    Unblock,
    Unblocked,
    Unsubscribe,
    Unsubscribed,
    UserStatus,
    Welcome,
)
from .alarms import Alarms
from .directory import Directory, decode_cursor
from .messages import (
    TICK,
    ActorMessage,
    AddContact,
    AdminCommand,
    Ask,
    Attach,
    Command,
    Detach,
    EngineStats,
    ListQuery,
    LookupQuery,
    PolicyQuery,
    PolicyView,
    Query,
    RegistryMessage,
    RemoveContact,
    ReplaceContacts,
    Request,
    Retiring,
    Seen,
    SetVisibility,
    StatsQuery,
    UserPage,
    ViewsQuery,
)
from .policy import Policy
from .session import CLOSE_TRY_AGAIN_LATER, SessionHandle, Watches
from .supervisor import RestartPolicy, supervise
from .user import UserActor, Writer
from .user_state import Accepted, Ended, Publish, Rules, UserState, last_alive

log = logging.getLogger("presence_actors.registry")

# Requests the user's own actor answers; everything else the registry answers.
USER_REQUESTS = (SetStatus, Identify, Heartbeat, Activity, Logout)
_POLICY_REQUESTS = (SetPrivacy, Block, Unblock)
# Messages handled per wake-up before yielding to other tasks.
DRAIN_BATCH = 256
# How often at most a session's queries tell its actor that it is active.
SEEN_INTERVAL = 1.0
# The registry answers every question at once; waiting longer means it is wedged.
ASK_TIMEOUT = 5.0


@define
class _ActorRef:
    inbox: trio.MemorySendChannel[ActorMessage]
    # Read (never written) by the registry only at shutdown, for final lastSeen values.
    actor: UserActor
    routed: int = 0


@define
class RegistryStatistics:
    pushes: int = 0
    push_drops: int = 0
    actor_restarts: int = 0
    actors_spawned: int = 0


@define(eq=False)
class _Watch:
    """Registry-side bookkeeping of one live session."""

    subscriptions: set[str] = field(factory=set)
    seen_at: float = -math.inf  # when its actor was last told it is active


class Registry:
    def __init__(
        self,
        settings: Settings,
        rules: Rules,
        writer: Writer,
        *,
        directory: Directory | None = None,
        policy: Policy | None = None,
        intake_size: int = 4096,
    ) -> None:
        self.settings = settings
        self.rules = rules
        self.directory = directory if directory is not None else Directory()
        self.policy = policy if policy is not None else Policy()
        self.stats = RegistryStatistics()
        self._writer = writer
        self._contacts_mode = settings.presence.fanout == "contacts"
        self._restart_policy = RestartPolicy(
            settings.supervision.max_restarts, settings.supervision.restart_window
        )
        self._intake_send, self._intake = trio.open_memory_channel[RegistryMessage](intake_size)
        self._actors: dict[str, _ActorRef] = {}
        self._sessions: dict[SessionHandle, _Watch] = {}
        self._lost: list[SessionHandle] = []  # overflowed outboxes, dropped between messages
        self._by_user: dict[str, list[SessionHandle]] = {}
        self._subscribers: dict[str, set[SessionHandle]] = {}
        self._nursery: trio.Nursery | None = None
        self.alarms = Alarms()

    # --- the mailbox ---------------------------------------------------------------

    async def send(self, message: RegistryMessage) -> None:
        """Queue a message; waits while the intake is full (backpressure)."""
        await self._intake_send.send(message)

    def send_nowait(self, message: RegistryMessage) -> None:
        """Queue a message or raise trio.WouldBlock when the intake is full."""
        self._intake_send.send_nowait(message)

    async def tell(self, message: RegistryMessage) -> None:
        """Queue a message, waiting only while the intake is full.

        Not a checkpoint when there is room: a burst of messages costs no
        scheduler round trip each, which is what keeps fan-out batched.
        """
        try:
            self._intake_send.send_nowait(message)
        except trio.WouldBlock:
            await self._intake_send.send(message)

    async def command(self, command: AdminCommand) -> None:
        """Apply an admin change; raises ProtocolError when it is refused."""
        reply_send, reply_receive = trio.open_memory_channel[ProtocolError | None](1)
        with trio.fail_after(ASK_TIMEOUT):
            await self._intake_send.send(Command(command, reply_send))
            refusal = await reply_receive.receive()
        if refusal is not None:
            raise refusal

    async def ask(self, query: Query) -> Any:
        """Ask a read-only question; raises trio.TooSlowError after ASK_TIMEOUT."""
        reply_send, reply_receive = trio.open_memory_channel[Any](1)
        with trio.fail_after(ASK_TIMEOUT):
            await self._intake_send.send(Ask(query, reply_send))
            return await reply_receive.receive()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve the intake until cancelled; user actors live in this task's nursery.

        Messages are handled one at a time in arrival order. A user actor that
        exceeds its restart intensity makes this raise RestartIntensityExceeded.
        """
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self.alarms.run)
            task_status.started()
            async for message in self._intake:
                self._dispatch(message)
                for _ in range(DRAIN_BATCH):
                    try:
                        message = self._intake.receive_nowait()
                    except trio.WouldBlock:
                        break
                    self._dispatch(message)

    def _dispatch(self, message: RegistryMessage) -> None:
        self._handle(message)
        if self._lost:
            self._drop_lost()

    def _handle(self, message: RegistryMessage) -> None:
        match message:
            case Publish(view, push, cause):
                self._on_publish(view, push, cause)
            case Request(session, body):
                self._on_request(message, session, body)
            case Attach(session):
                if session.present:
                    self._tell(session.user_id, message)
                else:
                    self._on_accepted(session)  # an observer: no actor, no presence
            case Detach(session):
                self._unindex(session)
                if session.present and session.user_id in self._actors:
                    self._tell(session.user_id, message)
            case Accepted(session):
                self._on_accepted(session)
            case Ended(session):
                self._unindex(session)
            case Retiring(user_id, processed):
                self._on_retiring(user_id, processed)
            case Ask(query, reply):
                reply.send_nowait(self.answer(query))
            case Command(command, reply):
                try:
                    self.apply_admin(command)
                except ProtocolError as exc:
                    reply.send_nowait(exc)
                else:
                    reply.send_nowait(None)

    # --- actors --------------------------------------------------------------------

    def _tell(self, user_id: str, message: ActorMessage) -> None:
        ref = self._actors.get(user_id)
        if ref is None:
            ref = self._spawn(user_id)
        ref.routed += 1
        ref.inbox.send_nowait(message)

    def _spawn(self, user_id: str) -> _ActorRef:
        assert self._nursery is not None, "the registry is not running"
        view = self.directory.get(user_id) or unknown_user(user_id)
        # Unbounded: what comes through the registry passed its bounded intake, and
        # what a session tells its actor directly (Told) is bounded by the
        # session's rate limit.
        send, receive = trio.open_memory_channel[ActorMessage](math.inf)
        actor = UserActor(
            UserState.from_view(view),
            receive,
            self.rules,
            self,
            self._writer,
            self.alarms,
            partial(self._ring, user_id),
        )
        self._nursery.start_soon(supervise, actor, self._restart_policy, self._count_restart)
        ref = _ActorRef(send, actor)
        self._actors[user_id] = ref
        self.stats.actors_spawned += 1
        return ref

    def _ring(self, user_id: str) -> None:
        ref = self._actors.get(user_id)
        if ref is not None:
            ref.inbox.send_nowait(TICK)  # not routed: the retire count ignores ticks

    def _count_restart(self, _name: str) -> None:
        self.stats.actor_restarts += 1

    def _on_retiring(self, user_id: str, processed: int) -> None:
        ref = self._actors.get(user_id)
        if ref is not None and ref.routed == processed:
            del self._actors[user_id]
            ref.inbox.close()  # the actor drains nothing more and returns

    # --- sessions ------------------------------------------------------------------

    def _on_accepted(self, session: SessionHandle) -> None:
        self._sessions[session] = _Watch()
        ref = self._actors.get(session.user_id) if session.present else None
        if ref is not None:
            session.actor = ref.inbox
        self._by_user.setdefault(session.user_id, []).append(session)
        self._deliver(
            session,
            Welcome(
                timestamp=self.rules.clock.now_ms(),
                user_id=session.user_id,
                session_id=session.session_id,
                device_id=session.device_id,
                message="connected to presence_actors",
                heartbeat_interval=self.rules.heartbeat_interval,
                heartbeat_timeout=self.rules.heartbeat_timeout,
            ),
        )
        if self._contacts_mode:
            contacts = sorted(self.policy.contact_list(session.user_id))
            state = PresenceState(
                timestamp=self.rules.clock.now_ms(),
                users=tuple(self.view_for(session.user_id, c) for c in contacts),
            )
            self._deliver(session, state)

    def _unindex(self, session: SessionHandle) -> None:
        watch = self._sessions.pop(session, None)
        if watch is None:
            return
        mine = self._by_user.get(session.user_id)
        if mine is not None:
            mine.remove(session)
            if not mine:
                del self._by_user[session.user_id]
        for target in watch.subscriptions:
            subscribers = self._subscribers.get(target)
            if subscribers is not None:
                subscribers.discard(session)
                if not subscribers:
                    del self._subscribers[target]

    # --- requests ------------------------------------------------------------------

    def _on_request(self, request: Request, session: SessionHandle, message: ClientMessage) -> None:
        if session not in self._sessions:
            return  # not live (yet, or any more): nothing to answer
        forbidden = message.user_id is not None and message.user_id != session.user_id
        user_request = isinstance(message, USER_REQUESTS)
        if not session.present:
            if isinstance(message, Heartbeat) and not forbidden:
                # Observers have no presence to keep alive; the ack keeps clients simple.
                ack = HeartbeatAck(
                    timestamp=self.rules.clock.now_ms(),
                    request_id=message.request_id,
                    next_heartbeat_in_seconds=self.rules.heartbeat_interval,
                )
                self._deliver(session, ack)
                return
            forbidden = forbidden or user_request or isinstance(message, _POLICY_REQUESTS)
        elif user_request and not forbidden:
            self._tell(session.user_id, request)
            return
        else:
            watch = self._sessions[session]
            now = trio.current_time()
            # Queries are activity too; telling the actor once a second is enough
            # for lastSeen and away, and spares it a wake-up per query.
            if now - watch.seen_at >= SEEN_INTERVAL:
                watch.seen_at = now
                self._tell(session.user_id, Seen(session))
        try:
            if forbidden:
                raise ProtocolError(
                    ErrorCode.FORBIDDEN,
                    "observers cannot change presence or privacy"
                    if not session.present
                    else "userId must be your own user",
                )
            reply = self._answer_request(session, message)
        except ProtocolError as exc:
            reply = Error(
                timestamp=self.rules.clock.now_ms(),
                request_id=message.request_id,
                code=exc.code,
                message=exc.message,
            )
        self._deliver(session, reply)

    def _answer_request(self, session: SessionHandle, message: ClientMessage) -> ServerMessage:
        me = session.user_id
        stamp = self.rules.clock.now_ms()
        rid = message.request_id
        match message:
            case GetOnlineCount():
                return OnlineCount(timestamp=stamp, request_id=rid, count=self.online_count(me))
            case CheckUserStatus(target_user_id=target):
                return UserStatus(timestamp=stamp, request_id=rid, view=self.view_for(me, target))
            case GetAllUsers(status=status, limit=limit, cursor=cursor):
                page = self.list_users(ListQuery(me, status, limit, cursor))
                return AllUsers(
                    timestamp=stamp, request_id=rid, users=page.users, next_cursor=page.next_cursor
                )
            case GetPresence(user_ids=user_ids):
                self._check_ids(user_ids)
                views = tuple(self.view_for(me, u) for u in user_ids)
                return Presence(timestamp=stamp, request_id=rid, users=views)
            case Subscribe(user_ids=user_ids):
                return self._subscribe(session, user_ids, stamp, rid)
            case Unsubscribe(user_ids=user_ids):
                self._check_ids(user_ids)
                self._unsubscribe(session, user_ids)
                return Unsubscribed(timestamp=stamp, request_id=rid, user_ids=user_ids)
            case SetPrivacy(visibility=visibility):
                self.apply_admin(SetVisibility(me, visibility))
                return PrivacyUpdated(timestamp=stamp, request_id=rid, visibility=visibility)
            case Block(target_user_id=target):
                self._change_policy(
                    [me], lambda: self.policy.block(me, target), [BlockAdded(me, target)]
                )
                return Blocked(timestamp=stamp, request_id=rid, target_user_id=target)
            case Unblock(target_user_id=target):
                self._change_policy(
                    [me], lambda: self.policy.unblock(me, target), [BlockRemoved(me, target)]
                )
                return Unblocked(timestamp=stamp, request_id=rid, target_user_id=target)
        raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unhandled message type {message.TYPE!r}")

    def _check_ids(self, user_ids: tuple[str, ...]) -> None:
        if not user_ids:
            raise ProtocolError(ErrorCode.INVALID_MESSAGE, "userIds must not be empty")
        most = self.settings.limits.max_ids_per_request
        if len(user_ids) > most:
            raise ProtocolError(ErrorCode.LIMIT_EXCEEDED, f"at most {most} userIds per request")

    def _subscribe(
        self, session: SessionHandle, user_ids: tuple[str, ...], stamp: int, rid: str | None
    ) -> ServerMessage:
        self._check_ids(user_ids)
        watch = self._sessions[session]
        new = set(user_ids) - watch.subscriptions
        most = self.settings.limits.max_subscriptions
        if len(watch.subscriptions) + len(new) > most:
            raise ProtocolError(
                ErrorCode.LIMIT_EXCEEDED, f"at most {most} subscriptions per session"
            )
        for target in new:
            watch.subscriptions.add(target)
            self._subscribers.setdefault(target, set()).add(session)
        views = tuple(self.view_for(session.user_id, u) for u in dict.fromkeys(user_ids))
        return PresenceState(timestamp=stamp, request_id=rid, users=views)

    def _unsubscribe(self, session: SessionHandle, user_ids: tuple[str, ...]) -> None:
        watch = self._sessions[session]
        for target in user_ids:
            if target in watch.subscriptions:
                watch.subscriptions.discard(target)
                subscribers = self._subscribers[target]
                subscribers.discard(session)
                if not subscribers:
                    del self._subscribers[target]

    def _change_policy(
        self, user_ids: Iterable[str], change: Callable[[], None], intents: Iterable[Intent]
    ) -> None:
        """Apply a policy change about ``user_ids`` and show its effect at once.

        Every session that watched one of them or watches it now is looked at:
        a watcher that loses sight of a user sees it go offline (and nothing
        after); a watcher that gains sight of it, or starts watching it (a new
        contact), is pushed its current state. The intents are accepted by the
        writer before anything changes, or the change is refused (STORE_ERROR).
        """
        intents = list(intents)
        self._reserve(len(intents))
        for intent in intents:
            self._writer.submit_nowait(intent)
        targets = list(dict.fromkeys(user_ids))
        may_see = self.policy.may_see
        before = {
            target: {w: may_see(w.user_id, target) for w in self._watchers_of(target)}
            for target in targets
        }
        change()
        stamp = self.rules.clock.now_ms()
        for target in targets:
            could_see = before[target]
            now_watching = {w: may_see(w.user_id, target) for w in self._watchers_of(target)}
            view = self.directory.get(target)
            hidden: Push | None = None
            shown: Push | None = None
            for watcher in could_see.keys() | now_watching.keys():
                if watcher.user_id == target:
                    continue
                could, can = could_see.get(watcher, False), now_watching.get(watcher, False)
                if could and not may_see(watcher.user_id, target):
                    hidden = hidden or make_push(unknown_user(target), stamp)
                    self._deliver_push(watcher, hidden)
                elif can and not could and view is not None:
                    shown = shown or make_push(self.view_for(watcher.user_id, target), stamp)
                    self._deliver_push(watcher, shown)

    def _reserve(self, count: int) -> None:
        """Refuse (STORE_ERROR) unless the writer can take ``count`` intents now."""
        if self._writer.free_slots() < count:
            raise ProtocolError(ErrorCode.STORE_ERROR, "the store is busy; try again shortly")

    def apply_admin(self, command: AdminCommand) -> None:
        """An admin change (contacts, visibility), applied like a user's own change."""
        stamp = self.rules.clock.now_ms()
        policy = self.policy
        match command:
            case ReplaceContacts(user_id, contacts):
                old = policy.contacts(user_id)
                self._change_policy(
                    [user_id, *old, *contacts],
                    lambda: policy.replace_contacts(user_id, contacts),
                    [ContactsReplaced(user_id, frozenset(contacts))],
                )
            case AddContact(user_id, contact_id):
                self._change_policy(
                    [user_id, contact_id],
                    lambda: policy.add_contact(user_id, contact_id),
                    [ContactAdded(user_id, contact_id)],
                )
            case RemoveContact(user_id, contact_id):
                self._change_policy(
                    [user_id, contact_id],
                    lambda: policy.remove_contact(user_id, contact_id),
                    [ContactRemoved(user_id, contact_id)],
                )
            case SetVisibility(user_id, visibility):
                self._change_policy(
                    [user_id],
                    lambda: policy.set_visibility(user_id, visibility),
                    [VisibilityRow(user_id, visibility, stamp)],
                )

    # --- changes and fan-out ---------------------------------------------------------

    def _on_publish(self, view: UserView, push: bool, cause: SessionHandle | None) -> None:
        self.directory.put(view)
        if not push:
            return
        packet = make_push(view, self.rules.clock.now_ms())
        user_id = view.user_id
        public = self.policy.is_public(user_id)
        may_see = self.policy.may_see
        for watcher in self._watchers_of(user_id):
            if watcher is not cause and (public or may_see(watcher.user_id, user_id)):
                self._deliver_push(watcher, packet)

    def _deliver_push(self, watcher: SessionHandle, packet: Any) -> None:
        if watcher.closing:
            return
        if self._deliver(watcher, packet):
            self.stats.pushes += 1
        else:
            self.stats.push_drops += 1

    def _deliver(self, session: SessionHandle, item: Any) -> bool:
        """Offer ``item``; a full outbox ends the session at once as a lost one.

        The transport is asked to close (1013) but may be stuck writing to a
        peer that does not read, so the engine does not wait for it to detach.
        """
        if session.deliver(item):
            return True
        if session.close_code == CLOSE_TRY_AGAIN_LATER and session in self._sessions:
            self._lost.append(session)  # dropped after this message: the index may be mid-walk
        return False

    def _drop_lost(self) -> None:
        lost, self._lost = self._lost, []
        for session in lost:
            self._unindex(session)
            if session.present:
                self._tell(session.user_id, Detach(session))

    def _watchers_of(self, user_id: str) -> Iterator[SessionHandle]:
        """Every live session that follows ``user_id`` in the fan-out mode, once each."""
        seen: set[SessionHandle] = set()
        if not self._contacts_mode:
            for session in self._sessions:
                if session.watches is Watches.MODE:
                    seen.add(session)
                    yield session
        else:
            for session in self._by_user.get(user_id, ()):
                if session.watches is Watches.MODE:
                    seen.add(session)
                    yield session
            for contact in self.policy.contact_list(user_id):
                for session in self._by_user.get(contact, ()):
                    if session.watches is Watches.MODE:
                        seen.add(session)
                        yield session
        for session in self._subscribers.get(user_id, ()):
            if session not in seen:
                yield session

    # --- read-only answers -------------------------------------------------------------

    def view_for(self, watcher: str | None, user_id: str) -> UserView:
        """``user_id`` as ``watcher`` may see it; a hidden user looks like an unknown one."""
        if not self.policy.may_see(watcher, user_id):
            return unknown_user(user_id)
        view = self.directory.get(user_id)
        if view is None:
            return unknown_user(user_id)
        if watcher != user_id and any(d.status is Status.OFFLINE for d in view.devices):
            # Invisible devices are the user's own business.
            devices = tuple(d for d in view.devices if d.status is not Status.OFFLINE)
            return UserView(
                view.user_id,
                view.status,
                view.username,
                view.status_message,
                view.last_seen,
                devices,
            )
        return view

    def online_count(self, watcher: str | None) -> int:
        """Online users ``watcher`` may see."""
        if self.policy.default_visibility is not Visibility.EVERYONE:
            return sum(
                1
                for view in self.directory.views()
                if view.online and self.policy.may_see(watcher, view.user_id)
            )
        count = self.directory.online
        for user_id in self.policy.restricted():
            view = self.directory.get(user_id)
            if view is not None and view.online and not self.policy.may_see(watcher, user_id):
                count -= 1
        return count

    def list_users(self, query: ListQuery) -> UserPage:
        if query.limit < 1:
            raise ProtocolError(ErrorCode.INVALID_MESSAGE, "limit must be at least 1")
        if query.limit > 10_000:
            raise ProtocolError(ErrorCode.LIMIT_EXCEEDED, "limit must be at most 10000")
        after = None
        if query.cursor is not None:
            try:
                after = decode_cursor(query.cursor)
            except ValueError as exc:
                raise ProtocolError(ErrorCode.INVALID_MESSAGE, str(exc)) from None
        watcher, status = query.watcher, query.status
        may_see = self.policy.may_see

        def accept(view: UserView) -> bool:
            return (status is None or view.status is status) and may_see(watcher, view.user_id)

        views, cursor = self.directory.page(accept, query.limit, after)
        return UserPage(tuple(self.view_for(watcher, v.user_id) for v in views), cursor)

    def answer(self, query: Query) -> Any:
        """Answer a read-only question (the registry task calls this for each Ask)."""
        try:
            match query:
                case ViewsQuery(watcher, user_ids):
                    return [self.view_for(watcher, u) for u in user_ids]
                case LookupQuery(watcher, user_id):
                    known = self.directory.get(user_id) is not None
                    if known and self.policy.may_see(watcher, user_id):
                        return self.view_for(watcher, user_id)
                    return None
                case ListQuery():
                    return self.list_users(query)
                case StatsQuery(watcher):
                    return EngineStats(
                        online_users=self.directory.online,
                        sessions=len(self._sessions),
                        known_users=len(self.directory),
                        actors=len(self._actors),
                        pushes=self.stats.pushes,
                        visible_online=self.online_count(watcher),
                    )
                case PolicyQuery(user_id):
                    return PolicyView(
                        self.policy.visibility(user_id),
                        self.policy.contacts(user_id),
                        self.policy.blocked_by(user_id),
                    )
        except ProtocolError as exc:
            return exc
        raise AssertionError(f"unknown query {query!r}")

    def final_offline(self, now_ms: int) -> list[Intent]:
        """Intents that record every user shown online as offline (clean shutdown).

        lastSeen becomes what going offline would have made it: the last message
        or heartbeat of a visible session, including heartbeats the actor did
        not see yet.
        """
        intents: list[Intent] = []
        for view in self.directory.views():
            if view.online:
                ref = self._actors.get(view.user_id)
                alive = None if ref is None else last_alive(ref.actor.state, self.rules)
                intents.append(
                    PresenceRow(
                        view.user_id,
                        Status.OFFLINE,
                        view.username,
                        view.status_message,
                        alive or view.last_seen,
                        now_ms,
                    )
                )
                intents.append(PresenceEvent(view.user_id, Status.OFFLINE, now_ms, "shutdown"))
        return intents
