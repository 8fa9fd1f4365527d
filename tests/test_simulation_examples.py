"""The two worked examples of docs/SIMULATION.md, as they are written there.

Example 1 is a property that holds; example 2 plants a bug and expects hypothesis
to find it and shrink it to one connection.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings

from presence_actors.actors import StatsQuery, user_state
from presence_actors.protocol import Logout
from presence_actors.testing import Moment, Schedule, Simulation, summary
from presence_actors.testing.strategies import schedules

# --- example 1 ---------------------------------------------------------------------------


def every_online_user_has_an_actor(moment: Moment) -> list[str]:
    actors = moment.engine.registry.answer(StatsQuery()).actors
    online = moment.truth.online()
    return [] if actors >= len(online) else [f"{actors} actors for {len(online)} users online"]


@settings(max_examples=100, deadline=None)
@given(schedules(users=3, faults={"crash", "kill"}))
def test_crashes_and_kills_change_nothing_a_client_can_see(schedule: Schedule) -> None:
    simulation = Simulation(
        schedule.seed, schedule.users, invariants={"actors": every_online_user_has_an_actor}
    )
    result = simulation.run(schedule)
    assert result.ok, "\n".join(summary(result) + schedule.trace())


# --- example 2 ---------------------------------------------------------------------------


def detach_as_logout(state, handle, now, rules):  # type: ignore[no-untyped-def]
    """The planted bug: a lost connection is handled like a logout (no grace period)."""
    return user_state.request(state, handle, Logout(), now, rules)


@settings(max_examples=100, deadline=None, database=None)
@given(schedules(users=2))
def test_the_engine_keeps_every_invariant(schedule: Schedule) -> None:
    result = Simulation(schedule.seed, schedule.users).run(schedule)
    assert result.ok, "\n".join(summary(result) + schedule.trace())


def test_the_planted_bug_is_found_and_shrunk_to_one_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(user_state, "detach", detach_as_logout)
    with pytest.raises(AssertionError) as failed:
        test_the_engine_keeps_every_invariant()
    report = str(failed.value)
    assert "[online-count]" in report
    assert report.count("  #") == 1  # one event left
    assert "u0/d0 connect" in report
