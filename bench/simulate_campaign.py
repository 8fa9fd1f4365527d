"""A simulation campaign: many seeds, every fault; one line per seed that breaks an invariant.

    python bench/simulate_campaign.py --seeds 100-199 [--steps 5000] [--users 8]
        [--faults all] [--fanout everyone|contacts] [--pace SECONDS]

Each failing seed is printed with its first violation and the command that
replays it (``simulate`` then shrinks it); the last line sums up the campaign:
seeds, simulated events, violations, wall time. Run several at once on
different seed ranges to use more cores.
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

import attrs

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from presence_actors.config import Settings
from presence_actors.testing import Simulation, parse_faults
from presence_actors.testing.command import Invocation


def _range(text: str) -> range:
    first, _, last = text.partition("-")
    return range(int(first), int(last or first) + 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=_range, required=True, help="FIRST-LAST")
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--faults", default="all")
    parser.add_argument("--fanout", choices=("everyone", "contacts"), default=None)
    parser.add_argument("--pace", type=float, default=None)
    args = parser.parse_args()
    faults = parse_faults(args.faults)
    base = Settings()
    settings = base
    if args.fanout is not None:
        settings = attrs.evolve(base, presence=attrs.evolve(base.presence, fanout=args.fanout))
    started = time.perf_counter()
    events = failing = 0
    broken: collections.Counter[str] = collections.Counter()
    for seed in args.seeds:
        simulation = Simulation(seed, args.users, settings, faults=faults)
        if args.pace is None:
            schedule = simulation.schedule(args.steps)
        else:
            schedule = simulation.schedule(args.steps, args.pace)
        result = simulation.run(schedule)
        events += result.counters.simulated
        if result.ok:
            continue
        failing += 1
        broken.update({v.invariant for v in result.violations})
        invocation = Invocation(
            seed, args.steps, args.users, faults, fanout=args.fanout, pace=args.pace
        )
        first = result.first
        assert first is not None
        print(f"seed {seed}: {first.describe()}", flush=True)
        print(f"  {invocation.command()}", flush=True)
    seconds = time.perf_counter() - started
    print(
        f"campaign: {len(args.seeds)} seeds, {events:,} simulated events in {seconds:,.0f} s"
        f" ({events / seconds:,.0f}/s), {failing} seeds with violations"
        f" {dict(sorted(broken.items()))}",
        flush=True,
    )


if __name__ == "__main__":
    main()
