"""Durable state: the SQLite store and the PersistenceActor that batches writes into it."""

from __future__ import annotations

from .backlog import Loss
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
from .lock import DatabaseInUse, DatabaseLock
from .schema import migrate
from .store import (
    Batch,
    BatchResult,
    EventRecord,
    Store,
    StoredUser,
    StoreReader,
    StoreUnavailable,
    UserWrite,
    open_reader,
)
from .writer import PersistenceActor, WriterNotRunning, WriterStatistics, WritesLost

__all__ = [
    "Batch",
    "BatchResult",
    "BlockAdded",
    "BlockRemoved",
    "ContactAdded",
    "ContactRemoved",
    "ContactsReplaced",
    "DatabaseInUse",
    "DatabaseLock",
    "EventRecord",
    "Intent",
    "Loss",
    "PersistenceActor",
    "PresenceEvent",
    "PresenceRow",
    "Store",
    "StoreReader",
    "StoreUnavailable",
    "StoredUser",
    "UserWrite",
    "VisibilityRow",
    "WriterNotRunning",
    "WriterStatistics",
    "WritesLost",
    "migrate",
    "open_reader",
]
