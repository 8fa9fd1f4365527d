"""The registry's directory: the latest view of every known user, kept in list order.

Order (PROTOCOL.md ``get_all_users``): online first, then by lastSeen, most
recent first, then by userId. Paging uses an opaque cursor holding the sort
key of the last user returned (keyset pagination: stable under inserts).
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable, Iterator

import orjson
from sortedcontainers import SortedList

from ..model import Status, UserView

SortKey = tuple[int, int, str]


def sort_key(view: UserView) -> SortKey:
    rank = 1 if view.status is Status.OFFLINE else 0
    last_seen = -1 if view.last_seen is None else view.last_seen
    return (rank, -last_seen, view.user_id)


def encode_cursor(key: SortKey) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(list(key))).decode().rstrip("=")


def decode_cursor(cursor: str) -> SortKey:
    """Raises ValueError for anything that is not a cursor this server made."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        rank, last_seen, user_id = orjson.loads(base64.urlsafe_b64decode(padded))
    except Exception as exc:
        raise ValueError(f"invalid cursor {cursor!r}") from exc
    if not (isinstance(rank, int) and isinstance(last_seen, int) and isinstance(user_id, str)):
        raise ValueError(f"invalid cursor {cursor!r}")
    return (rank, last_seen, user_id)


class Directory:
    """Every known user's latest view, in list order; and, for the few users whose
    view others see differently (an invisible user, which must look offline), that
    public view. Both share their place in the order (same status and lastSeen)."""

    def __init__(self, views: Iterable[UserView] = ()) -> None:
        self._views: dict[str, UserView] = {}
        self._public: dict[str, UserView] = {}
        # The sort keys alone (their user id finds the view): a key is a tuple, so
        # finding and moving one compares tuples in C, with no key function called.
        self._order: SortedList = SortedList()
        self.online = 0
        for view in views:
            self.put(view)

    def __len__(self) -> int:
        return len(self._views)

    def get(self, user_id: str) -> UserView | None:
        return self._views.get(user_id)

    def public(self, user_id: str) -> UserView | None:
        """The user as others see it (``get`` is how it sees itself)."""
        return self._public.get(user_id) or self._views.get(user_id)

    def put(self, view: UserView, public: UserView | None = None) -> None:
        if public is None or public is view:
            self._public.pop(view.user_id, None)
        else:
            assert sort_key(public) == sort_key(view)
            self._public[view.user_id] = public
        old = self._views.get(view.user_id)
        key = sort_key(view)
        self._views[view.user_id] = view
        if old is not None:
            self.online -= old.online
            old_key = sort_key(old)
            if old_key == key:
                self.online += view.online
                return
            self._order.remove(old_key)
        self._order.add(key)
        self.online += view.online

    def remove(self, user_id: str) -> None:
        old = self._views.pop(user_id, None)
        self._public.pop(user_id, None)
        if old is not None:
            self._order.remove(sort_key(old))
            self.online -= old.online

    def views(self) -> Iterator[UserView]:
        return iter(self._views.values())

    def _walk(self, after: SortKey | None) -> Iterator[UserView]:
        """The views in list order, from just after ``after`` (the start if None)."""
        keys = (
            self._order.irange(minimum=after, inclusive=(False, True))
            if after is not None
            else iter(self._order)
        )
        views = self._views
        return (views[key[2]] for key in keys)

    def page(
        self,
        accept: Callable[[UserView], bool],
        limit: int,
        after: SortKey | None = None,
    ) -> tuple[list[UserView], str | None]:
        """Up to ``limit`` accepted views in list order after ``after``, and the next cursor."""
        found: list[UserView] = []
        iterator = self._walk(after)
        for view in iterator:
            if accept(view):
                found.append(view)
                if len(found) == limit:
                    break
        else:
            return found, None
        return found, encode_cursor(sort_key(found[-1]))

    def scan(
        self,
        accept: Callable[[UserView], bool],
        limit: int,
        after: SortKey | None,
        most: int,
    ) -> tuple[list[UserView], SortKey | None]:
        """Like :meth:`page`, looking at no more than ``most`` views: a piece of a long
        walk. Returns the accepted views and where the walk stopped (None at the end)."""
        found: list[UserView] = []
        iterator = self._walk(after)
        last: SortKey | None = None
        for looked, view in enumerate(iterator, 1):
            last = sort_key(view)
            if accept(view):
                found.append(view)
                if len(found) == limit:
                    return found, last
            if looked == most:
                return found, last
        return found, None
