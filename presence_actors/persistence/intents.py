"""Write intents: what the engine asks the PersistenceActor to make durable.

The engine never speaks SQL; it describes changes with these frozen records and
the writer turns them into batched row writes.
"""

from __future__ import annotations

from attrs import frozen

from ..model import Status, Visibility


@frozen
class PresenceRow:
    """The presence fields of one user's row; a later one for the same user wins."""

    user_id: str
    status: Status
    username: str | None
    status_message: str | None
    last_seen: int | None
    updated_at: int
    # The username and status message others see, when they differ: those an
    # invisible user last showed while visible (docs/PROTOCOL.md, "appear offline").
    shown: tuple[str | None, str | None] | None = None


@frozen
class VisibilityRow:
    user_id: str
    visibility: Visibility
    updated_at: int


@frozen
class PresenceEvent:
    """One transition of a user's effective status, for the audit log."""

    user_id: str
    status: Status
    at: int
    reason: str
    device_id: str | None = None


@frozen
class ContactsReplaced:
    """``user_id``'s contacts become exactly ``contacts`` (both directions are stored)."""

    user_id: str
    contacts: frozenset[str]


@frozen
class ContactAdded:
    user_id: str
    contact_id: str


@frozen
class ContactRemoved:
    user_id: str
    contact_id: str


@frozen
class BlockAdded:
    user_id: str
    blocked_id: str


@frozen
class BlockRemoved:
    user_id: str
    blocked_id: str


Intent = (
    PresenceRow
    | VisibilityRow
    | PresenceEvent
    | ContactsReplaced
    | ContactAdded
    | ContactRemoved
    | BlockAdded
    | BlockRemoved
)
