"""A session's requests that the registry answers: queries, subscriptions, privacy.

Owned by the registry task (it calls :meth:`SessionRequests.handle` for each
:class:`~.messages.Request`). Requests about the user itself (``set_status``,
``identify``, ...) are passed on to the user's actor; the rest are answered
here, bulk answers in short turns and encoded on the way.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from ..codec import prepare_bulk
from ..config import LimitSettings
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
)
from .clock import WallClock
from .cluster_side import ClusterSide
from .messages import ActorMessage, ListQuery, Request, Seen, SetVisibility
from .policy_changes import PolicyChanges
from .queries import Queries
from .remote_reads import RemoteReads
from .session import Outgoing, SessionHandle
from .turns import Turn
from .watch_index import WatchIndex

# Requests the user's own actor answers; everything else the registry answers.
USER_REQUESTS = (SetStatus, Identify, Heartbeat, Activity, Logout)
_POLICY_REQUESTS = (SetPrivacy, Block, Unblock)
# What a node of a cluster in contacts fan-out answers from Redis (remote_reads).
_REMOTE_READS = (GetOnlineCount, CheckUserStatus, GetAllUsers, GetPresence)
# How often at most a session's queries tell its actor that it is active.
SEEN_INTERVAL = 1.0


class SessionRequests:
    def __init__(
        self,
        *,
        index: WatchIndex,
        queries: Queries,
        policy_changes: PolicyChanges,
        limits: LimitSettings,
        clock: WallClock,
        heartbeat_interval: float,
        tell: Callable[[str, ActorMessage], None],
        deliver: Callable[[SessionHandle, Outgoing], bool],
        turn: Turn,
    ) -> None:
        self._index = index
        self._queries = queries
        self._policy_changes = policy_changes
        self._limits = limits
        self._clock = clock
        self._heartbeat_interval = heartbeat_interval
        self._tell = tell
        self._deliver = deliver
        self._turn = turn
        # In a cluster (set by the registry): who this node watches; in contacts
        # fan-out, reads of users it does not watch, run in tasks of their own.
        self.cluster: ClusterSide | None = None
        self.remote: RemoteReads | None = None
        self.spawn: Callable[..., object] | None = None

    async def handle(self, request: Request) -> None:
        """Answer ``request``, or pass it to the user's actor (requests about the user
        itself); the answer goes to the session's outbox if it is still live."""
        session, message = request.session, request.message
        if session not in self._index:
            return  # not live (yet, or any more): nothing to answer
        forbidden = message.user_id is not None and message.user_id != session.user_id
        user_request = isinstance(message, USER_REQUESTS)
        if not session.present:
            if isinstance(message, Heartbeat) and not forbidden:
                # Observers have no presence to keep alive; the ack keeps clients simple.
                ack = HeartbeatAck(
                    timestamp=self._clock.now_ms(),
                    request_id=message.request_id,
                    next_heartbeat_in_seconds=self._heartbeat_interval,
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
            if self.remote is not None and isinstance(message, _REMOTE_READS):
                assert self.spawn is not None
                self.spawn(self._answer_remotely, session, message)
                return
            reply = await self._answer(session, message)
        except ProtocolError as exc:
            reply = Error(
                timestamp=self._clock.now_ms(),
                request_id=message.request_id,
                code=exc.code,
                message=exc.message,
            )
        if reply is not None and session in self._index:  # it may have gone meanwhile
            self._deliver(session, reply)

    async def _answer_remotely(self, session: SessionHandle, message: ClientMessage) -> None:
        """A read that needs Redis (see remote_reads), in a task of its own."""
        me, rid = session.user_id, message.request_id
        remote = self.remote
        assert remote is not None
        reply: ServerMessage
        try:
            match message:
                case GetOnlineCount():
                    count = await remote.online_count(me)
                    reply = OnlineCount(timestamp=self._now(), request_id=rid, count=count)
                case CheckUserStatus(target_user_id=target):
                    [view] = await remote.views(me, [target])
                    reply = UserStatus(timestamp=self._now(), request_id=rid, view=view)
                case GetAllUsers(status=status, limit=limit, cursor=cursor):
                    page = await remote.page(ListQuery(me, status, limit, cursor))
                    reply = AllUsers(
                        timestamp=self._now(),
                        request_id=rid,
                        users=page.users,
                        next_cursor=page.next_cursor,
                    )
                case GetPresence(user_ids=user_ids):
                    self._check_ids(user_ids)
                    views = tuple(await remote.views(me, list(user_ids)))
                    reply = Presence(timestamp=self._now(), request_id=rid, users=views)
                case _:
                    raise AssertionError(message)
        except ProtocolError as exc:
            reply = Error(timestamp=self._now(), request_id=rid, code=exc.code, message=exc.message)
        if session in self._index:
            self._deliver(session, reply)

    async def _answer(self, session: SessionHandle, message: ClientMessage) -> ServerMessage | None:
        me = session.user_id
        rid = message.request_id
        queries, turn = self._queries, self._turn
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
                wanted = list(dict.fromkeys(user_ids))
                before = set(self._index.watch_of(session).subscriptions)
                self._index.subscribe(session, user_ids, self._limits.max_subscriptions)
                cluster = self.cluster
                if cluster is not None and cluster.contacts_mode:
                    cluster.watch(set(wanted) - before)
                    # The state once the newly watched users' views are here.
                    cluster.when_seeded(
                        set(wanted), lambda: self._deliver_state(session, wanted, rid)
                    )
                    return None
                listed = await queries.views_for(me, wanted, turn)
                reply = PresenceState(timestamp=self._now(), request_id=rid, users=listed.views)
                prepare_bulk(reply, listed.fragments)
                return reply
            case Unsubscribe(user_ids=user_ids):
                self._check_ids(user_ids)
                before = set(self._index.watch_of(session).subscriptions)
                self._index.unsubscribe(session, user_ids)
                if self.cluster is not None:
                    self.cluster.unwatch(before & set(user_ids))
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

    def _deliver_state(self, session: SessionHandle, user_ids: list[str], rid: str | None) -> None:
        if session in self._index:
            views = tuple(self._queries.view_for(session.user_id, u) for u in user_ids)
            self._deliver(
                session, PresenceState(timestamp=self._now(), request_id=rid, users=views)
            )

    def _now(self) -> int:
        return self._clock.now_ms()

    def _check_ids(self, user_ids: tuple[str, ...]) -> None:
        if not user_ids:
            raise ProtocolError(ErrorCode.INVALID_MESSAGE, "userIds must not be empty")
        most = self._limits.max_ids_per_request
        if len(user_ids) > most:
            raise ProtocolError(ErrorCode.LIMIT_EXCEEDED, f"at most {most} userIds per request")
