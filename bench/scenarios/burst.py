"""``burst``: a burst of acknowledged status changes, a kill -9, and what the database kept.

Issue 11, item 3. The server runs with ``presence.fanout = "everyone"`` and
``persistence.flush_interval`` = ``--flush-interval`` (its default, 100 ms).
U users (``b0`` .., one connection each, ``bench/burstgen.py``) connect and the
server settles (every connect pushed, the persistence queue empty). Then every
user sends one ``set_status busy`` at once, each with its own statusMessage
(``<tag><userId>``, the tag unique to the run), so each change can be found in
the database. The generator records the kernel arrival time of every
``status_updated`` reply and, ``--kill-after`` seconds after the first one
arrived, sends SIGKILL to the server itself. The run then opens the SQLite file
read-only (``mode=ro``; the WAL the dead process left is read, nothing is
written) and looks up each user's row.

An acknowledged change is durable when its user's row shows ``busy`` with its
statusMessage. The promise checked: an acknowledged change is durable within
2 x ``flush_interval``, so every change whose acknowledgement arrived more than
2 x ``flush_interval`` before the kill must be in the database.

Figures:
- the kill's delay after the first acknowledgement, planned and actual (the
  generator's loop may be late when busy reading pushes; ages use the actual
  kill time), acknowledgements received before the kill and how long they took
  from first to last.
- acknowledged changes lost (acknowledged, not in the database), and among
  them those older than 2 x flush_interval at the kill (aim: none).
- age at the kill of the newest and the oldest lost acknowledgement: the oldest
  is the durability window observed (aim: <= 2 x flush_interval).
- changes in the database (acknowledged or not), pushes of the burst delivered
  before the kill (U * (U - 1) when the whole fan-out was done); the CPU
  shares (server, generator, other processes) are over the burst to the kill.

``--kill-after`` takes a list (``0.25,0.5,1,2``): run k of ``--repeat`` uses
its k-th delay, cycling, so ``--repeat 4 --kill-after 0.25,0.5,1,2`` shows
the four delays side by side. ``--profile FILE`` records the server from the
burst to the kill.
"""

from __future__ import annotations

import argparse
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import trio

from bench.processes import (
    BenchError,
    WorkerProcess,
    open_server_process,
    open_workers,
    stop_workers,
)
from bench.report import Progress, RunResult
from bench.scenarios.common import Layout, Snapshot, Window, open_profiler, settle, wait_connected

NAME = "burst"
HELP = "U users change status at once, kill -9 after the first ack; acknowledged changes lost"
DEFAULT_USERS = 500
DEFAULT_KILL_AFTER = "1.5"
DEFAULT_FLUSH_INTERVAL = 0.1
DEFAULT_CONCURRENCY = 100
# Acknowledgements that have not come after this long will not come.
ACK_TIMEOUT = 60.0
REAP_TIMEOUT = 10.0


def _delays(text: str) -> list[float]:
    try:
        delays = [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of seconds: {text!r}") from None
    if not delays or any(d < 0 for d in delays):
        raise argparse.ArgumentTypeError(f"delays must be >= 0 seconds: {text!r}")
    return delays


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--users", type=int, default=DEFAULT_USERS, help="users (U, default 500)")
    parser.add_argument(
        "--kill-after",
        type=_delays,
        default=_delays(DEFAULT_KILL_AFTER),
        help="seconds from the first acknowledgement to kill -9 (default 1.5); a list such as"
        " 0.25,0.5,1,2 is used one per --repeat run, cycling",
    )
    parser.add_argument(
        "--flush-interval",
        type=float,
        default=DEFAULT_FLUSH_INTERVAL,
        help="persistence.flush_interval in seconds (default 0.1)",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=DEFAULT_CONCURRENCY,
        help="connections waiting for their welcome at once during the setup",
    )


def parameters(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "users": args.users,
        "kill_after": args.kill_after,
        "flush_interval": args.flush_interval,
    }


async def run(
    args: argparse.Namespace, workdir: Path, progress: Progress, layout: Layout
) -> RunResult:
    if args.procs != 1:
        raise BenchError("burst runs one generator process (it kills the server): drop --procs")
    number = getattr(args, "run_number", 1)
    kill_after = args.kill_after[(number - 1) % len(args.kill_after)]
    users = [f"b{i}" for i in range(args.users)]
    tag = f"burst {time.time_ns()} "
    settings = {
        "presence.fanout": "everyone",
        "persistence.flush_interval": f"{args.flush_interval * 1000:g}ms",
    }
    async with (
        open_server_process(
            settings,
            workdir,
            core=layout.server_core,
            source=layout.server_source,
            check_exit=False,
        ) as server,
        trio.open_nursery() as nursery,
    ):
        spec = {
            "host": "127.0.0.1",
            "port": server.port,
            "role": "burst",
            "users": users,
            "concurrency": args.concurrency,
            "tag": tag,
            "kill_pid": server.pid,
            "kill_after": kill_after,
        }
        core = layout.generator_core
        async with open_workers(nursery, [spec], workdir, core=core, script="burstgen.py") as ws:
            [worker] = ws
            await wait_connected(ws, progress)
            await settle(server, ws, progress)
            before = Snapshot.take(server, ws)
            # Settled: no push for a second, so this count is the setup's, to the push.
            pushes_before = int(worker.progress.get("pushes", 0))
            async with open_profiler(server, args.profile, layout, workdir, native=args.native):
                await _burst_until_killed(worker, args.users, kill_after, progress)
                # The killed server's /proc stays until it is reaped (by the wait below).
                after = Snapshot.take(server, ws)
            with trio.move_on_after(REAP_TIMEOUT):
                await server.process.wait()
            if server.process.returncode != -signal.SIGKILL:
                raise BenchError(f"the server exited {server.process.returncode}, not by SIGKILL")
            await stop_workers(ws)
        nursery.cancel_scope.cancel()
    report = dict(worker.result or {})
    report["burst_pushes"] = int(report.get("pushes", 0)) - pushes_before
    rows = await trio.to_thread.run_sync(_read_rows, workdir / "presence.db", users)
    result = _figures(args, kill_after, tag, report, rows, Window.between(before, after), layout)
    return result


async def _burst_until_killed(
    worker: WorkerProcess, users: int, kill_after: float, progress: Progress
) -> None:
    """Start the burst; return once the generator has killed the server."""
    await worker.command("burst")
    progress.status = lambda: (
        f"burst: {worker.progress.get('acked', 0):,} of {users:,} acknowledged,"
        f" kill {kill_after:g} s after the first"
    )
    with trio.move_on_after(ACK_TIMEOUT):
        while not worker.progress.get("killed_at"):  # noqa: ASYNC110
            await trio.sleep(0.01)
    if not worker.progress.get("killed_at"):
        raise BenchError(f"no acknowledgement within {ACK_TIMEOUT} s of the burst")


def _read_rows(path: Path, users: list[str]) -> dict[str, tuple[str, str | None, bool]]:
    """Each user's ``(last_status, status_message, has a busy event)`` as the
    file says, read-only: the WAL left by the killed server is read, not
    checkpointed, and nothing is written."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = {
            user: (status, message, False)
            for user, status, message in conn.execute(
                "SELECT user_id, last_status, status_message FROM users"
            )
        }
        for (user,) in conn.execute(
            "SELECT DISTINCT user_id FROM presence_events WHERE status = 'busy'"
        ):
            if user in rows:
                rows[user] = (rows[user][0], rows[user][1], True)
    finally:
        conn.close()
    missing = [u for u in users if u not in rows]
    if missing:
        # The setup's connects were committed before the burst (settle waits for it).
        raise BenchError(f"{len(missing)} users have no row at all, e.g. {missing[0]}")
    return rows


def _figures(
    args: argparse.Namespace,
    kill_after: float,
    tag: str,
    report: dict[str, Any],
    rows: dict[str, tuple[str, str | None, bool]],
    window: Window,
    layout: Layout,
) -> RunResult:
    acks: dict[str, float] = report.get("acks") or {}
    killed_at = float(report.get("killed_at") or 0.0)
    promise_ms = 2 * args.flush_interval * 1000

    def durable(user: str) -> bool:
        status, message, _ = rows[user]
        return status == "busy" and message == f"{tag}{user}"

    lost_ages = sorted((killed_at - at) * 1000 for user, at in acks.items() if not durable(user))
    stored = sum(1 for user in rows if user.startswith("b") and durable(user))
    first_ack = min(acks.values(), default=None)
    last_ack = max(acks.values(), default=None)
    beyond = sum(1 for age in lost_ages if age > promise_ms)
    result = RunResult()
    result.add("users", "users changing at once", args.users, "", digits=0)
    result.add("kill_after_s", "kill -9 after the first ack (planned)", kill_after, "s", digits=2)
    result.add(
        "kill_after_actual_s",
        "  actual",
        killed_at - first_ack if first_ack is not None else None,
        "s",
        digits=3,
    )
    result.add("acked", "changes acknowledged before the kill", len(acks), "", digits=0)
    result.add(
        "ack_spread_ms",
        "  first to last acknowledgement",
        (last_ack - first_ack) * 1000 if first_ack is not None and last_ack is not None else None,
        "ms",
        digits=0,
    )
    result.add("lost", "acknowledged changes lost", len(lost_ages), "", digits=0)
    result.add(
        "lost_beyond_promise",
        f"  acknowledged > 2 x flush_interval ({promise_ms:g} ms) before the kill",
        beyond,
        "",
        digits=0,
        aim=("<=", 0),
    )
    result.add(
        "newest_lost_age_ms",
        "age at the kill of the newest lost ack",
        lost_ages[0] if lost_ages else None,
        "ms",
        digits=0,
    )
    result.add(
        "oldest_lost_age_ms",
        "  of the oldest lost ack (durability window)",
        lost_ages[-1] if lost_ages else 0.0,
        "ms",
        digits=0,
        aim=("<=", promise_ms),
    )
    result.add("stored", "changes in the database", stored, "", digits=0)
    result.add(
        "pushes_delivered",
        f"burst pushes delivered before the kill (of {args.users * (args.users - 1):,})",
        report["burst_pushes"],
        "",
        digits=0,
    )
    window.add_to(result, layout)
    result.details.update(
        {
            "tag": tag,
            "killed_at": killed_at,
            "burst_at": report.get("burst_at"),
            "first_ack_after_burst_ms": (first_ack - report["burst_at"]) * 1000
            if first_ack is not None and report.get("burst_at")
            else None,
            "lost_ack_ages_ms": lost_ages,
            "acked_without_busy_event": sum(1 for user in acks if not rows[user][2]),
            "errors": report.get("errors"),
            "closes": report.get("closes"),
        }
    )
    return result
