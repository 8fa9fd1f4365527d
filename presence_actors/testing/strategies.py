"""Hypothesis strategies for schedules, so a property over the whole engine is a few lines.

::

    from hypothesis import given, settings
    from presence_actors.testing import Simulation, summary
    from presence_actors.testing.strategies import schedules

    @settings(max_examples=50, deadline=None)
    @given(schedules(users=3, faults={"crash"}))
    def test_crashes_change_nothing_a_client_can_see(schedule):
        result = Simulation(schedule.seed, schedule.users).run(schedule)
        assert result.ok, "\\n".join(summary(result))

Events are drawn one by one (kind, user, device, details, and the time since
the one before), so hypothesis shrinks a failing schedule itself: fewer events,
lower users and devices, shorter gaps. The scheduler's seed is drawn too, so
an interleaving that fails is part of the example, and replays with it.
Needs hypothesis (a test dependency of the project).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from hypothesis import strategies as st

from . import events as ev
from .schedule import (
    AVAILABLE_FAULTS,
    QUERIES,
    STATUS_MESSAGES,
    STATUSES,
    USERNAMES,
    VISIBILITIES,
    Schedule,
    devices_for,
)

# The time from one event to the next: at once (the engine interleaves them), a
# moment later, a while later, or long enough for every timer to run out.
_GAPS = st.one_of(
    st.just(0.0),
    st.floats(0.001, 1.0),
    st.floats(1.0, 20.0),
    st.floats(45.0, 120.0),
)


def schedules(
    *,
    users: int | st.SearchStrategy[int] = 3,
    devices: int = 1,
    faults: Iterable[str] = (),
    max_events: int = 40,
) -> st.SearchStrategy[Schedule]:
    """Schedules of at most ``max_events`` events for ``users`` users (a number, or a
    strategy for one) with up to ``devices`` devices each, and the given faults
    (names of ``AVAILABLE_FAULTS``). One device by default: events of a device
    that is not connected do nothing, and fewer devices waste fewer of them."""
    faults = frozenset(faults)
    unknown = faults - AVAILABLE_FAULTS
    if unknown:
        raise ValueError(f"unknown or unavailable faults: {sorted(unknown)}")
    user_counts = users if isinstance(users, st.SearchStrategy) else st.just(users)

    @st.composite
    def draw_schedule(draw: st.DrawFn) -> Schedule:
        count = draw(user_counts)
        seed = draw(st.integers(0, 2**32 - 1))
        kinds = _kinds(count, min(devices, devices_for(count)), faults)
        drawn = draw(st.lists(st.tuples(_GAPS, st.one_of(kinds)), max_size=max_events))
        at = 0.0
        events: list[ev.Event] = []
        for gap, make in drawn:
            at += gap
            events.append(make(at))
        return Schedule(seed, count, faults, tuple(events), tuple(range(len(events))))

    return draw_schedule()


Make = Callable[[float], ev.Event]


def _kinds(users: int, devices: int, faults: frozenset[str]) -> list[st.SearchStrategy[Make]]:
    """A strategy per kind of event, each drawing a maker of that event at a time."""
    user = st.integers(0, users - 1)
    device = st.integers(0, devices - 1)

    def client(
        kind: type[ev.ClientEvent], *more: st.SearchStrategy[object]
    ) -> st.SearchStrategy[Make]:
        return st.builds(lambda u, d, *rest: lambda at: kind(at, u, d, *rest), user, device, *more)

    connect = client(ev.Connect)
    kinds = [
        connect,
        connect,  # twice as likely: most events need a connection to apply
        connect,
        client(ev.Drop),
        client(ev.Logout),
        client(ev.Silence),
        client(
            ev.SetStatus,
            st.sampled_from(STATUSES),
            st.sampled_from(STATUS_MESSAGES),
            st.booleans(),
        ),
        client(ev.Identify, st.sampled_from(USERNAMES)),
        client(ev.Active, st.booleans()),
        client(ev.Privacy, st.sampled_from(VISIBILITIES)),
        client(ev.Block, user, st.booleans()),
        client(ev.Subscribe, st.lists(user, min_size=1, max_size=3).map(_targets), st.booleans()),
        client(ev.Query, st.sampled_from(QUERIES), user),
        st.builds(lambda u, o, on: lambda at: ev.Contact(at, u, o, on), user, user, st.booleans()),
        st.builds(
            lambda u, v: lambda at: ev.AdminPrivacy(at, u, v), user, st.sampled_from(VISIBILITIES)
        ),
    ]
    if "crash" in faults:
        kinds.append(st.builds(lambda u: lambda at: ev.Crash(at, u), user))
    if "commit-errors" in faults:
        kinds.append(st.builds(lambda d: lambda at: ev.CommitErrors(at, d), st.floats(0.05, 12.0)))
    if "slow-commits" in faults:
        kinds.append(
            st.builds(
                lambda d, s: lambda at: ev.SlowCommits(at, d, s),
                st.floats(0.5, 20.0),
                st.floats(0.01, 3.0),
            )
        )
    if "restart" in faults:
        kinds.append(st.just(lambda at: ev.Restart(at, kill=False)))
    if "kill" in faults:
        kinds.append(st.just(lambda at: ev.Restart(at, kill=True)))
    return kinds


def _targets(users: list[int]) -> tuple[int, ...]:
    return tuple(sorted(set(users)))
