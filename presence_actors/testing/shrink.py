"""Shrinking: the fewest events that still make the same invariant fail.

Delta debugging (Zeller's ddmin) over a schedule's events: drop halves, then
quarters, ..., keep any smaller schedule that still fails the same way, then
try each remaining event alone. Each candidate is a whole new run (its own
engine, clock and seeded scheduler), and the number of runs is bounded, not
the time they take, so the result is the same on every machine.
"""

from __future__ import annotations

from collections.abc import Callable

from .report import Result
from .schedule import Schedule

# Enough to bring a few thousand events down to a handful (ddmin needs about
# n log n runs at worst for n events left); each run replays only a prefix.
MAX_RUNS = 300


def shrink(
    schedule: Schedule,
    failing: Result,
    run: Callable[[Schedule], Result],
    max_runs: int = MAX_RUNS,
) -> tuple[Schedule, Result]:
    """A smaller schedule failing the first invariant ``failing`` broke, and its result.

    Events after the first violation cannot have caused it, so the search starts
    from those up to it.
    """
    first = failing.first
    assert first is not None, "shrink a failing result"
    runs = 0
    best, best_result = schedule, failing

    def fails(candidate: Schedule) -> bool:
        nonlocal runs, best, best_result
        runs += 1
        result = run(candidate)
        if result.first is not None and result.first.invariant == first.invariant:
            if len(candidate) < len(best):
                best, best_result = candidate, result
            return True
        return False

    prefix = [n for n in schedule.numbers if n <= first.step]
    if len(prefix) < len(schedule) and fails(schedule.only(prefix)):
        numbers = prefix
    else:
        numbers = list(schedule.numbers)
    parts = 2
    while len(numbers) >= 2 and runs < max_runs:
        size = -(-len(numbers) // parts)
        chunks = [numbers[i : i + size] for i in range(0, len(numbers), size)]
        for chunk in chunks:
            if runs >= max_runs:
                break
            rest = [n for n in numbers if n not in set(chunk)]
            if rest and fails(schedule.only(rest)):
                numbers = rest
                parts = max(parts - 1, 2)
                break
        else:
            if parts >= len(numbers):
                break
            parts = min(len(numbers), parts * 2)
    return best, best_result
