"""What a simulation found: its counters, the violations, and the text that reports them.

Everything here is a function of the schedule and the seed, except
:attr:`Result.wall_seconds`, which :func:`summary` leaves out: the summary of a
seed is the same, byte for byte, in every run (the command line prints the wall
time and the rate on stderr).
"""

from __future__ import annotations

from attrs import define, field, frozen

from .schedule import Schedule

# The invariants, by the name a violation carries (docs/SIMULATION.md explains each).
INVARIANTS = {
    "view": "every watcher's view of a user equals the truth within the allowed lag",
    "online-count": "the online count equals the users shown online by the truth",
    "push-visibility": "nobody is pushed a user they may not see (or do not follow)",
    "no-ghost": "after every session ended, nobody is online and no actor is left",
    "last-seen": "lastSeen never goes backwards",
    "audit": "the audit log agrees with the pushes",
    "durability": "what was acknowledged is durable within the promised window",
    "reply": "every request gets its one expected answer",
    "engine": "the engine keeps running (an engine task failing is a violation)",
}


@frozen
class Violation:
    invariant: str  # a key of INVARIANTS
    at: float  # trio time of the simulation
    step: int  # the number of the last event applied (-1: before the first)
    detail: str

    def describe(self) -> str:
        return f"[{self.invariant}] at {self.at:.6f} (after event #{self.step}): {self.detail}"


@define
class Counters:
    events: int = 0  # schedule events applied (those that did not apply are skipped)
    skipped: int = 0
    heartbeats: int = 0
    requests: int = 0
    pushes: int = 0
    checks: int = 0
    crashes: int = 0
    commit_failures: int = 0
    restarts: int = 0

    @property
    def simulated(self) -> int:
        """Simulated events: schedule events applied plus the clients' heartbeats."""
        return self.events + self.heartbeats


@define
class Result:
    schedule: Schedule
    counters: Counters
    virtual_seconds: float = 0.0
    violations: list[Violation] = field(factory=list)
    wall_seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.violations

    @property
    def first(self) -> Violation | None:
        return self.violations[0] if self.violations else None


def summary(result: Result) -> list[str]:
    """The deterministic summary lines of a run."""
    schedule, counters = result.schedule, result.counters
    faults = ",".join(sorted(schedule.faults)) or "none"
    lines = [
        f"seed {schedule.seed}: {len(schedule)} scheduled events for {schedule.users} users,"
        f" faults {faults}",
        f"  events       {counters.simulated} simulated ({counters.events} scheduled,"
        f" {counters.skipped} did not apply, {counters.heartbeats} heartbeats)",
        f"  requests     {counters.requests}",
        f"  pushes       {counters.pushes}",
        f"  invariants   {counters.checks} checks of {len(INVARIANTS)} invariants",
        f"  faults       {counters.crashes} actor crashes, {counters.commit_failures} failed"
        f" commits, {counters.restarts} restarts",
        f"  virtual time {result.virtual_seconds:.3f} s",
    ]
    if result.ok:
        lines.append("  no violation")
    else:
        lines.append(f"  VIOLATIONS   {len(result.violations)}")
        lines += ["    " + v.describe() for v in result.violations[:20]]
        if len(result.violations) > 20:
            lines.append(f"    ... and {len(result.violations) - 20} more")
    return lines
