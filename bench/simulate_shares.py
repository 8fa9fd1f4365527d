"""Where a simulation run's time goes: the engine, the simulation, or trio's run loop.

    py-spy record --format raw -o busy.raw -- python bench/simulate.py --schedules busy --seeds 1
    python bench/simulate_shares.py busy.raw

Reads a py-spy ``--format raw`` profile and keeps the samples taken inside
``Simulation.run`` (start-up and imports are left out). Each sample goes to the
innermost frame of the project's own code on its stack:

- ``engine``: ``presence_actors/actors``, ``persistence``, the protocol and
  model modules (with what they call: trio's channels, SQLite, attrs);
- ``simulation``: ``presence_actors/testing`` (the driver, the truth, the checks,
  the simulated clients, and the clock and watchdog trio calls back);
- ``trio run loop``: samples with no project frame below ``Simulation.run``:
  trio's scheduler, its deadlines, waking tasks, I/O polling.

A sampling profiler slows the run little and evenly, unlike cProfile, which
charges every Python call and so inflates code made of many small calls.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^():]*)(?::\d+)?\)$")
_ROOT = "presence_actors/testing/simulation.py"


def _layer(path: str) -> str | None:
    """The layer a frame's file belongs to (None: not the project's code)."""
    if not path.startswith("presence_actors/"):
        return None
    return "simulation" if path.startswith("presence_actors/testing/") else "engine"


def shares(lines: list[str]) -> tuple[int, Counter[str]]:
    """Samples inside ``Simulation.run``, and how many went to each layer."""
    layers: Counter[str] = Counter()
    total = 0
    for line in lines:
        stack, _, count_text = line.rstrip("\n").rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = [_FRAME.match(f) for f in stack.split(";")]
        files = [m["file"] if m else "" for m in frames]
        funcs = [m["func"] if m else "" for m in frames]
        roots = [
            i
            for i, (f, fn) in enumerate(zip(files, funcs, strict=True))
            if f == _ROOT and fn == "Simulation.run"
        ]
        if not roots:
            continue
        count = int(count_text)
        total += count
        layer = "trio run loop"
        for path in reversed(files[roots[0] + 1 :]):
            found = _layer(path)
            if found is not None:
                layer = found
                break
        layers[layer] += count
    return total, layers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("profile", type=Path, help="py-spy --format raw output")
    args = parser.parse_args()
    total, layers = shares(args.profile.read_text().splitlines())
    if not total:
        raise SystemExit(f"{args.profile}: no samples inside Simulation.run")
    print(f"{total} samples inside Simulation.run")
    for layer in ("engine", "simulation", "trio run loop"):
        print(f"  {layer:<14} {layers[layer] / total:6.1%}")


if __name__ == "__main__":
    main()
