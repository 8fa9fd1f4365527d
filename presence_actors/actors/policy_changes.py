"""Visibility, contact and block changes, and showing their effect at once.

Owned by the registry task. A change looks only at the sessions whose sight it
can alter: every watcher of a user whose visibility changes, the blocked
user's sessions for a block, both sides' sessions for a contact. A watcher
that loses sight of a user is pushed the user as an unknown one (and nothing
after); a watcher that gains sight of it, or starts following it (a new
contact in ``contacts`` fan-out), is pushed its current state. The walk
spends the registry's turn, so a change seen by ten thousand watchers does
not hold the event loop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial

from ..codec import make_push
from ..model import unknown_user
from ..persistence.intents import (
    BlockAdded,
    BlockRemoved,
    ContactAdded,
    ContactRemoved,
    ContactsReplaced,
    Intent,
    VisibilityRow,
)
from ..protocol import ErrorCode, ProtocolError, Push
from .clock import WallClock
from .messages import AddContact, AdminCommand, RemoveContact, ReplaceContacts, SetVisibility
from .queries import Queries
from .session import Outgoing, SessionHandle
from .turns import Turn
from .user import Writer
from .watch_index import WatchIndex

# (a user whose visibility to others may change, whose sessions may be affected:
# the given users' sessions, or None for every session following that user)
Affected = tuple[str, Iterable[str] | None]


class PolicyChanges:
    def __init__(
        self,
        queries: Queries,
        index: WatchIndex,
        writer: Writer,
        clock: WallClock,
        push: Callable[[SessionHandle, Outgoing], None],
    ) -> None:
        self._queries = queries
        self._policy = queries.policy
        self._index = index
        self._writer = writer
        self._clock = clock
        self._push = push
        # Told every user whose contacts a change touched (before, after): in a
        # cluster the node then follows other users.
        self.on_contacts: Callable[[str, set[str], set[str]], None] | None = None

    async def apply(self, command: AdminCommand, turn: Turn) -> None:
        """An admin change (contacts, visibility), applied like a user's own change.

        Raises ProtocolError (STORE_ERROR), changing nothing, when the writer
        cannot take its intents now.
        """
        policy = self._policy
        match command:
            case ReplaceContacts(user_id, contacts):
                old = policy.contacts(user_id)
                changed = old ^ contacts
                await self._change(
                    [(user_id, changed)] + [(c, (user_id,)) for c in changed],
                    lambda: policy.replace_contacts(user_id, contacts),
                    [ContactsReplaced(user_id, frozenset(contacts))],
                    turn,
                )
            case AddContact(user_id, contact_id):
                await self._change(
                    [(user_id, (contact_id,)), (contact_id, (user_id,))],
                    lambda: policy.add_contact(user_id, contact_id),
                    [ContactAdded(user_id, contact_id)],
                    turn,
                )
            case RemoveContact(user_id, contact_id):
                await self._change(
                    [(user_id, (contact_id,)), (contact_id, (user_id,))],
                    lambda: policy.remove_contact(user_id, contact_id),
                    [ContactRemoved(user_id, contact_id)],
                    turn,
                )
            case SetVisibility(user_id, visibility):
                await self._change(
                    [(user_id, None)],
                    lambda: policy.set_visibility(user_id, visibility),
                    [VisibilityRow(user_id, visibility, self._clock.now_ms())],
                    turn,
                )

    async def replay(self, intent: Intent, turn: Turn) -> None:
        """A change another node made and stored (cluster mode): applied and shown
        here like a local one, without storing it again."""
        policy = self._policy
        affected: list[Affected]
        change: Callable[[], None]
        match intent:
            case ContactsReplaced(user_id, contacts):
                changed = policy.contacts(user_id) ^ contacts
                affected = [(user_id, changed)] + [(c, (user_id,)) for c in changed]
                change = partial(policy.replace_contacts, user_id, contacts)
            case ContactAdded(user_id, contact_id):
                affected = [(user_id, (contact_id,)), (contact_id, (user_id,))]
                change = partial(policy.add_contact, user_id, contact_id)
            case ContactRemoved(user_id, contact_id):
                affected = [(user_id, (contact_id,)), (contact_id, (user_id,))]
                change = partial(policy.remove_contact, user_id, contact_id)
            case VisibilityRow(user_id, visibility):
                affected = [(user_id, None)]
                change = partial(policy.set_visibility, user_id, visibility)
            case BlockAdded(user_id, blocked_id):
                affected = [(user_id, (blocked_id,))]
                change = partial(policy.block, user_id, blocked_id)
            case BlockRemoved(user_id, blocked_id):
                affected = [(user_id, (blocked_id,))]
                change = partial(policy.unblock, user_id, blocked_id)
            case _:
                return
        await self._change(affected, change, [], turn)

    async def block(self, user_id: str, blocked_id: str, turn: Turn) -> None:
        await self._change(
            [(user_id, (blocked_id,))],
            lambda: self._policy.block(user_id, blocked_id),
            [BlockAdded(user_id, blocked_id)],
            turn,
        )

    async def unblock(self, user_id: str, blocked_id: str, turn: Turn) -> None:
        await self._change(
            [(user_id, (blocked_id,))],
            lambda: self._policy.unblock(user_id, blocked_id),
            [BlockRemoved(user_id, blocked_id)],
            turn,
        )

    async def _change(
        self,
        affected: list[Affected],
        change: Callable[[], None],
        intents: Iterable[Intent],
        turn: Turn,
    ) -> None:
        """Apply a policy change and show its effect to the ``affected`` sessions at once.

        The intents are accepted by the writer before anything changes, or the
        change is refused (STORE_ERROR). Runs in the registry task: nothing else
        changes the policy or the watch index while it yields.
        """
        intents = list(intents)
        if intents and self._writer.free_slots() < len(intents):
            problem = self._writer.problem or "it is busy"
            raise ProtocolError(
                ErrorCode.STORE_ERROR, f"the change cannot be stored now ({problem}); try again"
            )
        for intent in intents:
            self._writer.submit_nowait(intent)
        before = [await self._sight(target, users, turn) for target, users in affected]
        touched = {target for target, _ in affected} if self.on_contacts else set()
        contacts_before = {user: set(self._policy.contact_list(user)) for user in touched}
        change()
        if self.on_contacts is not None:
            for user in touched:
                after = set(self._policy.contact_list(user))
                if after != contacts_before[user]:
                    self.on_contacts(user, contacts_before[user], after)
        stamp = self._clock.now_ms()
        may_see = self._policy.may_see
        for (target, users), could_see in zip(affected, before, strict=True):
            can_see = await self._sight(target, users, turn)
            view = self._queries.directory.get(target)
            hidden: Push | None = None
            shown: Push | None = None
            for watcher in could_see.keys() | can_see.keys():
                could, can = could_see.get(watcher, False), can_see.get(watcher, False)
                if could and not may_see(watcher.user_id, target):
                    hidden = hidden or make_push(unknown_user(target), stamp)
                    self._push(watcher, hidden)
                elif can and not could and view is not None:
                    shown = shown or make_push(
                        self._queries.view_for(watcher.user_id, target), stamp
                    )
                    self._push(watcher, shown)
            await turn.spend(1 + len(could_see) + len(can_see))

    async def _sight(
        self, target: str, users: Iterable[str] | None, turn: Turn
    ) -> dict[SessionHandle, bool]:
        """Which of the affected sessions follow ``target`` and may see it, now."""
        index, may_see = self._index, self._policy.may_see
        sight: dict[SessionHandle, bool] = {}
        if users is None:
            # A snapshot: the walk yields, and only this task changes the index.
            for session in list(index.watchers_of(target)):
                if session.user_id != target:
                    sight[session] = may_see(session.user_id, target)
                await turn.spend()
            return sight
        for user in users:
            if user != target:
                for session in index.sessions_of(user):
                    if index.follows(session, target):
                        sight[session] = may_see(user, target)
            await turn.spend()
        return sight
