"""``fanout``: status changes pushed to contacts; push latency and server CPU per push.

U users (``u0`` ..) each have about C contacts: a seeded random symmetric
graph (the configuration model: every user gets C "stubs", the stubs are
shuffled and paired; the rare self-pair or repeated pair is dropped, so the
mean degree is reported). The graph is written into the run's database
through the persistence layer before the server starts, as an operator's
import would. The server runs with ``presence.fanout = "contacts"``.

All U users connect (each connect is pushed to its online contacts, and each
gets its ``presence_state``); once the server is calm, users change status at
R changes per second in all, in turn (u0, u1, ..., each alternating
busy/online), for a warm-up and then the measured window of T seconds. Every
connection is a watcher: it records the pushes it receives. A change of
user X must reach X's contacts, so the expected deliveries per change are
X's degree, and the server pushes about R * C messages per second.

Figures are those of ``broadcast`` (see there): latency from the server's
publish timestamp to the arrival at a contact's connection (p50/p95/p99/max),
end-to-end from the changer's send, pushes delivered/s, server CPU per
delivered push (all of it, and above the idle heartbeat load), delivery.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path
from typing import Any

import trio

from bench.processes import open_server_process, open_workers
from bench.redis_server import RedisProcess, open_redis
from bench.report import Progress, RunResult
from bench.scenarios import cluster
from bench.scenarios.broadcast import Audience, measure_changes
from bench.scenarios.common import Layout, measure_idle, settle, split, wait_connected
from presence_actors.persistence import Batch, ContactAdded, Store

NAME = "fanout"
HELP = "status changes pushed to contacts; push latency and server CPU per push"
DEFAULT_USERS = 10_000
DEFAULT_CONTACTS = 20
DEFAULT_RATE = 200.0
DEFAULT_SECONDS = 20.0
DEFAULT_SEED = 1
IDLE_SECONDS = 5.0
LATENCY_AIM_MS = 50.0
CPU_AIM_US = 20.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--users", type=int, default=DEFAULT_USERS, help="users (U)")
    parser.add_argument(
        "--contacts", type=int, default=DEFAULT_CONTACTS, help="contacts per user (C)"
    )
    parser.add_argument(
        "--rate", type=float, default=DEFAULT_RATE, help="status changes per second (R)"
    )
    parser.add_argument("--seconds", type=float, default=DEFAULT_SECONDS, help="measured window")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="contact graph seed")
    cluster.add_arguments(parser)


def parameters(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "users": args.users,
        "contacts": args.contacts,
        "rate": args.rate,
        "seconds": args.seconds,
        "seed": args.seed,
        "generator_processes": args.procs,
        **cluster.parameters(args),
    }


def contact_graph(users: list[str], degree: int, seed: int) -> dict[str, set[str]]:
    """A random symmetric graph in which nearly every user has ``degree`` contacts.

    The same ``users``, ``degree`` and ``seed`` always give the same graph.
    """
    rng = random.Random(seed)
    stubs = [user for user in users for _ in range(degree)]
    rng.shuffle(stubs)
    graph: dict[str, set[str]] = {user: set() for user in users}
    for a, b in zip(stubs[::2], stubs[1::2], strict=False):
        if a != b:
            graph[a].add(b)
            graph[b].add(a)
    return graph


def seed_contacts(path: Path, graph: dict[str, set[str]]) -> int:
    """Write ``graph`` into the database at ``path``; the number of pairs written."""
    batch = Batch()
    for user, contacts in graph.items():
        for contact in contacts:
            if user < contact:
                batch.add(ContactAdded(user, contact))
    store = Store.open(path)
    try:
        store.commit(batch)
    finally:
        store.close()
    return batch.intents


async def seed_contacts_redis(redis: RedisProcess, graph: dict[str, set[str]]) -> int:
    """Write ``graph`` into the cluster's Redis as a node writes back its policy
    (before any node starts, so every node loads it); the number of pairs."""
    from presence_actors.cluster import policy_store
    from presence_actors.cluster.client import RedisTarget, make_client

    async with make_client(RedisTarget.parse(redis.url), False) as client:
        await policy_store.write_back(client, {}, graph, {})
    return sum(len(contacts) for contacts in graph.values()) // 2


async def run(
    args: argparse.Namespace, workdir: Path, progress: Progress, layout: Layout
) -> RunResult:
    cluster.check(args)
    users = [f"u{i}" for i in range(args.users)]
    progress.note(f"fanout: seeding {args.users:,} users with ~{args.contacts} contacts each")
    graph = contact_graph(users, args.contacts, args.seed)
    core = cluster.redis_core(args, layout)
    async with open_redis(args.redis, workdir, core=core, flush=args.flush_redis) as redis:
        if redis is None:
            pairs = await trio.to_thread.run_sync(seed_contacts, workdir / "presence.db", graph)
        else:
            pairs = await seed_contacts_redis(redis, graph)
        result = await _measure(args, workdir, progress, layout, redis, users, graph)
    result.details["contact_pairs"] = pairs
    result.details["mean_degree"] = 2 * pairs / max(len(users), 1)
    return result


async def _measure(
    args: argparse.Namespace,
    workdir: Path,
    progress: Progress,
    layout: Layout,
    redis: RedisProcess | None,
    users: list[str],
    graph: dict[str, set[str]],
) -> RunResult:
    async with (
        open_server_process(
            {"presence.fanout": "contacts", **cluster.settings(args, redis)},
            workdir,
            core=layout.server_core,
            source=layout.server_source,
            companions=cluster.companions(redis),
        ) as server,
        trio.open_nursery() as nursery,
    ):
        specs = [
            {
                "host": "127.0.0.1",
                "port": server.port,
                "role": "watch",
                "changes": True,
                "rate_share": len(part) / len(users),
                "users": part,
                "samples": str(workdir / f"samples-{i}"),
                "report_ports": True,
            }
            for i, part in enumerate(split(users, args.procs))
        ]
        async with open_workers(nursery, specs, workdir, core=layout.generator_core) as workers:
            await wait_connected(workers, progress)
            where = cluster.users_by_node(server, workers)
            per_worker = cluster.connections_per_worker(server)
            settle_seconds = await settle(server, workers, progress)
            idle = await measure_idle(server, workers, progress, IDLE_SECONDS)
            audience = Audience(
                receivers=lambda user: len(graph[user]),
                latency_aim_ms=LATENCY_AIM_MS,
                cpu_aim_us=CPU_AIM_US,
            )
            probe = cluster.WindowProbe(server, redis)
            result = await measure_changes(
                args, server, workers, progress, layout, workdir, idle, audience, probe
            )
            placement = cluster.placement(server, layout)
        nursery.cancel_scope.cancel()
    # Each change pushed in the window once ("user@timestamp"), whoever saw it.
    seen = {key for w in workers for key in (w.result or {}).get("changes_seen", ())}
    crossed, due = cluster.crossing(graph, where, [key.rpartition("@")[0] for key in seen])
    result.add(
        "cross_node_share_pct",
        "deliveries that crossed nodes",
        crossed / due * 100 if due else None,
        "%",
    )
    result.details["settle_seconds"] = settle_seconds
    result.details["connections_per_worker"] = per_worker
    result.details["placement"] = placement
    result.details.setdefault("verdict_lines", []).extend(
        [
            cluster.placement_line(placement),
            "connections per node: " + ", ".join(f"{k} {v:,}" for k, v in per_worker.items()),
            *cluster.summary_lines(result.details),
        ]
    )
    return result
