"""Summarise a py-spy ``--format raw`` profile: where the samples were spent.

    python bench/profile_summary.py PROFILE.raw [--top N] [--per COUNT --unit NAME]

Each line of the file is one stack (``func (file:line);...``, outermost first)
and the number of samples that ended in it. Shown:

- self: samples whose innermost frame is the function (its own code);
- inclusive: samples with the function anywhere on the stack (once per stack);
- by package: self samples grouped by top-level package (``trio``,
  ``hypercorn``, ``presence_actors/actors`` ...), which says which layer
  dominates.

With ``--per COUNT`` every share is also turned into CPU microseconds per
unit (e.g. per delivered push), given the profiled process's CPU seconds
(``--cpu``) over the same period.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from attrs import frozen

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^():]*)(?::\d+)?\)$")
# Innermost Python frames of threads that wait, not work: py-spy cannot always
# tell a thread blocked on a lock from a running one, so these are dropped.
IDLE = frozenset(
    {
        "trio/_core/_thread_cache.py:WorkerThread._work",
        "trio/_core/_io_epoll.py:EpollIOManager.get_events",
        "threading.py:Condition.wait",
    }
)


@frozen
class Profile:
    total: int  # samples of working threads; shares are of this
    idle: int  # samples dropped as waiting (IDLE)
    self_samples: Counter[str]
    inclusive: Counter[str]
    packages: Counter[str]


def _function(frame: str) -> tuple[str, str]:
    """``("module/file.py:func", package)`` for one raw frame."""
    match = _FRAME.match(frame)
    if match is None:
        return frame, "?"
    path = match["file"]
    parts = path.split("/")
    if parts[0] == "presence_actors" and len(parts) > 2:
        package = "/".join(parts[:2])
    elif len(parts) > 1:
        package = parts[0]
    else:
        package = path.removesuffix(".py")
    return f"{path}:{match['func']}", package


def parse(lines: Iterable[str]) -> Profile:
    total = idle = 0
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    for line in lines:
        stack, _, count_text = line.rstrip("\n").rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        functions = [_function(frame) for frame in stack.split(";")]
        name, package = functions[-1]
        # With --native the innermost frames are C (libc, libpython): a stack
        # waits when its innermost Python frame is one of the waiting ones.
        python = [f for f, _ in functions if ".py:" in f]
        if python and python[-1] in IDLE:
            idle += count
            continue
        total += count
        own[name] += count
        packages[package] += count
        for seen in {f for f, _ in functions}:
            inclusive[seen] += count
    return Profile(total, idle, own, inclusive, packages)


def _rows(counter: Counter[str], total: int, top: int, per: float | None) -> list[str]:
    rows = []
    for name, count in counter.most_common(top):
        share = count / total
        cost = f"  {share * per:8.2f}" if per is not None else ""
        rows.append(f"  {share * 100:5.1f}%{cost}  {name}")
    return rows


def render(profile: Profile, top: int, per: float | None, unit: str) -> str:
    header = f"  share{f'  us/{unit}':>10}" if per is not None else "  share"
    out = [f"{profile.total:,} samples of working threads ({profile.idle:,} idle ones dropped)"]
    for title, counter in (
        ("self (innermost frame)", profile.self_samples),
        ("inclusive (anywhere on the stack)", profile.inclusive),
        ("self, by package", profile.packages),
    ):
        out += ["", title, header]
        out += _rows(counter, profile.total, top, per)
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--cpu", type=float, help="CPU seconds of the process while profiled")
    parser.add_argument("--per", type=float, help="units of work done while profiled")
    parser.add_argument("--unit", default="push")
    args = parser.parse_args()
    per = args.cpu * 1e6 / args.per if args.cpu and args.per else None
    with args.profile.open() as file:
        print(render(parse(file), args.top, per, args.unit))


if __name__ == "__main__":
    main()
