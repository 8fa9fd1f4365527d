"""The engine sessions behind gRPC: TTL sessions that show presence, watchers that stream.

A :class:`TtlSession` is one user's gRPC presence: a present session (device
``grpc``) that is pushed nothing and lives while RPCs keep it alive —
``SetUserStatus`` opens or refreshes it, ``SendHeartbeat`` refreshes it, the
engine closes it after ``presence.heartbeat_timeout`` of silence (then the
grace period applies) and ``SetUserStatus(OFFLINE)`` ends it with a logout.
:class:`TtlSessions` keeps at most one per user. A :class:`Watcher` is the
session of one ``SubscribeStatusUpdates`` stream: it shows no presence and is
pushed only the users it subscribed to.

Every wait for the engine is bounded by :data:`REPLY_TIMEOUT` and raises
``trio.TooSlowError`` past it; refusals raise :class:`ProtocolError`.
"""

from __future__ import annotations

import itertools
import secrets
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

import trio

from ..actors import Engine, MemoryOutbox, SessionHandle, Watches
from ..actors.session import CLOSE_TRY_AGAIN_LATER, Outgoing
from ..model import DeviceType, Status
from ..protocol import (
    ClientMessage,
    Error,
    ErrorCode,
    Heartbeat,
    HeartbeatAck,
    Logout,
    PresenceState,
    ProtocolError,
    Push,
    PushBatch,
    ServerMessage,
    SetStatus,
    StatusUpdated,
    Subscribe,
    Welcome,
)

# The deviceId of every TTL session: a user has at most one gRPC device.
DEVICE_ID = "grpc"
# The engine answers at once unless it is wedged (as the registry's ASK_TIMEOUT).
REPLY_TIMEOUT = 5.0

M = TypeVar("M", bound=ServerMessage)

_request_ids = itertools.count(1)


def _request_id() -> str:
    return f"grpc-{next(_request_ids)}"


def _expect(reply: Outgoing, kind: type[M]) -> M:
    """``reply`` as a ``kind``; an engine ``Error`` becomes the ProtocolError it carries."""
    if isinstance(reply, Error):
        raise ProtocolError(reply.code, reply.message)
    if not isinstance(reply, kind):
        raise ProtocolError(ErrorCode.INTERNAL, f"unexpected reply {type(reply).__name__}")
    return reply


class TtlSession:
    """One user's gRPC presence; it is its own outbox.

    The engine offers a reply from its own task; ``offer`` hands it at once to
    the RPC waiting for that requestId (the welcome to the one that attached),
    so concurrent RPCs of one user each get their own reply, and no task
    pumps an outbox. When the engine closes the session, every waiting RPC is
    woken with None and the session is forgotten.
    """

    def __init__(
        self, user_id: str, on_end: Callable[[TtlSession], None], status: Status | None = None
    ) -> None:
        self.handle = SessionHandle(
            session_id=secrets.token_hex(8),
            user_id=user_id,
            device_id=DEVICE_ID,
            device_type=DeviceType.OTHER,
            outbox=self,
            on_close=self._closed,
            present=True,
            watches=Watches.NOTHING,
            initial_status=status,
        )
        self.ended = False
        self._on_end = on_end
        self._waiting: dict[str | None, trio.MemorySendChannel[ServerMessage | None]] = {}
        self._started = trio.Event()
        self._refusal: ProtocolError | None = None

    def offer(self, item: Outgoing) -> bool:
        if isinstance(item, ServerMessage):
            waiter = self._waiting.pop(item.request_id, None)
            if waiter is not None:
                waiter.send_nowait(item)
        return True  # anything nobody waits for (a late reply) is dropped

    async def start(self, engine: Engine) -> None:
        """Attach and wait for the welcome; raises ProtocolError if the engine refuses.

        Shielded (and bounded): an RPC cancelled half-way leaves a session that
        other RPCs of the user can use or see refused, never one stuck opening.
        """
        with trio.CancelScope(shield=True):
            try:
                reply = await self.call(engine, None)
                if reply is None:
                    raise ProtocolError(ErrorCode.INTERNAL, "the session ended as it opened")
                _expect(reply, Welcome)
            except BaseException as exc:  # a refusal, or an engine that did not answer
                self._refusal = (
                    exc
                    if isinstance(exc, ProtocolError)
                    else ProtocolError(ErrorCode.INTERNAL, "the session could not be opened")
                )
                self._on_end(self)  # the next RPC opens a new one
                raise
            finally:
                self._started.set()

    async def ready(self) -> None:
        """Wait until ``start`` is done; raises the refusal if it failed."""
        await self._started.wait()
        if self._refusal is not None:
            raise ProtocolError(self._refusal.code, self._refusal.message)

    async def call(self, engine: Engine, message: ClientMessage | None) -> ServerMessage | None:
        """Submit ``message`` (None: attach) and return its reply.

        None when the session ended first: a ``Logout`` (which has no reply)
        returns None once the engine closed the session.
        """
        if self.ended:
            return None
        key = None if message is None else message.request_id
        send, receive = trio.open_memory_channel[ServerMessage | None](1)
        self._waiting[key] = send
        try:
            if message is None:
                await engine.attach(self.handle)
            else:
                await engine.request(self.handle, message)
            with trio.fail_after(REPLY_TIMEOUT):
                return await receive.receive()
        finally:
            if self._waiting.get(key) is send:
                del self._waiting[key]

    def _closed(self, code: int, reason: str) -> None:
        self.ended = True
        self.handle.unlink()  # it points back here (close hook, outbox)
        waiting, self._waiting = self._waiting, {}
        for waiter in waiting.values():
            waiter.send_nowait(None)
        self._on_end(self)


class TtlSessions:
    """The live TTL sessions, at most one per user."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._live: dict[str, TtlSession] = {}

    def __len__(self) -> int:
        return len(self._live)

    async def set_status(
        self, user_id: str, status: Status, status_message: str | None
    ) -> StatusUpdated:
        """Set the status of the user's gRPC session, opening it first if needed.

        ``status`` must not be offline (see :meth:`end`). If the session ends
        under the call (its heartbeat timeout firing at that moment, a
        WebSocket taking over deviceId ``grpc``), a new one is opened once.
        """
        for _ in range(2):
            session = await self._open(user_id, status)
            message = SetStatus(
                request_id=_request_id(), status=status, status_message=status_message
            )
            reply = await session.call(self._engine, message)
            if reply is not None:
                return _expect(reply, StatusUpdated)
        raise ProtocolError(ErrorCode.INTERNAL, "the gRPC session kept ending; try again")

    async def heartbeat(self, user_id: str, *, active: bool) -> HeartbeatAck:
        """Keep the user's session alive; USER_NOT_FOUND when it has none any more."""
        session = self._live.get(user_id)
        if session is not None:
            await session.ready()
            reply = await session.call(
                self._engine, Heartbeat(request_id=_request_id(), active=active)
            )
            if reply is not None:
                return _expect(reply, HeartbeatAck)
        raise ProtocolError(
            ErrorCode.USER_NOT_FOUND,
            f"{user_id} has no gRPC session (it expired or was never opened): "
            "call SetUserStatus first",
        )

    async def end(self, user_id: str) -> bool:
        """Log the user's session out (no grace period); False if it had none.

        Returns once the engine has closed the session.
        """
        session = self._live.get(user_id)
        if session is None:
            return False
        try:
            await session.ready()
        except ProtocolError:
            return False  # refused as it opened: there is nothing to end
        await session.call(self._engine, Logout(request_id=_request_id()))
        return True

    async def _open(self, user_id: str, status: Status | None = None) -> TtlSession:
        session = self._live.get(user_id)
        if session is None:
            session = TtlSession(user_id, self._forget, status)
            self._live[user_id] = session
            await session.start(self._engine)
        else:
            await session.ready()
        return session

    def _forget(self, session: TtlSession) -> None:
        user_id = session.handle.user_id
        if self._live.get(user_id) is session:
            del self._live[user_id]


class Watcher:
    """The engine session of one stream: pushed only the users it subscribed to."""

    def __init__(self, engine: Engine, outbox: MemoryOutbox, handle: SessionHandle) -> None:
        self._engine = engine
        self._outbox = outbox
        self.handle = handle
        self._batched: deque[Push] = deque()  # the rest of a PushBatch being handed out

    async def subscribe(self, user_ids: tuple[str, ...]) -> PresenceState:
        """Subscribe; the reply holds each user's current state, pushes follow it.

        What the engine sent before the reply (in ``contacts`` fan-out, the
        contacts' state that follows every welcome) is skipped.
        """
        message = Subscribe(request_id=_request_id(), user_ids=user_ids)
        await self._engine.request(self.handle, message)
        with trio.fail_after(REPLY_TIMEOUT):
            while True:
                item = await self._outbox.receive.receive()
                if isinstance(item, ServerMessage) and item.request_id == message.request_id:
                    return _expect(item, PresenceState)

    async def next_push(self) -> Push | None:
        """Wait for the next push; None once the session was closed and what was queued is
        delivered (``handle.close_code`` says why: 1013 fell behind, 1001 shutdown).
        """
        while True:
            if self._batched:
                return self._batched.popleft()
            try:
                item = await self._outbox.receive.receive()
            except trio.EndOfChannel:
                return None
            if isinstance(item, Push):
                return item
            if isinstance(item, PushBatch):
                self._batched.extend(item.pushes)


@asynccontextmanager
async def open_watcher(
    engine: Engine, user_id: str, capacity: int, max_bytes: int = MemoryOutbox.DEFAULT_MAX_BYTES
) -> AsyncIterator[Watcher]:
    """A watching session of ``user_id`` (ANONYMOUS: sees what anyone may see).

    Attached and welcomed on entry; detached on exit however the block ends
    (shielded, so a cancelled stream frees its watcher at once). ``capacity``
    (messages) and ``max_bytes`` bound its queue: a stream that falls that far
    behind is closed by the engine (1013: what it had queued is dropped and
    ``next_push`` returns None), as is one whose handle's ``request_close`` is
    called (``next_push`` returns what was queued, then None).
    """
    outbox = MemoryOutbox(capacity, max_bytes)

    def closed(code: int, reason: str) -> None:
        outbox.close()
        if code == CLOSE_TRY_AGAIN_LATER:
            outbox.clear()  # it fell behind: what waits is stale, free it now

    handle = SessionHandle(
        session_id=secrets.token_hex(8),
        user_id=user_id,
        device_id=f"grpc-stream-{secrets.token_hex(4)}",
        device_type=DeviceType.OTHER,
        outbox=outbox,
        on_close=closed,
        present=False,
        watches=Watches.SUBSCRIPTIONS,
    )
    try:
        await engine.attach(handle)
        with trio.fail_after(REPLY_TIMEOUT):
            _expect(await outbox.receive.receive(), Welcome)
        yield Watcher(engine, outbox, handle)
    finally:
        with trio.CancelScope(shield=True):
            await engine.detach(handle)
