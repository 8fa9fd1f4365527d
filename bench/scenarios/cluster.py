"""What ``fanout`` and ``connections`` add for the cluster: ``--workers N --redis URL|auto``.

With ``--redis`` the server runs as a node of a cluster (``cluster.redis_url``),
and with ``--workers N`` > 1 as a supervisor and N worker processes on one port
(``server.workers``), each a node. The figures then also say:

- where every process ran (the cores it may use), and how many of the
  generator's connections each worker got (the kernel spreads them:
  ``SO_REUSEPORT``; counted from ``/proc``, see ``bench/nodes.py``);
- CPU per process (supervisor, each worker, Redis) over the measured window;
  the scenario's "server CPU" sums them all, Redis included;
- Redis's own account of the window (``INFO commandstats``: calls and
  microseconds per command), per status change;
- each node's cluster counters (``presence_cluster_published_total``,
  ``presence_cluster_received_total``) and pushes over the window.

A Redis given by URL must be empty (``--flush-redis`` empties it first) and its
CPU is not counted (it may be elsewhere); ``auto`` starts one per run, pinned to
``--redis-core`` (default: the server's core), with no persistence.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Iterable, Mapping
from typing import Any

from attrs import define, field

from bench import nodes
from bench.processes import BenchError, Scrape, ServerProcess, WorkerProcess
from bench.redis_server import CommandStats, RedisProcess, command_stats
from bench.report import RunResult
from bench.scenarios.common import Layout

PUSHES = 'presence_messages_out_total{type="user_status_change"}'
PUBLISHED = "presence_cluster_published_total"
RECEIVED = "presence_cluster_received_total"
# Commands shown one by one in the JSON (the rest are summed).
TOP_COMMANDS = 8


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="server.workers: N worker processes on one port, each a node (needs --redis)",
    )
    parser.add_argument(
        "--redis",
        default=None,
        metavar="URL|auto",
        help="run as a node of a cluster on this Redis (cluster.redis_url); auto: start"
        " a redis-server of the run's own",
    )
    parser.add_argument(
        "--redis-core",
        type=int,
        default=None,
        help="the core of the redis-server of --redis auto (default: the server's core)",
    )
    parser.add_argument(
        "--flush-redis",
        action="store_true",
        help="empty a --redis URL (FLUSHALL) at the start of each run instead of refusing"
        " a non-empty one",
    )


def check(args: argparse.Namespace) -> None:
    if args.workers < 1:
        raise BenchError(f"--workers {args.workers}: expected 1 or more")
    if args.workers > 1 and args.redis is None:
        raise BenchError(
            f"--workers {args.workers}: expected --redis URL or auto (workers are nodes"
            " of a cluster, and a cluster needs Redis)"
        )


def parameters(args: argparse.Namespace) -> dict[str, Any]:
    return {"workers": args.workers, "redis": args.redis}


def settings(args: argparse.Namespace, redis: RedisProcess | None) -> dict[str, object]:
    """The server settings the options stand for."""
    out: dict[str, object] = {}
    if redis is not None:
        out["cluster.redis_url"] = redis.url
    if args.workers > 1:
        out["server.workers"] = args.workers
    return out


def redis_core(args: argparse.Namespace, layout: Layout) -> int:
    return layout.server_core if args.redis_core is None else int(args.redis_core)


def companions(redis: RedisProcess | None) -> list[tuple[str, int]]:
    """The Redis process, when the bench started it, counted with the server."""
    return [] if redis is None or redis.pid is None else [("redis", redis.pid)]


def placement(server: ServerProcess, layout: Layout) -> dict[str, Any]:
    """Each server-side process: its pid and the cores it may run on."""
    where: dict[str, Any] = {
        name: {"pid": pid, "cores": sorted(os.sched_getaffinity(pid))}
        for name, pid in server.processes()
    }
    where["generators"] = {"cores": [layout.generator_core]}
    return where


def placement_line(where: Mapping[str, Any]) -> str:
    parts = []
    for name, place in where.items():
        cores = ",".join(str(c) for c in place["cores"])
        pid = f" (pid {place['pid']})" if "pid" in place else ""
        parts.append(f"{name}{pid} on core {cores}")
    return "processes: " + "; ".join(parts)


def connections_per_worker(server: ServerProcess) -> dict[str, int]:
    """Established connections to the server's port held by each serving process."""
    counts = nodes.connections_per_process(server.node_pids, server.port)
    names = {pid: name for name, pid in server.processes()}
    return {names[pid]: count for pid, count in counts.items()}


def users_by_node(server: ServerProcess, workers: list[WorkerProcess]) -> dict[str, int]:
    """Each generator user -> the pid of the process holding its connection (the
    generators report every user's local port in their ``connected`` event)."""
    peers = nodes.peers_by_process(server.node_pids, server.port)
    where = {}
    for worker in workers:
        for user, port in ((worker.connected or {}).get("ports") or {}).items():
            pid = peers.get(port)
            if pid is None:
                raise BenchError(f"user {user}'s connection (port {port}) is held by no worker")
            where[user] = pid
    return where


@define
class WindowProbe:
    """Cluster readings at both ends of a measured window (only what exists: per-node
    metrics when there are several nodes or Redis; Redis's command stats when the
    bench can reach it)."""

    server: ServerProcess
    redis: RedisProcess | None
    cpu0: dict[str, float] = field(factory=dict)
    cpu1: dict[str, float] = field(factory=dict)
    scrapes0: dict[int, Scrape] = field(factory=dict)
    scrapes1: dict[int, Scrape] = field(factory=dict)
    stats0: CommandStats | None = None
    stats1: CommandStats | None = None
    at0: float = 0.0
    at1: float = 0.0

    async def start(self) -> None:
        """Call just before the window's CPU snapshot."""
        self.scrapes0 = await self._scrape()
        self.stats0 = await self._stats()
        self.cpu0, self.at0 = self.server.cpu_by_process(), time.time()

    async def stop(self) -> None:
        """Call just after the window's CPU snapshot."""
        self.cpu1, self.at1 = self.server.cpu_by_process(), time.time()
        self.stats1 = await self._stats()
        self.scrapes1 = await self._scrape()

    async def _scrape(self) -> dict[int, Scrape]:
        if self.redis is None and not self.server.workers:
            return {}
        return await nodes.scrape_each(self.server.node_pids, self.server.port)

    async def _stats(self) -> CommandStats | None:
        return None if self.redis is None else await command_stats(self.redis)

    def rate(self, metric: str) -> float:
        """Per-second increase of ``metric`` summed over every node, over the window."""
        delta = sum(
            after.values.get(metric, 0.0) - self.scrapes0[pid].values.get(metric, 0.0)
            for pid, after in self.scrapes1.items()
        )
        return delta / max(self.at1 - self.at0, 1e-9)

    def cpu_seconds(self) -> dict[str, float]:
        return {name: self.cpu1[name] - self.cpu0.get(name, 0.0) for name in self.cpu1}

    def add_cpu(self, result: RunResult, per: float, unit: str) -> None:
        """Each process's CPU per ``unit`` (``per`` of them in the window)."""
        for name, used in self.cpu_seconds().items():
            result.add(
                f"cpu_us_per_{unit}_{name.replace('-', '_')}",
                f"  of which {name}",
                used / per * 1e6 if per else None,
                "us",
            )

    def add_redis(self, result: RunResult, per: float, label: str) -> None:
        """Redis per ``label`` (``per`` of them in the window): its process's CPU, the
        commands it ran and the time inside the merge script, by its own account
        (``INFO commandstats``; the commands a script runs are counted too, and their
        time is inside the script's)."""
        key = label.replace(" ", "_")
        cpu = self.cpu_seconds().get("redis")
        if cpu is not None:
            result.add(
                f"redis_cpu_us_per_{key}",
                f"Redis CPU per {label}",
                cpu / per * 1e6 if per else None,
                "us",
            )
        if self.stats0 is None or self.stats1 is None:
            return
        commands = self.stats1.since(self.stats0)
        calls = sum(c for c, _ in commands.values())
        script = sum(u for name, (_, u) in commands.items() if name in ("evalsha", "eval"))
        result.add(
            f"redis_calls_per_{key}",
            f"Redis commands per {label} (with merge.lua's)",
            calls / per if per else None,
            "",
        )
        result.add(
            f"redis_script_us_per_{key}",
            f"Redis time in merge.lua per {label}",
            script / per if per else None,
            "us",
        )
        result.details.setdefault("cluster", {})["redis_commands"] = {
            name: {"calls": c, "usec": u, "calls_per_" + key: c / per if per else None}
            for name, (c, u) in list(commands.items())[:TOP_COMMANDS]
        }

    def add_details(self, result: RunResult) -> None:
        """CPU by process and each node's counters over the window, into the JSON."""
        seconds = max(self.at1 - self.at0, 1e-9)
        cpu = self.cpu_seconds()
        details: dict[str, Any] = {
            "cpu_seconds_by_process": cpu,
            "cpu_share_by_process": {name: used / seconds for name, used in cpu.items()},
        }
        if self.scrapes0 and self.scrapes1:
            names = {pid: name for name, pid in self.server.processes()}
            details["node_counters"] = {
                names[pid]: {
                    key: after.values.get(metric, 0.0) - self.scrapes0[pid].values.get(metric, 0.0)
                    for key, metric in (
                        ("published", PUBLISHED),
                        ("received", RECEIVED),
                        ("pushes", PUSHES),
                    )
                }
                for pid, after in self.scrapes1.items()
            }
        result.details.setdefault("cluster", {}).update(details)


def crossing(
    receivers: Mapping[str, Iterable[str]], where: Mapping[str, int], changers: Iterable[str]
) -> tuple[int, int]:
    """Deliveries due for one change of each of ``changers`` (a user once per change):
    (those whose receiver's connection is held by another process than the changer's,
    all of them). Every receiver is one connection here, as in ``fanout``."""
    crossed = total = 0
    for user in changers:
        home = where[user]
        for receiver in receivers[user]:
            total += 1
            crossed += where[receiver] != home
    return crossed, total


def summary_lines(details: Mapping[str, Any]) -> list[str]:
    """The cluster details worth a line under the table: Redis's busiest commands and
    each node's counters over the window."""
    lines = []
    cluster = details.get("cluster", {})
    if commands := cluster.get("redis_commands"):
        shown = []
        for name, stat in commands.items():
            per = next((v for k, v in stat.items() if k.startswith("calls_per_")), None)
            each = stat["usec"] / stat["calls"] if stat["calls"] else 0.0
            count = "-" if per is None else f"{per:.2f}"
            shown.append(f"{name} {count} x {each:.1f} us")
        lines.append("Redis per change (calls x usec each): " + ", ".join(shown))
    if counters := cluster.get("node_counters"):
        lines.append(
            "node counters over the window: "
            + "; ".join(
                f"{node} published {c['published']:,.0f} received {c['received']:,.0f}"
                f" pushes {c['pushes']:,.0f}"
                for node, c in counters.items()
            )
        )
    return lines
