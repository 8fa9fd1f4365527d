"""Simulated client connections: a session handle whose outbox is the simulation.

A :class:`SimSession` is to the engine what a WebSocket session is: a
:class:`~presence_actors.actors.SessionHandle` with an outbox and a close
callback. Its outbox never refuses (no slow consumers here) and hands every
message, as it is offered, to the simulation, which checks it and records
what the client now knows.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

from ..actors import SessionHandle
from ..actors.session import Outgoing
from ..model import DeviceType
from .events import device_name, user_name
from .truth import Part

_DEVICE_TYPES = (DeviceType.WEB, DeviceType.MOBILE, DeviceType.DESKTOP, DeviceType.OTHER)


class Listener(Protocol):
    def delivered(self, session: SimSession, item: Outgoing) -> None: ...

    def closed(self, session: SimSession, code: int, reason: str) -> None: ...


class SimSession:
    """One connection of one client, from the client's side."""

    __slots__ = (
        "closed",
        "device",
        "handle",
        "key",
        "last_seen",
        "next_heartbeat",
        "number",
        "own_known",
        "seen_at",
        "silent",
        "subscriptions",
        "user_id",
        "views",
        "welcomed",
    )

    def __init__(self, listener: Listener, user: int, device: int, number: int) -> None:
        self.key = (user, device)
        self.number = number
        self.user_id = user_name(user)
        self.device = device_name(device)
        self.welcomed = False
        self.closed = False  # the server closed it, or the client left
        self.silent = False  # the client sends nothing more (heartbeat loss)
        self.next_heartbeat = math.inf
        self.seen_at = -math.inf  # when a request the registry answers last counted as activity
        # What the client was last told of each user it follows (status, message,
        # username), and the latest lastSeen it was told of each.
        self.views: dict[str, Part] = {}
        self.last_seen: dict[str, int | None] = {}
        # Requests sent before the client last learned a change of its own user
        # from a reply (their answers about that user are older): their count.
        self.own_known = 0
        self.subscriptions: set[str] = set()
        offer: Callable[[Outgoing], None] = self._offer(listener)
        close: Callable[[int, str], None] = self._close(listener)
        self.handle = _Handle(
            session_id=f"s{number}",
            user_id=self.user_id,
            device_id=self.device,
            device_type=_DEVICE_TYPES[device % len(_DEVICE_TYPES)],
            outbox=_Outbox(offer),
            on_close=close,
        )

    @property
    def live(self) -> bool:
        """Welcomed and neither closed nor silent: a client that reads what it gets."""
        return self.welcomed and not self.closed and not self.silent

    def _offer(self, listener: Listener) -> Callable[[Outgoing], None]:
        def offer(item: Outgoing) -> None:
            listener.delivered(self, item)

        return offer

    def _close(self, listener: Listener) -> Callable[[int, str], None]:
        def close(code: int, reason: str) -> None:
            listener.closed(self, code, reason)

        return close

    def __repr__(self) -> str:
        return f"{self.user_id}/{self.device}#{self.number}"


class _Handle(SessionHandle):
    """A session handle hashed by its session id, not its address: the engine keeps
    sessions in sets, and their order must not depend on where memory was given."""

    __slots__ = ()

    def __hash__(self) -> int:
        return hash(self.session_id)


class _Outbox:
    __slots__ = ("_offer",)

    def __init__(self, offer: Callable[[Outgoing], None]) -> None:
        self._offer = offer

    def offer(self, item: Outgoing) -> bool:
        self._offer(item)
        return True
