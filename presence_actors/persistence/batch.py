"""A batch: intents coalesced into what one transaction writes, and what it wrote."""

from __future__ import annotations

from attrs import Factory, define, evolve, frozen

from ..model import Visibility
from .intents import (
    BlockAdded,
    BlockRemoved,
    ContactAdded,
    ContactRemoved,
    ContactsReplaced,
    Intent,
    PresenceEvent,
    PresenceRow,
    VisibilityRow,
)


@frozen
class UserWrite:
    """The merged columns one batch writes to one ``users`` row.

    ``presence`` and ``visibility`` are ``None`` when no intent of the batch
    touched those columns; ``updated_at`` comes from the latest intent.
    """

    user_id: str
    updated_at: int
    presence: PresenceRow | None = None
    visibility: Visibility | None = None


RelationChange = ContactsReplaced | ContactAdded | ContactRemoved | BlockAdded | BlockRemoved


@define
class Batch:
    """Intents coalesced into what one transaction writes.

    Row intents of one user merge into one :class:`UserWrite` (later columns
    win); events and relation changes keep submission order.
    """

    users: dict[str, UserWrite] = Factory(dict)
    events: list[PresenceEvent] = Factory(list)
    relations: list[RelationChange] = Factory(list)
    intents: int = 0

    def add(self, intent: Intent) -> None:
        self.intents += 1
        match intent:
            case PresenceRow(user_id=user_id):
                # Built directly, not with evolve(): two rows per change pass here.
                old = self.users.get(user_id)
                visibility = None if old is None else old.visibility
                self.users[user_id] = UserWrite(user_id, intent.updated_at, intent, visibility)
            case VisibilityRow(user_id=user_id):
                old = self._user(user_id)
                self.users[user_id] = evolve(
                    old, visibility=intent.visibility, updated_at=intent.updated_at
                )
            case PresenceEvent():
                self.events.append(intent)
            case _:
                self.relations.append(intent)

    def _user(self, user_id: str) -> UserWrite:
        # updated_at is always overwritten by the intent being merged.
        return self.users.get(user_id) or UserWrite(user_id=user_id, updated_at=0)


@frozen
class BatchResult:
    """Rows one commit changed per table, and how many intents it made durable."""

    intents: int = 0
    users: int = 0
    events: int = 0
    contacts: int = 0
    blocks: int = 0

    @property
    def rows(self) -> int:
        return self.users + self.events + self.contacts + self.blocks

    def __add__(self, other: BatchResult) -> BatchResult:
        return BatchResult(
            intents=self.intents + other.intents,
            users=self.users + other.users,
            events=self.events + other.events,
            contacts=self.contacts + other.contacts,
            blocks=self.blocks + other.blocks,
        )
