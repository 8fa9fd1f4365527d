"""Fan-out in ticks: the pushes of a moment, coalesced per user, one write per watcher.

The registry hands every change it must push to :meth:`Fanout.add` and calls
:meth:`Fanout.flush` once it has handled what its intake held. Within a tick
a user's later change replaces its earlier one (a push carries the whole
visible state, so the latest is all a watcher needs), and each watcher is
given everything it is owed as one outbox item: a :class:`Push` alone, or a
:class:`PushBatch`. In ``everyone`` mode most watchers are owed the same
pushes, so they share one batch and a transport builds its bytes once for all
of them.

Who may see what is decided when the tick is delivered, not when the change
was made, so a privacy change made in between is never overtaken by an older
push. A flush spends the registry's :class:`~.turns.Turn` as it goes (it runs
in the registry task, so the indexes it reads cannot change under it), and
after a large one the next tick waits in proportion to its size: a flood of
changes costs a bounded share of the event loop however many watchers there
are, at the price of a few milliseconds of latency under that load only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

from attrs import define

from ..protocol import Push, PushBatch
from .policy import Policy
from .session import Outgoing, SessionHandle, Watches
from .turns import Turn
from .watch_index import WatchIndex

# A flush of more than this many deliveries paces the next tick; smaller ticks
# (every change under light load) go out as soon as the registry is idle.
PACE_ABOVE = 250
# Roughly what one delivery costs (a socket write and its bookkeeping), and how
# much idle time a tick leaves after its own cost: 2 keeps fan-out at no more
# than about a third of the loop while changes flood in.
DELIVERY_SECONDS = 4e-6
PACE_FACTOR = 2.0

# user_id -> its latest change this tick and the session that caused it.
_Pending = dict[str, tuple[Push, SessionHandle | None]]


@define
class FanoutStatistics:
    pushes: int = 0  # pushes delivered (a batch of n counts n)
    push_drops: int = 0  # pushes refused by a full outbox
    ticks: int = 0


class Fanout:
    def __init__(
        self,
        index: WatchIndex,
        policy: Policy,
        deliver: Callable[[SessionHandle, Outgoing], bool],
        stats: FanoutStatistics,
    ) -> None:
        self._index = index
        self._policy = policy
        self._deliver = deliver
        self.stats = stats
        self._pending: _Pending = {}
        self.due_at = -math.inf  # no tick is delivered before this (trio time)

    @property
    def waiting(self) -> bool:
        return bool(self._pending)

    def add(self, push: Push, cause: SessionHandle | None) -> None:
        """A change to push; ``cause`` (the session that made it, if any) got a reply."""
        user_id = push.view.user_id
        self._pending.pop(user_id, None)  # the latest change of a user goes last
        self._pending[user_id] = (push, cause)

    def due(self, now: float) -> bool:
        return bool(self._pending) and now >= self.due_at

    async def flush(self, turn: Turn, now: float) -> None:
        """Deliver the tick's pushes; a checkpoint whenever ``turn`` is spent."""
        pending, self._pending = self._pending, {}
        if self._index.contacts_mode:
            deliveries = await self._to_followers(pending, turn)
        else:
            deliveries = await self._to_everyone(pending, turn)
        self.stats.ticks += 1
        if deliveries > PACE_ABOVE:
            self.due_at = now + deliveries * DELIVERY_SECONDS * PACE_FACTOR

    async def _to_everyone(self, pending: _Pending, turn: Turn) -> int:
        is_public = self._policy.is_public
        public: list[tuple[Push, SessionHandle | None]] = []
        restricted: list[tuple[str, Push, SessionHandle | None]] = []
        causes: set[SessionHandle] = set()
        for user_id, (push, cause) in pending.items():
            if is_public(user_id):
                public.append((push, cause))
                if cause is not None:
                    causes.add(cause)
            else:
                restricted.append((user_id, push, cause))
        shared = _item_of(tuple(push for push, _ in public))
        may_see = self._policy.may_see
        deliveries = 0
        for watcher in self._index.mode_watchers():
            if watcher.closing or watcher not in self._index:
                continue
            if restricted or watcher in causes:
                me = watcher.user_id
                owed = [push for push, cause in public if cause is not watcher]
                owed += [
                    push
                    for user_id, push, cause in restricted
                    if cause is not watcher and may_see(me, user_id)
                ]
                item = _item_of(tuple(owed))
                await turn.spend(1 + len(restricted) // 16)
            else:
                item = shared
                await turn.spend()
            if item is not None:
                deliveries += 1
                self._give(watcher, item)
        # Sessions that follow only their subscriptions (gRPC streams).
        owed_to: dict[SessionHandle, list[Push]] = {}
        for user_id, (push, cause) in pending.items():
            subscribers = self._index.subscribers_of(user_id)
            if subscribers:
                self._collect(owed_to, subscribers, user_id, push, cause, only_extra=True)
        return deliveries + await self._give_each(owed_to, turn)

    async def _to_followers(self, pending: _Pending, turn: Turn) -> int:
        owed_to: dict[SessionHandle, list[Push]] = {}
        for user_id, (push, cause) in pending.items():
            looked = self._collect(owed_to, self._index.watchers_of(user_id), user_id, push, cause)
            await turn.spend(1 + looked // 4)
        return await self._give_each(owed_to, turn)

    def _collect(
        self,
        owed_to: dict[SessionHandle, list[Push]],
        watchers: Iterable[SessionHandle],
        user_id: str,
        push: Push,
        cause: SessionHandle | None,
        *,
        only_extra: bool = False,
    ) -> int:
        public = self._policy.is_public(user_id)
        may_see = self._policy.may_see
        looked = 0
        for watcher in watchers:
            looked += 1
            if watcher is cause or (only_extra and watcher.watches is Watches.MODE):
                continue
            if public or may_see(watcher.user_id, user_id):
                owed = owed_to.get(watcher)
                if owed is None:
                    owed_to[watcher] = [push]
                else:
                    owed.append(push)
        return looked

    async def _give_each(self, owed_to: dict[SessionHandle, list[Push]], turn: Turn) -> int:
        deliveries = 0
        for watcher, owed in owed_to.items():
            await turn.spend()
            if watcher.closing or watcher not in self._index:
                continue
            item = _item_of(tuple(owed))
            if item is not None:
                deliveries += 1
                self._give(watcher, item)
        return deliveries

    def _give(self, watcher: SessionHandle, item: Push | PushBatch) -> None:
        count = len(item.pushes) if isinstance(item, PushBatch) else 1
        if self._deliver(watcher, item):
            self.stats.pushes += count
        else:
            self.stats.push_drops += count


def _item_of(pushes: tuple[Push, ...]) -> Push | PushBatch | None:
    if not pushes:
        return None
    if len(pushes) == 1:
        return pushes[0]
    return PushBatch.of(pushes)
