"""What scenarios share: core layout, CPU snapshots, waiting for connections and calm."""

from __future__ import annotations

import signal
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TypeVar

import trio
from attrs import frozen

from bench.processes import BenchError, ServerProcess, WorkerProcess, log_file, pinned
from bench.procstat import CoreTimes
from bench.report import Progress, RunResult

T = TypeVar("T")

# A run that is still connecting after this long is broken, not slow.
CONNECT_TIMEOUT = 300.0
# A server above this share of its core is still working through something.
BUSY_CPU = 0.98
SETTLE_TIMEOUT = 120.0
# py-spy samples per second: enough for the functions above 1 % in a 20 s window.
PROFILE_RATE = 200
PROFILE_STOP_TIMEOUT = 30.0
# The server's default presence.heartbeat_interval, which the scenarios keep.
HEARTBEAT_INTERVAL = 15.0
# Other processes using this share of a run's core make the run suspect.
DISTURBED = 0.2
# A generator above this share of its core may be delaying what it measures.
GENERATOR_SATURATED = 0.9


@frozen
class Layout:
    """Which core the server runs on, which one the generator processes share,
    and the source tree the server imports ``presence_actors`` from (None: the
    checkout itself)."""

    server_core: int = 0
    generator_core: int = 1
    server_source: Path | None = None


def split(items: Sequence[T], parts: int) -> list[list[T]]:
    """``items`` dealt into ``parts`` contiguous lists of nearly equal size."""
    size, extra = divmod(len(items), parts)
    out, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        out.append(list(items[start:end]))
        start = end
    return out


@frozen
class Snapshot:
    """CPU counters of the server, each worker and each core at one moment."""

    at: float
    server_cpu: float
    worker_cpu: tuple[float, ...]
    cores: CoreTimes

    @classmethod
    def take(cls, server: ServerProcess, workers: Sequence[WorkerProcess]) -> Snapshot:
        return cls(
            time.time(),
            server.cpu_seconds(),
            tuple(w.cpu_seconds() for w in workers),
            CoreTimes.read(),
        )


@frozen
class Window:
    """CPU use between two snapshots.

    ``server_cpu`` and ``generator_cpu`` are CPU seconds of those processes;
    ``core_busy`` is the busy share of each core counting every process on
    the machine, so ``core_busy[server_core]`` well above ``server_share``
    means something else ran on the server's core during the window.
    """

    seconds: float
    server_cpu: float
    generator_cpu: float
    core_busy: tuple[float, ...]

    @classmethod
    def between(cls, before: Snapshot, after: Snapshot) -> Window:
        return cls(
            after.at - before.at,
            after.server_cpu - before.server_cpu,
            sum(after.worker_cpu) - sum(before.worker_cpu),
            after.cores.busy_fraction_since(before.cores),
        )

    @property
    def server_share(self) -> float:
        return self.server_cpu / self.seconds

    @property
    def generator_share(self) -> float:
        return self.generator_cpu / self.seconds

    def add_to(self, result: RunResult, layout: Layout, key: str = "", label: str = "") -> None:
        """The CPU figures every scenario reports, and the interference check.

        A run with several measured windows (``query``: one per transport)
        calls this once per window with ``key`` and ``label`` prefixes for the
        figures; a saturated generator or a disturbed core in any window marks
        the run.
        """
        result.add(
            f"{key}server_cpu_share",
            f"{label}server CPU (share of its core)",
            self.server_share,
            "core",
            digits=2,
        )
        result.add(
            f"{key}generator_cpu_share",
            f"{label}generator CPU (share of its core)",
            self.generator_share,
            "core",
            digits=2,
        )
        others = max(0.0, self.core_busy[layout.server_core] - self.server_share)
        result.add(
            f"{key}other_load_server_core",
            f"{label}other load on server core",
            others,
            "core",
            digits=2,
        )
        # The orchestrator shares the generator core; it mostly sleeps.
        theirs = max(0.0, self.core_busy[layout.generator_core] - self.generator_share)
        result.add(
            f"{key}other_load_generator_core",
            f"{label}other load on generator core",
            theirs,
            "core",
            digits=2,
        )
        details = result.details
        details[f"{key}core_busy"] = list(self.core_busy)
        saturated = self.generator_share >= GENERATOR_SATURATED
        details["generator_saturated"] = details.get("generator_saturated", False) or saturated
        disturbed = max(others, theirs) >= DISTURBED
        details["disturbed"] = details.get("disturbed", False) or disturbed


def pushes_received(workers: Sequence[WorkerProcess]) -> int:
    """``user_status_change`` messages received so far by every worker's connections."""
    return sum(w.progress.get("pushes", 0) for w in workers)


async def wait_connected(workers: Sequence[WorkerProcess], progress: Progress) -> None:
    """Wait until every worker tried all its connections; BenchError on a failure."""
    progress.status = lambda: (
        "connecting: " + ", ".join(f"{w.name} {w.progress.get('connected', 0):,}" for w in workers)
    )
    with trio.move_on_after(CONNECT_TIMEOUT) as waited:
        for worker in workers:
            await worker.connected_event.wait()
    if waited.cancelled_caught:
        raise BenchError(f"connections not done after {CONNECT_TIMEOUT} s")
    failed = sum((w.connected or {}).get("failed", 0) for w in workers)
    total = sum((w.connected or {}).get("connected", 0) for w in workers)
    if failed or any(w.connected is None for w in workers):
        reasons: dict[str, int] = {}
        for worker in workers:
            for reason, count in (worker.connected or {}).get("failures", {}).items():
                reasons[reason] = reasons.get(reason, 0) + count
        raise BenchError(f"{failed} connections failed ({total} connected): {reasons}")


async def settle(
    server: ServerProcess, workers: Sequence[WorkerProcess], progress: Progress
) -> float:
    """Wait until the work the setup caused is done; the seconds it took.

    Done = over one second no push arrived, the server's persistence queue is
    empty (``presence_persistence_pending`` = 0) and the server did not use
    its whole core. Idle connections keep costing CPU (5,000 heartbeats every
    15 s are a third of a core here), so no absolute CPU threshold is used.
    Raises BenchError after SETTLE_TIMEOUT.
    """
    started = time.monotonic()
    progress.status = lambda: f"settling: {pushes_received(workers):,} pushes received"
    with trio.move_on_after(SETTLE_TIMEOUT):
        while True:
            cpu, received = server.cpu_seconds(), pushes_received(workers)
            await trio.sleep(1.0)
            busy = server.cpu_seconds() - cpu
            if busy < BUSY_CPU and pushes_received(workers) == received:
                scrape = await server.metrics()
                if scrape is not None and not scrape.values.get("presence_persistence_pending"):
                    return time.monotonic() - started
    raise BenchError(f"the server did not settle within {SETTLE_TIMEOUT} s")


@asynccontextmanager
async def open_profiler(
    server: ServerProcess, out: Path | None, layout: Layout, workdir: Path, *, native: bool = False
) -> AsyncIterator[None]:
    """Sample the server with py-spy for the duration of the block (nothing if ``out`` is None).

    py-spy runs on the generator's core, since sampling costs CPU, and writes
    ``--format raw`` (collapsed stacks, one line per stack with its count) to
    ``out`` when it gets SIGINT at the end of the block. With ``native`` the
    C frames are sampled too, which shows the garbage collector's share
    (``gc_collect_main``) instead of charging it to whatever allocated. Profiled
    runs are slower: read their figures as such.
    """
    if out is None:
        yield
        return
    argv = pinned(
        layout.generator_core,
        *("py-spy", "record", "--pid", str(server.pid), "--rate", str(PROFILE_RATE)),
        *("--format", "raw", "--output", str(out)),
        *(("--native",) if native else ()),
        # A supervisor serves nothing: its workers are what to sample.
        *(("--subprocesses",) if server.workers else ()),
    )
    with log_file(workdir / "py-spy.log") as log:
        process = await trio.lowlevel.open_process(argv, stdout=log, stderr=log)
    try:
        yield
    finally:
        with trio.CancelScope(shield=True):
            process.send_signal(signal.SIGINT)
            with trio.move_on_after(PROFILE_STOP_TIMEOUT):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()


@frozen
class IdleLoad:
    """The server's CPU while its connections only heartbeat (no pushes, no requests)."""

    seconds: float
    server_cpu: float
    heartbeats: int

    @property
    def share(self) -> float:
        return self.server_cpu / self.seconds


def heartbeats_sent(workers: Sequence[WorkerProcess]) -> int:
    return sum(w.progress.get("heartbeats_sent", 0) for w in workers)


async def measure_idle(
    server: ServerProcess, workers: Sequence[WorkerProcess], progress: Progress, seconds: float
) -> IdleLoad:
    """Server CPU over ``seconds`` of idle connections: their heartbeats and
    whatever else the server does on its own.

    The generator spreads each connection's heartbeat phase uniformly over the
    interval, so the heartbeats come at a steady N per interval; a window of
    one whole interval sees exactly one heartbeat per connection.
    """
    progress.status = lambda: f"idle: {heartbeats_sent(workers):,} heartbeats sent"
    cpu, beats = server.cpu_seconds(), heartbeats_sent(workers)
    started = time.monotonic()
    await trio.sleep(seconds)
    elapsed = time.monotonic() - started
    used = server.cpu_seconds() - cpu
    # Progress lines come every half second; wait for one newer than the window.
    await trio.sleep(0.6)
    return IdleLoad(elapsed, used, heartbeats_sent(workers) - beats)


async def sleep_until(wall: float) -> None:
    """Sleep until the wall clock (``time.time()``) reaches ``wall``."""
    await trio.sleep(max(0.0, wall - time.time()))
