"""Engine throughput without a network: status changes through registry, actor and fan-out.

    python bench/engine.py [--changes N] [--users U] [--watchers W] [--json] [--profile F]

Pins itself to one core. U users each hold one in-memory session and change
status in turn (online <-> busy); W watcher sessions subscribe to all of them
(contacts mode, so nobody else is pushed anything) and drain their outboxes.
A change counts once every watcher has received its push.
Users are many enough that none exceeds the default flap limit (10 pushed
changes per 10 s), so every change is pushed; the subscription limits are
raised so 10 sessions can watch them all. Then the
persistence figures: rows/s batched vs one transaction per row.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import sys
import tempfile
import time
from pathlib import Path

import attrs
import orjson
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import persistence as persistence_bench
from presence_actors.actors import MemoryOutbox, SessionHandle, open_engine
from presence_actors.config import Settings
from presence_actors.model import DeviceType, Status
from presence_actors.protocol import (
    Error,
    Push,
    PushBatch,
    SetStatus,
    StatusUpdated,
    Subscribe,
    Welcome,
)


def _settings(path: Path) -> Settings:
    base = Settings()
    return attrs.evolve(
        base,
        persistence=attrs.evolve(base.persistence, path=str(path / "bench.db")),
        # The sessions send no heartbeats: without this a slow run would see them
        # time out half-way and then wait for pushes that never come.
        presence=attrs.evolve(base.presence, fanout="contacts", heartbeat_timeout=3600.0),
        limits=attrs.evolve(
            base.limits,
            max_subscriptions=10**6,
            max_ids_per_request=10**6,
            outbound_queue=10**6,
        ),
    )


def _pushes(item: object) -> tuple[Push, ...]:
    # A fan-out tick hands a watcher all its pushes as one PushBatch.
    if isinstance(item, PushBatch):
        return item.pushes
    return (item,) if isinstance(item, Push) else ()


# The last change of a run is this user's: ticks go out in order, so a watcher
# that got its push got every push of the run before it.
LAST = "u-last"


async def _engine_run(
    changes: int, users: int, watchers: int, window: int, path: Path, profile: str | None = None
) -> dict[str, float]:
    settings = _settings(path)
    received = 0
    watchers_done = 0
    all_pushed = trio.Event()

    async with open_engine(settings) as engine, trio.open_nursery() as nursery:

        async def attach(user_id: str) -> SessionHandle:
            outbox = MemoryOutbox(10**6)
            handle = SessionHandle(f"s-{user_id}", user_id, "d", DeviceType.WEB, outbox)
            await engine.attach(handle)
            assert isinstance(await outbox.receive.receive(), Welcome)
            return handle

        async def watch(outbox: MemoryOutbox) -> None:
            # Like a session writer: wake once, then take everything already queued.
            # Kept to counting: what it costs is the bench's, not the engine's.
            nonlocal received, watchers_done
            async for item in outbox.receive:
                pushes = _pushes(item)
                while True:
                    try:
                        pushes += _pushes(outbox.receive.receive_nowait())
                    except trio.WouldBlock:
                        break
                if counting and pushes:
                    received += len(pushes)
                    if pushes[-1].view.user_id == LAST and pushes[-1].view.status is Status.BUSY:
                        watchers_done += 1
                        if watchers_done == watchers:
                            all_pushed.set()

        async def acknowledgements(outbox: MemoryOutbox) -> None:
            async for item in outbox.receive:
                if isinstance(item, (StatusUpdated, Error)):
                    in_flight.release()

        counting = False
        # Clients wait for their acknowledgements: at most this many changes in flight
        # (a flood of unanswered requests would only measure the actors' inboxes).
        in_flight = trio.Semaphore(window)
        user_ids = (*(f"u{i}" for i in range(users)), LAST)
        # Watchers read from the start: the users' connect pushes alone would fill an
        # outbox left unread (1 MiB), and the engine would drop the watcher as slow.
        watcher_handles = [await attach(f"w{i}") for i in range(watchers)]
        for handle in watcher_handles:
            assert isinstance(handle.outbox, MemoryOutbox)
            await engine.request(handle, Subscribe(user_ids=user_ids))
            nursery.start_soon(watch, handle.outbox)
        user_handles = [await attach(user_id) for user_id in user_ids]
        for handle in user_handles:
            assert isinstance(handle.outbox, MemoryOutbox)
            nursery.start_soon(acknowledgements, handle.outbox)
        await trio.sleep(1)  # let the connect pushes and their commits pass
        counting = True
        statuses = (Status.BUSY, Status.ONLINE)
        profiler = cProfile.Profile() if profile else None
        if profiler is not None:
            profiler.enable()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for i in range(changes):
            await in_flight.acquire()
            status = statuses[i // users % 2]
            await engine.request(user_handles[i % users], SetStatus(status=status))
        for _ in range(window):  # every change acknowledged, so the last one is last
            await in_flight.acquire()
        await engine.request(user_handles[-1], SetStatus(status=Status.BUSY))
        with trio.fail_after(600):  # a lost push must end the run, not hang it
            await all_pushed.wait()
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        if profiler is not None and profile:
            profiler.disable()
            profiler.dump_stats(profile)
        nursery.cancel_scope.cancel()
    return {
        "changes": changes,
        "watchers": watchers,
        "seconds": round(wall, 3),
        "changes_per_second": round(changes / wall),
        "pushes": received,
        "pushes_per_second": round(received / wall),
        "cpu_us_per_change": round(cpu / changes * 1e6, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--watchers", type=int, default=10)
    parser.add_argument("--window", type=int, default=100, help="changes in flight")
    parser.add_argument("--rows", type=int, default=20_000, help="persistence rows")
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--profile", metavar="FILE", help="cProfile the change window into FILE (pstats)"
    )
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {0})
    with tempfile.TemporaryDirectory() as tmp:
        engine = trio.run(
            _engine_run,
            args.changes,
            args.users,
            args.watchers,
            args.window,
            Path(tmp),
            args.profile,
        )
    with tempfile.TemporaryDirectory() as tmp:
        persistence = persistence_bench.run(args.rows, Path(tmp))
    results = {"engine": engine, "persistence": persistence}
    if args.json:
        print(orjson.dumps(results, option=orjson.OPT_INDENT_2).decode())
        return
    print(
        f"engine: {engine['changes_per_second']:,} status changes/s "
        f"({engine['pushes_per_second']:,} pushes/s to {engine['watchers']} watchers, "
        f"{engine['pushes']:,} pushes in all, "
        f"{engine['cpu_us_per_change']} us CPU per change, one core)"
    )
    for key, value in persistence.items():
        print(f"persistence {key}: {value:,}")


if __name__ == "__main__":
    main()
