"""Who may see whom: visibility, contacts and blocks (PROTOCOL.md "Visibility").

Owned by the registry task; pure lookups, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ..model import Visibility


class Policy:
    """Visibility per user, the symmetric contact relation and block lists.

    Watcher W may see user U iff W is U, or U has not blocked W and U's
    visibility is ``everyone``, or ``contacts`` with W among U's contacts.
    An anonymous watcher (``None``) sees only ``everyone`` users.
    """

    def __init__(
        self,
        *,
        default_visibility: Visibility = Visibility.EVERYONE,
        visibility: Mapping[str, Visibility] | None = None,
        contacts: Mapping[str, Iterable[str]] | None = None,
        blocks: Mapping[str, Iterable[str]] | None = None,
    ) -> None:
        self.default_visibility = default_visibility
        self._visibility: dict[str, Visibility] = dict(visibility or {})
        self._contacts: dict[str, set[str]] = {}
        self._blocks: dict[str, set[str]] = {}
        for user, others in (contacts or {}).items():
            for other in others:
                self.add_contact(user, other)
        for user, blocked in (blocks or {}).items():
            for other in blocked:
                self.block(user, other)

    def visibility(self, user_id: str) -> Visibility:
        return self._visibility.get(user_id, self.default_visibility)

    def contacts(self, user_id: str) -> frozenset[str]:
        return frozenset(self._contacts.get(user_id, ()))

    def blocked_by(self, user_id: str) -> frozenset[str]:
        """The users ``user_id`` has blocked."""
        return frozenset(self._blocks.get(user_id, ()))

    def is_public(self, user_id: str) -> bool:
        """Everyone may see ``user_id``: the fan-out needs no per-watcher check."""
        return self.visibility(user_id) is Visibility.EVERYONE and not self._blocks.get(user_id)

    def may_see(self, watcher: str | None, user_id: str) -> bool:
        if watcher == user_id:
            return True
        if watcher is not None:
            blocked = self._blocks.get(user_id)
            if blocked and watcher in blocked:
                return False
        visibility = self.visibility(user_id)
        if visibility is Visibility.EVERYONE:
            return True
        if visibility is Visibility.NOBODY or watcher is None:
            return False
        contacts = self._contacts.get(user_id)
        return contacts is not None and watcher in contacts

    def restricted(self) -> set[str]:
        """Users that some watcher may not see (non-default visibility or a block list)."""
        hidden = {u for u, v in self._visibility.items() if v is not Visibility.EVERYONE}
        return hidden | self._blocks.keys()

    def snapshot(self) -> tuple[dict[str, Visibility], dict[str, set[str]], dict[str, set[str]]]:
        """Copies of every chosen visibility, contact list and block list."""
        return (
            dict(self._visibility),
            {user: set(others) for user, others in self._contacts.items()},
            {user: set(blocked) for user, blocked in self._blocks.items()},
        )

    def contact_list(self, user_id: str) -> set[str]:
        """The live set (read-only for callers) used by the contacts fan-out."""
        return self._contacts.get(user_id, _EMPTY)

    # --- changes -------------------------------------------------------------

    def set_visibility(self, user_id: str, visibility: Visibility) -> None:
        self._visibility[user_id] = visibility

    def add_contact(self, user_id: str, contact_id: str) -> None:
        if user_id == contact_id:
            return
        self._contacts.setdefault(user_id, set()).add(contact_id)
        self._contacts.setdefault(contact_id, set()).add(user_id)

    def remove_contact(self, user_id: str, contact_id: str) -> None:
        for a, b in ((user_id, contact_id), (contact_id, user_id)):
            mine = self._contacts.get(a)
            if mine is not None:
                mine.discard(b)
                if not mine:
                    del self._contacts[a]

    def replace_contacts(self, user_id: str, contacts: Iterable[str]) -> None:
        for old in list(self._contacts.get(user_id, ())):
            self.remove_contact(user_id, old)
        for new in contacts:
            self.add_contact(user_id, new)

    def block(self, user_id: str, blocked_id: str) -> None:
        if user_id != blocked_id:
            self._blocks.setdefault(user_id, set()).add(blocked_id)

    def unblock(self, user_id: str, blocked_id: str) -> None:
        mine = self._blocks.get(user_id)
        if mine is not None:
            mine.discard(blocked_id)
            if not mine:
                del self._blocks[user_id]


_EMPTY: set[str] = set()
