"""The engine: persistence, registry and user actors under one nursery.

``open_engine`` is what a server (or a test, or a benchmark) uses: it opens
the store, recovers from an unclean stop, loads the directory and the
visibility policy, starts the PersistenceActor and the Registry, and on exit
records everyone still shown online as offline and lets the writer make the
final flush.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Protocol

import attrs
import trio
from attrs import frozen

from ..config import Settings
from ..model import Status, UserView
from ..persistence.backlog import Loss
from ..persistence.intents import Intent, PresenceEvent, PresenceRow
from ..persistence.queries import EventRecord, open_reader
from ..persistence.store import BatchResult, Store, StoredUser
from ..persistence.writer import (
    PersistenceActor,
    RunBlocking,
    WriterStatistics,
    WritesLost,
    in_thread,
)
from ..protocol import ClientMessage, Heartbeat, HeartbeatAck, ProtocolError
from .clock import WallClock
from .directory import Directory
from .messages import AdminCommand, Attach, Detach, Query, Request, Told
from .policy import Policy
from .registry import Registry
from .requests import USER_REQUESTS
from .session import SessionHandle
from .user_state import Rules

log = logging.getLogger("presence_actors.engine")


class EngineWriter(Protocol):
    """Where intents go: the PersistenceActor (SQLite), or in a cluster the link's
    writer (Redis). What the engine and the gateway use of either."""

    @property
    def writable(self) -> bool: ...

    @property
    def problem(self) -> str | None: ...

    @property
    def loss(self) -> Loss | None: ...

    def statistics(self) -> WriterStatistics: ...

    async def submit(self, intent: Intent) -> None: ...

    def submit_nowait(self, intent: Intent) -> None: ...

    def free_slots(self) -> int: ...

    async def flush(self) -> None: ...

    def stop_at(self, deadline: float) -> None: ...


class HistoryReader(Protocol):
    """Where the audit log is read: SQLite through a read-only connection, or Redis."""

    async def history(
        self, user_id: str, since_ms: int, until_ms: int | None, limit: int
    ) -> list[EventRecord]: ...

    async def recent_events(self, limit: int) -> list[EventRecord]: ...


class SqliteHistory:
    def __init__(self, path: str) -> None:
        self._path = path

    async def history(
        self, user_id: str, since_ms: int, until_ms: int | None, limit: int
    ) -> list[EventRecord]:
        def read() -> list[EventRecord]:
            with open_reader(self._path) as reader:
                return reader.history(user_id, since_ms, until_ms, limit)

        return await trio.to_thread.run_sync(read)

    async def recent_events(self, limit: int) -> list[EventRecord]:
        def read() -> list[EventRecord]:
            with open_reader(self._path) as reader:
                return reader.recent_events(limit)

        return await trio.to_thread.run_sync(read)


class Engine:
    """The handle transports use. Every method is safe to call from any task."""

    def __init__(
        self,
        settings: Settings,
        clock: WallClock,
        registry: Registry,
        writer: EngineWriter,
        events: HistoryReader | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.registry = registry
        self.writer = writer
        # The audit log (REST history, the operators' events): raises on failure.
        self.events: HistoryReader = events or SqliteHistory(settings.persistence.path)
        self._shutdown_recorded = False

    async def attach(self, session: SessionHandle) -> None:
        """Attach a session; its outbox receives ``welcome`` (or an error and a close).

        A transport must not send requests for the session before its welcome
        came out of the outbox.
        """
        await self.registry.tell(Attach(session))

    async def detach(self, session: SessionHandle) -> None:
        """The transport lost the session; the grace period applies if it was the last."""
        await self.registry.tell(Detach(session))

    async def request(self, session: SessionHandle, message: ClientMessage) -> None:
        """Submit a client request; its reply (or error) arrives in the session's outbox.

        A bare heartbeat is answered here: it only records that the session is
        alive, which the user's actor reads when a timer of it comes due. Other
        requests for the user itself (set_status, ...) go straight to the user's
        actor once the session was accepted; the rest go through the registry.
        Replies come in the order the requests of each kind were made.
        Like ``Registry.tell``, not a checkpoint unless it has to wait.
        """
        session.last_message = trio.current_time()
        actor = session.actor
        own = message.user_id in (None, session.user_id)
        if own and isinstance(message, Heartbeat) and not message.active:
            # Liveness is the timestamp just set; the actor reads it when it needs to.
            ack = HeartbeatAck(
                timestamp=self.clock.now_ms(),
                request_id=message.request_id,
                next_heartbeat_in_seconds=self.settings.presence.heartbeat_interval,
            )
            session.deliver(ack)
            return
        if actor is not None and own and isinstance(message, USER_REQUESTS):
            # The actor's inbox is unbounded; the session's rate limit bounds this.
            # try/except, not contextlib.suppress: no context manager per request.
            try:  # noqa: SIM105
                actor.send_nowait(Told(session, message))
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                pass  # closed: the actor retired
            return
        await self.registry.tell(Request(session, message))

    async def command(self, command: AdminCommand) -> None:
        """Apply an admin change (contacts, visibility) and show it to watchers at once.

        Raises ProtocolError (STORE_ERROR) when the writer cannot take it now.
        Returns once the registry applied it; ``writer.flush()`` makes it durable.
        """
        await self.registry.command(command)

    async def record_shutdown(self) -> None:
        """Record everyone shown online as offline (reason ``shutdown``) and commit it.

        Bounded by ``server.graceful_timeout`` and shielded. Only the first call
        records anything (the server and the engine's own exit both call it).
        """
        if self._shutdown_recorded or self.registry.cluster is not None:
            return  # a node of a cluster leaves instead: see cluster_engine
        self._shutdown_recorded = True
        deadline = trio.current_time() + self.settings.server.graceful_timeout
        # One budget for the whole stop: the writer's own final flush ends then too.
        self.writer.stop_at(deadline)
        with trio.CancelScope(deadline=deadline, shield=True):
            # All at once, no checkpoint per intent: with thousands of sessions
            # ending beside it, each checkpoint waits for a pass over all of them,
            # and a deadline cut the list short (those users stayed online).
            for intent in self.registry.final_offline(self.clock.now_ms()):
                self.writer.submit_nowait(intent)
            await self.writer.flush()

    async def ask(self, query: Query) -> Any:
        """Answer a read-only question; raises ProtocolError for a refused one."""
        answer = await self.registry.ask(query)
        if isinstance(answer, ProtocolError):
            raise answer
        return answer


@frozen
class Seams:
    """Testing seams of :func:`open_engine`; a server uses the defaults.

    ``run_blocking`` runs every blocking store call (opening, loading, recovery,
    commits, checkpoints, pruning), shaped like ``trio.to_thread.run_sync``.
    ``before_transition`` is called in a user actor before each transition
    (see :attr:`~.user_state.Rules.before_transition`). The deterministic
    simulation (:mod:`presence_actors.testing`) runs store calls inline, so no
    worker thread races its scheduler, and crashes actors through the hook.
    """

    run_blocking: RunBlocking = in_thread
    before_transition: Callable[[str, object], None] | None = None


@asynccontextmanager
async def open_engine(
    settings: Settings,
    *,
    clock: WallClock | None = None,
    on_commit: Callable[[BatchResult, float], None] | None = None,
    seams: Seams | None = None,
) -> AsyncIterator[Engine]:
    """Run an engine for the duration of the ``async with`` block.

    Opening the store takes its lock first, so a database another process uses
    raises :class:`~..persistence.DatabaseInUse` before anything is read or
    written; one SQLite cannot open raises ``StoreUnavailable``. A store that
    opens but refuses writes (a full disk) does not stop the start: the engine
    serves from memory, not ready, the recovery records held in the writer and
    retried with everything else until space returns.

    On exit (normal or cancelled) users still shown online are recorded as
    offline with reason ``shutdown`` and everything accepted by the writer is
    committed, within ``server.graceful_timeout``; if some of it could not be,
    the writer logs what was lost and the block raises
    :class:`~..persistence.WritesLost` once the store is closed. A user actor
    escalating past its restart intensity cancels the block and the error propagates.
    """
    clock = clock or WallClock.start()
    if settings.cluster.redis_url:
        from .cluster_engine import open_cluster_engine

        async with open_cluster_engine(settings, clock) as engine:
            yield engine
        return
    seams = seams or Seams()
    run_blocking = seams.run_blocking
    store = await run_blocking(Store.open, settings.persistence.path)
    writer: PersistenceActor | None = None
    try:
        users = await run_blocking(store.load_users)
        contacts = await run_blocking(store.load_contacts)
        blocks = await run_blocking(store.load_blocks)
        recovery = await _recover(store, users, clock.now_ms(), run_blocking)
        directory = Directory()
        for u in users:
            view = UserView(u.user_id, Status.OFFLINE, u.username, u.status_message, u.last_seen)
            # What others see of a user who changed its profile while invisible.
            shown = (
                None
                if u.shown is None
                else UserView(u.user_id, Status.OFFLINE, *u.shown, u.last_seen)
            )
            directory.put(view, shown)
        policy = Policy(
            default_visibility=settings.presence.default_visibility,
            visibility={u.user_id: u.visibility for u in users if u.visibility is not None},
            contacts=contacts,
            blocks=blocks,
        )
        writer = PersistenceActor(
            store,
            settings.persistence,
            now_ms=clock.now_ms,
            on_commit=on_commit,
            shutdown_timeout=settings.server.graceful_timeout,
            run_blocking=run_blocking,
        )
        rules = Rules.from_settings(settings, clock)
        if seams.before_transition is not None:
            rules = attrs.evolve(rules, before_transition=seams.before_transition)
        registry = Registry(
            settings,
            rules,
            writer,
            directory=directory,
            policy=policy,
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            if recovery is not None and recovery[1]:
                # First in the writer, before anything the new run writes.
                error, intents = recovery
                for intent in intents:
                    writer.submit_nowait(intent)
                writer.note_failure(error)
            await nursery.start(registry.run)
            engine = Engine(settings, clock, registry, writer)
            try:
                yield engine
            finally:
                await engine.record_shutdown()
                nursery.cancel_scope.cancel()
    finally:
        store.close()
    if writer is not None and writer.loss:
        raise WritesLost(writer.loss, writer.statistics().last_error)


async def _recover(
    store: Store, users: list[StoredUser], now_ms: int, run_blocking: RunBlocking
) -> tuple[str, list[Intent]] | None:
    """Record the users an unclean stop left shown online as offline (``restart``).

    One transaction when the store takes it; when it refuses (a full disk), the
    same records as intents for the writer, with the error, and a warning.
    """
    try:
        recovered = await run_blocking(store.recover, now_ms)
    except sqlite3.OperationalError as exc:
        left = [u for u in users if u.last_status is not Status.OFFLINE]
        log.warning(
            "the store cannot be written (%s): serving from memory, not ready;"
            " %d users left online by an unclean stop are recorded offline once it can",
            exc,
            len(left),
        )
        intents: list[Intent] = []
        for u in left:
            row = PresenceRow(
                u.user_id, Status.OFFLINE, u.username, u.status_message, u.last_seen, now_ms
            )
            intents += [row, PresenceEvent(u.user_id, Status.OFFLINE, now_ms, "restart")]
        return str(exc), intents
    if recovered:
        log.warning("recovered from an unclean stop: %d users marked offline", len(recovered))
    return None
