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
from typing import TYPE_CHECKING, Any

import trio
from attrs import define

from ..codec import make_push
from ..config import Settings
from ..model import Status, unknown_user
from ..persistence.intents import Intent, PresenceEvent, PresenceRow
from ..protocol import (
    PresenceState,
    ProtocolError,
    Welcome,
)
from .alarms import Alarms
from .byte_budget import ByteBudget
from .cluster_side import ClusterSide
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
    Merged,
    PolicyChanged,
    PolicyQuery,
    Query,
    RegistryMessage,
    Rejoined,
    Request,
    Retiring,
    Seeded,
    StatsQuery,
    ViewsQuery,
)
from .policy import Policy
from .policy_changes import PolicyChanges
from .queries import Queries
from .remote_reads import RemoteReads
from .requests import SessionRequests
from .session import CLOSE_TRY_AGAIN_LATER, Outgoing, SessionHandle
from .supervisor import RestartPolicy, supervise
from .turns import Turn
from .user import UserActor, Writer
from .user_state import Accepted, Ended, Publish, Rules, UserState, last_alive
from .watch_index import WatchIndex

if TYPE_CHECKING:
    from ..cluster.link import ClusterLink

log = logging.getLogger("presence_actors.registry")

# Turn units a message costs at least: routing one (spawning an actor, moving a
# view in the directory, encoding a welcome) takes some tens of microseconds.
_MESSAGE_UNITS = 10
# The registry answers every question promptly; waiting longer means it is wedged.
ASK_TIMEOUT = 5.0
# What the intake may hold in requests, besides its bound in messages: a request
# may name a thousand users (some 100 KB of objects), a heartbeat nothing.
INTAKE_BYTES = 8 << 20


def request_weight(message: RegistryMessage) -> int:
    """About the memory a queued message holds (only requests vary much)."""
    if not isinstance(message, Request):
        return 0
    user_ids: tuple[str, ...] = getattr(message.message, "user_ids", ())
    return 256 + sum(64 + len(user_id) for user_id in user_ids)


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
        cluster: ClusterLink | None = None,
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
        self._intake_bytes = ByteBudget(INTAKE_BYTES)
        self._actors: dict[str, _ActorRef] = {}
        self._index = WatchIndex(self.policy, contacts_mode=settings.presence.fanout == "contacts")
        self._fanout = Fanout(self._index, self.policy, self._deliver, self.stats)
        self._policy_changes = PolicyChanges(
            self.queries, self._index, writer, rules.clock, self._deliver_push
        )
        self._lost: list[SessionHandle] = []  # overflowed outboxes, dropped between messages
        self._turn = Turn()
        self._requests = SessionRequests(
            index=self._index,
            queries=self.queries,
            policy_changes=self._policy_changes,
            limits=settings.limits,
            clock=rules.clock,
            heartbeat_interval=rules.heartbeat_interval,
            tell=self._tell,
            deliver=self._deliver,
            turn=self._turn,
        )
        self._nursery: trio.Nursery | None = None
        self.alarms = Alarms()
        self.cluster: ClusterSide | None = None
        self._remote: RemoteReads | None = None
        if cluster is not None:
            self.cluster = ClusterSide(
                cluster,
                self.directory,
                self._fanout,
                self.policy,
                contacts_mode=self._index.contacts_mode,
                now_ms=rules.clock.now_ms,
                has_actor=self._actors.__contains__,
                tell=self._tell,
                actor_profile=self._actor_profile,
            )
            self._requests.cluster = self.cluster
            if self.cluster.contacts_mode:
                self._remote = RemoteReads(cluster, self.queries)
                self._requests.remote = self._remote
            self._policy_changes.on_contacts = self.cluster.contacts_changed

    # --- the mailbox ---------------------------------------------------------------

    async def tell(self, message: RegistryMessage) -> None:
        """Queue a message, waiting only while the intake is full (in messages, or
        for requests in bytes).

        Not a checkpoint when there is room: a burst of messages costs no
        scheduler round trip each, which is what keeps fan-out batched.
        """
        weight = request_weight(message)
        if weight:
            await self._intake_bytes.take(weight)
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
        cause go out in ticks: the registry yields with a tick pending, and
        delivers it when nothing new arrived in two yields, or once it was held
        long enough while changes kept coming (see :mod:`.fanout`). A user
        actor that exceeds its restart intensity makes this raise
        RestartIntensityExceeded.
        """
        turn = self._turn
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._requests.spawn = nursery.start_soon
            await nursery.start(self.alarms.run)
            task_status.started()
            while True:
                message = await self._next()
                # None: the registry yielded for a held tick and nothing came meanwhile.
                self._fanout.note_yield(quiet=message is None)
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
                if self._fanout.due(now) and self._fanout.ready(now):
                    await self._fanout.flush(turn, now)
                    self._drop_lost()

    async def _next(self) -> RegistryMessage | None:
        """The next message, or None when a fan-out tick is due and nothing is queued."""
        fanout = self._fanout
        if not fanout.waiting:
            return await self._intake.receive()
        if fanout.due(trio.current_time()):
            fanout.held += 1
            await trio.lowlevel.checkpoint()
            try:
                return self._intake.receive_nowait()
            except trio.WouldBlock:
                return None
        with trio.move_on_at(fanout.due_at):
            return await self._intake.receive()
        return None

    async def _dispatch(self, message: RegistryMessage) -> None:
        weight = request_weight(message)
        if weight:
            self._intake_bytes.give(weight)
        await self._handle(message)
        if self._lost:
            self._drop_lost()

    async def _handle(self, message: RegistryMessage) -> None:
        match message:
            case Publish(view, public, push_own, push_public, cause):
                if self.cluster is not None and not self.cluster.report(message):
                    return  # shown once merged with the other nodes' shares (Merged)
                self.directory.put(view, public)
                if push_own or push_public:
                    fanout = self._fanout
                    if fanout.holds(view.user_id) and fanout.due(trio.current_time()):
                        # The tick was held for more changes, not to merge two of
                        # one user: each pushed change reaches the watchers (the
                        # flap limit alone coalesces, PROTOCOL.md).
                        await fanout.flush(self._turn, trio.current_time())
                    stamp = self.rules.clock.now_ms()
                    shown = make_push(public, stamp) if push_public else None
                    own = shown if public is view else make_push(view, stamp) if push_own else None
                    self._fanout.add(view.user_id, shown, own, cause)
            case Request():
                await self._requests.handle(message)
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
            case Merged(view, cause) if self.cluster is not None:
                self.cluster.merged(view, cause)
            case Seeded(views, asked, complete) if self.cluster is not None:
                self.cluster.seeded(views, asked, complete=complete)
            case PolicyChanged(intent):
                await self._policy_changes.replay(intent, self._turn)
            case Rejoined(fresh) if self.cluster is not None:
                self.cluster.rejoined(fresh)
            case Retiring(user_id, processed):
                self._on_retiring(user_id, processed)
            case Ask(query, reply):
                if self._remote is not None and not isinstance(query, PolicyQuery):
                    assert self._nursery is not None
                    self._nursery.start_soon(self._answer_remotely, query, reply)
                else:
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
        public = self.directory.public(user_id)
        # Unbounded: what comes through the registry passed its bounded intake, and
        # what a session tells its actor directly (Told) is bounded by the
        # session's rate limit.
        send, receive = trio.open_memory_channel[ActorMessage](math.inf)
        actor = UserActor(
            UserState.from_view(view, public),
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
        cluster = self.cluster
        gated = cluster is not None and cluster.contacts_mode
        self._index.add(session, gated=gated)
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
        if cluster is not None and gated:
            # The contacts' views come from Redis: presence_state once they are here,
            # and no push before it (the session is gated until then).
            cluster.session_added(session)
            contacts = set(self.policy.contact_list(session.user_id))
            cluster.when_seeded(contacts, partial(self._show_contacts, session))
        elif self._index.contacts_mode:
            self._show_contacts(session)

    def _show_contacts(self, session: SessionHandle) -> None:
        """``presence_state`` with the user's contacts, then pushes (contacts fan-out)."""
        if session not in self._index:
            return  # it left while the views were read
        contacts = sorted(self.policy.contact_list(session.user_id))
        state = PresenceState(
            timestamp=self.rules.clock.now_ms(),
            users=tuple(self.queries.view_for(session.user_id, c) for c in contacts),
        )
        self._deliver(session, state)
        self._index.ungate(session)

    def _unindex(self, session: SessionHandle) -> None:
        if session not in self._index:
            return
        subscriptions = list(self._index.watch_of(session).subscriptions)
        self._index.remove(session)
        if self.cluster is not None:
            self.cluster.session_removed(session, subscriptions)

    def _actor_profile(self, user_id: str) -> tuple[str | None, str | None] | None:
        """The username and status message a local actor holds (None: no actor here)."""
        ref = self._actors.get(user_id)
        if ref is None:
            return None
        return ref.actor.state.username, ref.actor.state.status_message

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
            self._unindex(session)
            if session.present:
                self._tell(session.user_id, Detach(session))

    # --- read-only answers -------------------------------------------------------------

    async def _answer_remotely(self, query: Query, reply: trio.MemorySendChannel[Any]) -> None:
        """An Ask in a cluster in contacts fan-out: read Redis in a task of its own."""
        remote = self._remote
        assert remote is not None
        answer: Any
        try:
            match query:
                case ViewsQuery(watcher, user_ids):
                    answer = await remote.views(watcher, list(user_ids))
                case LookupQuery(watcher, user_id):
                    answer = await remote.lookup(watcher, user_id)
                case ListQuery():
                    answer = await remote.page(query)
                case StatsQuery(watcher, count_visible):
                    local = self.answer(StatsQuery())
                    answer = EngineStats(
                        online_users=await remote.online_count(None)
                        if not count_visible
                        else local.online_users,
                        sessions=local.sessions,
                        known_users=await remote.known_count(),
                        actors=local.actors,
                        pushes=local.pushes,
                        visible_online=await remote.online_count(watcher)
                        if count_visible
                        else None,
                    )
                case _:
                    answer = await self._answer_query(query)
        except ProtocolError as exc:
            answer = exc
        reply.send_nowait(answer)

    async def _answer_query(self, query: Query) -> Any:
        """Answer an Ask from HTTP or gRPC; a refusal is returned as its ProtocolError."""
        if isinstance(query, StatsQuery):
            return self.answer(query)
        try:
            return await self.queries.answer(query, self._turn)
        except ProtocolError as exc:
            return exc

    def answer(self, query: StatsQuery) -> EngineStats:
        """The engine's counters, at once (also read by /metrics at scrape time)."""
        return EngineStats(
            online_users=self.directory.online,
            sessions=len(self._index),
            known_users=len(self.directory),
            actors=len(self._actors),
            pushes=self.stats.pushes,
            visible_online=(
                self.queries.online_count(query.watcher) if query.count_visible else None
            ),
        )

    def local_states(self) -> list[tuple[str, UserState]]:
        """Each local actor's user and committed state (a synchronous read, for the
        cluster link: heartbeat stamps, reports after a rejoin)."""
        return [(user_id, ref.actor.state) for user_id, ref in self._actors.items()]

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
