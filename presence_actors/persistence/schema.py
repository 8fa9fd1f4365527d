"""Versioned schema migrations for the presence database.

``schema_version`` holds one row per applied step (``version``, ``applied_at`` in
unix ms). :data:`MIGRATIONS` is append-only: step *n* (1-based) brings the
database from version *n - 1* to *n*. Never edit a released step; add a new one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlite_utils import Database

Migration = Callable[[Database], None]


def _v1_initial(db: Database) -> None:
    db.table("users").create(
        {
            "user_id": str,
            "username": str,
            "status_message": str,
            "visibility": str,
            "last_status": str,
            # Unix ms; NULL means the user was never seen.
            "last_seen": int,
            "updated_at": int,
        },
        pk="user_id",
        # visibility NULL: the user never chose; presence.default_visibility applies.
        not_null={"last_status"},
        defaults={"last_status": "offline"},
    )
    # Both directions of the symmetric relation are rows, so "contacts of X" is
    # one index range; the contact_id index serves the reverse delete of a replace.
    contacts = db.table("contacts").create(
        {"user_id": str, "contact_id": str}, pk=("user_id", "contact_id")
    )
    contacts.create_index(["contact_id"])
    db.table("blocks").create({"user_id": str, "blocked_id": str}, pk=("user_id", "blocked_id"))
    # Raw DDL because sqlite-utils has no public AUTOINCREMENT option; it keeps
    # event ids from being reused once pruning has removed the newest rows.
    db.execute(
        """
        CREATE TABLE presence_events (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            user_id TEXT NOT NULL,
            status TEXT NOT NULL,
            at INTEGER NOT NULL,
            reason TEXT NOT NULL,
            device_id TEXT
        )
        """
    )
    events = db.table("presence_events")
    events.create_index(["user_id", "at"])  # history of one user
    events.create_index(["at"])  # retention pruning


def _v2_shown_face(db: Database) -> None:
    # What others see of a user who changed its username or status message while
    # invisible; NULLs with shown_differs = 0 when they see the row's own values.
    users = db.table("users")
    users.add_column("shown_differs", int, not_null_default=0)
    users.add_column("shown_username", str)
    users.add_column("shown_status_message", str)


MIGRATIONS: tuple[Migration, ...] = (_v1_initial, _v2_shown_face)
"""Every step in order; ``len(MIGRATIONS)`` is the version this code expects."""


def current_version(db: Database) -> int:
    """The highest applied version, 0 for a database that has none."""
    if not db.table("schema_version").exists():
        return 0
    row = db.execute("SELECT MAX(version) FROM schema_version").fetchone()
    return int(row[0] or 0)


def migrate(db: Database) -> list[int]:
    """Apply the missing steps in order and return the versions applied.

    Each step runs in its own :func:`write_transaction` together with its
    ``schema_version`` row, so a failing step leaves the database at the previous
    version. The version is re-read inside the transaction, so two processes
    migrating the same file at once apply each step exactly once. Idempotent:
    an up-to-date database takes no write lock.
    """
    db.table("schema_version").create(
        {"version": int, "applied_at": int}, pk="version", if_not_exists=True
    )
    applied: list[int] = []
    for version, step in enumerate(MIGRATIONS, start=1):
        if current_version(db) >= version:
            continue
        with write_transaction(db):
            if current_version(db) < version:
                step(db)
                db.execute(
                    "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
                    (version, time.time_ns() // 1_000_000),
                )
                applied.append(version)
    return applied


@contextmanager
def write_transaction(db: Database) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``; rolled back if the block raises.

    IMMEDIATE takes the write lock up front, so waiting for another writer goes
    through the busy timeout instead of failing later on a lock upgrade. The
    connection must be in autocommit mode (``isolation_level=None``), as
    :class:`~.store.Store` opens it, and not already inside a transaction.
    """
    conn = db.conn
    if conn.in_transaction:
        # A failed ROLLBACK (disk I/O error) can leave one open; starting over
        # from a clean state is what every caller here wants.
        conn.execute("ROLLBACK")
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        # SQLITE_FULL and some I/O errors have already rolled back by themselves.
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
