"""The seam between the engine and a transport: a session handle and its outbox.

A transport (a WebSocket connection, a gRPC TTL session) creates a
:class:`SessionHandle` and attaches it to the engine. The engine never awaits a
transport: it offers messages to the handle's outbox without waiting and asks
the transport to close through a callback.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from typing import Any, Protocol

import trio
from attrs import define, field

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


class MemoryOutbox:
    """A bounded outbox backed by a trio memory channel.

    ``offer`` never blocks; items offered after the reader went away are
    dropped (the session is ending anyway).
    """

    def __init__(self, capacity: int) -> None:
        self._send, self.receive = trio.open_memory_channel[Outgoing](capacity)

    def offer(self, item: Outgoing) -> bool:
        try:
            self._send.send_nowait(item)
        except trio.WouldBlock:
            return False
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass
        return True

    def close(self) -> None:
        self._send.close()


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

    def request_close(self, code: int, reason: str) -> None:
        if self.closing:
            return
        self.closing = True
        self.close_code = code
        self.close_reason = reason
        self.on_close(code, reason)
