"""``broadcast``: push latency and server cost with ``presence.fanout = "everyone"``.

W watchers (``w0`` ..) and C changers (``c0`` ..) connect; once the server is
calm, the changers make R status changes per second in turn (each alternates
busy/online and tags its statusMessage with its send time) for a warm-up of
WARMUP seconds and then the measured window of T seconds. Every connection
receives every change of every other user (everyone mode), so the server
pushes R * (W + C - 1) messages per second.

C is at least ceil(R / FLAP_SHARE): no changer uses more than FLAP_SHARE of
the per-user limit of 10 pushed changes per 10 s, so no change is coalesced.

Setup is kept quiet: with ``presence.default_visibility = "nobody"`` and the
changers made visible to everyone through the admin API first, a watcher's
connect is pushed to nobody. (``--visible-watchers`` keeps the default
visibility, and each connect is pushed to everyone connected before it:
(W + C)^2 / 2 pushes before the run.) Inside the window nothing differs: a
change of a changer goes to every session, the visibility check is the
one-lookup "public" path.

Figures (the window is [w0, w0 + T) on the wall clock):
- latency: for every push stamped inside the window, arrival wall time at a
  watcher minus the push's ``timestamp`` (the server's wall clock when the
  registry published the change; same machine, same clock). p50/p95/p99/max.
  It includes the generator's own delay in reading, hence its CPU figure.
- per change (its pushes share one timestamp): the latency of the first
  watcher served, and the time from the first to the last one served (p50 over
  the changes): how much of the latency is waiting before the fan-out starts
  and how much is the fan-out itself.
- end-to-end: arrival minus the changer's send time (from statusMessage):
  adds the changer -> server -> user actor path to the above.
- delivered/s: pushes that arrived at any connection inside the window / T.
- server CPU per delivered push: the server's CPU seconds inside the window
  (/proc utime+stime, all threads) / pushes delivered inside the window. It
  includes the heartbeats of every connection (W + C every 15 s) and the
  persistence writes; "above the idle load" first subtracts the server's CPU
  share measured over IDLE_SECONDS of idle connections before the changes.
- changes confirmed / pushed per second: ``status_updated`` replies the
  changers got stamped inside the window, and distinct changes (user and
  timestamp) any watcher got a push for, stamped inside the window. Pushed
  below confirmed means the server's publishing lags its replies.
- delivery: pushes stamped in the window that watchers received / (changes
  pushed in the window * W); below 100 % means some watchers missed a push
  that others got (dropped, or still queued when the run stopped).
"""

from __future__ import annotations

import argparse
import math
import time
from array import array
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio
from attrs import frozen

from bench.processes import (
    BenchError,
    Scrape,
    ServerProcess,
    WorkerProcess,
    http_request,
    open_server_process,
    open_workers,
    stop_workers,
)
from bench.report import Progress, RunResult, percentile
from bench.scenarios.cluster import WindowProbe
from bench.scenarios.common import (
    IdleLoad,
    Layout,
    Snapshot,
    Window,
    measure_idle,
    open_profiler,
    pushes_received,
    settle,
    sleep_until,
    split,
    wait_connected,
)

NAME = "broadcast"
HELP = "status changes pushed to everyone; push latency and server CPU per push"
DEFAULT_WATCHERS = 1000
DEFAULT_RATE = 50.0
DEFAULT_SECONDS = 20.0
DEFAULT_CHANGERS = 5
# Idle measurement before the changes: the heartbeat load the window also carries.
IDLE_SECONDS = 5.0
# Changes before the window opens, so the window starts in a steady state.
WARMUP = 2.0
# Share of the flap limit (10 changes / 10 s per user) a changer may use.
FLAP_SHARE = 0.8
# After the window: how long arrivals may keep coming before the run stops.
DRAIN_TIMEOUT = 30.0
LATENCY_AIM_MS = 100.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--watchers", type=int, default=DEFAULT_WATCHERS, help="watching users")
    parser.add_argument(
        "--rate", type=float, default=DEFAULT_RATE, help="status changes per second"
    )
    parser.add_argument("--seconds", type=float, default=DEFAULT_SECONDS, help="measured window")
    parser.add_argument(
        "--changers",
        type=int,
        default=DEFAULT_CHANGERS,
        help="changing users (raised to respect the flap limit)",
    )
    parser.add_argument(
        "--visible-watchers",
        action="store_true",
        help="let every watcher's connect be pushed to everyone (a connect storm of"
        " (W+C)^2/2 pushes before the run) instead of hiding watchers",
    )


def changers_for(args: argparse.Namespace) -> int:
    """Enough changers that each makes at most FLAP_SHARE changes per second."""
    needed: int = math.ceil(float(args.rate) / FLAP_SHARE)
    return max(int(args.changers), needed)


def parameters(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "watchers": args.watchers,
        "changers": changers_for(args),
        "rate": args.rate,
        "seconds": args.seconds,
        "warmup": WARMUP,
        "visible_watchers": args.visible_watchers,
        "generator_processes": args.procs,
    }


def server_settings(args: argparse.Namespace) -> dict[str, object]:
    settings: dict[str, object] = {"presence.fanout": "everyone"}
    if not args.visible_watchers:
        settings["presence.default_visibility"] = "nobody"
    return settings


async def run(
    args: argparse.Namespace, workdir: Path, progress: Progress, layout: Layout
) -> RunResult:
    changers = [f"c{i}" for i in range(changers_for(args))]
    watchers = [f"w{i}" for i in range(args.watchers)]
    async with (
        open_server_process(
            server_settings(args), workdir, core=layout.server_core, source=layout.server_source
        ) as server,
        trio.open_nursery() as nursery,
    ):
        if not args.visible_watchers:
            await _make_visible(server, changers)
        base = {"host": "127.0.0.1", "port": server.port}
        change_spec = {**base, "role": "change", "users": changers, "rate_share": 1.0}
        watch_specs = [
            {**base, "role": "watch", "users": part, "samples": str(workdir / f"samples-{i}")}
            for i, part in enumerate(split(watchers, args.procs))
        ]
        core = layout.generator_core
        async with open_workers(nursery, [change_spec], workdir, core=core) as changing:
            await wait_connected(changing, progress)
            async with open_workers(nursery, watch_specs, workdir, core=core) as watching:
                workers = changing + watching
                await wait_connected(watching, progress)
                settle_seconds = await settle(server, workers, progress)
                idle = await measure_idle(server, workers, progress, IDLE_SECONDS)
                audience = Audience(receivers=lambda _user: args.watchers)
                result = await measure_changes(
                    args, server, workers, progress, layout, workdir, idle, audience
                )
                result.details["settle_seconds"] = settle_seconds
        nursery.cancel_scope.cancel()
    return result


async def _make_visible(server: ServerProcess, users: list[str]) -> None:
    """Make ``users`` visible to everyone through the admin API (no token in none mode)."""
    for user in users:
        body = {"visibility": "everyone"}
        status, answer = await http_request(
            server.port, "PUT", f"/api/admin/users/{user}/privacy", body
        )
        if status != 200:
            raise BenchError(f"setting the privacy of {user} failed: {status} {answer[:200]!r}")


@frozen
class Audience:
    """Who should receive a change, and what the scenario aims at.

    ``receivers(user)`` is how many watcher connections a change of ``user``
    must reach; the delivery figure compares what arrived against it.
    """

    receivers: Callable[[str], int]
    latency_aim_ms: float = LATENCY_AIM_MS
    cpu_aim_us: float | None = None


async def measure_changes(
    args: argparse.Namespace,
    server: ServerProcess,
    workers: list[WorkerProcess],
    progress: Progress,
    layout: Layout,
    workdir: Path,
    idle: IdleLoad,
    audience: Audience,
    probe: WindowProbe | None = None,
) -> RunResult:
    """Run the changes (warm-up, then the window of ``args.seconds``) and measure them.

    Every worker gets ``start``; the workers that change split ``args.rate``
    between them (the caller put that rate into their specs' ``rate_share``).
    A ``probe`` (cluster runs) reads its figures at both ends of the window,
    outside the CPU snapshots.
    """
    t0 = time.time() + 0.5  # room for the command to reach every worker
    w0 = t0 + WARMUP
    w1 = w0 + args.seconds
    for worker in workers:
        await worker.command("start", t0=t0, w0=w0, w1=w1, rate=args.rate * worker.rate_share)
    progress.status = lambda: _status(server, workers, w0, w1)
    await sleep_until(w0)
    if probe is not None:
        await probe.start()
    before = Snapshot.take(server, workers)
    async with open_profiler(server, args.profile, layout, workdir, native=args.native):
        metrics0 = await server.metrics()
        await sleep_until(w1)
        after = Snapshot.take(server, workers)
    if probe is not None:
        await probe.stop()
    metrics1 = await server.metrics()
    drain_seconds = await _drain(workers, progress)
    await stop_workers(workers)
    window = Window.between(before, after)
    result = _figures(workers, window, metrics0, metrics1, layout, idle, audience, probe)
    result.details["drain_seconds"] = drain_seconds
    return result


async def _drain(workers: list[WorkerProcess], progress: Progress) -> float:
    """Wait until no connection received anything for a second (at most DRAIN_TIMEOUT)."""
    started = time.monotonic()
    progress.status = lambda: f"draining: {pushes_received(workers):,} received"
    with trio.move_on_after(DRAIN_TIMEOUT):
        while True:
            received = pushes_received(workers)
            await trio.sleep(1.0)
            if pushes_received(workers) == received:
                break
    return time.monotonic() - started


def _status(server: ServerProcess, workers: list[WorkerProcess], w0: float, w1: float) -> str:
    now = time.time()
    phase = "warm-up" if now < w0 else "measuring" if now < w1 else "finishing"
    left = max(0.0, (w0 if now < w0 else w1) - now)
    sent = sum(w.progress.get("changes_sent", 0) for w in workers)
    return f"{phase} {left:4.1f}s left | changes {sent:,} | received {pushes_received(workers):,}"


def _load_samples(workers: list[WorkerProcess], suffix: str) -> array[float]:
    """Every watcher worker's samples of one kind, in file order."""
    samples = array("f")
    for worker in workers:
        path = worker.samples
        if path is None:
            continue
        with open(path + suffix, "rb") as file:
            samples.frombytes(file.read())
    return samples


def _per_change(latency: array[float], stamps: array[float]) -> tuple[list[float], list[float]]:
    """For each change (the pushes sharing one timestamp): the latency of its
    first-served watcher, and the time from first to last watcher served."""
    spans: dict[float, list[float]] = {}
    for value, stamp in zip(latency, stamps, strict=True):
        span = spans.get(stamp)
        if span is None:
            spans[stamp] = [value, value]
        elif value < span[0]:
            span[0] = value
        elif value > span[1]:
            span[1] = value
    first = sorted(lo for lo, _ in spans.values())
    spread = sorted(hi - lo for lo, hi in spans.values())
    return first, spread


def _figures(
    workers: list[WorkerProcess],
    window: Window,
    metrics0: Scrape | None,
    metrics1: Scrape | None,
    layout: Layout,
    idle: IdleLoad,
    audience: Audience,
    probe: WindowProbe | None = None,
) -> RunResult:
    results = [w.result or {} for w in workers]
    watch = [r for w, r in zip(workers, results, strict=True) if w.role == "watch"]
    change = [r for w, r in zip(workers, results, strict=True) if w.rate_share > 0]
    raw_latency = _load_samples(workers, ".latency")
    first, spread = _per_change(raw_latency, _load_samples(workers, ".stamp"))
    latency = sorted(raw_latency)
    e2e = sorted(_load_samples(workers, ".e2e"))
    arrivals = sum(r.get("window_arrivals", 0) for r in results)
    confirmed = sum(r.get("changes_in_window", 0) for r in change)
    seen = {key for r in watch for key in r.get("changes_seen", ())}
    published = len(seen)
    received = sum(r.get("window_pushes", 0) for r in watch)
    expected = sum(audience.receivers(key.rpartition("@")[0]) for key in seen)

    def rate(name: str) -> float | None:
        if metrics0 is None or metrics1 is None:
            return None
        return metrics1.rate_since(metrics0, name)

    result = RunResult()
    result.add("changes_per_s", "status changes confirmed", confirmed / window.seconds, "/s")
    result.add(
        "published_per_s", "status changes pushed", published / window.seconds, "/s", digits=1
    )
    result.add("latency_p50_ms", "push latency p50", percentile(latency, 50), "ms")
    result.add("latency_p95_ms", "push latency p95", percentile(latency, 95), "ms")
    result.add(
        "latency_p99_ms",
        "push latency p99",
        percentile(latency, 99),
        "ms",
        aim=("<=", audience.latency_aim_ms),
    )
    result.add("latency_max_ms", "push latency max", latency[-1] if latency else None, "ms")
    result.add(
        "first_served_p50_ms",
        "latency of first watcher served p50",
        percentile(first, 50),
        "ms",
    )
    result.add("serve_all_p50_ms", "first to last watcher served p50", percentile(spread, 50), "ms")
    result.add("e2e_p50_ms", "end-to-end latency p50", percentile(e2e, 50), "ms")
    result.add("e2e_p99_ms", "end-to-end latency p99", percentile(e2e, 99), "ms")
    result.add("delivered_per_s", "pushes delivered", arrivals / window.seconds, "/s", digits=0)
    sent = 'presence_messages_out_total{type="user_status_change"}'
    result.add(
        "server_sent_per_s",
        "pushes written by server",
        probe.rate(sent) if probe is not None and probe.scrapes1 else rate(sent),
        "/s",
        digits=0,
    )
    result.add(
        "server_cpu_us_per_push",
        "server CPU per delivered push",
        window.server_cpu / arrivals * 1e6 if arrivals else None,
        "us",
        aim=None if audience.cpu_aim_us is None else ("<=", audience.cpu_aim_us),
    )
    above_idle = window.server_cpu - idle.share * window.seconds
    result.add(
        "server_cpu_us_per_push_above_idle",
        "  same, above the idle load",
        above_idle / arrivals * 1e6 if arrivals else None,
        "us",
    )
    if probe is not None:
        probe.add_cpu(result, arrivals, "push")
    result.add(
        "idle_server_cpu_share", "server CPU before the changes", idle.share, "core", digits=2
    )
    result.add(
        "delivery_pct", "watcher delivery", received / expected * 100 if expected else None, "%"
    )
    if probe is not None:
        probe.add_redis(result, confirmed, "change")
        probe.add_details(result)
    window.add_to(result, layout)
    messages = sum(r.get("window_messages", 0) for r in results)
    result.add(
        "generator_cpu_us_per_message",
        "generator CPU per received message",
        window.generator_cpu / messages * 1e6 if messages else None,
        "us",
    )
    result.details.update(
        {
            "idle": {
                "seconds": idle.seconds,
                "cpu": idle.server_cpu,
                "heartbeats": idle.heartbeats,
            },
            "window_seconds": window.seconds,
            "server_cpu_seconds": window.server_cpu,
            "generator_cpu_seconds": window.generator_cpu,
            "latency_samples": len(latency),
            "changes_confirmed_in_window": confirmed,
            "changes_pushed_in_window": published,
            "watcher_pushes_expected": expected,
            "watcher_pushes_received": received,
            "changer_send_lag_max_ms": max(
                (r.get("send_lag_max_ms", 0) for r in change), default=0
            ),
            "closes": [r.get("closes") for r in results],
            "errors": [r.get("errors") for r in results],
            "server_closes": {
                k: v for k, v in (metrics1.values if metrics1 else {}).items() if "closes" in k
            },
            "server_outbox_drops": metrics1.values.get("presence_outbox_drops_total")
            if metrics1
            else None,
            "workers": [{k: v for k, v in r.items() if k != "changes_seen"} for r in results],
        }
    )
    return result
