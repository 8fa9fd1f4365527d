"""Shrinking: the fewest events that still make the same invariant fail.

Delta debugging (Zeller's ddmin) over a schedule's events: drop halves, then
quarters, ..., keep any smaller schedule that still fails the same way, down to
trying each remaining event alone; it starts from the events up to the first
violation, if those alone still fail. Each candidate is a
whole new run (its own engine, clock and seeded scheduler), and the number of
runs is bounded, not the time they take, so the result is the same on every
machine.
"""

from __future__ import annotations

from collections.abc import Callable

from .report import Result
from .schedule import Schedule

# Enough to bring a few thousand events down to a handful (ddmin needs about
# n log n runs at worst for n events left); most runs replay short prefixes.
MAX_RUNS = 250


def shrink(
    schedule: Schedule,
    failing: Result,
    run: Callable[[Schedule], Result],
    max_runs: int = MAX_RUNS,
) -> tuple[Schedule, Result]:
    """A smaller schedule failing the invariant ``failing`` broke first, and its result."""
    first = failing.first
    assert first is not None, "shrink a failing result"
    invariant = first.invariant
    runs = 0
    numbers = [n for n in schedule.numbers if n <= first.step] or list(schedule.numbers)

    def attempt(candidate: list[int]) -> list[int] | None:
        """The events still needed if ``candidate`` fails the same way, else None."""
        nonlocal runs
        runs += 1
        violation = run(schedule.only(candidate)).first
        if violation is None or violation.invariant != invariant:
            return None
        return candidate

    if len(numbers) < len(schedule):
        numbers = attempt(numbers) or list(schedule.numbers)
    parts = 2
    while len(numbers) >= 2 and runs < max_runs:
        size = -(-len(numbers) // parts)
        for start in range(0, len(numbers), size):
            if runs >= max_runs:
                break
            removed = set(numbers[start : start + size])
            rest = [n for n in numbers if n not in removed]
            kept = attempt(rest) if rest else None
            if kept is not None:
                numbers = kept
                parts = max(parts - 1, 2)
                break
        else:
            if parts >= len(numbers):
                break
            parts = min(len(numbers), parts * 2)
    if len(numbers) == len(schedule):
        return schedule, failing
    best = schedule.only(numbers)
    return best, run(best)
