"""Durable state: the SQLite store and the PersistenceActor that batches writes into it."""

from __future__ import annotations

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
from .schema import migrate
from .store import (
    Batch,
    BatchResult,
    EventRecord,
    Store,
    StoredUser,
    StoreReader,
    UserWrite,
    open_reader,
)
from .writer import PersistenceActor, WriterNotRunning, WriterStatistics

__all__ = [
    "Batch",
    "BatchResult",
    "BlockAdded",
    "BlockRemoved",
    "ContactAdded",
    "ContactRemoved",
    "ContactsReplaced",
    "EventRecord",
    "Intent",
    "PersistenceActor",
    "PresenceEvent",
    "PresenceRow",
    "Store",
    "StoreReader",
    "StoredUser",
    "UserWrite",
    "VisibilityRow",
    "WriterNotRunning",
    "WriterStatistics",
    "migrate",
    "open_reader",
]
