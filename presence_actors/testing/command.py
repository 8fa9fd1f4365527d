"""The ``simulate`` command's work: run a seed, shrink a failure, say how to replay it.

Everything :func:`simulate` returns for stdout is deterministic (the same
arguments give the same bytes); the wall time and the rate go to stderr.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from attrs import frozen

from ..config import Settings
from .report import Result, summary
from .schedule import Schedule
from .shrink import shrink
from .simulation import Simulation


@frozen
class Invocation:
    """What a ``simulate`` command line asked for (enough to print it again)."""

    seed: int
    steps: int
    users: int
    faults: frozenset[str]
    only: tuple[int, ...] | None = None
    fanout: str | None = None
    config: Path | None = None
    pace: float | None = None

    def argv(self, only: Iterable[int] | None = None) -> list[str]:
        """The arguments of ``python -m presence_actors simulate`` that replay this
        run (with ``only`` those events)."""
        argv = ["--seed", str(self.seed), "--steps", str(self.steps), "--users", str(self.users)]
        argv += ["--faults", ",".join(sorted(self.faults)) or "none"]
        if self.pace is not None:
            argv += ["--pace", repr(self.pace)]
        if self.fanout is not None:
            argv += ["--fanout", self.fanout]
        if self.config is not None:
            argv += ["--config", str(self.config)]
        kept = self.only if only is None else tuple(only)
        if kept is not None:
            argv += ["--only", ",".join(str(n) for n in kept)]
        return argv

    def command(self, only: Iterable[int] | None = None) -> str:
        return " ".join(["python -m presence_actors simulate", *self.argv(only)])


def simulate(
    invocation: Invocation, settings: Settings, *, shrinking: bool = True
) -> tuple[list[str], Result]:
    """Run the invocation; the report's lines and the result of the (whole) run."""
    simulation = Simulation(invocation.seed, invocation.users, settings, faults=invocation.faults)
    if invocation.pace is None:
        schedule = simulation.schedule(invocation.steps)
    else:
        schedule = simulation.schedule(invocation.steps, invocation.pace)
    if invocation.only is not None:
        schedule = schedule.only(invocation.only)
    result = simulation.run(schedule)
    lines = summary(result)
    if result.ok:
        return lines, result
    lines.append(f"  replay       {invocation.command()}")
    if not shrinking or len(schedule) <= 1:
        return lines, result
    small, small_result = shrink(schedule, result, simulation.run)
    first = small_result.first
    assert first is not None
    lines += [
        "",
        f"shrunk: {len(small)} of {len(schedule)} events still break [{first.invariant}]:",
        *small.trace(),
        "  then:",
        *("    " + v.describe() for v in small_result.violations[:5]),
        "replay exactly:",
        f"  {invocation.command(small.numbers)}",
    ]
    return lines, result


def parse_numbers(text: str) -> tuple[int, ...]:
    """``3,17,42`` -> (3, 17, 42); ValueError naming the first bad item."""
    numbers = []
    for item in text.split(","):
        item = item.strip()
        if not (item.isascii() and item.isdigit()):
            raise ValueError(f"{item!r} is not an event number (a comma-separated list of them)")
        numbers.append(int(item))
    return tuple(numbers)


__all__ = ["Invocation", "Schedule", "parse_numbers", "simulate"]
