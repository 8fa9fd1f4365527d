"""What the kernel says about a process and the machine: CPU time, RSS, core load.

Every figure here comes from ``/proc`` so that it covers a whole process (all
its threads: the SQLite writer runs in a worker thread) and costs the measured
process nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

from attrs import frozen

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by every thread of ``pid``.

    The resolution is one clock tick (10 ms at the usual 100 Hz), so windows
    of a few seconds or more are needed for a figure within a few percent.
    """
    text = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) may hold spaces; fields after it are plain.
    fields = text[text.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / _TICKS


def rss_kb(pid: int) -> int:
    """Resident set size of ``pid`` in KB (``VmRSS`` in ``/proc/<pid>/status``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise ValueError(f"no VmRSS for process {pid}")


def affinity(pid: int) -> list[int]:
    """The cores ``pid`` may run on."""
    return sorted(os.sched_getaffinity(pid))


@frozen
class CoreTimes:
    """Busy and total jiffies of each core since boot, from ``/proc/stat``."""

    busy: tuple[int, ...]
    total: tuple[int, ...]

    @classmethod
    def read(cls) -> CoreTimes:
        busy, total = [], []
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("cpu") and line[3].isdigit():
                values = [int(v) for v in line.split()[1:]]
                idle = values[3] + values[4]  # idle + iowait
                busy.append(sum(values[:8]) - idle)
                total.append(sum(values[:8]))
        return cls(tuple(busy), tuple(total))

    def busy_fraction_since(self, before: CoreTimes) -> tuple[float, ...]:
        """Fraction of each core's time spent busy (by anyone) between two readings."""
        return tuple(
            (b - b0) / max(t - t0, 1)
            for b, b0, t, t0 in zip(self.busy, before.busy, self.total, before.total, strict=True)
        )
