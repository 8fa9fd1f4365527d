"""What the cluster path costs a node per status change, by batch size, without a network.

    python bench/cluster_path.py [--changes N] [--batches 1,2,5,10,25] [--json]

The node's side of a change in a cluster, on a real redis-server (started here, no
persistence, pinned to the same core as this process, as in ``bench fanout
--redis auto``): the publisher merges each report in Redis (merge.lua, one pipeline
per batch; on a single Redis the script writes the read model too); a second link, as another
node watching the users, takes each change from pub/sub and decodes it; the first
link also gets its own changes back (the echo, dropped). Three figures per batch
size, each in CPU microseconds per change (``time.process_time``: this process,
all threads; Redis from ``/proc``), the best of ``--repeat`` measurements:

- origin: the publisher alone (nobody subscribed);
- + watcher: the same with the other node subscribed: what a node watching the
  user pays to receive the change (the difference);
- + echo: the same with the origin subscribed too: what dropping its own echo costs;
- Redis CPU per change in the last configuration, and the commands it ran
  (``INFO commandstats``).

The fan-out to the node's sessions is not here (it is the single server's, measured
by ``bench fanout``). Batches are made by reporting B users at once and waiting for
their merges; ``BATCH_INTERVAL`` (the publisher's pacing) is set to 0 for this.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.redis_server import RedisProcess, cli, command_stats, open_redis
from presence_actors.cluster import publisher
from presence_actors.cluster.client import MERGE_SCRIPT, RedisTarget, make_client
from presence_actors.cluster.subscriber import Subscriber
from presence_actors.cluster.wire import MergedView, Report
from presence_actors.model import DeviceType, DeviceView, Status

USERS = 500
WARMUP = 200


class _Counter:
    """Counts merged views handed to a node; wakes whoever waits for a number."""

    def __init__(self) -> None:
        self.count = 0
        self._target = 0
        self._reached = trio.Event()

    async def __call__(self, view: MergedView, cause: object) -> None:
        self.count += 1
        if self.count >= self._target:
            self._reached.set()

    async def wait_for(self, target: int) -> None:
        self._target = target
        if self.count < target:
            self._reached = trio.Event()
            await self._reached.wait()


async def _seeded(views: list[MergedView], asked: list[str] | None) -> None:
    pass


def _report(user: str, number: int) -> Report:
    status = Status.BUSY if number % 2 else Status.ONLINE
    now = int(time.time() * 1000)
    return Report(user, status, (DeviceView("d", DeviceType.WEB, status),), now, now)


async def _measure(
    redis: RedisProcess, batch: int, changes: int, watcher: bool, echo: bool
) -> dict[str, Any]:
    target = RedisTarget.parse(redis.url)
    users = [f"u{i}" for i in range(USERS)]
    merged = _Counter()
    received = _Counter()
    async with (
        make_client(target, False) as origin,
        make_client(target, False) as other,
        trio.open_nursery() as nursery,
    ):
        script = origin.register_script(MERGE_SCRIPT)
        merger = publisher.Merger(True, False, lambda: int(time.time() * 1000))
        node = publisher.Publisher("origin", merger, merged)
        node.epoch = 1
        if watcher:
            watching = Subscriber(True, False, received, _seeded, "other")
            watching.watch(users)
            await nursery.start(watching.run, other)
        if echo:
            own = Subscriber(True, False, received, _seeded, "origin")
            own.watch(users)
            await nursery.start(own.run, origin)
        nursery.start_soon(node.run, origin, script)
        number = 0

        async def run(count: int) -> None:
            nonlocal number
            for _ in range(count // batch):
                for _ in range(batch):
                    node.report(_report(users[number % USERS], number // USERS))
                    number += 1
                await merged.wait_for(number)

        await run(WARMUP)
        if watcher:
            await received.wait_for(number)
        stats0 = await command_stats(redis)
        cpu0, redis0 = time.process_time(), redis.cpu_seconds()
        await run(changes)
        if watcher:
            await received.wait_for(number)
        cpu1, redis1 = time.process_time(), redis.cpu_seconds()
        stats1 = await command_stats(redis)
        nursery.cancel_scope.cancel()
    done = changes // batch * batch
    commands = stats1.since(stats0)
    return {
        "cpu_us": (cpu1 - cpu0) / done * 1e6,
        "redis_cpu_us": (redis1 - redis0) / done * 1e6,
        "redis_calls": sum(c for c, _ in commands.values()) / done,
        "redis_commands": {name: round(c / done, 2) for name, (c, _) in commands.items()},
    }


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    publisher.BATCH_INTERVAL = 0.0
    rows: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="presence-cluster-path-") as workdir:
        async with open_redis("auto", Path(workdir), core=args.core) as redis:
            assert redis is not None
            for batch in args.batches:
                alone = await _best(redis, batch, args, False, False)
                watched = await _best(redis, batch, args, True, False)
                echoed = await _best(redis, batch, args, True, True)
                rows[str(batch)] = {
                    "origin_us": alone["cpu_us"],
                    "watcher_us": watched["cpu_us"] - alone["cpu_us"],
                    "echo_us": echoed["cpu_us"] - watched["cpu_us"],
                    "redis_cpu_us": echoed["redis_cpu_us"],
                    "redis_calls": echoed["redis_calls"],
                    "redis_commands": echoed["redis_commands"],
                }
    return rows


async def _best(
    redis: RedisProcess, batch: int, args: argparse.Namespace, watcher: bool, echo: bool
) -> dict[str, Any]:
    """The cheapest of ``args.repeat`` measurements: other processes on a shared
    machine only ever add to a CPU figure."""
    runs = []
    for _ in range(args.repeat):
        runs.append(await _measure(redis, batch, args.changes, watcher, echo))
        await cli(redis, "flushall")
    return min(runs, key=lambda run: float(run["cpu_us"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--changes", type=int, default=2000, help="changes per measurement")
    parser.add_argument(
        "--batches",
        type=lambda text: [int(b) for b in text.split(",")],
        default=[1, 2, 5, 10, 25],
        help="batch sizes (changes per pipeline)",
    )
    parser.add_argument("--core", type=int, default=0, help="the core of this process and Redis")
    parser.add_argument("--repeat", type=int, default=3, help="measurements per figure (best kept)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    os.sched_setaffinity(0, {args.core})
    started = time.monotonic()
    load = os.getloadavg()[0]
    rows = trio.run(_main, args)
    if args.json:
        print(
            orjson.dumps({"load_average": load, "rows": rows}, option=orjson.OPT_INDENT_2).decode()
        )
        return
    print(
        f"cluster path, {args.changes} changes per row, core {args.core},"
        f" load average at start {load:.2f}, {time.monotonic() - started:.0f} s"
    )
    print("CPU us per change (node side: this process; Redis: its process)")
    print(
        f"{'batch':>5}  {'origin':>7}  {'+watcher':>8}  {'+echo':>6}  {'Redis':>6}  {'commands':>8}"
    )
    for batch, row in rows.items():
        print(
            f"{batch:>5}  {row['origin_us']:7.0f}  {row['watcher_us']:8.0f}  {row['echo_us']:6.0f}"
            f"  {row['redis_cpu_us']:6.0f}  {row['redis_calls']:8.1f}"
        )
    last = rows[list(rows)[-1]]["redis_commands"]
    print("Redis commands per change at the largest batch:", last)


if __name__ == "__main__":
    main()
