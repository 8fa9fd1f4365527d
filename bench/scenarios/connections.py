"""``connections``: how fast users connect and what a connected user costs in memory.

N users (``u0`` .. ``u<N-1>``, one WebSocket each) connect through the
generator processes, at most ``--concurrency`` per process waiting for their
``welcome`` at a time. A connection counts once its ``welcome`` arrived: the
session is attached in the engine, not merely accepted by hypercorn.

Figures:
- connect rate: N / (last welcome - first connect attempt), over all workers.
- server RSS before (ready and idle) and after (all connected and the server
  calm again), and their difference per connected user: the memory one user
  with one session costs (user actor, session, hypercorn connection, buffers).
- server CPU per connection: the server's CPU over the connect phase / N.
- generator CPU seconds over the connect phase, so a saturated generator is
  never read as a slow server.
- then, holding the connections idle for HOLD_SECONDS (one heartbeat interval,
  once the server settled): the server's CPU share
  (heartbeats, one per connection per ``heartbeatInterval``, and flushes) and
  its CPU per heartbeat (all CPU in the hold / heartbeats sent in it).

Then the reconnect storm (unless ``--no-storm``): the server gets SIGTERM
(its graceful shutdown closes every WebSocket with 1001), and a new server
starts on the same port and database. Every client reconnects at once on the
close, and every RETRY_BACKOFF (0.25 s, jittered) while refused, at most
``--concurrency`` attempts in flight per generator process as in the connect
phase. Figures: the time from the new server's ``/readyz`` to the last
client's ``welcome`` (the storm itself), the time from the first close to
the last ``welcome`` (what a user sees: shutdown, start, storm), and the new
server's CPU per reconnection.

``--profile FILE`` profiles the connect phase into FILE, the hold into FILE
with the suffix ``.idle.raw`` and the storm into FILE with ``.storm.raw``.

By default ``presence.fanout = "contacts"`` and nobody has contacts, so a
connect pushes nothing to anybody: the figure is the connection's own cost.
With ``--fanout everyone`` every connect is pushed to everyone already
connected (N^2/2 pushes in all) and the rate measures that too.
"""

from __future__ import annotations

import argparse
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import trio

from bench.processes import (
    BenchError,
    ServerProcess,
    WorkerProcess,
    open_server_process,
    open_workers,
    stop_workers,
)
from bench.redis_server import RedisProcess, open_redis, used_memory
from bench.report import Progress, RunResult
from bench.scenarios import cluster
from bench.scenarios.common import (
    CONNECT_TIMEOUT,
    HEARTBEAT_INTERVAL,
    Layout,
    Snapshot,
    Window,
    measure_idle,
    open_profiler,
    settle,
    split,
    wait_connected,
)

NAME = "connections"
HELP = "connect N users; connect rate and server memory per connected user"
DEFAULT_USERS = 10_000
# Connections per generator process waiting for their welcome at once; hypercorn's
# listen backlog is 100, so more would only queue in the kernel.
DEFAULT_CONCURRENCY = 100
RSS_AIM_KB = 25
STORM_AIM_SECONDS = 20.0
# One heartbeat interval: each connection sends about one heartbeat in the hold.
HOLD_SECONDS = HEARTBEAT_INTERVAL


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--users", type=int, default=DEFAULT_USERS, help="users to connect")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=DEFAULT_CONCURRENCY,
        help="connections in flight per generator process",
    )
    parser.add_argument(
        "--fanout", choices=("contacts", "everyone"), default="contacts", help="presence.fanout"
    )
    parser.add_argument(
        "--no-storm", action="store_true", help="skip the reconnect storm after the hold"
    )
    cluster.add_arguments(parser)


def parameters(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "users": args.users,
        "concurrency": args.concurrency,
        "fanout": args.fanout,
        "storm": not args.no_storm,
        "generator_processes": args.procs,
        **cluster.parameters(args),
    }


def server_settings(args: argparse.Namespace, redis: RedisProcess | None) -> dict[str, object]:
    # A session per user, heartbeats from the generator: the defaults fit.
    return {"presence.fanout": args.fanout, **cluster.settings(args, redis)}


async def run(
    args: argparse.Namespace, workdir: Path, progress: Progress, layout: Layout
) -> RunResult:
    cluster.check(args)
    core = cluster.redis_core(args, layout)
    async with open_redis(args.redis, workdir, core=core, flush=args.flush_redis) as redis:
        return await _run(args, workdir, progress, layout, redis)


async def _run(
    args: argparse.Namespace,
    workdir: Path,
    progress: Progress,
    layout: Layout,
    redis: RedisProcess | None,
) -> RunResult:
    users = [f"u{i}" for i in range(args.users)]
    async with AsyncExitStack() as running, trio.open_nursery() as nursery:
        server = await running.enter_async_context(
            open_server_process(
                server_settings(args, redis),
                workdir,
                core=layout.server_core,
                source=layout.server_source,
                companions=cluster.companions(redis),
            )
        )
        rss_before = server.rss_kb()
        redis_before = None if redis is None else (await used_memory(redis), redis.rss_kb())
        specs = [
            {
                "host": "127.0.0.1",
                "port": server.port,
                "role": "idle",
                "users": part,
                "concurrency": args.concurrency,
                "reconnect": True,
            }
            for part in split(users, args.procs)
        ]
        before = Snapshot.take(server, [])
        async with open_workers(nursery, specs, workdir, core=layout.generator_core) as workers:
            async with open_profiler(server, args.profile, layout, workdir, native=args.native):
                await wait_connected(workers, progress)
                connected_at = Snapshot.take(server, workers)
            settle_seconds = await settle(server, workers, progress)
            rss_after = server.rss_kb()
            result = _figures(server, workers, before, connected_at, rss_before, rss_after, layout)
            result.details["settle_seconds"] = settle_seconds
            if redis is not None and redis_before is not None:
                await _redis_memory(redis, redis_before, result)
            per_worker = cluster.connections_per_worker(server)
            placement = cluster.placement(server, layout)
            result.details.update(connections_per_worker=per_worker, placement=placement)
            result.details["verdict_lines"] = [
                cluster.placement_line(placement),
                "connections per node: " + ", ".join(f"{k} {v:,}" for k, v in per_worker.items()),
            ]
            idle_profile = None if args.profile is None else args.profile.with_suffix(".idle.raw")
            async with open_profiler(server, idle_profile, layout, workdir, native=args.native):
                await _hold(server, workers, progress, result)
            scrape = await server.metrics()
            if scrape is not None:
                result.details["server_connections"] = scrape.values.get("presence_connections")
            if not args.no_storm:
                # SIGTERM, and the first server must exit 0 before the second starts.
                await running.aclose()
                await _storm(
                    args, server, workers, progress, layout, workdir, running, result, redis
                )
            await stop_workers(workers)
            result.details["workers"] = [w.result for w in workers]
        nursery.cancel_scope.cancel()
    return result


async def _storm(
    args: argparse.Namespace,
    stopped: ServerProcess,
    workers: list[WorkerProcess],
    progress: Progress,
    layout: Layout,
    workdir: Path,
    running: AsyncExitStack,
    result: RunResult,
    redis: RedisProcess | None,
) -> None:
    """Start a new server where ``stopped`` was and time every client's return."""
    connected = sum((w.connected or {}).get("connected", 0) for w in workers)
    restart = workdir / "restart"
    restart.mkdir()
    settings = {
        # The same Redis, if any: the new server joins the cluster the old one left.
        **server_settings(args, redis),
        "server.port": stopped.port,
        "persistence.path": str(workdir / "presence.db"),
    }
    server = await running.enter_async_context(
        open_server_process(
            settings,
            restart,
            core=layout.server_core,
            source=layout.server_source,
            companions=cluster.companions(redis),
        )
    )
    ready_at = time.time()
    cpu_at_ready = server.cpu_seconds()
    storm_profile = None if args.profile is None else args.profile.with_suffix(".storm.raw")

    def back() -> int:
        return sum(w.progress.get("back", 0) for w in workers)

    progress.status = lambda: f"reconnect storm: {back():,} of {connected:,} back"
    async with open_profiler(server, storm_profile, layout, workdir, native=args.native):
        with trio.move_on_after(CONNECT_TIMEOUT):
            # Another process's progress: nothing to wait on but its reports.
            while back() < connected:  # noqa: ASYNC110
                await trio.sleep(0.1)
    if back() < connected:
        raise BenchError(f"only {back()} of {connected} clients back after {CONNECT_TIMEOUT} s")
    # Progress lines are half a second apart; the server's CPU is read at once.
    cpu = server.cpu_seconds() - cpu_at_ready
    first_lost = min(w.progress["first_lost"] for w in workers)
    last_back = max(w.progress["last_back"] for w in workers)
    result.add(
        "storm_seconds",
        "reconnect storm: all back after new server ready",
        last_back - ready_at,
        "s",
        digits=2,
        aim=("<=", STORM_AIM_SECONDS),
    )
    result.add(
        "restart_seconds",
        "  from first close to all back",
        last_back - first_lost,
        "s",
        digits=2,
    )
    result.add(
        "storm_server_cpu_per_reconnect_ms",
        "  new server's CPU per reconnection",
        cpu / connected * 1000,
        "ms",
        digits=2,
    )
    result.details["storm_retry_attempts"] = sum(
        w.progress.get("retry_attempts", 0) for w in workers
    )


async def _hold(
    server: ServerProcess, workers: list[WorkerProcess], progress: Progress, result: RunResult
) -> None:
    """Hold the idle connections for HOLD_SECONDS: what heartbeats alone cost the server
    (every server-side process: with workers and Redis, each is shown too)."""
    cpu0 = server.cpu_by_process()
    idle = await measure_idle(server, workers, progress, HOLD_SECONDS)
    cpu1 = server.cpu_by_process()
    result.add(
        "idle_server_cpu_share", "server CPU, connections idle", idle.share, "core", digits=2
    )
    result.add(
        "server_cpu_per_heartbeat_us",
        "server CPU per heartbeat",
        idle.server_cpu / idle.heartbeats * 1e6 if idle.heartbeats else None,
        "us",
        digits=0,
    )
    if len(cpu1) > 1:
        for name, used in cpu1.items():
            result.add(
                f"cpu_per_heartbeat_us_{name.replace('-', '_')}",
                f"  of which {name}",
                (used - cpu0.get(name, 0.0)) / idle.heartbeats * 1e6 if idle.heartbeats else None,
                "us",
                digits=0,
            )


async def _redis_memory(redis: RedisProcess, before: tuple[int, int], result: RunResult) -> None:
    """What the connected users cost Redis: ``used_memory`` (its data) and its RSS."""
    connected = max(int(result.figures[0].value or 0), 1)
    used = await used_memory(redis)
    result.add(
        "redis_used_memory_per_user_kb",
        "Redis memory (used_memory) per connected user",
        (used - before[0]) / 1024 / connected,
        "KB",
        digits=2,
    )
    if redis.pid is not None:
        result.add(
            "redis_rss_per_user_kb",
            "Redis RSS per connected user",
            (redis.rss_kb() - before[1]) / connected,
            "KB",
            digits=2,
        )


def _figures(
    server: ServerProcess,
    workers: list[WorkerProcess],
    before: Snapshot,
    connected_at: Snapshot,
    rss_before: int,
    rss_after: int,
    layout: Layout,
) -> RunResult:
    reports = [w.connected or {} for w in workers]
    connected = sum(r.get("connected", 0) for r in reports)
    first = min(r["first"] for r in reports)
    last = max(r["last"] for r in reports)
    seconds = max(last - first, 1e-9)
    # The generator's CPU since it started: its whole connect phase, imports included.
    generator_cpu = sum(connected_at.worker_cpu)
    window = Window.between(before, connected_at)
    result = RunResult()
    result.add("connected", "users connected", connected, "")
    result.add("connect_seconds", "connect time", seconds, "s", digits=2)
    result.add("connect_rate", "connect rate", connected / seconds, "conn/s", digits=0)
    result.add("server_rss_before_mb", "server RSS before", rss_before / 1024, "MB")
    result.add("server_rss_after_mb", "server RSS after", rss_after / 1024, "MB")
    result.add(
        "rss_per_user_kb",
        "server RSS per connected user",
        (rss_after - rss_before) / max(connected, 1),
        "KB",
        aim=("<=", RSS_AIM_KB),
    )
    result.add(
        "server_cpu_per_connect_ms",
        "server CPU per connection",
        window.server_cpu / max(connected, 1) * 1000,
        "ms",
        digits=2,
    )
    result.add("generator_cpu_s", "generator CPU (connect phase)", generator_cpu, "s", digits=2)
    result.add("generator_rss_mb", "generator RSS", sum(w.rss_kb() for w in workers) / 1024, "MB")
    window.add_to(result, layout)
    result.details["server_pid"] = server.pid
    return result
