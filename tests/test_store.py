"""Store: schema, pragmas, recovery, loads, history, pruning and the read-only reader."""

from __future__ import annotations

import os
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlite_utils import Database

from presence_actors.model import Status, Visibility
from presence_actors.persistence import (
    Batch,
    BatchResult,
    BlockAdded,
    ContactsReplaced,
    EventRecord,
    PresenceEvent,
    PresenceRow,
    Store,
    StoredUser,
    VisibilityRow,
    open_reader,
    schema,
)
from presence_actors.persistence.intents import Intent


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "presence.db"


@pytest.fixture
def store(path: Path) -> Iterator[Store]:
    with Store.open(path) as store:
        yield store


def commit(store: Store, *intents: Intent) -> BatchResult:
    batch = Batch()
    for intent in intents:
        batch.add(intent)
    return store.commit(batch)


def online(user_id: str, last_seen: int, status: Status = Status.ONLINE) -> PresenceRow:
    return PresenceRow(user_id, status, f"name-{user_id}", None, last_seen, last_seen)


def test_migrations_create_the_schema_and_are_idempotent(path: Path) -> None:
    Store.open(path).close()
    with Store.open(path) as store:
        db = store.db
        assert {"users", "contacts", "blocks", "presence_events", "schema_version"} <= set(
            db.table_names()
        )
        users = {c.name: c for c in db.table("users").columns}
        assert list(users) == [
            "user_id",
            "username",
            "status_message",
            "visibility",
            "last_status",
            "last_seen",
            "updated_at",
            "shown_differs",
            "shown_username",
            "shown_status_message",
        ]
        # NULL visibility: never chosen, so the configured default applies.
        assert not users["visibility"].notnull
        assert users["visibility"].default_value is None
        assert users["last_status"].default_value == "'offline'"
        assert db.table("contacts").pks == ["user_id", "contact_id"]
        assert db.table("blocks").pks == ["user_id", "blocked_id"]
        event_indexes = {tuple(i.columns) for i in db.table("presence_events").indexes}
        assert {("user_id", "at"), ("at",)} <= event_indexes
        assert "AUTOINCREMENT" in db.table("presence_events").schema
        assert db.execute("SELECT version FROM schema_version").fetchall() == [(1,), (2,)]
        assert schema.migrate(db) == []


def test_a_failing_migration_step_is_rolled_back(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    Store.open(path).close()

    def broken(db: Database) -> None:
        db.table("half_done").create({"x": int})
        raise RuntimeError("step 3 fails")

    monkeypatch.setattr(schema, "MIGRATIONS", (*schema.MIGRATIONS, broken))
    with pytest.raises(RuntimeError, match="step 3 fails"):
        Store.open(path)
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT MAX(version) FROM schema_version").fetchone() == (2,)
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        assert "half_done" not in tables


def test_wal_normal_sync_and_busy_timeout(path: Path) -> None:
    with Store.open(path, busy_timeout_ms=250) as store:
        conn = store.db.conn
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("PRAGMA synchronous").fetchone() == (1,)  # NORMAL
        assert conn.execute("PRAGMA busy_timeout").fetchone() == (250,)
        assert path.parent.is_dir()


def test_a_second_store_on_one_database_is_refused_until_the_first_closes(path: Path) -> None:
    holder = Store.open(path)
    who = rf"\(pid {os.getpid()}, holding {re.escape(str(path))}\.lock\)"
    with pytest.raises(
        Exception, match=rf"^the database {re.escape(str(path))} is in use by another process {who}"
    ):
        Store.open(path)
    holder.close()
    Store.open(path).close()  # closing released the lock


def test_commit_coalesces_rows_and_keeps_untouched_columns(store: Store) -> None:
    commit(store, VisibilityRow("a", Visibility.NOBODY, 1))
    result = commit(
        store,
        online("a", 10),
        PresenceRow("a", Status.BUSY, "alice", "in a meeting", 20, 21),
        VisibilityRow("b", Visibility.CONTACTS, 22),
    )
    assert result == BatchResult(intents=3, users=2)
    assert store.load_users() == [
        # The presence rows did not reset a's visibility.
        StoredUser("a", "alice", "in a meeting", Visibility.NOBODY, Status.BUSY, 20),
        # A visibility change for an unknown user creates it with the defaults.
        StoredUser("b", None, None, Visibility.CONTACTS, Status.OFFLINE, None),
    ]


def test_a_failed_commit_writes_nothing(store: Store) -> None:
    conn = store.db.conn
    (pages,) = conn.execute("PRAGMA page_count").fetchone()
    conn.execute(f"PRAGMA max_page_count = {pages}")
    big = [PresenceEvent("a", Status.ONLINE, i, "x" * 4000) for i in range(20)]
    with pytest.raises(sqlite3.OperationalError, match="database or disk is full"):
        commit(store, online("a", 1), *big)
    assert not conn.in_transaction
    conn.execute("PRAGMA max_page_count = 1000000")
    assert store.load_users() == []
    assert store.history("a") == []


def test_recover_marks_everyone_offline_and_logs_restart(store: Store) -> None:
    commit(
        store,
        online("a", 100),
        online("b", 200, Status.AWAY),
        online("c", 300, Status.OFFLINE),
        VisibilityRow("never-seen", Visibility.EVERYONE, 1),
    )
    assert store.recover(now_ms=5000) == ["a", "b"]
    users = {u.user_id: u for u in store.load_users()}
    assert {u.last_status for u in users.values()} == {Status.OFFLINE}
    assert [users[i].last_seen for i in ("a", "b", "c", "never-seen")] == [100, 200, 300, None]
    assert store.history("a") == [EventRecord("a", Status.OFFLINE, 5000, "restart", None)]
    assert store.history("c") == []
    assert store.recover(now_ms=6000) == []


def test_load_contacts_and_blocks(store: Store) -> None:
    commit(
        store,
        ContactsReplaced("a", frozenset({"b", "c"})),
        BlockAdded("a", "x"),
        BlockAdded("b", "a"),
    )
    assert store.load_contacts() == {"a": {"b", "c"}, "b": {"a"}, "c": {"a"}}
    assert store.load_blocks() == {"a": {"x"}, "b": {"a"}}


def test_history_is_ordered_and_bounded(store: Store) -> None:
    commit(
        store,
        PresenceEvent("a", Status.ONLINE, 30, "connect", "phone"),
        PresenceEvent("b", Status.ONLINE, 5, "connect"),
        PresenceEvent("a", Status.AWAY, 10, "idle"),
        PresenceEvent("a", Status.ONLINE, 10, "activity"),  # same ms: write order kept
        PresenceEvent("a", Status.OFFLINE, 50, "logout"),
    )
    assert [(e.at, e.reason) for e in store.history("a")] == [
        (10, "idle"),
        (10, "activity"),
        (30, "connect"),
        (50, "logout"),
    ]
    assert [e.at for e in store.history("a", since_ms=10, until_ms=50)] == [10, 10, 30]
    assert [e.reason for e in store.history("a", limit=2)] == ["idle", "activity"]
    assert store.history("a", since_ms=30)[0] == EventRecord(
        "a", Status.ONLINE, 30, "connect", "phone"
    )


def test_prune_events_deletes_only_older_ones(store: Store) -> None:
    commit(store, *(PresenceEvent("a", Status.ONLINE, at, "connect") for at in (1, 2, 3, 4)))
    assert store.prune_events(before_ms=3) == 2
    assert [e.at for e in store.history("a")] == [3, 4]
    assert store.prune_events(before_ms=3) == 0


def test_reader_sees_commits_while_the_writer_holds_the_lock(store: Store, path: Path) -> None:
    commit(store, online("a", 100))
    with open_reader(path) as reader:
        assert [u.user_id for u in reader.load_users()] == ["a"]
        commit(store, online("b", 200), PresenceEvent("b", Status.ONLINE, 200, "connect"))
        assert [u.user_id for u in reader.load_users()] == ["a", "b"]
        # An open write transaction neither blocks the reader nor shows through.
        store.db.conn.execute("BEGIN IMMEDIATE")
        store.db.conn.execute("DELETE FROM users")
        assert [u.user_id for u in reader.load_users()] == ["a", "b"]
        assert [e.reason for e in reader.history("b")] == ["connect"]
        store.db.conn.execute("ROLLBACK")
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            reader.db.execute("DELETE FROM users")


def test_reader_needs_an_existing_database(tmp_path: Path) -> None:
    with pytest.raises(sqlite3.OperationalError, match="unable to open"):
        open_reader(tmp_path / "missing.db")
