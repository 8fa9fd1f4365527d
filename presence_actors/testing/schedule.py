"""Schedules: the seeded sequence of events a simulation plays, and the faults in it.

:func:`generate` draws a schedule from a seed alone (``random.Random`` seeded
with a string, which does not depend on ``PYTHONHASHSEED``), so the same
seed, step count, user count and faults give the same events in any process.
A :class:`Schedule` keeps each event's number in the original schedule, so a
shrunk one is replayed exactly by ``--only`` with those numbers.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable

from attrs import evolve, frozen

from ..actors.fanout import PACE_ABOVE
from ..model import Status, Visibility
from . import events as ev


@frozen
class FaultKind:
    name: str
    help: str
    # Node death and Redis outage need the cluster of issue 12: the names are
    # reserved, and refused until the simulation runs one (see FAULTS).
    needs_cluster: bool = False


FAULTS: dict[str, FaultKind] = {
    f.name: f
    for f in (
        FaultKind("crash", "a user's actor crashes at its next message"),
        FaultKind("commit-errors", "every commit fails for a while (an I/O error)"),
        FaultKind("slow-commits", "commits take up to 3 s longer for a while"),
        FaultKind("restart", "the process stops cleanly and starts again"),
        FaultKind("kill", "the process is killed (kill -9) and starts again"),
        FaultKind("node-death", "a cluster node dies", needs_cluster=True),
        FaultKind("redis-outage", "Redis is unreachable for a while", needs_cluster=True),
    )
}
AVAILABLE_FAULTS = frozenset(name for name, f in FAULTS.items() if not f.needs_cluster)


def parse_faults(text: str) -> frozenset[str]:
    """``all``, ``none`` or a comma-separated list of fault names; ValueError naming
    the first unknown or unavailable one."""
    text = text.strip()
    if text == "all":
        return AVAILABLE_FAULTS
    if text in ("", "none"):
        return frozenset()
    names = [name.strip() for name in text.split(",")]
    for name in names:
        kind = FAULTS.get(name)
        if kind is None:
            known = ", ".join(FAULTS)
            raise ValueError(f"unknown fault {name!r}: expected all, none or some of {known}")
        if kind.needs_cluster:
            raise ValueError(
                f"the fault {name!r} needs the Redis cluster, which the simulation"
                " does not run (it runs one engine; tests/test_cluster_faults.py"
                " covers cluster faults with real processes)"
            )
    return frozenset(names)


# Devices per user: three make a phone, a laptop and a tab; fewer when there are
# many users, so the live sessions stay at or below the fan-out's pacing
# threshold, past which tick timing depends on wall time (see actors/fanout.py).
MAX_DEVICES = 3
MAX_USERS = PACE_ABOVE


def devices_for(users: int) -> int:
    return max(1, min(MAX_DEVICES, PACE_ABOVE // users))


@frozen
class Schedule:
    """Events in time order; ``numbers[i]`` is the number of ``events[i]`` in the
    generated schedule (what ``--only`` names)."""

    seed: int
    users: int
    faults: frozenset[str]
    events: tuple[ev.Event, ...]
    numbers: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.events)

    def only(self, numbers: Iterable[int]) -> Schedule:
        """The events with these numbers, in order."""
        keep = set(numbers)
        pairs = [(n, e) for n, e in zip(self.numbers, self.events, strict=True) if n in keep]
        return evolve(self, events=tuple(e for _, e in pairs), numbers=tuple(n for n, _ in pairs))

    def trace(self) -> list[str]:
        return [
            f"  #{n:<7} {e.at:12.6f}  {e.describe()}"
            for n, e in zip(self.numbers, self.events, strict=True)
        ]


# What a client says: a few of each, so that changes often repeat or undo others.
STATUS_MESSAGES = (None, None, None, "", "lunch", "in a meeting", "brb", "on call")
USERNAMES = ("ann", "bob", "cy", "dee", "eve")
STATUSES = (Status.ONLINE, Status.ONLINE, Status.BUSY, Status.AWAY, Status.OFFLINE)
VISIBILITIES = (Visibility.EVERYONE, Visibility.EVERYONE, Visibility.CONTACTS, Visibility.NOBODY)
QUERIES = ("presence", "check", "count", "list")

# Relative weights of what happens next (faults only when enabled).
_CLIENT_WEIGHTS = {
    "connect": 9.0,
    "drop": 3.0,
    "logout": 2.0,
    "silence": 1.0,
    "status": 12.0,
    "identify": 2.0,
    "active": 6.0,
    "privacy": 2.0,
    "block": 2.0,
    "subscribe": 3.0,
    "query": 6.0,
    "contact": 2.0,
    "admin-privacy": 1.0,
}
_FAULT_WEIGHTS = {
    "crash": 0.6,
    "commit-errors": 0.25,
    "slow-commits": 0.25,
    "restart": 0.04,
    "kill": 0.04,
}
# Moments: most events follow each other closely (mean MEAN_GAP s: busy clients,
# so that a run explores much in little wall time); some arrive at the same
# moment as the one before (handled together: their interleaving is the
# scheduler's); now and then a long quiet lets every timer run out.
MEAN_GAP = 0.05
SAME_MOMENT = 0.15
QUIET = 0.004
QUIET_SECONDS = (45.0, 120.0)


def generate(
    seed: int, steps: int, users: int, faults: Iterable[str] = (), pace: float = MEAN_GAP
) -> Schedule:
    """``steps`` events for ``users`` users, drawn from ``seed`` alone; ``pace`` is the
    mean time between two events (besides bursts and quiet spells)."""
    if not 1 <= users <= MAX_USERS:
        raise ValueError(f"users must be from 1 to {MAX_USERS}, got {users}")
    if not 0 < pace < math.inf:
        raise ValueError(f"pace must be a positive number of seconds, got {pace}")
    faults = frozenset(faults)
    rng = random.Random(f"presence-actors schedule {seed}")
    devices = devices_for(users)
    kinds = list(_CLIENT_WEIGHTS) + sorted(f for f in _FAULT_WEIGHTS if f in faults)
    weights = [_CLIENT_WEIGHTS.get(k) or _FAULT_WEIGHTS[k] for k in kinds]
    connected: list[tuple[int, int]] = []  # as the generator believes, in connection order
    events: list[ev.Event] = []
    at = 0.0
    for _ in range(steps):
        roll = rng.random()
        if roll < QUIET:
            at += rng.uniform(*QUIET_SECONDS)
        elif roll >= QUIET + SAME_MOMENT or not events:
            at += rng.expovariate(1 / pace)
        kind = rng.choices(kinds, weights)[0]
        if not connected and kind not in ("contact", "admin-privacy", *_FAULT_WEIGHTS):
            kind = "connect"
        events.append(_draw(rng, kind, at, users, devices, connected))
    return Schedule(seed, users, faults, tuple(events), tuple(range(len(events))))


def _draw(
    rng: random.Random,
    kind: str,
    at: float,
    users: int,
    devices: int,
    connected: list[tuple[int, int]],
) -> ev.Event:
    other = rng.randrange(users)
    if kind == "connect":
        user, device = rng.randrange(users), rng.randrange(devices)
        if (user, device) not in connected:
            connected.append((user, device))
        return ev.Connect(at, user, device)
    if kind == "contact":
        user = rng.randrange(users)
        return ev.Contact(at, user, other, on=rng.random() < 0.7)
    if kind == "admin-privacy":
        return ev.AdminPrivacy(at, rng.randrange(users), rng.choice(VISIBILITIES))
    if kind == "crash":
        return ev.Crash(at, rng.randrange(users))
    if kind == "commit-errors":
        return ev.CommitErrors(at, rng.uniform(0.05, 12.0))
    if kind == "slow-commits":
        return ev.SlowCommits(at, rng.uniform(0.5, 20.0), rng.uniform(0.01, 3.0))
    if kind in ("restart", "kill"):
        connected.clear()
        return ev.Restart(at, kill=kind == "kill")
    user, device = rng.choice(connected)
    match kind:
        case "drop" | "logout" | "silence":
            connected.remove((user, device))
            made = {"drop": ev.Drop, "logout": ev.Logout, "silence": ev.Silence}[kind]
            return made(at, user, device)
        case "status":
            return ev.SetStatus(
                at,
                user,
                device,
                rng.choice(STATUSES),
                rng.choice(STATUS_MESSAGES),
                every_session=rng.random() < 0.2,
            )
        case "identify":
            return ev.Identify(at, user, device, rng.choice(USERNAMES))
        case "active":
            return ev.Active(at, user, device, heartbeat=rng.random() < 0.5)
        case "privacy":
            return ev.Privacy(at, user, device, rng.choice(VISIBILITIES))
        case "block":
            return ev.Block(at, user, device, other, on=rng.random() < 0.6)
        case "subscribe":
            targets = tuple(sorted({rng.randrange(users) for _ in range(rng.randint(1, 3))}))
            return ev.Subscribe(at, user, device, targets, on=rng.random() < 0.7)
        case _:
            return ev.Query(at, user, device, rng.choice(QUERIES), other)
