"""Who watches whom: the live sessions, each user's own sessions, explicit subscriptions.

Owned by the registry task. Pure bookkeeping, no I/O: the fan-out and the
privacy changes ask it for the watchers of a user.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

from attrs import define, field

from ..protocol import ErrorCode, ProtocolError
from .policy import Policy
from .session import SessionHandle, Watches


@define(eq=False)
class Watch:
    """Registry-side bookkeeping of one live session."""

    subscriptions: set[str] = field(factory=set)
    seen_at: float = -math.inf  # when its actor was last told it is active
    # Live (its requests are answered) but not yet pushed: it waits for the state
    # it must be shown first (presence_state, in a cluster read from Redis).
    gated: bool = False


class WatchIndex:
    """The live sessions and who follows whom.

    In ``everyone`` fan-out every session that watches by mode follows every
    user; in ``contacts`` fan-out a user is followed by its own sessions and
    its contacts' sessions. Explicit subscriptions add to both.
    """

    def __init__(self, policy: Policy, *, contacts_mode: bool) -> None:
        self.contacts_mode = contacts_mode
        self._policy = policy
        self._sessions: dict[SessionHandle, Watch] = {}
        self._by_user: dict[str, list[SessionHandle]] = {}
        self._subscribers: dict[str, set[SessionHandle]] = {}
        # Sessions pushed by mode (most of them), in arrival order: the everyone
        # fan-out walks this instead of filtering every session on each change.
        self._by_mode: dict[SessionHandle, None] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def __contains__(self, session: SessionHandle) -> bool:
        return session in self._sessions

    def watch_of(self, session: SessionHandle) -> Watch:
        return self._sessions[session]

    def add(self, session: SessionHandle, *, gated: bool = False) -> None:
        """A live session; ``gated``: nothing is pushed to it before :meth:`ungate`."""
        self._sessions[session] = Watch(gated=gated)
        if not gated:
            self._follow(session)

    def ungate(self, session: SessionHandle) -> None:
        watch = self._sessions.get(session)
        if watch is not None and watch.gated:
            watch.gated = False
            self._follow(session)

    def _follow(self, session: SessionHandle) -> None:
        self._by_user.setdefault(session.user_id, []).append(session)
        if session.watches is Watches.MODE:
            self._by_mode[session] = None

    def remove(self, session: SessionHandle) -> bool:
        """Forget a session; False if it was not live."""
        watch = self._sessions.pop(session, None)
        if watch is None:
            return False
        self._by_mode.pop(session, None)
        mine = self._by_user.get(session.user_id)
        if mine is not None and not watch.gated:
            mine.remove(session)
            if not mine:
                del self._by_user[session.user_id]
        for target in watch.subscriptions:
            subscribers = self._subscribers.get(target)
            if subscribers is not None:
                subscribers.discard(session)
                if not subscribers:
                    del self._subscribers[target]
        return True

    def sessions_of(self, user_id: str) -> list[SessionHandle]:
        return self._by_user.get(user_id, [])

    def subscribe(self, session: SessionHandle, user_ids: tuple[str, ...], most: int) -> None:
        """Add subscriptions; raises LIMIT_EXCEEDED (adding none) past ``most`` per session."""
        watch = self._sessions[session]
        new = set(user_ids) - watch.subscriptions
        if len(watch.subscriptions) + len(new) > most:
            raise ProtocolError(
                ErrorCode.LIMIT_EXCEEDED, f"at most {most} subscriptions per session"
            )
        for target in new:
            watch.subscriptions.add(target)
            self._subscribers.setdefault(target, set()).add(session)

    def unsubscribe(self, session: SessionHandle, user_ids: tuple[str, ...]) -> None:
        watch = self._sessions[session]
        for target in user_ids:
            if target in watch.subscriptions:
                watch.subscriptions.discard(target)
                subscribers = self._subscribers[target]
                subscribers.discard(session)
                if not subscribers:
                    del self._subscribers[target]

    def mode_watchers(self) -> list[SessionHandle]:
        """A snapshot of the sessions pushed by mode (everyone fan-out)."""
        return list(self._by_mode)

    def subscribers_of(self, user_id: str) -> set[SessionHandle]:
        """The live set (read-only for callers) of sessions subscribed to ``user_id``."""
        return self._subscribers.get(user_id, _NOBODY)

    def follows(self, session: SessionHandle, user_id: str) -> bool:
        """Whether ``session`` is among :meth:`watchers_of` ``user_id``."""
        if session not in self._sessions:
            return False
        if session.watches is Watches.MODE and (
            not self.contacts_mode
            or session.user_id == user_id
            or session.user_id in self._policy.contact_list(user_id)
        ):
            return True
        return session in self._subscribers.get(user_id, ())

    def watchers_of(self, user_id: str) -> Iterator[SessionHandle]:
        """Every live session that follows ``user_id``, once each.

        Not a snapshot: the caller must not let the index change while iterating.
        """
        if not self.contacts_mode:
            yield from self._by_mode
            for session in self._subscribers.get(user_id, ()):
                if session not in self._by_mode:
                    yield session
            return
        seen: set[SessionHandle] = set()
        for session in self._by_user.get(user_id, ()):
            if session.watches is Watches.MODE:
                seen.add(session)
                yield session
        for contact in self._policy.contact_list(user_id):
            for session in self._by_user.get(contact, ()):
                if session.watches is Watches.MODE:
                    seen.add(session)
                    yield session
        for session in self._subscribers.get(user_id, ()):
            if session not in seen:
                yield session


_NOBODY: set[SessionHandle] = set()
