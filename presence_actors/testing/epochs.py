"""What the database holds between two runs of the process (an epoch ends at a restart).

:func:`read_store` reads a database file the way a restarted process would
find it: the users' profiles, the privacy policy and the audit log. The truth
starts the next epoch from it, and the ledger holds it against what the
ended epoch acknowledged and pushed.
"""

from __future__ import annotations

from pathlib import Path

from attrs import frozen

from ..model import Status, Visibility
from ..persistence.queries import EventRecord, StoreReader, connect
from ..persistence.store import StoredUser
from .truth import StoredProfile, TruePolicy


@frozen
class StoreState:
    users: dict[str, StoredUser]
    contacts: dict[str, set[str]]
    blocks: dict[str, set[str]]
    events: dict[str, list[EventRecord]]  # by user, oldest first

    @classmethod
    def empty(cls) -> StoreState:
        return cls({}, {}, {}, {})

    def profiles(self) -> dict[str, StoredProfile]:
        profiles = {}
        for user_id, user in self.users.items():
            face = user.shown or (user.username, user.status_message)
            profiles[user_id] = StoredProfile(
                user.username, user.status_message, face, user.last_seen
            )
        return profiles

    def policy(self, default: Visibility) -> TruePolicy:
        policy = TruePolicy(default)
        for user_id, user in self.users.items():
            if user.visibility is not None:
                policy.visibility[user_id] = user.visibility
        policy.contacts = {u: c - {u} for u, c in self.contacts.items()}
        policy.blocks = {u: b - {u} for u, b in self.blocks.items()}
        return policy

    def value(self, user_id: str, what: str) -> tuple[object, ...]:
        """The stored value the ledger compares: a profile, a privacy policy, contacts."""
        user = self.users.get(user_id)
        if what == "profile":
            return (None, None) if user is None else (user.username, user.status_message)
        if what == "policy":
            visibility = None if user is None or user.visibility is None else user.visibility
            # A user's own id in its blocks or contacts means nothing (the engine
            # ignores it, in memory and when it loads them), though it is stored.
            blocked = tuple(sorted(self.blocks.get(user_id, set()) - {user_id}))
            return (None if visibility is None else visibility.value, blocked)
        return tuple(sorted(self.contacts.get(user_id, set()) - {user_id}))

    def events_since(self, user_id: str, since_ms: int) -> list[EventRecord]:
        return [e for e in self.events.get(user_id, ()) if e.at >= since_ms]


def read_store(path: Path) -> StoreState:
    """Everything the simulation reads of the database at ``path``.

    A read-write connection: a database copied from a killed process has its
    WAL beside it, which SQLite replays on opening.
    """
    reader = StoreReader(connect(str(path), uri=False, busy_timeout_ms=1000))
    with reader:
        users = {u.user_id: u for u in reader.load_users()}
        contacts = reader.load_contacts()
        blocks = reader.load_blocks()
        events: dict[str, list[EventRecord]] = {}
        rows = reader.db.execute(
            "SELECT user_id, status, at, reason, device_id FROM presence_events ORDER BY at, id"
        )
        for user_id, status, at, reason, device in rows:
            events.setdefault(user_id, []).append(
                EventRecord(user_id, Status(status), at, reason, device)
            )
    return StoreState(users, contacts, blocks, events)
