"""The SQLite store: the one write connection, read-only readers, and every query.

All methods are synchronous and do blocking I/O; the caller picks the thread
(the :class:`~.writer.PersistenceActor` uses ``trio.to_thread.run_sync``). A
connection may be used from any thread, but by one call at a time: run methods
in threads that are not abandoned on cancellation (trio's default), so that a
cancelled caller still waits for the call, and its transaction, to finish.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Self

from attrs import Factory, define, evolve, frozen
from sqlite_utils import Database

from ..model import Status, Visibility
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
from .schema import migrate, write_transaction

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


@frozen
class EventRecord:
    user_id: str
    status: Status
    at: int
    reason: str
    device_id: str | None


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
                old = self._user(user_id)
                self.users[user_id] = evolve(old, presence=intent, updated_at=intent.updated_at)
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


def _connect(target: str, *, uri: bool, busy_timeout_ms: int) -> Database:
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


class _Queries:
    """Reads shared by the write connection and read-only readers."""

    db: Database

    def load_users(self) -> list[StoredUser]:
        """Every stored user, ordered by ``user_id``."""
        rows = self.db.execute(
            "SELECT user_id, username, status_message, visibility, last_status, last_seen"
            " FROM users ORDER BY user_id"
        )
        return [
            StoredUser(
                user_id=user_id,
                username=username,
                status_message=status_message,
                visibility=None if visibility is None else Visibility(visibility),
                last_status=Status(last_status),
                last_seen=last_seen,
            )
            for user_id, username, status_message, visibility, last_status, last_seen in rows
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


class Store(_Queries):
    """Owner of the single write connection (WAL, ``synchronous=NORMAL``).

    Every write method is one transaction: it happens entirely or not at all,
    and a failure leaves no transaction open.
    """

    def __init__(self, db: Database) -> None:
        self.db = db

    @classmethod
    def open(cls, path: str | Path, *, busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS) -> Self:
        """Open (creating it and its directory if needed) and migrate the database."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        db = _connect(str(path), uri=False, busy_timeout_ms=busy_timeout_ms)
        try:
            mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise sqlite3.OperationalError(f"cannot enable WAL on {path}: journal_mode={mode}")
            # NORMAL in WAL: a commit survives a process crash; a power loss may
            # drop the last commits but never corrupts the file.
            db.execute("PRAGMA synchronous = NORMAL")
            migrate(db)
        except BaseException:
            db.close()
            raise
        return cls(db)

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


def _user_columns(write: UserWrite) -> tuple[tuple[str, ...], tuple[object, ...]]:
    columns: list[str] = ["user_id"]
    values: list[object] = [write.user_id]
    if write.presence is not None:
        row = write.presence
        columns += ["username", "status_message", "last_status", "last_seen"]
        values += [row.username, row.status_message, row.status.value, row.last_seen]
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


class StoreReader(_Queries):
    """A read-only connection for request-time reads beside the writer.

    WAL lets it read committed data while the writer holds the write lock;
    each query sees the latest commit at the moment it starts.
    """

    def __init__(self, db: Database) -> None:
        self.db = db


def open_reader(path: str | Path, *, busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS) -> StoreReader:
    """Open ``path`` read-only; the database must exist (open the Store first)."""
    uri = Path(path).resolve().as_uri() + "?mode=ro"
    return StoreReader(_connect(uri, uri=True, busy_timeout_ms=busy_timeout_ms))
