"""``persistence``: SQLite rows/s batched by the PersistenceActor vs one transaction per row.

Runs ``bench/persistence.py`` in its own process pinned to the server's core
(no network, no load generator): N presence events through a real
PersistenceActor with the default batching (500 rows or 100 ms), then the
same N events committed one transaction each through the same Store, both
into fresh WAL files with ``synchronous = NORMAL``. Figures: rows/s of each,
their ratio, and the database size per million events (the batched file
after N events, checkpointed, extrapolated).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import trio

from bench.processes import BenchError, pinned
from bench.report import Progress, RunResult
from bench.scenarios.common import Layout

NAME = "persistence"
HELP = "SQLite writes: rows/s batched vs one transaction per row; size per 1M events"
DEFAULT_ROWS = 20_000
RATIO_AIM = 20.0  # issue 2
BENCH = Path(__file__).resolve().parent.parent


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS, help="events written per mode")


def parameters(args: argparse.Namespace) -> dict[str, Any]:
    return {"rows": args.rows}


async def run(
    args: argparse.Namespace, workdir: Path, progress: Progress, layout: Layout
) -> RunResult:
    argv = pinned(
        layout.server_core,
        sys.executable,
        str(BENCH / "persistence.py"),
        *("--rows", str(args.rows), "--json"),
    )
    progress.status = lambda: f"persistence: writing {args.rows:,} rows twice"
    done = await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False)
    if done.returncode != 0:
        raise BenchError(f"bench/persistence.py failed: {done.stderr.decode()[-500:]}")
    figures = json.loads(done.stdout)
    result = RunResult()
    result.add(
        "batched_rows_per_s",
        "batched (PersistenceActor)",
        figures["batched_rows_per_s"],
        "rows/s",
        digits=0,
    )
    result.add(
        "unbatched_rows_per_s",
        "one transaction per row",
        figures["unbatched_rows_per_s"],
        "rows/s",
        digits=0,
    )
    result.add("ratio", "batched / unbatched", figures["ratio"], "x", aim=(">=", RATIO_AIM))
    result.add(
        "mb_per_million_events",
        "database size per 1M events",
        figures["mb_per_million_events"],
        "MB",
    )
    return result
