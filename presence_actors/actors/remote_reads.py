"""Reads about users this node does not watch (a cluster in ``contacts`` fan-out).

A node keeps the views of the users its sessions follow; anyone else is read
from Redis's read model. These reads run in tasks of their own (never in the
registry's, which must not wait on Redis), and apply the same visibility
rules as :class:`~.queries.Queries`, with the node's copy of the policy. A
view the node holds (watched, so up to date) wins over one read from Redis.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from ..cluster.wire import MergedView
from ..model import UserView, unknown_user
from ..protocol import ErrorCode, ProtocolError
from .directory import decode_cursor, encode_cursor
from .messages import ListQuery, UserPage
from .queries import MAX_PAGE, Queries, without_invisible_devices

if TYPE_CHECKING:
    from ..cluster.link import ClusterLink

T = TypeVar("T")

# (rank, -lastSeen, userId) -> the sorted-set score (cluster.wire.order_score).
_RANK = float(1 << 44)
_SEEN = float(1 << 43)


class StoreUnreachable(ProtocolError):
    def __init__(self, problem: str | None) -> None:
        super().__init__(
            ErrorCode.STORE_ERROR, f"the cluster's store cannot be read now ({problem}); try again"
        )


class RemoteReads:
    def __init__(self, link: ClusterLink, queries: Queries) -> None:
        self._link = link
        self._queries = queries
        self._policy = queries.policy
        self._directory = queries.directory

    def _holds(self, user_id: str) -> bool:
        return self._directory.get(user_id) is not None

    def shown(self, watcher: str | None, user_id: str, merged: MergedView | None) -> UserView:
        """``user_id`` as ``watcher`` may see it, from a view read from Redis."""
        if merged is None or not self._policy.may_see(watcher, user_id):
            return unknown_user(user_id)
        if watcher == user_id:
            return merged.view
        return without_invisible_devices(merged.public)

    async def views(self, watcher: str | None, user_ids: list[str]) -> list[UserView]:
        remote = [u for u in dict.fromkeys(user_ids) if not self._holds(u)]
        found = await self._read(self._link.views(remote)) if remote else {}
        return [
            self._queries.view_for(watcher, u)
            if self._holds(u)
            else self.shown(watcher, u, found.get(u))
            for u in user_ids
        ]

    async def lookup(self, watcher: str | None, user_id: str) -> UserView | None:
        """Like views(), but None for a user Redis does not know or ``watcher`` may not see."""
        if self._holds(user_id):
            return (
                self._queries.view_for(watcher, user_id)
                if self._policy.may_see(watcher, user_id)
                else None
            )
        found = (await self._read(self._link.views([user_id]))).get(user_id)
        if found is None or not self._policy.may_see(watcher, user_id):
            return None
        return self.shown(watcher, user_id, found)

    async def online_count(self, watcher: str | None) -> int:
        """Online users ``watcher`` may see: all online users, less the restricted ones
        (visibility or blocks) hidden from it."""
        count = await self._read(self._link.online_count())
        restricted = sorted(self._policy.restricted())
        if restricted:
            found = await self._read(self._link.views(restricted))
            for user_id, merged in found.items():
                if merged.view.online and not self._policy.may_see(watcher, user_id):
                    count -= 1
        return count

    async def known_count(self) -> int:
        return await self._read(self._link.known_count())

    async def page(self, query: ListQuery) -> UserPage:
        if query.limit < 1:
            raise ProtocolError(ErrorCode.INVALID_MESSAGE, "limit must be at least 1")
        if query.limit > MAX_PAGE:
            raise ProtocolError(ErrorCode.LIMIT_EXCEEDED, f"limit must be at most {MAX_PAGE}")
        after = None
        if query.cursor is not None:
            try:
                rank, negative_seen, user_id = decode_cursor(query.cursor)
            except ValueError as exc:
                raise ProtocolError(ErrorCode.INVALID_MESSAGE, str(exc)) from None
            after = (rank * _RANK + _SEEN + negative_seen, user_id)
        watcher, status = query.watcher, query.status
        may_see = self._policy.may_see

        def accept(merged: MergedView) -> bool:
            return (status is None or merged.view.status is status) and may_see(
                watcher, merged.user_id
            )

        found, last = await self._read(self._link.page(after, query.limit, accept))
        users = tuple(self.shown(watcher, m.user_id, m) for m in found)
        cursor = None
        if last is not None and len(found) == query.limit:
            score, user_id = last
            rank = int(score // _RANK)
            cursor = encode_cursor((rank, int(score - rank * _RANK - _SEEN), user_id))
        return UserPage(users, cursor)

    async def _read(self, read: Coroutine[Any, Any, T]) -> T:
        if not self._link.connected:
            read.close()
            raise StoreUnreachable(self._link.problem)
        try:
            return await read
        except (ConnectionError, OSError, TimeoutError) as exc:
            raise StoreUnreachable(str(exc)) from None
