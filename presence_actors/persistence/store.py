"""The SQLite store: the one write connection, its transactions and checkpoints.

All methods are synchronous and do blocking I/O; the caller picks the thread
(the :class:`~.writer.PersistenceActor` uses ``trio.to_thread.run_sync``). A
connection may be used from any thread, but by one call at a time: run methods
in threads that are not abandoned on cancellation (trio's default), so that a
cancelled caller still waits for the call, and its transaction, to finish.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Self

from sqlite_utils import Database

from .batch import Batch, BatchResult, RelationChange, UserWrite
from .intents import (
    BlockAdded,
    BlockRemoved,
    ContactAdded,
    ContactRemoved,
    ContactsReplaced,
)
from .lock import DatabaseLock
from .queries import (
    DEFAULT_BUSY_TIMEOUT_MS,
    EventRecord,
    Queries,
    StoredUser,
    StoreReader,
    connect,
    open_reader,
)
from .schema import migrate, write_transaction

__all__ = [
    "Batch",
    "BatchResult",
    "EventRecord",
    "RelationChange",
    "Store",
    "StoreReader",
    "StoreUnavailable",
    "StoredUser",
    "UserWrite",
    "open_reader",
]


class StoreUnavailable(sqlite3.OperationalError):
    """The database cannot be opened; the message names it and says why in one line."""


class Store(Queries):
    """Owner of the single write connection (WAL, ``synchronous=NORMAL``).

    Every write method is one transaction: it happens entirely or not at all,
    and a failure leaves no transaction open. SQLite never checkpoints on its
    own here (``wal_autocheckpoint = 0``): the writer calls :meth:`checkpoint`
    when :meth:`wal_bytes` says so, which also truncates the WAL file.
    """

    def __init__(self, db: Database, path: Path, lock: DatabaseLock | None = None) -> None:
        self.db = db
        self.path = path
        self._lock = lock

    @classmethod
    def open(cls, path: str | Path, *, busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS) -> Self:
        """Lock, open (creating it and its directory if needed) and migrate the database.

        Raises :class:`~.lock.DatabaseInUse` if another process holds it, before
        reading or writing anything, and :class:`StoreUnavailable` if SQLite
        cannot open it. Nothing is written when the schema is current, so a
        database on a full disk opens as long as SQLite can map its ``-shm`` index.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = DatabaseLock.acquire(path)
        db: Database | None = None
        try:
            db = connect(str(path), uri=False, busy_timeout_ms=busy_timeout_ms)
            mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise sqlite3.OperationalError(f"cannot enable WAL: journal_mode={mode}")
            # NORMAL in WAL: a commit survives a process crash; a power loss may
            # drop the last commits but never corrupts the file.
            db.execute("PRAGMA synchronous = NORMAL")
            # Checkpoints only when the writer asks: SQLite's own (at 4 MB, never
            # truncating) let the WAL alone fill a small volume.
            db.execute("PRAGMA wal_autocheckpoint = 0")
            migrate(db)
        except BaseException as exc:
            if db is not None:
                db.close()
            lock.release()
            if isinstance(exc, sqlite3.Error):
                note = _space_note(path)
                raise StoreUnavailable(f"cannot open the database {path}: {exc}{note}") from exc
            raise
        return cls(db, path, lock)

    def close(self) -> None:
        """Close the connection, then release the lock; safe to call twice."""
        try:
            self.db.close()
        finally:
            if self._lock is not None:
                self._lock.release()

    def wal_bytes(self) -> int:
        """The size of the WAL file now (0 if there is none)."""
        try:
            return os.stat(f"{self.path}-wal").st_size
        except FileNotFoundError:
            return 0

    def checkpoint(self) -> bool:
        """Copy the WAL into the database and truncate it to zero bytes.

        True if it completed; False if a reader still needed old frames (after
        the busy timeout), in which case nothing is lost and a later call
        finishes the job. Raises ``sqlite3.OperationalError`` when the database
        file cannot grow (a full disk): the WAL still holds every commit.
        """
        (busy, _, _) = self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        return not busy

    def recover(self, now_ms: int) -> list[str]:
        """Turn every user the last run left non-offline into offline.

        ``last_seen`` is kept (it already holds the last persisted activity); a
        ``restart`` event at ``now_ms`` is appended for each. One transaction.
        Returns the recovered ids, sorted.
        """
        with write_transaction(self.db):
            ids = [
                row[0]
                for row in self.db.execute(
                    "SELECT user_id FROM users WHERE last_status != 'offline' ORDER BY user_id"
                )
            ]
            self.db.conn.executemany(
                "INSERT INTO presence_events (user_id, status, at, reason)"
                " VALUES (?, 'offline', ?, 'restart')",
                [(user_id, now_ms) for user_id in ids],
            )
            self.db.execute(
                "UPDATE users SET last_status = 'offline', updated_at = ?"
                " WHERE last_status != 'offline'",
                (now_ms,),
            )
        return ids

    def commit(self, batch: Batch) -> BatchResult:
        """Write ``batch`` in one transaction; nothing of it is written if this raises.

        Each coalesced user is one upsert (a missing row is created with the
        schema defaults for the columns the batch does not touch). Events are
        appended in order; relation changes are applied in submission order.
        """
        if not batch.intents:
            return BatchResult()
        with write_transaction(self.db):
            users = self._write_users(batch.users.values())
            events = self.db.conn.executemany(
                "INSERT INTO presence_events (user_id, status, at, reason, device_id)"
                " VALUES (?, ?, ?, ?, ?)",
                [(e.user_id, e.status.value, e.at, e.reason, e.device_id) for e in batch.events],
            ).rowcount
            contacts = blocks = 0
            for change in batch.relations:
                if isinstance(change, BlockAdded | BlockRemoved):
                    blocks += self._apply_block(change)
                else:
                    contacts += self._apply_contacts(change)
        return BatchResult(
            intents=batch.intents, users=users, events=events, contacts=contacts, blocks=blocks
        )

    def prune_events(self, before_ms: int) -> int:
        """Delete events with ``at < before_ms``; returns how many. One transaction."""
        with write_transaction(self.db):
            return self.db.execute(
                "DELETE FROM presence_events WHERE at < ?", (before_ms,)
            ).rowcount

    def _write_users(self, writes: Iterable[UserWrite]) -> int:
        # Rows are grouped by which columns they set, one executemany per shape,
        # so an upsert never overwrites a column the batch did not touch.
        by_shape: dict[tuple[str, ...], list[tuple[object, ...]]] = {}
        for write in writes:
            columns, values = _user_columns(write)
            by_shape.setdefault(columns, []).append(values)
        written = 0
        for columns, rows in by_shape.items():
            names = ", ".join(columns)
            marks = ", ".join("?" for _ in columns)
            updates = ", ".join(f"{c} = excluded.{c}" for c in columns[1:])
            written += self.db.conn.executemany(
                f"INSERT INTO users ({names}) VALUES ({marks})"
                f" ON CONFLICT (user_id) DO UPDATE SET {updates}",
                rows,
            ).rowcount
        return written

    def _apply_contacts(self, change: ContactsReplaced | ContactAdded | ContactRemoved) -> int:
        conn = self.db.conn
        match change:
            case ContactsReplaced(user_id=user_id, contacts=contacts):
                removed = conn.execute(
                    "DELETE FROM contacts WHERE user_id = ? OR contact_id = ?", (user_id, user_id)
                ).rowcount
                return removed + _insert_pairs(conn, user_id, sorted(contacts))
            case ContactAdded(user_id=user_id, contact_id=contact_id):
                return _insert_pairs(conn, user_id, [contact_id])
            case ContactRemoved(user_id=user_id, contact_id=contact_id):
                return conn.execute(
                    "DELETE FROM contacts WHERE (user_id = ? AND contact_id = ?)"
                    " OR (user_id = ? AND contact_id = ?)",
                    (user_id, contact_id, contact_id, user_id),
                ).rowcount

    def _apply_block(self, change: BlockAdded | BlockRemoved) -> int:
        sql = (
            "INSERT OR IGNORE INTO blocks (user_id, blocked_id) VALUES (?, ?)"
            if isinstance(change, BlockAdded)
            else "DELETE FROM blocks WHERE user_id = ? AND blocked_id = ?"
        )
        return self.db.conn.execute(sql, (change.user_id, change.blocked_id)).rowcount


def _space_note(path: Path) -> str:
    """`` (its file system is full)`` when that is the likely cause of a failure."""
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        return ""
    # A few pages: SQLite needs at least its 32 KiB -shm index to open a WAL database.
    return f" (its file system is full: {free} bytes free)" if free < 64 * 1024 else ""


def _user_columns(write: UserWrite) -> tuple[tuple[str, ...], tuple[object, ...]]:
    columns: list[str] = ["user_id"]
    values: list[object] = [write.user_id]
    if write.presence is not None:
        row = write.presence
        columns += ["username", "status_message", "last_status", "last_seen"]
        values += [row.username, row.status_message, row.status.value, row.last_seen]
        shown_username, shown_message = row.shown or (None, None)
        columns += ["shown_differs", "shown_username", "shown_status_message"]
        values += [int(row.shown is not None), shown_username, shown_message]
    if write.visibility is not None:
        columns.append("visibility")
        values.append(write.visibility.value)
    columns.append("updated_at")
    values.append(write.updated_at)
    return tuple(columns), tuple(values)


def _insert_pairs(conn: sqlite3.Connection, user_id: str, contact_ids: list[str]) -> int:
    """Insert both directions of each pair; returns the rows actually added."""
    pairs = [(user_id, c) for c in contact_ids] + [(c, user_id) for c in contact_ids]
    return conn.executemany(
        "INSERT OR IGNORE INTO contacts (user_id, contact_id) VALUES (?, ?)", pairs
    ).rowcount
