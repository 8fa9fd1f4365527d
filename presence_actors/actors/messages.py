"""What travels through the engine's inboxes.

Transports send :class:`Attach`, :class:`Detach` and :class:`Request` to the
registry; the registry forwards what concerns one user to that user's actor;
user actors answer the registry with the effects in
:mod:`presence_actors.actors.user_state` (Accepted, Ended, Publish) and with
:class:`Retiring`. Read-only questions from HTTP and gRPC are :class:`Ask` s
carrying a one-shot reply channel.
"""

from __future__ import annotations

from typing import Any

import trio
from attrs import frozen

from ..cluster.wire import MergedView
from ..model import Status, UserView, Visibility
from ..persistence.intents import Intent
from ..protocol import ClientMessage
from .session import SessionHandle
from .user_state import Accepted, Ended, Publish


@frozen
class Attach:
    session: SessionHandle


@frozen
class Detach:
    """The transport lost the session (any reason but ``logout``)."""

    session: SessionHandle


@frozen
class Request:
    session: SessionHandle
    message: ClientMessage


@frozen
class Told:
    """Session -> its own user's actor, directly: a request only the actor answers.

    Not routed by the registry, so not counted for retirement: a session tells
    its actor only while attached, and an actor with a session never retires.
    """

    session: SessionHandle
    message: ClientMessage


@frozen
class Seen:
    """Registry -> actor: the session made a request the registry answered."""

    session: SessionHandle


@frozen
class Tick:
    """Alarms -> actor: one of your timers may be due."""


TICK = Tick()


@frozen
class Retiring:
    """Actor -> registry: idle after ``processed`` messages; retire me if none are in flight."""

    user_id: str
    processed: int


# --- read-only questions (HTTP, gRPC, CLI) ------------------------------------------


@frozen
class ViewsQuery:
    """The views of ``user_ids`` as ``watcher`` may see them (``None``: anonymous)."""

    watcher: str | None
    user_ids: tuple[str, ...]


@frozen
class LookupQuery:
    """One user as ``watcher`` may see it, or None when unknown or hidden (HTTP 404)."""

    watcher: str | None
    user_id: str


@frozen
class ListQuery:
    watcher: str | None
    status: Status | None = None
    limit: int = 1000
    cursor: str | None = None


@frozen
class UserPage:
    users: tuple[UserView, ...]
    next_cursor: str | None


@frozen
class StatsQuery:
    """Counters; with ``count_visible``, also the online users ``watcher`` may see
    (``None``: anonymous), which can cost a walk over every user."""

    watcher: str | None = None
    count_visible: bool = False


@frozen
class EngineStats:
    online_users: int
    sessions: int
    known_users: int
    actors: int
    pushes: int = 0
    # Online users the query's watcher may see (its get_online_count), when asked for.
    visible_online: int | None = None


@frozen
class PolicyQuery:
    """The visibility, contacts and blocks of one user (admin and tests)."""

    user_id: str


@frozen
class PolicyView:
    visibility: Visibility
    contacts: frozenset[str]
    blocked: frozenset[str]


# --- admin changes (HTTP admin routes) -----------------------------------------------


@frozen
class ReplaceContacts:
    user_id: str
    contacts: frozenset[str]


@frozen
class AddContact:
    user_id: str
    contact_id: str


@frozen
class RemoveContact:
    user_id: str
    contact_id: str


@frozen
class SetVisibility:
    user_id: str
    visibility: Visibility


AdminCommand = ReplaceContacts | AddContact | RemoveContact | SetVisibility


@frozen
class Command:
    """An admin change; the reply is None, or the ProtocolError that refused it."""

    command: AdminCommand
    reply: trio.MemorySendChannel[Any]


Query = ViewsQuery | LookupQuery | ListQuery | StatsQuery | PolicyQuery


@frozen
class Ask:
    query: Query
    reply: trio.MemorySendChannel[Any]


# --- the cluster (cluster.redis_url): from the node's link to Redis ----------------------


@frozen
class Merged:
    """The user as the cluster shows it, after a node reported (this one: ``cause``
    is the session whose request made the change) or from pub/sub."""

    view: MergedView
    cause: SessionHandle | None = None


@frozen
class Seeded:
    """Current views read from Redis for users that came to be watched here (or all
    of them after a rejoin); ``asked`` may name users Redis does not know."""

    views: tuple[MergedView, ...]
    asked: tuple[str, ...] = ()
    # Every user Redis knows was read (everyone fan-out): the rest are not online.
    complete: bool = False


@frozen
class PolicyChanged:
    """A contact, block or visibility change made through another node."""

    intent: Intent


@frozen
class Rejoined:
    """The link is back after an outage; ``fresh``: Redis had lost its data."""

    fresh: bool


@frozen
class SyncProfile:
    """Registry -> actor: the cluster shows this username and status message."""

    username: str | None
    status_message: str | None


ActorMessage = Attach | Detach | Request | Told | Seen | Tick | SyncProfile
RegistryMessage = (
    Attach
    | Detach
    | Request
    | Accepted
    | Ended
    | Publish
    | Retiring
    | Ask
    | Command
    | Merged
    | Seeded
    | PolicyChanged
    | Rejoined
)
