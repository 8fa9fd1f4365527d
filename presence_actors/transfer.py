"""Users to and from seed 000's ``user_state.json`` format.

The file maps each userId to ``{userId, connectionId, status, lastSeen, username}``
(lastSeen ISO-8601). Exports add ``statusMessage``, which seed-000 readers
ignore, so that an export imported again loses nothing. Writes follow the
seed's safe pattern: a temporary file, the previous file kept as
``<name>_backup.json``, then a rename; reads fall back to that backup when the
main file is missing or corrupt.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import orjson
from attrs import frozen

from .model import (
    MAX_STATUS_MESSAGE,
    MAX_USERNAME,
    Status,
    format_timestamp,
    is_valid_user_id,
    parse_timestamp,
)
from .persistence import Batch, PresenceRow, Store, StoredUser


class TransferError(Exception):
    """A state file that cannot be read or written; the message says which and why."""


@frozen
class StateRecord:
    """One user from a state file. None means "not given": the database keeps its value."""

    user_id: str
    username: str | None
    status_message: str | None
    last_seen: int | None


@frozen
class StateFile:
    """What :func:`read_state` found.

    ``path`` is the file actually read (the backup, when ``problems`` says why
    the main file was not); ``skipped`` names each entry left out, and why.
    """

    path: Path
    records: tuple[StateRecord, ...]
    skipped: tuple[str, ...]
    problems: tuple[str, ...]


def backup_path(path: Path) -> Path:
    """``user_state.json`` -> ``user_state_backup.json``, in the same directory."""
    return path.with_name(f"{path.stem}_backup{path.suffix}")


def read_state(path: Path) -> StateFile:
    """Read ``path``, or its backup when ``path`` is missing, unreadable or corrupt.

    Raises TransferError naming both problems when neither file can be used.
    A readable file with some invalid entries is used; those entries are skipped.
    """
    problems: list[str] = []
    for candidate in (path, backup_path(path)):
        try:
            document = _load(candidate)
        except TransferError as exc:
            problems.append(str(exc))
            continue
        records, skipped = parse_state(document)
        return StateFile(candidate, records, skipped, tuple(problems))
    raise TransferError("; ".join(problems))


def _load(path: Path) -> Mapping[str, object]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise TransferError(f"{path} does not exist") from None
    except OSError as exc:
        raise TransferError(f"{path} cannot be read: {exc.strerror or exc}") from None
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise TransferError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(document, dict):
        raise TransferError(f"{path} is corrupt: expected an object of users")
    return document


def parse_state(document: Mapping[str, object]) -> tuple[tuple[StateRecord, ...], tuple[str, ...]]:
    """The valid records of a state document, and a reason for each skipped entry."""
    records: list[StateRecord] = []
    skipped: list[str] = []
    for key, entry in document.items():
        try:
            records.append(_record(key, entry))
        except ValueError as exc:
            skipped.append(f"{key!r}: {exc}")
    return tuple(records), tuple(skipped)


def _record(key: str, entry: object) -> StateRecord:
    if not is_valid_user_id(key):
        raise ValueError("not a valid userId (1-128 characters from A-Z a-z 0-9 _ . : @ -)")
    if not isinstance(entry, dict):
        raise ValueError("expected an object")
    if entry.get("userId", key) != key:
        raise ValueError(f"its userId {entry['userId']!r} differs from its key")
    return StateRecord(
        user_id=key,
        username=_text(entry.get("username"), "username", MAX_USERNAME),
        status_message=_text(entry.get("statusMessage"), "statusMessage", MAX_STATUS_MESSAGE),
        last_seen=_moment(entry.get("lastSeen")),
    )


def _text(value: object, name: str, longest: int) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > longest:
        raise ValueError(f"{name} must be text of at most {longest} characters")
    return value


def _moment(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return parse_timestamp(value)
    raise ValueError(f"lastSeen {value!r} is not an ISO-8601 time")


def import_records(store: Store, records: Iterable[StateRecord], now_ms: int) -> int:
    """Write ``records`` as offline users in one transaction; returns how many.

    A value the record does not give keeps the database's, and lastSeen keeps
    the later of the two, so an import never erases newer data. Meant for a
    stopped server: a running one neither sees the import nor keeps from
    overwriting it.
    """
    existing = {user.user_id: user for user in store.load_users()}
    batch = Batch()
    for record in records:
        old = existing.get(record.user_id)
        merged = record if old is None else _merged(record, old)
        batch.add(
            PresenceRow(
                user_id=merged.user_id,
                status=Status.OFFLINE,
                username=merged.username,
                status_message=merged.status_message,
                last_seen=merged.last_seen,
                updated_at=now_ms,
            )
        )
    store.commit(batch)
    return batch.intents


def _merged(record: StateRecord, old: StoredUser) -> StateRecord:
    seen = [moment for moment in (record.last_seen, old.last_seen) if moment is not None]
    return StateRecord(
        user_id=record.user_id,
        username=record.username or old.username,
        status_message=record.status_message or old.status_message,
        last_seen=max(seen, default=None),
    )


def state_document(users: Iterable[StoredUser]) -> dict[str, dict[str, object]]:
    """The state file's content for ``users`` (status as stored; no connections)."""
    return {
        user.user_id: {
            "userId": user.user_id,
            "connectionId": None,
            "status": user.last_status.value,
            "lastSeen": None if user.last_seen is None else format_timestamp(user.last_seen),
            "username": user.username,
            "statusMessage": user.status_message,
        }
        for user in users
    }


def write_state(path: Path, document: Mapping[str, object]) -> bool:
    """Write ``document`` to ``path`` atomically; returns whether a previous file
    was kept as the backup.

    Readers see the old file, then (for a moment) only the backup, then the new
    file — never a partial one. Raises TransferError when it cannot write.
    """
    data = orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n"
    temporary = path.with_name(path.name + ".tmp")
    try:
        with temporary.open("wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())  # the rename must not publish unwritten blocks
        kept = path.exists()
        if kept:
            os.replace(path, backup_path(path))
        os.replace(temporary, path)
    except OSError as exc:
        raise TransferError(f"cannot write {path}: {exc.strerror or exc}") from None
    return kept
