"""The read side of the registry: users as a given watcher may see them.

Owned by the registry task, like the directory and the policy it reads. Bulk
answers (a page of ten thousand users, a thousand ids) are walked in pieces
that spend a :class:`~.turns.Turn`, and each view's JSON is encoded on the
way, so the transport that sends the answer only splices cached encodings:
no answer holds the event loop for more than a turn.
"""

from __future__ import annotations

from typing import Any

from attrs import frozen

from ..codec import view_fragment
from ..model import Status, UserView, Visibility, unknown_user
from ..protocol import ErrorCode, ProtocolError
from .directory import Directory, SortKey, decode_cursor, encode_cursor, sort_key
from .messages import ListQuery, LookupQuery, PolicyQuery, PolicyView, UserPage, ViewsQuery
from .policy import Policy
from .turns import Turn

# Largest page of get_all_users (PROTOCOL.md).
MAX_PAGE = 10_000
# A list walk goes in pieces of at most this many views looked at, and found: a
# view found is looked up for the watcher and encoded (some 10-30 us: eight units,
# for long usernames and status messages); one only looked at costs little.
_SCAN_PIECE = 500
_FOUND_PIECE = 50
_UNITS_PER_VIEW = 8


@frozen
class Listed:
    """Views, and their JSON encodings in the same order (for ``codec.prepare_bulk``)."""

    views: tuple[UserView, ...]
    fragments: list[bytes]


def without_invisible_devices(view: UserView) -> UserView:
    """``view`` as others see it: invisible devices are the user's own business.

    The same object for the same ``view`` (the last one stripped of each user is
    kept), so the encodings cached per view object (``codec.view_fragment``, the
    gRPC messages) are reused for a user with an invisible device too.
    """
    for device in view.devices:
        if device.status is Status.OFFLINE:
            break
    else:
        return view
    kept = _stripped.get(view.user_id)
    if kept is not None and kept[0] is view:
        return kept[1]
    devices = tuple(d for d in view.devices if d.status is not Status.OFFLINE)
    shown = UserView(
        view.user_id,
        view.status,
        view.username,
        view.status_message,
        view.last_seen,
        devices,
    )
    if kept is None and len(_stripped) >= _STRIPPED_LIMIT:
        _stripped.clear()
    _stripped[view.user_id] = (view, shown)
    return shown


# The last public view stripped of each user (the view it came from, the result): a
# user's views live until they change, so this holds at most one pair per user.
_STRIPPED_LIMIT = 100_000
_stripped: dict[str, tuple[UserView, UserView]] = {}


class Queries:
    def __init__(self, directory: Directory, policy: Policy) -> None:
        self.directory = directory
        self.policy = policy

    def view_for(self, watcher: str | None, user_id: str) -> UserView:
        """``user_id`` as ``watcher`` may see it; a hidden user looks like an unknown one."""
        if watcher == user_id:
            return self.directory.get(user_id) or unknown_user(user_id)
        if not self.policy.may_see(watcher, user_id):
            return unknown_user(user_id)
        view = self.directory.public(user_id)
        if view is None:
            return unknown_user(user_id)
        return without_invisible_devices(view)

    async def views_for(
        self, watcher: str | None, user_ids: tuple[str, ...] | list[str], turn: Turn
    ) -> Listed:
        """Each of ``user_ids`` as ``watcher`` may see it, encoded as it goes.

        Walked in pieces of :data:`_FOUND_PIECE` views with a checkpoint between
        pieces once the turn is spent (the rules of :meth:`view_for`, inlined:
        this is the hot path of every bulk query).
        """
        views: list[UserView] = []
        fragments: list[bytes] = []
        own = self.directory.get
        public = self.directory.public
        may_see = self.policy.may_see
        for start in range(0, len(user_ids), _FOUND_PIECE):
            piece = user_ids[start : start + _FOUND_PIECE]
            for user_id in piece:
                view: UserView | None
                if watcher == user_id:
                    view = own(user_id)
                elif may_see(watcher, user_id):
                    view = public(user_id)
                    if view is not None and view.devices:
                        view = without_invisible_devices(view)
                else:
                    view = None
                if view is None:
                    view = unknown_user(user_id)
                views.append(view)
                fragments.append(view_fragment(view))
            await turn.spend(_UNITS_PER_VIEW * len(piece))
        return Listed(tuple(views), fragments)

    def online_count(self, watcher: str | None) -> int:
        """Online users ``watcher`` may see."""
        if self.policy.default_visibility is not Visibility.EVERYONE:
            return sum(
                1
                for view in self.directory.views()
                if view.online and self.policy.may_see(watcher, view.user_id)
            )
        count = self.directory.online
        for user_id in self.policy.restricted():
            view = self.directory.get(user_id)
            if view is not None and view.online and not self.policy.may_see(watcher, user_id):
                count -= 1
        return count

    async def list_users(self, query: ListQuery, turn: Turn) -> tuple[UserPage, list[bytes]]:
        """A page of the users ``query.watcher`` may see, in list order.

        Walked in pieces with the directory changing in between, like pages
        read one after the other: a user who moves during the walk may be
        left out, never listed twice.
        """
        if query.limit < 1:
            raise ProtocolError(ErrorCode.INVALID_MESSAGE, "limit must be at least 1")
        if query.limit > MAX_PAGE:
            raise ProtocolError(ErrorCode.LIMIT_EXCEEDED, f"limit must be at most {MAX_PAGE}")
        after: SortKey | None = None
        if query.cursor is not None:
            try:
                after = decode_cursor(query.cursor)
            except ValueError as exc:
                raise ProtocolError(ErrorCode.INVALID_MESSAGE, str(exc)) from None
        watcher, status = query.watcher, query.status
        may_see = self.policy.may_see

        def accept(view: UserView) -> bool:
            return (status is None or view.status is status) and may_see(watcher, view.user_id)

        found: dict[str, UserView] = {}
        pieces: list[bytes] = []  # each piece's encodings, joined as it goes
        last: SortKey | None = None
        while len(found) < query.limit:
            most = min(query.limit - len(found), _FOUND_PIECE)
            piece, after = self.directory.scan(accept, most, after, _SCAN_PIECE)
            fragments = []
            for view in piece:
                if view.user_id not in found:
                    shown = self.view_for(watcher, view.user_id)
                    fragments.append(view_fragment(shown))
                    found[view.user_id] = shown
                    last = sort_key(view)
            if fragments:
                pieces.append(b",".join(fragments))
            await turn.spend(_UNITS_PER_VIEW * len(piece) + _SCAN_PIECE // 10)
            if after is None:
                break
        users = tuple(found.values())
        cursor = encode_cursor(last) if len(found) == query.limit and last is not None else None
        return UserPage(users, cursor), pieces

    async def answer(
        self, query: ViewsQuery | ListQuery | LookupQuery | PolicyQuery, turn: Turn
    ) -> Any:
        """Answer a read-only question from HTTP or gRPC; raises ProtocolError for a
        refused one. The views of a list are encoded on the way (see the module)."""
        match query:
            case ViewsQuery(watcher, user_ids):
                return list((await self.views_for(watcher, user_ids, turn)).views)
            case ListQuery():
                page, _ = await self.list_users(query, turn)
                return page
            case LookupQuery(watcher, user_id):
                known = self.directory.get(user_id) is not None
                if known and self.policy.may_see(watcher, user_id):
                    return self.view_for(watcher, user_id)
                return None
            case PolicyQuery(user_id):
                return PolicyView(
                    self.policy.visibility(user_id),
                    self.policy.contacts(user_id),
                    self.policy.blocked_by(user_id),
                )
