"""Registry: the actor that routes by userId and turns changes into pushes.

It owns the map userId -> user actor inbox (spawning actors in its nursery and
retiring them when idle) and, through its parts, the watch index
(:mod:`.watch_index`), the directory and the read side (:mod:`.queries`),
privacy changes (:mod:`.policy_changes`) and the fan-out (:mod:`.fanout`). It
never waits on anything but its own inbox: actors are told with
``send_nowait`` on unbounded inboxes (everything reaching them passed this
registry's bounded intake first), outboxes are offered without waiting, and
persistence intents are submitted without waiting (a full writer queue
refuses the request with ``STORE_ERROR`` instead of stalling every user).
Long work (a fan-out tick, a bulk answer, a privacy change seen by many)
spends the registry's :class:`~.turns.Turn` and yields as it goes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from functools import partial
from typing import Any

import trio
from attrs import define

from ..codec import make_push, prepare_bulk
from ..config import Settings
from ..model import Status, unknown_user
from ..persistence.intents import Intent, PresenceEvent, PresenceRow
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
from .directory import Directory
from .fanout import Fanout, FanoutStatistics
from .messages import (
    TICK,
    ActorMessage,
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
    Request,
    Retiring,
    Seen,
    SetVisibility,
    StatsQuery,
    ViewsQuery,
)
from .policy import Policy
from .policy_changes import PolicyChanges
from .queries import Queries
from .session import CLOSE_TRY_AGAIN_LATER, Outgoing, SessionHandle
from .supervisor import RestartPolicy, supervise
from .turns import Turn
from .user import UserActor, Writer
from .user_state import Accepted, Ended, Publish, Rules, UserState, last_alive
from .watch_index import WatchIndex

log = logging.getLogger("presence_actors.registry")

# Requests the user's own actor answers; everything else the registry answers.
USER_REQUESTS = (SetStatus, Identify, Heartbeat, Activity, Logout)
_POLICY_REQUESTS = (SetPrivacy, Block, Unblock)
# Turn units a message costs at least: routing one (spawning an actor, moving a
# view in the directory, encoding a welcome) takes some tens of microseconds.
_MESSAGE_UNITS = 10
# How often at most a session's queries tell its actor that it is active.
SEEN_INTERVAL = 1.0
# The registry answers every question promptly; waiting longer means it is wedged.
ASK_TIMEOUT = 5.0


@define
class _ActorRef:
    inbox: trio.MemorySendChannel[ActorMessage]
    # Read (never written) by the registry only at shutdown, for final lastSeen values.
    actor: UserActor
    routed: int = 0


@define
class RegistryStatistics(FanoutStatistics):
    actor_restarts: int = 0
    actors_spawned: int = 0


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
        self.policy = policy if policy is not None else Policy()
        self.queries = Queries(directory if directory is not None else Directory(), self.policy)
        self.directory = self.queries.directory
        self.stats = RegistryStatistics()
        self._writer = writer
        self._restart_policy = RestartPolicy(
            settings.supervision.max_restarts, settings.supervision.restart_window
        )
        self._intake_send, self._intake = trio.open_memory_channel[RegistryMessage](intake_size)
        self._actors: dict[str, _ActorRef] = {}
        self._index = WatchIndex(self.policy, contacts_mode=settings.presence.fanout == "contacts")
        self._fanout = Fanout(self._index, self.policy, self._deliver, self.stats)
        self._policy_changes = PolicyChanges(
            self.queries, self._index, writer, rules.clock, self._deliver_push
        )
        self._lost: list[SessionHandle] = []  # overflowed outboxes, dropped between messages
        self._turn = Turn()
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

        Messages are handled one at a time in arrival order; the pushes they
        cause go out in ticks, once the intake is empty or a turn's work is
        done (see :mod:`.fanout`). A user actor that exceeds its restart
        intensity makes this raise RestartIntensityExceeded.
        """
        turn = self._turn
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self.alarms.run)
            task_status.started()
            while True:
                message = await self._next()
                turn.restart()
                while message is not None:
                    await self._dispatch(message)
                    turn.charge(_MESSAGE_UNITS)
                    if turn.spent:
                        break
                    try:
                        message = self._intake.receive_nowait()
                    except trio.WouldBlock:
                        message = None
                now = trio.current_time()
                if self._fanout.due(now):
                    await self._fanout.flush(turn, now)
                    self._drop_lost()

    async def _next(self) -> RegistryMessage | None:
        """The next message, or None when a fan-out tick is due and nothing is queued."""
        fanout = self._fanout
        if not fanout.waiting:
            return await self._intake.receive()
        if fanout.due(trio.current_time()):
            await trio.lowlevel.checkpoint()
            try:
                return self._intake.receive_nowait()
            except trio.WouldBlock:
                return None
        with trio.move_on_at(fanout.due_at):
            return await self._intake.receive()
        return None

    async def _dispatch(self, message: RegistryMessage) -> None:
        await self._handle(message)
        if self._lost:
            self._drop_lost()

    async def _handle(self, message: RegistryMessage) -> None:
        match message:
            case Publish(view, push, cause):
                self.directory.put(view)
                if push:
                    self._fanout.add(make_push(view, self.rules.clock.now_ms()), cause)
            case Request(session, body):
                await self._on_request(message, session, body)
            case Attach(session):
                if session.present:
                    self._tell(session.user_id, message)
                else:
                    self._on_accepted(session)  # an observer: no actor, no presence
            case Detach(session):
                self._index.remove(session)
                if session.present and session.user_id in self._actors:
                    self._tell(session.user_id, message)
            case Accepted(session):
                self._on_accepted(session)
            case Ended(session):
                self._index.remove(session)
            case Retiring(user_id, processed):
                self._on_retiring(user_id, processed)
            case Ask(query, reply):
                reply.send_nowait(await self._answer_query(query))
            case Command(command, reply):
                try:
                    await self._policy_changes.apply(command, self._turn)
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
        self._index.add(session)
        ref = self._actors.get(session.user_id) if session.present else None
        if ref is not None:
            session.actor = ref.inbox
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
        if self._index.contacts_mode:
            contacts = sorted(self.policy.contact_list(session.user_id))
            state = PresenceState(
                timestamp=self.rules.clock.now_ms(),
                users=tuple(self.queries.view_for(session.user_id, c) for c in contacts),
            )
            self._deliver(session, state)

    def _deliver_push(self, watcher: SessionHandle, item: Outgoing) -> None:
        if watcher.closing:
            return
        if self._deliver(watcher, item):
            self.stats.pushes += 1
        else:
            self.stats.push_drops += 1

    def _deliver(self, session: SessionHandle, item: Outgoing) -> bool:
        """Offer ``item``; a full outbox ends the session at once as a lost one.

        The transport is asked to close (1013) but may be stuck writing to a
        peer that does not read, so the engine does not wait for it to detach.
        """
        if session.deliver(item):
            return True
        if session.close_code == CLOSE_TRY_AGAIN_LATER and session in self._index:
            self._lost.append(session)  # dropped after this message: the index may be mid-walk
        return False

    def _drop_lost(self) -> None:
        lost, self._lost = self._lost, []
        for session in lost:
            self._index.remove(session)
            if session.present:
                self._tell(session.user_id, Detach(session))

    # --- requests ------------------------------------------------------------------

    async def _on_request(
        self, request: Request, session: SessionHandle, message: ClientMessage
    ) -> None:
        if session not in self._index:
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
            watch = self._index.watch_of(session)
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
            reply = await self._answer_request(session, message)
        except ProtocolError as exc:
            reply = Error(
                timestamp=self.rules.clock.now_ms(),
                request_id=message.request_id,
                code=exc.code,
                message=exc.message,
            )
        if session in self._index:  # it may have gone while the answer was being made
            self._deliver(session, reply)

    async def _answer_request(
        self, session: SessionHandle, message: ClientMessage
    ) -> ServerMessage:
        me = session.user_id
        rid = message.request_id
        queries, turn = self.queries, self._turn
        match message:
            case GetOnlineCount():
                count = queries.online_count(me)
                return OnlineCount(timestamp=self._now(), request_id=rid, count=count)
            case CheckUserStatus(target_user_id=target):
                view = queries.view_for(me, target)
                return UserStatus(timestamp=self._now(), request_id=rid, view=view)
            case GetAllUsers(status=status, limit=limit, cursor=cursor):
                page, fragments = await queries.list_users(
                    ListQuery(me, status, limit, cursor), turn
                )
                reply: ServerMessage = AllUsers(
                    timestamp=self._now(),
                    request_id=rid,
                    users=page.users,
                    next_cursor=page.next_cursor,
                )
                prepare_bulk(reply, fragments)
                return reply
            case GetPresence(user_ids=user_ids):
                self._check_ids(user_ids)
                listed = await queries.views_for(me, user_ids, turn)
                reply = Presence(timestamp=self._now(), request_id=rid, users=listed.views)
                prepare_bulk(reply, listed.fragments)
                return reply
            case Subscribe(user_ids=user_ids):
                self._check_ids(user_ids)
                self._index.subscribe(session, user_ids, self.settings.limits.max_subscriptions)
                listed = await queries.views_for(me, list(dict.fromkeys(user_ids)), turn)
                reply = PresenceState(timestamp=self._now(), request_id=rid, users=listed.views)
                prepare_bulk(reply, listed.fragments)
                return reply
            case Unsubscribe(user_ids=user_ids):
                self._check_ids(user_ids)
                self._index.unsubscribe(session, user_ids)
                return Unsubscribed(timestamp=self._now(), request_id=rid, user_ids=user_ids)
            case SetPrivacy(visibility=visibility):
                await self._policy_changes.apply(SetVisibility(me, visibility), turn)
                return PrivacyUpdated(timestamp=self._now(), request_id=rid, visibility=visibility)
            case Block(target_user_id=target):
                await self._policy_changes.block(me, target, turn)
                return Blocked(timestamp=self._now(), request_id=rid, target_user_id=target)
            case Unblock(target_user_id=target):
                await self._policy_changes.unblock(me, target, turn)
                return Unblocked(timestamp=self._now(), request_id=rid, target_user_id=target)
        raise ProtocolError(ErrorCode.UNKNOWN_TYPE, f"unhandled message type {message.TYPE!r}")

    def _now(self) -> int:
        return self.rules.clock.now_ms()

    def _check_ids(self, user_ids: tuple[str, ...]) -> None:
        if not user_ids:
            raise ProtocolError(ErrorCode.INVALID_MESSAGE, "userIds must not be empty")
        most = self.settings.limits.max_ids_per_request
        if len(user_ids) > most:
            raise ProtocolError(ErrorCode.LIMIT_EXCEEDED, f"at most {most} userIds per request")

    # --- read-only answers -------------------------------------------------------------

    async def _answer_query(self, query: Query) -> Any:
        """Answer an Ask from HTTP or gRPC; a refusal is returned as its ProtocolError."""
        queries, turn = self.queries, self._turn
        try:
            match query:
                case ViewsQuery(watcher, user_ids):
                    return list((await queries.views_for(watcher, user_ids, turn)).views)
                case ListQuery():
                    page, _ = await queries.list_users(query, turn)
                    return page
        except ProtocolError as exc:
            return exc
        return self.answer(query)

    def answer(self, query: Query) -> Any:
        """Answer a small read-only question at once (also read by /metrics at scrape time)."""
        match query:
            case LookupQuery(watcher, user_id):
                known = self.directory.get(user_id) is not None
                if known and self.policy.may_see(watcher, user_id):
                    return self.queries.view_for(watcher, user_id)
                return None
            case StatsQuery():
                return EngineStats(
                    online_users=self.directory.online,
                    sessions=len(self._index),
                    known_users=len(self.directory),
                    actors=len(self._actors),
                    pushes=self.stats.pushes,
                )
            case PolicyQuery(user_id):
                return PolicyView(
                    self.policy.visibility(user_id),
                    self.policy.contacts(user_id),
                    self.policy.blocked_by(user_id),
                )
        raise AssertionError(f"not a small question: {query!r}")

    def final_offline(self, now_ms: int) -> Iterator[Intent]:
        """Intents that record every user shown online as offline (clean shutdown).

        lastSeen becomes what going offline would have made it: the last message
        or heartbeat of a visible session, including heartbeats the actor did
        not see yet. Walks a snapshot of the directory taken when it starts, so
        the caller may yield between intents.
        """
        online = [view for view in self.directory.views() if view.online]
        for view in online:
            ref = self._actors.get(view.user_id)
            alive = None if ref is None else last_alive(ref.actor.state, self.rules)
            yield PresenceRow(
                view.user_id,
                Status.OFFLINE,
                view.username,
                view.status_message,
                alive or view.last_seen,
                now_ms,
            )
            yield PresenceEvent(view.user_id, Status.OFFLINE, now_ms, "shutdown")
