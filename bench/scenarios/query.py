"""``query``: bulk presence, 100 users a request, over WebSocket, REST and gRPC.

P users (``u0`` .. ``u<P-1>``, ``--population``) make the population asked
about: a seeded random share of them (``--online-share``, half by default) is
connected as idle WebSocket sessions (``bench/loadgen.py``, role ``idle``),
the others were never seen (offline, ``lastSeen`` null), so the answers are
real ones. Then, one transport after the other (``--transports``), K clients
(``--clients``, each on its own connection, ``bench/queryload.py``) query in a
closed loop: send a request for ``--ids`` distinct users drawn from the
population (seeded; each generator process builds 256 such requests and its
clients go through them in turn), read the whole answer, check it, send the
next. Each transport runs a warm-up of WARMUP seconds, then the measured
window of T seconds (``--seconds``), and its connections are closed before
the next transport starts.

- ``ws``: ``get_presence {userIds, requestId}`` on ``/ws``, each client
  connected as its own user (``q0`` ..), answered by ``presence``.
- ``rest``: ``GET /api/presence?ids=...``, HTTP/1.1 keep-alive, anonymous
  (auth mode ``none``: no token needed; anonymous callers see everyone-visible
  users, which all of them are).
- ``grpc``: ``GetMultipleUserStatus`` in gRPC over HTTP/2 (binary protobuf,
  ``viewer_id`` empty: anonymous), one stream per call.
- ``connect`` (not in the default list): the same RPC in the Connect protocol
  over HTTP/1.1 (``application/proto``): the gRPC service without HTTP/2.

Figures per transport, all over the measured window:
- requests/s: answers that arrived in the window, checked (status, exactly
  ``--ids`` users), / T. Aim for WebSocket: >= 2,000 (the issue's target).
- latency p50/p95/p99/max: arrival of the answer (kernel receive timestamp)
  - the wall time just before its request was sent (before reconnecting when
  the server had closed the connection), for answers arriving in the window.
- online users per answer: the mean, a check that answers are real
  (about ``--online-share`` x ``--ids``).
- server CPU per request: server CPU seconds in the window / answers in it
  (includes the idle sessions' heartbeats: P x share / 15 per second).
- failed requests: error answers, wrong answers and requests lost with a
  connection, in the window.
- the CPU shares of every run (server, generator processes — the idle ones
  too —, other load on each core).

The per-session rate limit (``limits.messages_per_second`` 20, burst 50) is
lifted for the run: a closed-loop WebSocket client sends hundreds of requests
a second. The limiter still runs on every message, so its cost is counted.
``presence.fanout = "contacts"`` (nobody has contacts) keeps the setup's
connects from being pushed to everyone; nothing changes status during the
windows, so fan-out plays no part in the figures.

``--profile FILE`` records each transport's window into FILE with the
transport before the suffix (``q.raw`` -> ``q.ws.raw``, ``q.rest.raw`` ...).
"""

from __future__ import annotations

import argparse
import random
import time
from array import array
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
from bench.queryload import TRANSPORTS
from bench.report import Progress, RunResult, percentile
from bench.scenarios.common import (
    Layout,
    Snapshot,
    Window,
    open_profiler,
    settle,
    sleep_until,
    split,
    wait_connected,
)

NAME = "query"
HELP = "bulk presence (100 users a request) over WebSocket, REST and gRPC: requests/s, latency"
DEFAULT_POPULATION = 1000
DEFAULT_ONLINE_SHARE = 0.5
DEFAULT_CLIENTS = 16
DEFAULT_IDS = 100
DEFAULT_SECONDS = 10.0
DEFAULT_TRANSPORTS = "ws,rest,grpc"
DEFAULT_SEED = 1
WARMUP = 2.0
# After the window: answers still in flight arrive (they are not counted).
DRAIN = 0.5
# Distinct requests each generator process builds.
POOL = 256
WS_RATE_AIM = 2000
LABELS = {"ws": "WebSocket", "rest": "REST", "grpc": "gRPC", "connect": "Connect"}
# High enough that no closed-loop client is ever refused.
UNLIMITED = 1_000_000


def _transports(text: str) -> list[str]:
    chosen = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in chosen if t not in TRANSPORTS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(
            f"choose from {', '.join(TRANSPORTS)} (comma-separated), not {text!r}"
        )
    return chosen


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--population", type=int, default=DEFAULT_POPULATION, help="users asked about (P)"
    )
    parser.add_argument(
        "--online-share",
        type=float,
        default=DEFAULT_ONLINE_SHARE,
        help="share of the population connected (online) during the run",
    )
    parser.add_argument(
        "--clients", type=int, default=DEFAULT_CLIENTS, help="concurrent clients per transport (K)"
    )
    parser.add_argument(
        "--ids", type=int, default=DEFAULT_IDS, help="distinct user ids per request"
    )
    parser.add_argument(
        "--seconds", type=float, default=DEFAULT_SECONDS, help="measured window per transport"
    )
    parser.add_argument(
        "--transports",
        type=_transports,
        default=_transports(DEFAULT_TRANSPORTS),
        help=f"in this order, from {', '.join(TRANSPORTS)} (default {DEFAULT_TRANSPORTS})",
    )
    parser.add_argument(
        "--seed", type=int, default=DEFAULT_SEED, help="who is online, what is asked"
    )


def parameters(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "population": args.population,
        "online_share": args.online_share,
        "clients": args.clients,
        "ids_per_request": args.ids,
        "seconds": args.seconds,
        "warmup_seconds": WARMUP,
        "transports": args.transports,
        "seed": args.seed,
        "generator_processes": args.procs,
    }


def server_settings() -> dict[str, object]:
    return {
        "presence.fanout": "contacts",
        "limits.messages_per_second": UNLIMITED,
        "limits.burst": UNLIMITED,
    }


async def run(
    args: argparse.Namespace, workdir: Path, progress: Progress, layout: Layout
) -> RunResult:
    if not 1 <= args.ids <= args.population:
        raise BenchError(f"--ids must be between 1 and the population ({args.population})")
    population = [f"u{i}" for i in range(args.population)]
    online = random.Random(args.seed).sample(population, round(len(population) * args.online_share))
    result = RunResult()
    async with (
        open_server_process(
            server_settings(), workdir, core=layout.server_core, source=layout.server_source
        ) as server,
        trio.open_nursery() as nursery,
    ):
        specs = [
            {"host": "127.0.0.1", "port": server.port, "role": "idle", "users": part}
            for part in split(online, args.procs)
            if part
        ]
        async with open_workers(nursery, specs, workdir, core=layout.generator_core) as idle:
            if idle:
                await wait_connected(idle, progress)
                result.details["settle_seconds"] = await settle(server, idle, progress)
            for transport in args.transports:
                progress.note(f"query: {LABELS[transport]}, {args.clients} clients")
                await _measure(
                    transport,
                    args,
                    server,
                    idle,
                    population,
                    nursery,
                    workdir,
                    progress,
                    layout,
                    result,
                )
            await stop_workers(idle)
            result.details["idle_workers"] = [w.result for w in idle]
        nursery.cancel_scope.cancel()
    result.details["online_users"] = len(online)
    return result


async def _measure(
    transport: str,
    args: argparse.Namespace,
    server: ServerProcess,
    idle: list[WorkerProcess],
    population: list[str],
    nursery: trio.Nursery,
    workdir: Path,
    progress: Progress,
    layout: Layout,
    result: RunResult,
) -> None:
    """One transport: connect its clients, warm up, measure the window, add its figures."""
    clients = [f"q{i}" for i in range(args.clients)]
    specs = [
        {
            "host": "127.0.0.1",
            "port": server.port,
            "role": f"query-{transport}",
            "transport": transport,
            "clients": part,
            "population": population,
            "ids": args.ids,
            "pool": POOL,
            "seed": args.seed * 1000 + i,
            "samples": str(workdir / f"query-{transport}-{i}"),
        }
        for i, part in enumerate(split(clients, args.procs))
        if part
    ]
    profile = None
    if args.profile is not None:
        profile = args.profile.with_name(f"{args.profile.stem}.{transport}{args.profile.suffix}")
    async with open_workers(
        nursery, specs, workdir, core=layout.generator_core, script="queryload.py"
    ) as workers:
        await wait_connected(workers, progress)
        w0 = time.time() + WARMUP
        w1 = w0 + args.seconds
        for worker in workers:
            await worker.command("start", w0=w0, w1=w1)
        progress.status = lambda: (
            f"query {transport}: {sum(w.progress.get('completed', 0) for w in workers):,} answers"
        )
        await sleep_until(w0)
        before = Snapshot.take(server, [*idle, *workers])
        async with open_profiler(server, profile, layout, workdir, native=args.native):
            await sleep_until(w1)
            after = Snapshot.take(server, [*idle, *workers])
        await trio.sleep(DRAIN)
        await stop_workers(workers)
        reports = [w.result or {} for w in workers]
    latency = sorted(_load_latency([str(spec["samples"]) for spec in specs]))
    _figures(transport, args, Window.between(before, after), reports, latency, result, layout)


def _load_latency(prefixes: list[str]) -> array[float]:
    """The latency samples (float32 ms) the query workers left in their files."""
    samples = array("f")
    for prefix in prefixes:
        samples.frombytes(Path(prefix + ".latency").read_bytes())
    return samples


def _figures(
    transport: str,
    args: argparse.Namespace,
    window: Window,
    reports: list[dict[str, Any]],
    latency: list[float],
    result: RunResult,
    layout: Layout,
) -> None:
    key, label = f"{transport}_", f"{LABELS[transport]}: "
    answered = sum(r.get("window_ok", 0) for r in reports)
    failed = sum(r.get("window_errors", 0) for r in reports)
    users = sum(r.get("window_users", 0) for r in reports)
    online = sum(r.get("window_online", 0) for r in reports)
    aim = (">=", WS_RATE_AIM) if transport == "ws" else None
    result.add(
        f"{key}requests_per_s",
        f"{label}requests/s ({args.ids} users each)",
        answered / args.seconds,
        "req/s",
        digits=0,
        aim=aim,
    )
    for name, q in (("p50", 50), ("p95", 95), ("p99", 99), ("max", 100)):
        result.add(
            f"{key}latency_{name}_ms",
            f"{label}latency {name}",
            percentile(latency, q),
            "ms",
            digits=2,
        )
    result.add(
        f"{key}online_per_answer",
        f"{label}online users per answer",
        online / answered if answered else None,
        "users",
    )
    result.add(
        f"{key}server_cpu_per_request_us",
        f"{label}server CPU per request",
        window.server_cpu / answered * 1e6 if answered else None,
        "us",
        digits=0,
    )
    result.add(f"{key}failed_requests", f"{label}failed requests", failed, "")
    window.add_to(result, layout, key=key, label=label)
    result.details[f"{key}generator_cpu_per_request_us"] = (
        window.generator_cpu / answered * 1e6 if answered else None
    )
    result.details[f"{key}users_answered"] = users
    result.details[f"{key}workers"] = reports
