"""The seam between the engine and a transport: a session handle and its outbox.

A transport (a WebSocket connection, a gRPC TTL session) creates a
:class:`SessionHandle` and attaches it to the engine. The engine never awaits a
transport: it offers messages to the handle's outbox without waiting and asks
the transport to close through a callback.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import trio
from attrs import define, field

from .. import codec
from ..model import DeviceType, Status
from ..protocol import Push, PushBatch, ServerMessage

Outgoing = ServerMessage | Push | PushBatch

# WebSocket close codes the engine asks for (PROTOCOL.md section 2).
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_TRY_AGAIN_LATER = 1013  # slow consumer
CLOSE_SUPERSEDED = 4000
CLOSE_TOKEN_EXPIRED = 4001
CLOSE_HEARTBEAT_TIMEOUT = 4002


class Outbox(Protocol):
    def offer(self, item: Outgoing) -> bool:
        """Queue ``item`` without waiting; False when the outbox is full."""
        ...


class ClosedOutbox:
    """The outbox of a handle whose transport is gone: it takes nothing."""

    def offer(self, item: Outgoing) -> bool:
        return False


CLOSED_OUTBOX = ClosedOutbox()


class MemoryOutbox:
    """A bounded outbox whose items wait in memory for one consumer task.

    At most ``capacity`` items and ``max_bytes`` bytes wait (an item's bytes
    are its JSON: pushes carry their size, another message is encoded when
    offered, and the consumer may take that encoding with the item:
    ``receive_entry``); an item that finds nothing waiting is taken whatever
    its size, so one answer bigger than the bound still goes out. ``offer``
    never blocks and returns False when full. After ``close`` offers are
    dropped, and the consumer gets what was queued, then ``EndOfChannel``;
    ``clear`` drops what waits (a slow consumer's backlog). ``receive`` is the
    consumer's end, shaped like a trio receive channel.
    """

    DEFAULT_MAX_BYTES = 1 << 20  # limits.outbound_bytes' default

    def __init__(self, capacity: int, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self._capacity = capacity
        self._max_bytes = max_bytes
        self._items: deque[tuple[Outgoing, int, bytes | None]] = deque()
        self._bytes = 0
        self._closed = False
        # The one consumer, while it waits for an item. Woken directly rather
        # than through a ParkingLot: every push and reply to the session wakes it.
        # Cleared when it wakes or its wait is cancelled: no cycle outlives a wait.
        self._waiter: trio.lowlevel.Task | None = None

    @property
    def receive(self) -> MemoryOutbox.Receiver:
        # A new end at each use, which holds the outbox but is not held by it:
        # no reference cycle keeps an ended session's outbox for the collector.
        return MemoryOutbox.Receiver(self)

    @property
    def queued_bytes(self) -> int:
        return self._bytes

    def offer(self, item: Outgoing) -> bool:
        if self._closed:
            return True  # the session is ending; there is nobody to keep it for
        data: bytes | None = None
        if isinstance(item, Push):
            size = len(item.payload)
        elif isinstance(item, PushBatch):
            size = item.size
        else:
            # Once: a bulk answer's prepared encoding is taken by the first encode.
            data = codec.encode_bytes(item)
            size = len(data)
        items = self._items
        if items and (len(items) >= self._capacity or self._bytes + size > self._max_bytes):
            return False
        items.append((item, size, data))
        self._bytes += size
        self._wake()
        return True

    def close(self) -> None:
        self._closed = True
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            trio.lowlevel.reschedule(waiter)

    async def _wait(self) -> None:
        """Until an item is offered or the outbox closed; cancellable."""
        if self._waiter is not None:
            raise trio.BusyResourceError("another task is already receiving from this outbox")
        task = trio.lowlevel.current_task()
        self._waiter = task

        def abort(_: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
            if self._waiter is task:
                self._waiter = None
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    def clear(self) -> None:
        self._items.clear()
        self._bytes = 0

    class Receiver:
        """The consumer's end: ``receive``, ``receive_nowait``, ``async for``."""

        def __init__(self, outbox: MemoryOutbox) -> None:
            self._outbox = outbox

        def receive_entry_nowait(self) -> tuple[Outgoing, bytes | None]:
            """The next item and its JSON (None for pushes, which carry theirs)."""
            outbox = self._outbox
            if outbox._items:
                item, size, data = outbox._items.popleft()
                outbox._bytes -= size
                return item, data
            if outbox._closed:
                raise trio.EndOfChannel
            raise trio.WouldBlock

        def receive_nowait(self) -> Outgoing:
            return self.receive_entry_nowait()[0]

        async def receive_entry(self) -> tuple[Outgoing, bytes | None]:
            """The next item and its JSON, waiting for one; a checkpoint, like a
            channel's receive.

            Like a channel's receive, one schedule point either way: an item
            already queued is taken after a checkpoint; otherwise waiting is
            the schedule point (cancellable), and the item the offer woke it
            for is returned at once, without a second trip through the scheduler.
            """
            await trio.lowlevel.checkpoint_if_cancelled()
            try:
                entry = self.receive_entry_nowait()
            except trio.WouldBlock:
                pass
            else:
                await trio.lowlevel.cancel_shielded_checkpoint()
                return entry
            while True:
                await self._outbox._wait()
                try:
                    return self.receive_entry_nowait()
                except trio.WouldBlock:
                    continue

        async def receive(self) -> Outgoing:
            return (await self.receive_entry())[0]

        def __aiter__(self) -> MemoryOutbox.Receiver:
            return self

        async def __anext__(self) -> Outgoing:
            try:
                return await self.receive()
            except trio.EndOfChannel:
                raise StopAsyncIteration from None


def _ignore_close(code: int, reason: str) -> None:
    pass


class Watches(enum.Enum):
    """What a session is pushed."""

    MODE = "mode"  # what presence.fanout gives it (everyone, or contacts), plus subscriptions
    SUBSCRIPTIONS = "subscriptions"  # only the users it subscribed to (gRPC streams)
    NOTHING = "nothing"  # no pushes at all (gRPC TTL sessions)


# The user_id of a session that watches without being anyone: it sees what an
# anonymous HTTP caller sees (users visible to everyone). Never a valid userId.
ANONYMOUS = ""


@define(eq=False)
class SessionHandle:
    """One live attachment of a user, as the engine sees it.

    A present session is one of the user's devices: it counts towards the
    user's status and liveness. A session that is not present only watches.

    ``closing`` is a one-way latch: once a close was requested (by the engine
    or the transport) the engine delivers nothing more to this session.
    """

    session_id: str
    user_id: str
    device_id: str
    device_type: DeviceType
    outbox: Outbox
    on_close: Callable[[int, str], None] = _ignore_close
    # False: an observer; it shows no presence, has no actor and changes nothing.
    present: bool = True
    watches: Watches = Watches.MODE
    # The status the session starts with (None: online, or what the same device
    # had within the grace period). A gRPC SetUserStatus that opens a session
    # gives it, so watchers never see a passing "online".
    initial_status: Status | None = None
    closing: bool = field(default=False, init=False)
    # When the last message of any kind arrived (trio time). Written by
    # Engine.request in the session's own task, read by the user's actor: it is
    # how heartbeats keep a session alive without a trip to the actor.
    last_message: float = field(default=-math.inf, init=False)
    # The user actor's inbox, given by the registry when the session is accepted:
    # requests only the actor answers go there directly, past the registry.
    actor: trio.MemorySendChannel[Any] | None = field(default=None, init=False)
    close_code: int | None = field(default=None, init=False)
    close_reason: str = field(default="", init=False)

    def deliver(self, item: Outgoing) -> bool:
        """Offer ``item``; a full outbox closes the session as a slow consumer (1013)."""
        if self.closing:
            return False
        if self.outbox.offer(item):
            return True
        self.request_close(CLOSE_TRY_AGAIN_LATER, "slow consumer")
        return False

    def unlink(self) -> None:
        """Let go of the transport (its close hook and outbox) once it is gone.

        The handle may outlive its transport in the engine's hands (until its
        detach is processed), and the transport usually points back at it:
        unlinked, both are freed by reference counting when they end instead of
        waiting, with their buffers, for a full collection. Closing first, so
        nothing is offered after.
        """
        self.closing = True
        self.on_close = _ignore_close
        self.outbox = CLOSED_OUTBOX

    def request_close(self, code: int, reason: str) -> None:
        if self.closing:
            return
        self.closing = True
        self.close_code = code
        self.close_reason = reason
        self.on_close(code, reason)
