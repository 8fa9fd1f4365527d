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
import time
from collections import defaultdict
from collections.abc import Callable

import trio
from attrs import define

from ..protocol import Push, PushBatch
from .policy import Policy
from .session import Outgoing, SessionHandle, Watches
from .turns import Turn
from .watch_index import WatchIndex

# Writing a batch of many pushes costs the kernel's copy too: a turn unit per this
# many bytes (a 100 KB batch to one socket takes some tens of microseconds).
BYTES_PER_UNIT = 8192
# A flush of more than this many deliveries paces the next tick; smaller ticks
# (every change under light load) go out as soon as the registry is idle, so
# under MockClock with few sessions the engine stays deterministic.
PACE_ABOVE = 250
# While changes keep arriving (the registry found a new message when it
# yielded with a tick pending) the tick is held, so a watcher is woken and
# written to once for many changes rather than once per change: at most this
# many yields of the registry, and at most this long (trio time, so under
# MockClock only the yields count). It goes out after QUIET_YIELDS yields in a
# row found nothing new: a change arriving at an idle server waits that many
# passes of the scheduler, no clock time. One quiet yield was not enough: the
# next change is often a task the scheduler runs after the registry in the
# same pass (ticks of 3.5 changes in the engine bench).
HOLD_YIELDS = 16
HOLD_SECONDS = 0.002
QUIET_YIELDS = 2
# After a large tick, the next one waits this many times as long as the tick
# took: fan-out then takes at most about a third of the loop while changes flood
# in, and the rest (handshakes, welcomes, heartbeats, the writer) goes on. The
# time a large tick takes is measured, not modelled: most of it is the kernel
# taking each socket's write, which depends on the bytes and the machine.
PACE_FACTOR = 2.0


@define
class FanoutStatistics:
    pushes: int = 0  # pushes delivered (a batch of n counts n)
    push_drops: int = 0  # pushes refused by a full outbox
    ticks: int = 0


@define(eq=False)
class _Change:
    """A user's latest change this tick: what others are pushed (None: nothing, for
    an invisible user's own changes), what its own sessions are pushed (the same
    object when nothing is hidden), and the session whose request made it."""

    shown: Push | None
    own: Push | None
    cause: SessionHandle | None


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
        self._pending: dict[str, _Change] = {}
        self.due_at = -math.inf  # no tick is delivered before this (trio time)
        self.held = 0  # yields of the registry since the pending tick's first change
        self._quiet = 0  # of them, the latest in a row that found nothing new
        self._first_at = math.inf  # when the pending tick's first change came (trio time)

    @property
    def waiting(self) -> bool:
        return bool(self._pending)

    def add(
        self, user_id: str, shown: Push | None, own: Push | None, cause: SessionHandle | None
    ) -> None:
        """A change to push; ``cause`` (the session that made it, if any) got a reply."""
        if not self._pending:
            self._first_at = trio.current_time()
        earlier = self._pending.pop(user_id, None)  # the latest change of a user goes last
        if earlier is not None and earlier.cause is not cause:
            # The push carries the earlier change too, which this cause's reply did
            # not tell it (nor the earlier cause this one): nobody is skipped.
            cause = None
        self._pending[user_id] = _Change(shown, own, cause)

    def holds(self, user_id: str) -> bool:
        """Whether the pending tick has a change of ``user_id``."""
        return user_id in self._pending

    def due(self, now: float) -> bool:
        return bool(self._pending) and now >= self.due_at

    def note_yield(self, *, quiet: bool) -> None:
        """The registry came back from waiting; ``quiet``: with nothing new."""
        self._quiet = self._quiet + 1 if quiet else 0

    def ready(self, now: float) -> bool:
        """Whether the pending tick should go out now (see QUIET_YIELDS, HOLD_YIELDS)."""
        return (
            self._quiet >= QUIET_YIELDS
            or self.held >= HOLD_YIELDS
            or now >= self._first_at + HOLD_SECONDS
        )

    async def flush(self, turn: Turn, now: float) -> None:
        """Deliver the tick's pushes; a checkpoint whenever ``turn`` is spent."""
        pending, self._pending = self._pending, {}
        self.held = self._quiet = 0
        started = time.perf_counter()
        if self._index.contacts_mode:
            deliveries = await self._to_followers(pending, turn)
        else:
            deliveries = await self._to_everyone(pending, turn)
        self.stats.ticks += 1
        if deliveries > PACE_ABOVE:
            self.due_at = now + PACE_FACTOR * (time.perf_counter() - started)

    def _owed(self, watcher: SessionHandle, user_id: str, change: _Change) -> Push | None:
        """What ``watcher`` is pushed of ``user_id``'s change, if anything."""
        if watcher is change.cause:
            return None
        if watcher.user_id == user_id:
            return change.own
        if change.shown is None:
            return None
        if self._policy.is_public(user_id) or self._policy.may_see(watcher.user_id, user_id):
            return change.shown
        return None

    async def _to_everyone(self, pending: dict[str, _Change], turn: Turn) -> int:
        """Most watchers are owed the same pushes: those share one batch. A watcher
        is looked at alone when it caused a change, is the user who changed, or
        some change is not for everyone to see."""
        is_public = self._policy.is_public
        shared: list[Push] = []
        alone: set[SessionHandle] = set()
        everyone_sees_all = True
        for user_id, change in pending.items():
            if change.shown is not None and is_public(user_id):
                shared.append(change.shown)
            elif change.shown is not None:
                everyone_sees_all = False
            if change.cause is not None:
                alone.add(change.cause)
            if change.own is not change.shown:
                alone.update(self._index.sessions_of(user_id))
        common = _item_of(tuple(shared))
        deliveries = 0
        for watcher in self._index.mode_watchers():
            if watcher.closing or watcher not in self._index:
                continue
            units = 0
            if everyone_sees_all and watcher not in alone:
                item = common
            else:
                owed = [
                    push
                    for user_id, change in pending.items()
                    if (push := self._owed(watcher, user_id, change)) is not None
                ]
                item = _item_of(tuple(owed))
                units = len(pending) // 16
            if item is not None:
                deliveries += 1
                units += self._give(watcher, item)
            await turn.spend(1 + units)
        # Sessions that follow only their subscriptions (gRPC streams).
        owed_to: defaultdict[SessionHandle, list[Push]] = defaultdict(list)
        for user_id, change in pending.items():
            for watcher in self._index.subscribers_of(user_id):
                if watcher.watches is not Watches.MODE:
                    self._collect(owed_to, watcher, user_id, change)
        return deliveries + await self._give_each(owed_to, turn)

    async def _to_followers(self, pending: dict[str, _Change], turn: Turn) -> int:
        # _owed and _collect inlined, and whether the user is public asked once per
        # change rather than once per watcher: this loop runs per change and watcher.
        owed_to: defaultdict[SessionHandle, list[Push]] = defaultdict(list)
        may_see = self._policy.may_see
        for user_id, change in pending.items():
            shown, own, cause = change.shown, change.own, change.cause
            public = shown is not None and self._policy.is_public(user_id)
            looked = 0
            for watcher in self._index.watchers_of(user_id):
                looked += 1
                if watcher is cause:
                    continue
                if watcher.user_id == user_id:
                    push = own
                elif shown is not None and (public or may_see(watcher.user_id, user_id)):
                    push = shown
                else:
                    continue
                if push is not None:
                    owed_to[watcher].append(push)
            await turn.spend(1 + looked // 4)
        return await self._give_each(owed_to, turn)

    def _collect(
        self,
        owed_to: defaultdict[SessionHandle, list[Push]],
        watcher: SessionHandle,
        user_id: str,
        change: _Change,
    ) -> None:
        push = self._owed(watcher, user_id, change)
        if push is not None:
            owed_to[watcher].append(push)

    async def _give_each(self, owed_to: dict[SessionHandle, list[Push]], turn: Turn) -> int:
        """Each watcher its pushes; watchers owed the same ones share one item, so a
        transport builds its bytes once for all of them (pushes hash by identity)."""
        deliveries = 0
        items: dict[tuple[Push, ...], Push | PushBatch | None] = {}
        for watcher, owed in owed_to.items():
            units = 0
            if not watcher.closing and watcher in self._index:
                pushes = tuple(owed)
                item = items.get(pushes)
                if item is None:  # owed lists are never empty: an item is made
                    item = items[pushes] = _item_of(pushes)
                if item is not None:
                    deliveries += 1
                    units = self._give(watcher, item)
            await turn.spend(1 + units)
        return deliveries

    def _give(self, watcher: SessionHandle, item: Push | PushBatch) -> int:
        """Deliver ``item``; the turn units its bytes cost beyond the delivery itself."""
        if isinstance(item, PushBatch):
            count, size = len(item.pushes), item.size
        else:
            count, size = 1, len(item.payload)
        if self._deliver(watcher, item):
            self.stats.pushes += count
        else:
            self.stats.push_drops += count
        return size // BYTES_PER_UNIT


def _item_of(pushes: tuple[Push, ...]) -> Push | PushBatch | None:
    if not pushes:
        return None
    if len(pushes) == 1:
        return pushes[0]
    return PushBatch.of(pushes)
