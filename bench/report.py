"""Results of a run and how they are shown: a progress line, a table, JSON.

A scenario returns one :class:`RunResult` per run: named :class:`Figure`
values (each with a unit and, where the project set one, its aim) plus free
``details`` for JSON. Several runs of one scenario are shown side by side
with their median and spread (min-max), because on a shared two-core machine
a single figure says little.
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import trio
from attrs import define, field, frozen

Value = float | int | None


@frozen
class Figure:
    """One measured value. ``aim`` is ``("<=", 30)`` or ``(">=", x)`` when one is set."""

    key: str
    label: str
    value: Value
    unit: str = ""
    aim: tuple[str, float] | None = None
    digits: int = 1

    def meets_aim(self, value: Value = None) -> bool | None:
        value = self.value if value is None else value
        if self.aim is None or value is None:
            return None
        op, bound = self.aim
        return value <= bound if op == "<=" else value >= bound


@define
class RunResult:
    figures: list[Figure] = field(factory=list)
    details: dict[str, Any] = field(factory=dict)

    def add(self, key: str, label: str, value: Value, unit: str = "", **kw: Any) -> None:
        self.figures.append(Figure(key, label, value, unit, **kw))


def percentile(ordered: Sequence[float], q: float) -> float | None:
    """The nearest-rank ``q`` percentile (0-100) of an ascending sequence; None when empty."""
    if not ordered:
        return None
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def _format(value: Value, digits: int) -> str:
    if value is None:
        return "-"
    if isinstance(value, int) or (digits == 0 and float(value).is_integer()):
        return f"{round(value):,}"
    return f"{value:,.{digits}f}"


def summary(values: Sequence[Value]) -> dict[str, float] | None:
    present = [float(v) for v in values if v is not None]
    if not present:
        return None
    return {"median": statistics.median(present), "min": min(present), "max": max(present)}


def render_table(runs: Sequence[RunResult]) -> str:
    """Figures as rows, one column per run, then median, spread and aim."""
    header = ["figure", *(f"run {i + 1}" for i in range(len(runs)))]
    if len(runs) > 1:
        header += ["median", "spread"]
    header += ["unit", "aim"]
    rows = [header]
    for position, first in enumerate(runs[0].figures):
        values = [r.figures[position].value for r in runs]
        row = [first.label, *(_format(v, first.digits) for v in values)]
        stats = summary(values)
        if len(runs) > 1:
            if stats is None:
                row += ["-", "-"]
            else:
                row.append(_format(stats["median"], first.digits))
                spread = (
                    f"{_format(stats['min'], first.digits)}-{_format(stats['max'], first.digits)}"
                )
                row.append(spread)
        aim = ""
        if first.aim is not None:
            verdict = first.meets_aim(stats["median"] if stats else None)
            mark = {True: "ok", False: "MISSED", None: ""}[verdict]
            aim = f"{first.aim[0]} {first.aim[1]:g} {mark}".strip()
        row += [first.unit, aim]
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = []
    for n, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:-2], widths[1:-2], strict=True)
        ]
        cells += [row[-2].ljust(widths[-2]), row[-1]]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def to_json(runs: Sequence[RunResult]) -> dict[str, Any]:
    """Per-run figures and details, and the median/min/max of every figure."""
    keys = [f.key for f in runs[0].figures]
    return {
        "runs": [{**{f.key: f.value for f in r.figures}, "details": r.details} for r in runs],
        "summary": {key: summary([r.figures[i].value for r in runs]) for i, key in enumerate(keys)},
        "units": {f.key: f.unit for f in runs[0].figures},
        "aims": {f.key: list(f.aim) for f in runs[0].figures if f.aim is not None},
    }


class Progress:
    """A single status line on stderr, rewritten in place on a terminal.

    Off a terminal (CI logs, captured output) it prints a plain line at most
    every PLAIN_EVERY seconds instead, so logs stay readable.
    """

    PLAIN_EVERY = 5.0

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self._width = 0
        self._last_plain = 0.0
        self.status: Callable[[], str] = lambda: ""

    def show(self, text: str) -> None:
        if not self.enabled:
            return
        if self.tty:
            pad = max(0, self._width - len(text))
            sys.stderr.write("\r" + text + " " * pad)
            self._width = len(text)
        elif time.monotonic() - self._last_plain >= self.PLAIN_EVERY:
            self._last_plain = time.monotonic()
            sys.stderr.write(text + "\n")
        sys.stderr.flush()

    def note(self, text: str) -> None:
        """A line that stays (a phase change), then the status line continues below."""
        if not self.enabled:
            return
        self.end()
        sys.stderr.write(text + "\n")
        sys.stderr.flush()
        self._last_plain = 0.0

    def end(self) -> None:
        if self.enabled and self.tty and self._width:
            sys.stderr.write("\r" + " " * self._width + "\r")
            sys.stderr.flush()
            self._width = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Redraw ``status()`` four times a second until cancelled."""
        task_status.started()
        while True:
            self.show(self.status())
            await trio.sleep(0.25)
