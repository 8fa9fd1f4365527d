"""Reads: the records they return, the read-only reader, and the connection setup.

The same queries run on the write connection (:class:`~.store.Store`) and on
read-only :class:`StoreReader` connections, which WAL lets read beside the writer.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Self

from attrs import frozen
from sqlite_utils import Database

from ..model import Status, Visibility

# Long enough to ride out a checkpoint or a concurrent migration, short enough
# that a stuck lock surfaces quickly as a retried, logged commit failure.
DEFAULT_BUSY_TIMEOUT_MS = 1000


@frozen
class StoredUser:
    user_id: str
    username: str | None
    status_message: str | None
    visibility: Visibility | None  # None: never chosen, the server default applies
    last_status: Status
    last_seen: int | None
    # What others see instead of username and status_message, if it differs.
    shown: tuple[str | None, str | None] | None = None


@frozen
class EventRecord:
    user_id: str
    status: Status
    at: int
    reason: str
    device_id: str | None


def connect(target: str, *, uri: bool, busy_timeout_ms: int) -> Database:
    # isolation_level=None: the driver opens no implicit transactions, every
    # transaction here is an explicit write_transaction().
    # check_same_thread=False: the writer commits from trio worker threads.
    conn = sqlite3.connect(
        target,
        uri=uri,
        isolation_level=None,
        check_same_thread=False,
        timeout=busy_timeout_ms / 1000,
    )
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    # No sqlite-utils plugins: nothing else may reconfigure our connections.
    return Database(conn, execute_plugins=False)


class Queries:
    """Reads shared by the write connection and read-only readers."""

    db: Database

    def load_users(self) -> list[StoredUser]:
        """Every stored user, ordered by ``user_id``."""
        rows = self.db.execute(
            "SELECT user_id, username, status_message, visibility, last_status, last_seen,"
            " shown_differs, shown_username, shown_status_message"
            " FROM users ORDER BY user_id"
        )
        return [
            StoredUser(
                user_id=row[0],
                username=row[1],
                status_message=row[2],
                visibility=None if row[3] is None else Visibility(row[3]),
                last_status=Status(row[4]),
                last_seen=row[5],
                shown=(row[7], row[8]) if row[6] else None,
            )
            for row in rows
        ]

    def load_contacts(self) -> dict[str, set[str]]:
        """user -> contacts; symmetric because both directions are stored."""
        return _group(self.db.execute("SELECT user_id, contact_id FROM contacts"))

    def load_blocks(self) -> dict[str, set[str]]:
        """user -> the ids that user has blocked."""
        return _group(self.db.execute("SELECT user_id, blocked_id FROM blocks"))

    def history(
        self, user_id: str, since_ms: int = 0, until_ms: int | None = None, limit: int = 1000
    ) -> list[EventRecord]:
        """The user's events with ``since_ms <= at < until_ms``, oldest first.

        Events with the same ``at`` keep the order they were written in; at most
        ``limit`` of them, the oldest. ``until_ms=None`` means no upper bound.
        """
        rows = self.db.execute(
            "SELECT user_id, status, at, reason, device_id FROM presence_events"
            " WHERE user_id = ? AND at >= ? AND (? IS NULL OR at < ?)"
            " ORDER BY at, id LIMIT ?",
            (user_id, since_ms, until_ms, until_ms, limit),
        )
        return [
            EventRecord(user_id=uid, status=Status(status), at=at, reason=reason, device_id=dev)
            for uid, status, at, reason, dev in rows
        ]

    def recent_events(self, limit: int = 100) -> list[EventRecord]:
        """The latest ``limit`` events of all users, newest first."""
        rows = self.db.execute(
            "SELECT user_id, status, at, reason, device_id FROM presence_events"
            " ORDER BY at DESC, id DESC LIMIT ?",
            (limit,),
        )
        return [
            EventRecord(user_id=uid, status=Status(status), at=at, reason=reason, device_id=dev)
            for uid, status, at, reason, dev in rows
        ]

    def close(self) -> None:
        """Close the connection; safe to call twice."""
        self.db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _group(pairs: Iterable[tuple[str, str]]) -> dict[str, set[str]]:
    grouped: dict[str, set[str]] = {}
    for left, right in pairs:
        grouped.setdefault(left, set()).add(right)
    return grouped


class StoreReader(Queries):
    """A read-only connection for request-time reads beside the writer.

    WAL lets it read committed data while the writer holds the write lock;
    each query sees the latest commit at the moment it starts.
    """

    def __init__(self, db: Database) -> None:
        self.db = db


def open_reader(path: str | Path, *, busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS) -> StoreReader:
    """Open ``path`` read-only; the database must exist (open the Store first)."""
    uri = Path(path).resolve().as_uri() + "?mode=ro"
    return StoreReader(connect(uri, uri=True, busy_timeout_ms=busy_timeout_ms))
