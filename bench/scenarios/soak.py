"""``soak``: half an hour of churn; RSS, descriptors and tasks flat, nothing lost.

Issue 11, "What to show". The server runs with ``presence.fanout =
"contacts"`` on a seeded contact graph (``--users`` U, about ``--contacts`` C
each, written into the database before the start as in ``fanout``): a change
reaches a handful of contacts and subscribers, so the half hour is spent on
connections, churn and requests rather than on a fan-out ``stall`` already
measures. One generator process (``bench/soakgen.py``) holds every client:

- 80 % of the U users connect over the first 10 s, the rest during the first
  half of the warm-up, and heartbeat; then, for
  ``--minutes`` (30), users chosen at random change status and statusMessage
  (``--changes``/s; every tenth user may appear offline), set usernames
  (``--identifies``/s), query (``--queries``/s: ``get_presence`` of a few ids,
  ``get_all_users`` with limits of 5-20, ``check_user_status``,
  ``get_online_count``), subscribe and unsubscribe (``--subscribes``/s), and
  leave (``--churn``/s: clean close, RST, ``logout``, or silence until the
  server's 4002) to come back with the same deviceId within the grace period,
  after it, or minutes later;
- ``--slow-readers`` clients ask for big answers and stop reading (the server
  should close them with 1013, a close frame they should still see);
- ``--junk-clients`` send invalid JSON, binary frames, bad fields and
  oversized messages now and then;
- the orchestrator reads REST (``--rest``/s: presence, user lists, one user,
  history, stats) on fresh connections.

Every ``--sample-every`` seconds (10) it samples the server: VmRSS, the
number of open descriptors (``/proc/PID/fd``) and the living trio tasks
(``presence_trio_tasks_living`` on ``/metrics``). Flat = after the warm-up,
the end is within a margin of the start (RSS: 10 MB or 10 %, the larger;
descriptors and tasks: the live connections' spread times what one connection
holds, plus 16).

At the end: no more actions or reconnects; after the grace period every
connected user asks for its own view, and REST shows every user (status,
statusMessage, username) as acknowledged; then everyone leaves, and after the
grace period nobody is online (no ghost); the server gets SIGTERM and must
exit 0; the SQLite file (read-only) holds every user's last acknowledged
statusMessage and username and nobody as anything but offline. Error replies
to anyone but the junk clients count as failures.
"""

from __future__ import annotations

import argparse
import random
from collections import Counter
from pathlib import Path
from typing import Any

import trio

from bench.processes import (
    BenchError,
    ServerProcess,
    WorkerProcess,
    http_get,
    open_server_process,
    open_worker,
    stop_workers,
)
from bench.report import Progress, RunResult
from bench.scenarios.common import Layout, Snapshot, Window, settle, wait_connected
from bench.scenarios.fanout import contact_graph, seed_contacts
from bench.scenarios.soak_checks import Sample, presence_of, stats_of, take_sample
from bench.scenarios.soak_figures import figures

NAME = "soak"
HELP = "churn, queries, slow readers and junk for 30 minutes: RSS, fds, tasks flat; nothing lost"
GRACE = 10.0  # presence.grace_period's default, which the soak keeps
AWAY_AFTER = 300.0  # presence.away_after's default
# After the grace period, room for the last expiries and their commits.
AFTER_GRACE = 3.0
PHASE_TIMEOUT = 60.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--minutes", type=float, default=30.0, help="length of the load (default 30)")
    add("--users", type=int, default=2000, help="users (U, default 2,000; 80%% connected)")
    add("--contacts", type=int, default=10, help="contacts per user (C, default 10)")
    add("--seed", type=int, default=1, help="seed of the graph and of the clients' choices")
    add("--sample-every", type=float, default=10.0, help="seconds between samples")
    add("--warmup", type=float, default=None, help="seconds (default: a third, at most 5 min)")
    add("--changes", type=float, default=10.0, help="status changes per second")
    add("--identifies", type=float, default=0.5, help="username changes per second")
    add("--queries", type=float, default=15.0, help="WebSocket queries per second")
    add("--subscribes", type=float, default=2.0, help="subscribe/unsubscribe per second")
    add("--churn", type=float, default=2.0, help="disconnects per second")
    add("--slow-readers", type=int, default=2, help="slow readers at a time")
    add("--junk-clients", type=int, default=2, help="junk senders at a time")
    add("--rest", type=float, default=4.0, help="REST reads per second")


def parameters(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "minutes": args.minutes,
        "users": args.users,
        "contacts": args.contacts,
        "seed": args.seed,
        "warmup_s": warmup_of(args),
        "changes": args.changes,
        "identifies": args.identifies,
        "queries": args.queries,
        "subscribes": args.subscribes,
        "churn": args.churn,
        "slow_readers": args.slow_readers,
        "junk_clients": args.junk_clients,
        "rest": args.rest,
    }


def warmup_of(args: argparse.Namespace) -> float:
    if args.warmup is not None:
        return float(args.warmup)
    return min(300.0, float(args.minutes) * 60 / 3)


async def run(
    args: argparse.Namespace, workdir: Path, progress: Progress, layout: Layout
) -> RunResult:
    if args.procs != 1:
        raise BenchError("soak runs one generator process (it holds the model): drop --procs")
    users = [f"u{i}" for i in range(args.users)]
    progress.note(f"soak: seeding {args.users:,} users with ~{args.contacts} contacts each")
    graph = contact_graph(users, args.contacts, args.seed)
    await trio.to_thread.run_sync(seed_contacts, workdir / "presence.db", graph)
    soak = Soak(args, users, progress)
    async with (
        open_server_process(
            {"presence.fanout": "contacts"},
            workdir,
            core=layout.server_core,
            source=layout.server_source,
            check_exit=False,
        ) as server,
        trio.open_nursery() as nursery,
    ):
        await soak.sample(server, "idle", 0)
        spec = {
            "host": "127.0.0.1",
            "port": server.port,
            "role": "soak",
            "users": users,
            "slow": args.slow_readers,
            "junk": args.junk_clients,
            "seed": args.seed,
            "grace": GRACE,
            "away_after": AWAY_AFTER,
            "concurrency": 200,
            "late_join_by": soak.warmup / 2,
            "rates": {
                "status": args.changes,
                "identify": args.identifies,
                "query": args.queries,
                "subscribe": args.subscribes * 0.6,
                "unsubscribe": args.subscribes * 0.4,
                "disconnect": args.churn,
            },
        }
        async with open_worker(
            nursery, "soak", spec, workdir, core=layout.generator_core, script="soakgen.py"
        ) as worker:
            await wait_connected([worker], progress)
            soak.worker = worker
            soak.started = trio.current_time()
            soak.phase = "load"
            before = Snapshot.take(server, [worker])
            async with trio.open_nursery() as sampling:
                sampling.start_soon(soak.sampler, server)
                await soak.load(server, worker)
                after = Snapshot.take(server, [worker])
                await soak.finish(server, worker)
                sampling.cancel_scope.cancel()
            await stop_workers([worker])
        progress.status = lambda: "stopping the server (SIGTERM)"
        soak.stop_seconds, soak.exit_status = await server.terminate()
        nursery.cancel_scope.cancel()
    return figures(soak, workdir, Window.between(before, after), layout)


class Soak:
    """One soak run: its phases, and what they collected for the figures."""

    def __init__(self, args: argparse.Namespace, users: list[str], progress: Progress) -> None:
        self.args = args
        self.users = users
        self.progress = progress
        self.warmup = warmup_of(args)
        self.samples: list[Sample] = []
        self.started = 0.0
        self.phase = "idle"
        self.rest: Counter[str] = Counter()
        self.rest_unexpected: Counter[str] = Counter()
        self.verify_views: dict[str, dict[str, Any]] = {}
        self.verify_stats: dict[str, Any] = {}
        self.left_views: dict[str, dict[str, Any]] = {}
        self.left_stats: dict[str, Any] = {}
        self.left_sample: Sample | None = None
        self.worker: WorkerProcess | None = None
        self.stop_seconds = 0.0
        self.exit_status: int | None = None

    def open_clients(self) -> int:
        return int(self.worker.progress.get("live", 0)) if self.worker else 0

    async def sample(self, server: ServerProcess, phase: str, at: float) -> Sample:
        taken = await take_sample(server, at, phase, self.open_clients())
        self.samples.append(taken)
        return taken

    async def sampler(self, server: ServerProcess) -> None:
        """A sample every ``--sample-every`` seconds from the start of the load until
        cancelled, on the clock; each is labelled with the phase it was taken in."""
        every = self.args.sample_every
        n = 0
        while True:
            n += 1
            await trio.sleep_until(self.started + n * every)
            await self.sample(server, self.phase, n * every)

    async def load(self, server: ServerProcess, worker: WorkerProcess) -> None:
        """The load phase: ``--minutes`` of the generator's load, and REST reads."""
        seconds = self.args.minutes * 60

        def status() -> str:
            p = worker.progress
            line = (
                f"soak {trio.current_time() - self.started:5.0f}/{seconds:.0f}s:"
                f" {p.get('open', 0):,} open, {p.get('connected', 0):,} welcomes,"
                f" {sum((p.get('acked') or {}).values()):,} acked"
            )
            if self.samples:
                last = self.samples[-1]
                line += f" | RSS {last.rss_kb / 1024:.0f} MB, {last.fds} fds, {last.tasks} tasks"
            return line

        self.progress.status = status
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._rest_reads, server)
            await trio.sleep_until(self.started + seconds)
            nursery.cancel_scope.cancel()

    async def finish(self, server: ServerProcess, worker: WorkerProcess) -> None:
        """Stop the load, let grace expire, check what everyone sees, leave, check again."""
        self.phase = "drain"
        self.progress.status = lambda: f"quiesced: waiting {GRACE + AFTER_GRACE:g} s of grace"
        await worker.command("quiesce")
        await trio.sleep(GRACE + AFTER_GRACE)
        await settle(server, [worker], self.progress)
        await worker.command("verify")
        await self._until(
            worker,
            "verifying own views",
            lambda p: p.get("verify_started") and p["verify_answered"] >= p["verify_sent"],
        )
        self.verify_views = await presence_of(server, self.users)
        self.verify_stats = await stats_of(server)
        self.phase = "leave"
        await worker.command("leave")
        await self._until(worker, "everyone leaving", lambda p: p.get("live", 1) == 0)
        self.progress.status = lambda: f"left: waiting {GRACE + AFTER_GRACE:g} s of grace"
        await trio.sleep(GRACE + AFTER_GRACE)
        await settle(server, [worker], self.progress)
        self.left_views = await presence_of(server, self.users)
        self.left_stats = await stats_of(server)
        at = trio.current_time() - self.started
        self.left_sample = await self.sample(server, "left", at)

    async def _until(self, worker: WorkerProcess, what: str, done: Any) -> None:
        self.progress.status = lambda: f"{what}: {worker.progress}"
        with trio.move_on_after(PHASE_TIMEOUT) as waited:
            while not done(worker.progress):  # noqa: ASYNC110
                await trio.sleep(0.1)
        if waited.cancelled_caught:
            raise BenchError(f"{what}: not done within {PHASE_TIMEOUT} s: {worker.progress}")

    async def _rest_reads(self, server: ServerProcess) -> None:
        """REST reads at ``--rest`` per second, each on a new connection; what came back."""
        rng = random.Random(self.args.seed + 1)
        while True:
            await trio.sleep(rng.expovariate(self.args.rest))
            user = rng.choice(self.users)
            ids = ",".join(rng.sample(self.users, 10))
            kind, path = rng.choice(
                (
                    ("presence", f"/api/presence?ids={ids}"),
                    ("users", f"/api/users?limit={rng.randint(5, 20)}"),
                    ("user", f"/api/users/{user}"),
                    ("history", f"/api/users/{user}/history?limit=20"),
                    ("stats", "/api/stats"),
                )
            )
            try:
                status, _ = await http_get(server.port, path)
            except (trio.TooSlowError, OSError) as error:
                self.rest[f"{kind} {type(error).__name__}"] += 1
                self.rest_unexpected[f"{kind} {type(error).__name__}"] += 1
                continue
            self.rest[f"{kind} {status}"] += 1
            # A user never connected yet is unknown: 404 is its right answer.
            if status != 200 and not (kind in ("user", "history") and status == 404):
                self.rest_unexpected[f"{kind} {status}"] += 1
