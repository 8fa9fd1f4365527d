"""The invariants that span time: views that lag behind the truth, and what the store kept.

:class:`ViewLag` follows every (watcher session, user) pair whose view and
truth differ, from the moment they start to differ; a pair that still differs
``bound`` seconds later is a violation. The bound is what the protocol lets a
view lag: ``heartbeat_timeout + grace_period`` (a client that vanished without
a word is shown present until its silence is noticed, then for the grace
period) plus the push window, ``10 s``, over which status flaps may be coalesced
into one push.

:class:`Ledger` remembers what was acknowledged and what was pushed, and holds
the store to it when an epoch of the process ends (a restart, a kill, the end):
every acknowledged profile and privacy change is in the database once the
durability window (``2 x flush_interval``) has passed while commits succeeded,
and each pushed status appears in the audit log around the moment it was pushed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

from attrs import frozen

from ..model import Status
from ..persistence.queries import EventRecord

Pair = tuple[object, str]  # (a watcher session, a user id)


class ViewLag:
    def __init__(self, bound: float) -> None:
        self.bound = bound
        self._since: dict[Pair, float] = {}
        self._reported: set[Pair] = set()

    def __len__(self) -> int:
        return len(self._since)

    def __bool__(self) -> bool:
        return bool(self._since)

    def differ(self, pair: Pair, since: float) -> None:
        if pair not in self._since:
            self._since[pair] = since

    def agree(self, pair: Pair) -> None:
        if self._since.pop(pair, None) is not None:
            self._reported.discard(pair)

    def forget(self, pairs: Iterable[Pair]) -> None:
        for pair in pairs:
            self._since.pop(pair, None)
            self._reported.discard(pair)

    def forget_pair(self, pair: Pair) -> None:
        if self._since.pop(pair, None) is not None:
            self._reported.discard(pair)

    def clear(self) -> None:
        self._since.clear()
        self._reported.clear()

    def overdue(self, now: float) -> list[tuple[Pair, float]]:
        """Pairs that have differed for the bound or longer, each reported once per episode."""
        late = []
        for pair, since in self._since.items():
            if now >= since + self.bound and pair not in self._reported:
                self._reported.add(pair)
                late.append((pair, since))
        return late

    def next_due(self) -> float:
        """When the oldest difference would become overdue (inf: none pending)."""
        pending = [s for p, s in self._since.items() if p not in self._reported]
        return min(pending, default=-math.inf) + self.bound if pending else math.inf


@frozen
class Window:
    """A span of trio time during which the store did not keep its promise."""

    start: float
    end: float


Profile = tuple[object, ...]


class Ledger:
    """Acknowledged values and pushed statuses of one epoch of the process."""

    def __init__(self, durable_after: float, push_window: float) -> None:
        self.durable_after = durable_after  # the durability window, in seconds
        self.push_window = push_window
        self.faults: list[Window] = []
        self._start: dict[tuple[str, str], Profile] = {}
        self._acks: dict[tuple[str, str], list[tuple[float, Profile]]] = {}
        self._pushed: dict[str, list[tuple[int, Status]]] = {}

    def begin(self, values: dict[tuple[str, str], Profile]) -> None:
        """A new epoch whose store holds ``values`` (key: (user, what)), for every user."""
        self._start = dict(values)
        self._acks.clear()
        self._pushed.clear()

    def acknowledged(self, user_id: str, what: str, value: Profile, at: float) -> None:
        self._acks.setdefault((user_id, what), []).append((at, value))

    def pushed(self, user_id: str, at_ms: int, status: Status) -> None:
        pushes = self._pushed.get(user_id)
        if pushes is None:
            self._pushed[user_id] = [(at_ms, status)]
        elif pushes[-1][1] is not status:
            pushes.append((at_ms, status))

    def fault(self, start: float, end: float) -> None:
        self.faults.append(Window(start, end))

    def _suspended(self, since: float, until: float) -> bool:
        return any(w.start <= until and w.end >= since for w in self.faults)

    def durability(
        self, stored: Callable[[str, str], Profile], stopped: float, killed: bool
    ) -> list[str]:
        """What is missing from the store, which ``stored(user, what)`` reads."""
        problems = []
        limit = stopped - self.durable_after if killed else math.inf
        for key in sorted(self._start):
            acks = self._acks.get(key, [])
            kept = [i for i, (at, _) in enumerate(acks) if at <= limit]
            if kept:
                first = kept[-1]
                if killed and self._suspended(acks[first][0], stopped):
                    continue
                allowed = [value for _, value in acks[first:]]
            else:
                allowed = [self._start[key], *(value for _, value in acks)]
            value = stored(*key)
            if value not in allowed:
                user_id, what = key
                problems.append(
                    f"{user_id}'s {what} in the store is {value!r}; acknowledged:"
                    f" {[v for v in allowed]!r}"
                )
        return problems

    def audit(
        self,
        events: Callable[[str], list[EventRecord]],
        ms: Callable[[float], int],
        stopped: float,
        killed: bool,
    ) -> list[str]:
        """Pushed statuses the audit log (``events(user)``, oldest first) does not show."""
        problems = []
        limit = ms(stopped - self.durable_after) if killed else math.inf
        window = round(self.push_window * 1000) + 1
        fault_ms = [(ms(w.start), ms(w.end)) for w in self.faults]
        for user_id in sorted(self._pushed):
            log = events(user_id)
            for at, status in self._pushed[user_id]:
                if at > limit or (killed and any(end >= at for _, end in fault_ms)):
                    continue
                before = [e for e in log if e.at <= at - window]
                shown = {before[-1].status} if before else {Status.OFFLINE}
                shown |= {e.status for e in log if at - window < e.at <= at}
                if status not in shown:
                    problems.append(
                        f"{user_id} was pushed {status.value} at {at} but the audit log"
                        f" shows {sorted(s.value for s in shown)} then"
                    )
        return problems
