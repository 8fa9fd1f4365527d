"""What the writer holds until it is committed, and the bounds on it.

Everything accepted and not yet committed is in one of two batches: the one in
flight (being committed, or retried while the store fails) and the pending one
(coalescing what arrives meanwhile). The backlog bounds them together:

- presence rows coalesce per user, so they are bounded by the number of users,
  which the directory holds in memory anyway; they are never dropped, since a
  user's row is that user's state;
- presence events and policy changes (contacts, blocks, visibility) together
  are bounded by ``max_items`` and everything by ``max_bytes`` (estimated): an
  event past either bound is dropped and counted; a policy change is not dropped,
  its caller reserves room first (:meth:`Backlog.free_slots`) or is refused.

Plain synchronous data: the writer's methods call it between checkpoints.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import attrs
import trio
from attrs import Factory, define, frozen

from .batch import Batch, UserWrite
from .intents import (
    ContactsReplaced,
    Intent,
    PresenceEvent,
    PresenceRow,
    VisibilityRow,
)

# Estimated bytes held per record beyond its own strings, measured with
# tracemalloc (an event ~125 B, a coalesced user row ~255 B) and rounded up,
# since strings shared with the directory are counted again here.
_EVENT_BYTES = 160
_ROW_BYTES = 320
_POLICY_BYTES = 160
_SET_ENTRY_BYTES = 80  # one contact id in a ContactsReplaced frozenset


@define(eq=False)
class Flush:
    """A ``flush()`` waiting for everything submitted before it to be committed."""

    done: trio.Event = Factory(trio.Event)
    committed: bool = False

    def finish(self, *, committed: bool) -> None:
        self.committed = committed
        self.done.set()


@define
class Held:
    """One batch on its way to the database, with the flushes waiting for it."""

    batch: Batch = Factory(Batch)
    flushes: list[Flush] = Factory(list)
    due_at: float = math.inf
    policy: int = 0
    bytes: int = 0

    @property
    def events(self) -> int:
        return len(self.batch.events)

    def is_due(self, now: float, batch_size: int) -> bool:
        return bool(self.flushes) or self.batch.intents >= batch_size or now >= self.due_at

    def finish(self, *, committed: bool) -> None:
        for flush in self.flushes:
            flush.finish(committed=committed)
        self.flushes.clear()


@frozen
class Loss:
    """What a stop could not commit: users whose latest row was not written,
    events (held, and dropped earlier past the bounds), and policy changes."""

    users: int = 0
    events: int = 0
    dropped: int = 0
    policy: int = 0

    def __bool__(self) -> bool:
        return bool(self.users or self.events or self.dropped or self.policy)

    def describe(self) -> str:
        parts = [
            _count(self.users, "user's presence row", "users' presence rows"),
            _count(self.events, "presence event", "presence events"),
        ]
        if self.dropped:
            parts.append(f"{self.dropped} more presence events dropped earlier")
        if self.policy:
            parts.append(_count(self.policy, "contact, block or privacy change", "such changes"))
        return ", ".join(parts[:-1]) + " and " + parts[-1]


def _count(number: int, one: str, many: str) -> str:
    return f"1 {one}" if number == 1 else f"{number} {many}"


class Backlog:
    """The in-flight and pending batches under one bound; see the module docstring.

    Ordering: :meth:`take` hands out batches in the order their intents came, and
    within a batch events and policy changes keep their order. The totals over
    both batches are kept as running counts: :meth:`add` is on every actor's path.
    """

    def __init__(self, *, max_items: int, max_bytes: int, flush_interval: float) -> None:
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._flush_interval = flush_interval
        self.pending = Held()
        self.in_flight: Held | None = None
        self.items = 0
        """Held events and policy changes: what ``max_items`` bounds."""
        self.bytes = 0
        """Estimated bytes of everything held: what ``max_bytes`` bounds."""
        # Events dropped since the store last caught up, and ever.
        self.dropped = 0
        self.dropped_total = 0

    @property
    def intents(self) -> int:
        """Accepted and not yet committed (coalesced rows count once per submission)."""
        in_flight = 0 if self.in_flight is None else self.in_flight.batch.intents
        return in_flight + self.pending.batch.intents

    def free_slots(self) -> int:
        """How many policy changes fit now."""
        if self.bytes >= self.max_bytes:
            return 0
        return max(0, self.max_items - self.items)

    def add(self, intent: Intent, now: float) -> bool:
        """Coalesce ``intent`` into the pending batch; False if it was dropped.

        Only a presence event is ever dropped: past ``max_items`` held, or when
        it would take the held bytes past ``max_bytes``.
        """
        pending = self.pending
        if isinstance(intent, PresenceRow | VisibilityRow):
            users = pending.batch.users
            before = users.get(intent.user_id)
            pending.batch.add(intent)
            cost = _row_bytes(users[intent.user_id]) - (0 if before is None else _row_bytes(before))
            if isinstance(intent, VisibilityRow):
                pending.policy += 1
                self.items += 1
        else:
            if isinstance(intent, PresenceEvent):
                device = intent.device_id
                cost = _EVENT_BYTES + len(intent.user_id) + len(intent.reason)
                cost += len(device) if device else 0
                if self.items >= self.max_items or self.bytes + cost > self.max_bytes:
                    self.dropped += 1
                    self.dropped_total += 1
                    return False
            else:
                cost = _policy_bytes(intent)
                pending.policy += 1
            pending.batch.add(intent)
            self.items += 1
        pending.bytes += cost
        self.bytes += cost
        if pending.due_at == math.inf:
            pending.due_at = now + self._flush_interval
        return True

    def add_flush(self, flush: Flush) -> None:
        self.pending.flushes.append(flush)

    def take(self) -> Held:
        """Hand the pending batch over for committing; a new one starts empty."""
        assert self.in_flight is None, "one batch in flight at a time"
        self.in_flight, self.pending = self.pending, Held()
        return self.in_flight

    def settle(self, held: Held) -> None:
        """``held`` (in flight, or pending at the stop) is durable: it holds nothing now."""
        self.items -= held.events + held.policy
        self.bytes -= held.bytes
        held.batch, held.bytes, held.policy = Batch(), 0, 0
        if held is self.in_flight:
            self.in_flight = None

    def loss(self) -> Loss:
        """What is held (and was dropped since the store last caught up), as a loss."""
        held = (self.pending,) if self.in_flight is None else (self.in_flight, self.pending)
        return loss_of(held, self.dropped)


def loss_of(held: Iterable[Held], dropped: int) -> Loss:
    """The loss if ``held`` were never committed, ``dropped`` events included."""
    held = tuple(held)
    users: set[str] = set().union(*(h.batch.users for h in held))
    return Loss(
        users=len(users),
        events=sum(h.events for h in held),
        dropped=dropped,
        policy=sum(h.policy for h in held),
    )


def _row_bytes(write: UserWrite) -> int:
    cost = _ROW_BYTES + len(write.user_id)
    row = write.presence
    if row is not None:
        cost += (len(row.username) if row.username else 0) + (
            len(row.status_message) if row.status_message else 0
        )
    return cost


def _policy_bytes(intent: Intent) -> int:
    if isinstance(intent, ContactsReplaced):
        entries = sum(_SET_ENTRY_BYTES + len(c) for c in intent.contacts)
        return _POLICY_BYTES + len(intent.user_id) + entries
    fields = attrs.astuple(intent, recurse=False)
    return _POLICY_BYTES + sum(len(v) for v in fields if isinstance(v, str))
