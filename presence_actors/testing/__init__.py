"""Deterministic whole-system simulation of the engine, for researchers (docs/SIMULATION.md).

``Simulation(seed, users, config).run(steps)`` plays a seeded schedule of
client, operator and fault events against the real engine under a mock clock
and a seeded scheduler, checking the invariants after every moment. The
hypothesis strategy for schedules is in :mod:`presence_actors.testing.strategies`
(it needs hypothesis, a test dependency).
"""

from .report import INVARIANTS, Counters, Result, Violation, summary
from .schedule import AVAILABLE_FAULTS, FAULTS, Schedule, generate, parse_faults
from .simulation import Simulation
from .world import Invariant, Moment

__all__ = [
    "AVAILABLE_FAULTS",
    "FAULTS",
    "INVARIANTS",
    "Counters",
    "Invariant",
    "Moment",
    "Result",
    "Schedule",
    "Simulation",
    "Violation",
    "generate",
    "parse_faults",
    "summary",
]
