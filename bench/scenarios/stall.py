"""``stall``: a flood of connections in everyone mode, and what a well-behaved client sees.

Issue 11, item 4. The server runs with ``presence.fanout = "everyone"`` (every
connect is pushed to everyone already connected). One probe client (user
``probe``, its own generator process, ``bench/probegen.py``) connects first
and sends a heartbeat with a ``requestId`` every ``--interval`` (100 ms),
reading everything the server sends. After BASELINE_SECONDS of that, a flood
of N connections (``f0`` .., ``bench/loadgen.py``) is opened as fast as the
generator can open them: all N ``connect()`` calls in one pass of its loop
unless ``--concurrency`` limits the connections waiting for their welcome.

The flood phase runs from the flood's first connect attempt until every
flood connection has its ``welcome`` and no push arrived anywhere for QUIET
seconds (the fan-out is over), or until ``--window`` seconds (30) have passed.

Figures:
- heartbeat round trip (the reply's kernel arrival time minus the send time)
  p50/p99/max of the probe's heartbeats sent during the flood phase, and of
  those sent before it (baseline). A heartbeat still unanswered when the probe
  stops counts with the time it had waited by then (a lower bound), so a
  server that never answers cannot look fast.
- heartbeats unanswered; the probe's ``RATE_LIMITED`` errors (heartbeats that
  queued up in the server's socket buffer during a stall are read at once
  afterwards and can exceed the limiter's burst) and the flood's.
- admission: time from the flood's first connect attempt to the last flood
  connection's ``welcome`` (kernel arrival), and how many flood connections
  had no ``welcome`` within 10 s and within 30 s of that start; flood
  connections that failed before their welcome (and why) or were closed after.
- server CPU share over the flood phase (and the generator's, and the other
  processes' load on each core, as in every scenario).
- pushes delivered: ``user_status_change`` messages the probe and the flood
  connections received, in all and per second of the phase; each connect is
  pushed to everyone connected before it, N * (N + 1) / 2 in all when every
  connect is pushed once (in the JSON).
- the server's stop after the phase: seconds from SIGTERM to exit (the flood
  clients gone, their sessions in their grace period) and its exit status.

Aims (issue 11): heartbeat p99 <= 100 ms during the flood, every connection
welcomed within 10 s. ``--profile FILE`` records the server over the flood phase.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path
from typing import Any

import trio

from bench.processes import (
    WorkerProcess,
    open_server_process,
    open_worker,
    open_workers,
    stop_workers,
)
from bench.report import Progress, RunResult, percentile
from bench.scenarios.common import (
    Layout,
    Snapshot,
    Window,
    open_profiler,
    pushes_received,
    split,
    wait_connected,
)

NAME = "stall"
HELP = "a connection flood in everyone mode; a well-behaved client's heartbeat RTT"
DEFAULT_USERS = 2000
DEFAULT_INTERVAL = 0.1
DEFAULT_WINDOW = 30.0
# The probe alone with an idle server: what a round trip costs without the flood.
BASELINE_SECONDS = 3.0
# No push for this long once everyone is welcomed: the fan-out is over.
QUIET = 1.0
# After the phase, time for replies already on their way before the probe stops.
ANSWER_GRACE = 1.0
# Room for the flood's generator processes to start and make their first connect.
WORKER_START = 1.0
RTT_AIM_MS = 100.0
WELCOME_AIM_S = 10.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--users", type=int, default=DEFAULT_USERS, help="flood connections (N, default 2,000)"
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="flood connections waiting for their welcome at once, per generator process"
        " (default: all of them)",
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=DEFAULT_INTERVAL,
        help="seconds between the probe's heartbeats (default 0.1)",
    )
    parser.add_argument(
        "--window",
        type=float,
        default=DEFAULT_WINDOW,
        help="longest flood phase in seconds (default 30)",
    )


def parameters(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "users": args.users,
        "concurrency": args.concurrency or "all",
        "interval": args.interval,
        "window": args.window,
        "generator_processes": args.procs,
    }


async def run(
    args: argparse.Namespace, workdir: Path, progress: Progress, layout: Layout
) -> RunResult:
    settings = {"presence.fanout": "everyone"}
    core = layout.generator_core
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
        base = {"host": "127.0.0.1", "port": server.port}
        probe_spec = {**base, "role": "probe", "users": ["probe"], "interval": args.interval}
        flood_users = [f"f{i}" for i in range(args.users)]
        flood_specs = [
            {
                **base,
                "role": "flood",
                "users": part,
                "concurrency": args.concurrency or len(part),
                "record_welcomes": True,
            }
            for part in split(flood_users, args.procs)
        ]
        async with open_worker(
            nursery, "probe", probe_spec, workdir, core=core, script="probegen.py"
        ) as probe:
            await wait_connected([probe], progress)
            progress.status = lambda: f"baseline: {probe.progress.get('heartbeats_sent', 0)} sent"
            await trio.sleep(BASELINE_SECONDS)
            before = Snapshot.take(server, [probe])
            async with (
                open_profiler(server, args.profile, layout, workdir, native=args.native),
                open_workers(nursery, flood_specs, workdir, core=core) as flood,
            ):
                workers = [probe, *flood]
                phase = await _flood_phase(args, workers, flood, progress)
                after = Snapshot.take(server, workers)
                await trio.sleep(ANSWER_GRACE)
                await stop_workers(workers)
        progress.status = lambda: "stopping the server (SIGTERM)"
        stop_seconds, exit_status = await server.terminate()
        nursery.cancel_scope.cancel()
    result = _figures(args, probe, flood, phase, Window.between(before, after), layout)
    result.add("server_stop_s", "server stop after SIGTERM", stop_seconds, "s", digits=2)
    result.add("server_exit_status", "server exit status", exit_status, "", digits=0)
    return result


def _welcomed(flood: list[WorkerProcess]) -> int:
    return sum(w.progress.get("connected", 0) for w in flood)


def _tried(flood: list[WorkerProcess]) -> int:
    return sum(w.progress.get("connected", 0) + w.progress.get("failed", 0) for w in flood)


async def _flood_phase(
    args: argparse.Namespace,
    workers: list[WorkerProcess],
    flood: list[WorkerProcess],
    progress: Progress,
) -> tuple[float, float]:
    """Wait out the flood; its (start, end) on the orchestrator's wall clock."""
    started = time.time()
    # The window counts from the flood's first connect, a process start after this.
    deadline = started + args.window + WORKER_START

    def status() -> str:
        return (
            f"flood {time.time() - started:4.1f}s: {_welcomed(flood):,} of {args.users:,}"
            f" welcomed | {pushes_received(workers):,} pushes received"
        )

    progress.status = status
    received, quiet_since = -1, time.monotonic()
    while time.time() < deadline:
        await trio.sleep(0.1)
        now_received = pushes_received(workers)
        if now_received != received:
            received, quiet_since = now_received, time.monotonic()
        # Progress lines come every 0.5 s: QUIET spans two of them at least.
        if _tried(flood) >= args.users and time.monotonic() - quiet_since >= QUIET:
            break
    return started, time.time()


def _round_trips(
    report: dict[str, Any], start: float, end: float
) -> tuple[list[float], int, Counter[str]]:
    """Round trips (ms, ascending) of the heartbeats sent in [start, end), how
    many of them were unanswered (counted at their wait so far), and the error
    codes the answered ones got."""
    rtts: list[float] = []
    codes: Counter[str] = Counter()
    for sent, rtt, code in report.get("probes", ()):
        if start <= sent < end:
            rtts.append(rtt * 1000)
            if code is not None:
                codes[code] += 1
    stopped = report.get("stopped_at", end)
    unanswered = [s for s in report.get("unanswered", ()) if start <= s < end]
    rtts.extend((stopped - sent) * 1000 for sent in unanswered)
    return sorted(rtts), len(unanswered), codes


def _figures(
    args: argparse.Namespace,
    probe: WorkerProcess,
    flood: list[WorkerProcess],
    phase: tuple[float, float],
    window: Window,
    layout: Layout,
) -> RunResult:
    report = probe.result or {}
    reports = [w.result or {} for w in flood]
    first = min((float(r["first"]) for r in reports if r.get("first")), default=phase[0])
    end = phase[1]
    baseline, _, _ = _round_trips(report, first - BASELINE_SECONDS, first)
    during, unanswered, codes = _round_trips(report, first, end)
    welcomes = sorted(t - first for r in reports for t in r.get("welcome_times", ()))
    observed = end - first

    def not_welcomed_within(seconds: float) -> int | None:
        if seconds > observed and len(welcomes) < args.users:
            return None  # the phase ended before this deadline with some still waiting
        users: int = args.users
        return users - sum(1 for t in welcomes if t <= seconds)

    flood_errors: Counter[str] = Counter()
    failures: Counter[str] = Counter()
    closes: Counter[str] = Counter()
    for r in reports:
        flood_errors.update(r.get("errors", {}))
        failures.update(r.get("failures", {}))
        closes.update(r.get("closes", {}))
    pushes = sum(r.get("pushes", 0) for r in [report, *reports])
    result = RunResult()
    result.add("flood_connections", "flood connections", args.users, "", digits=0)
    result.add(
        "baseline_rtt_p50_ms", "heartbeat RTT before the flood p50", percentile(baseline, 50), "ms"
    )
    result.add(
        "baseline_rtt_p99_ms", "heartbeat RTT before the flood p99", percentile(baseline, 99), "ms"
    )
    result.add("rtt_p50_ms", "heartbeat RTT during the flood p50", percentile(during, 50), "ms")
    result.add(
        "rtt_p99_ms",
        "heartbeat RTT during the flood p99",
        percentile(during, 99),
        "ms",
        aim=("<=", RTT_AIM_MS),
    )
    result.add(
        "rtt_max_ms", "heartbeat RTT during the flood max", during[-1] if during else None, "ms"
    )
    result.add("heartbeats", "heartbeats sent during the flood", len(during), "", digits=0)
    result.add(
        "heartbeats_unanswered", "  unanswered when the probe stopped", unanswered, "", digits=0
    )
    result.add(
        "probe_rate_limited",
        "  refused as RATE_LIMITED",
        (report.get("errors") or {}).get("RATE_LIMITED", 0),
        "",
        digits=0,
    )
    result.add(
        "flood_rate_limited",
        "RATE_LIMITED errors to flood clients",
        flood_errors.get("RATE_LIMITED", 0),
        "",
        digits=0,
    )
    result.add(
        "all_welcomed_s",
        "all flood connections welcomed after",
        welcomes[-1] if len(welcomes) == args.users else None,
        "s",
        digits=2,
        aim=("<=", WELCOME_AIM_S),
    )
    result.add(
        "welcome_p50_s",
        "  welcome p50 after the flood start",
        percentile(welcomes, 50),
        "s",
        digits=2,
    )
    result.add(
        "not_welcomed_10s",
        "not welcomed within 10 s",
        not_welcomed_within(10.0),
        "",
        digits=0,
        aim=("<=", 0),
    )
    result.add(
        "not_welcomed_30s", "not welcomed within 30 s", not_welcomed_within(30.0), "", digits=0
    )
    result.add(
        "flood_failed",
        "flood connections failed before welcome",
        sum(failures.values()),
        "",
        digits=0,
    )
    result.add(
        "flood_closed", "flood connections closed after welcome", sum(closes.values()), "", digits=0
    )
    result.add("phase_s", "flood phase (first connect to quiet)", observed, "s", digits=1)
    result.add("pushes_delivered", "pushes delivered", pushes, "", digits=0)
    result.add(
        "pushes_per_s",
        "pushes delivered per second of the phase",
        pushes / max(observed, 1e-9),
        "/s",
        digits=0,
    )
    window.add_to(result, layout)
    result.details.update(
        {
            "pushes_if_every_connect_pushed_once": args.users * (args.users + 1) // 2,
            "probe_errors": report.get("errors"),
            "probe_closes": report.get("closes"),
            "probe_error_codes_during_flood": dict(codes),
            "flood_errors": dict(flood_errors),
            "flood_failures": dict(failures),
            "flood_closes": dict(closes),
            "window_seconds": window.seconds,
            "server_cpu_seconds": window.server_cpu,
            "generator_cpu_seconds": window.generator_cpu,
        }
    )
    return result
