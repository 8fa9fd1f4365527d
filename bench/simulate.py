"""How fast the deterministic simulation runs: simulated events per second of wall time.

    python bench/simulate.py [--steps N] [--seeds K] [--schedules busy,paced,heartbeats] [--json]

Three schedules, each over K seeds (wall time of the runs only, not start-up):

- ``busy``: the default schedule (``simulate`` with no --pace): 8 users whose
  clients act every 0.05 s between them, with every fault. Most events are
  status changes, requests and connections, each a trip through the registry,
  an actor, the fan-out and the store.
- ``paced``: 100 users acting every 0.5 s between them (a user every 50 s, as
  people do): about half of the events are heartbeats.
- ``heartbeats``: 60 connections and nothing else for an hour: the cost of the
  simulation's moments and the engine's bare heartbeats.

A simulated event is a scheduled event that applied, or a client's heartbeat.
Pins nothing: run it on an idle machine, and read the figures with the Python
loop time it prints (this machine is shared).

Where the time goes (engine, simulation, trio), sampled without slowing the
run down much:

    py-spy record --format raw -o busy.raw -- python bench/simulate.py --schedules busy --seeds 1
    python bench/profile_summary.py busy.raw
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from presence_actors.testing import AVAILABLE_FAULTS, Schedule, Simulation
from presence_actors.testing import events as ev


def _loop_ns() -> float:
    """Nanoseconds per iteration of a plain Python loop: how busy the machine is."""
    started = time.perf_counter_ns()
    total = 0
    for i in range(2_000_000):
        total += i
    return (time.perf_counter_ns() - started) / 2_000_000


def _heartbeats_only(seconds: float) -> Schedule:
    users = 20
    events = [ev.Connect(0.001 * (u * 3 + d), u, d) for u in range(users) for d in range(3)]
    events.append(ev.Active(seconds, 0, 0))
    return Schedule(0, users, frozenset(), tuple(events), tuple(range(len(events))))


SCHEDULES = ("busy", "paced", "heartbeats")


def run(
    steps: int, seeds: int, schedules: tuple[str, ...] = SCHEDULES
) -> dict[str, dict[str, float]]:
    figures: dict[str, dict[str, float]] = {}
    plans = {
        "busy": (8, None, AVAILABLE_FAULTS),
        "paced": (100, 0.5, AVAILABLE_FAULTS),
    }
    for name, (users, pace, faults) in plans.items():
        if name not in schedules:
            continue
        events = 0
        wall = 0.0
        for seed in range(seeds):
            simulation = Simulation(seed, users, faults=faults)
            schedule = (
                simulation.schedule(steps) if pace is None else simulation.schedule(steps, pace)
            )
            result = simulation.run(schedule)
            events += result.counters.simulated
            wall += result.wall_seconds
        figures[name] = {"events": events, "seconds": wall, "per_second": events / wall}
    if "heartbeats" not in schedules:
        return figures
    result = Simulation(0, 20).run(_heartbeats_only(3600.0))
    figures["heartbeats"] = {
        "events": result.counters.simulated,
        "seconds": result.wall_seconds,
        "per_second": result.counters.simulated / result.wall_seconds,
    }
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=5000, help="scheduled events per run")
    parser.add_argument("--seeds", type=int, default=3, help="runs per schedule")
    parser.add_argument(
        "--schedules",
        type=lambda text: tuple(text.split(",")),
        default=SCHEDULES,
        help="which of busy, paced, heartbeats (comma-separated; default: all)",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    unknown = sorted(set(args.schedules) - set(SCHEDULES))
    if unknown:
        parser.error(
            f"--schedules: no schedule {', '.join(unknown)} (one of {', '.join(SCHEDULES)})"
        )
    loop = _loop_ns()
    figures = run(args.steps, args.seeds, args.schedules)
    if args.json:
        print(orjson.dumps({"loop_ns": loop, **figures}).decode())
        return
    print(f"python loop: {loop:.0f} ns per iteration (about 25-35 on an idle core)")
    for name, figure in figures.items():
        print(
            f"{name:<11} {figure['per_second']:>8,.0f} simulated events/s"
            f"  ({figure['events']:,.0f} events in {figure['seconds']:.1f} s)"
        )


if __name__ == "__main__":
    main()
