"""The engine: persistence, registry and user actors under one nursery.

``open_engine`` is what a server (or a test, or a benchmark) uses: it opens
the store, recovers from an unclean stop, loads the directory and the
visibility policy, starts the PersistenceActor and the Registry, and on exit
records everyone still shown online as offline and lets the writer make the
final flush.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio

from ..config import Settings
from ..model import Status, UserView
from ..persistence.store import BatchResult, Store
from ..persistence.writer import PersistenceActor
from ..protocol import ClientMessage, Heartbeat, HeartbeatAck, ProtocolError
from .clock import WallClock
from .directory import Directory
from .messages import AdminCommand, Attach, Detach, Query, Request, Told
from .policy import Policy
from .registry import USER_REQUESTS, Registry
from .session import SessionHandle
from .user_state import Rules

log = logging.getLogger("presence_actors.engine")


class Engine:
    """The handle transports use. Every method is safe to call from any task."""

    def __init__(
        self, settings: Settings, clock: WallClock, registry: Registry, writer: PersistenceActor
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.registry = registry
        self.writer = writer
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
            with contextlib.suppress(trio.ClosedResourceError, trio.BrokenResourceError):
                actor.send_nowait(Told(session, message))  # closed: the actor retired
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
        if self._shutdown_recorded:
            return
        self._shutdown_recorded = True
        with trio.move_on_after(self.settings.server.graceful_timeout, shield=True):
            # submit() is a checkpoint: a long list of users does not hold the loop.
            for intent in self.registry.final_offline(self.clock.now_ms()):
                await self.writer.submit(intent)
            await self.writer.flush()

    async def ask(self, query: Query) -> Any:
        """Answer a read-only question; raises ProtocolError for a refused one."""
        answer = await self.registry.ask(query)
        if isinstance(answer, ProtocolError):
            raise answer
        return answer


@asynccontextmanager
async def open_engine(
    settings: Settings,
    *,
    clock: WallClock | None = None,
    on_commit: Callable[[BatchResult, float], None] | None = None,
) -> AsyncIterator[Engine]:
    """Run an engine for the duration of the ``async with`` block.

    On exit (normal or cancelled) users still shown online are recorded as
    offline with reason ``shutdown`` and everything accepted by the writer is
    committed, within ``server.graceful_timeout``. A user actor escalating
    past its restart intensity cancels the block and the error propagates.
    """
    clock = clock or WallClock.start()
    store = await trio.to_thread.run_sync(Store.open, settings.persistence.path)
    try:
        recovered = await trio.to_thread.run_sync(store.recover, clock.now_ms())
        if recovered:
            log.warning("recovered from an unclean stop: %d users marked offline", len(recovered))
        users = await trio.to_thread.run_sync(store.load_users)
        contacts = await trio.to_thread.run_sync(store.load_contacts)
        blocks = await trio.to_thread.run_sync(store.load_blocks)
        directory = Directory(
            UserView(u.user_id, Status.OFFLINE, u.username, u.status_message, u.last_seen)
            for u in users
        )
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
        )
        registry = Registry(
            settings,
            Rules.from_settings(settings, clock),
            writer,
            directory=directory,
            policy=policy,
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            await nursery.start(registry.run)
            engine = Engine(settings, clock, registry, writer)
            try:
                yield engine
            finally:
                await engine.record_shutdown()
                nursery.cancel_scope.cancel()
    finally:
        store.close()
