"""Engine throughput without a network: status changes through registry, actor and fan-out.

    python bench/engine.py [--changes N] [--users U] [--watchers W] [--json]

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


async def _engine_run(
    changes: int, users: int, watchers: int, window: int, path: Path
) -> dict[str, float]:
    settings = _settings(path)
    statuses = (Status.BUSY, Status.ONLINE)
    # A fan-out tick keeps one push per user, so a user changed twice within one tick
    # is pushed once: the run ends when every watcher shows every user's last status.
    final = {f"u{i % users}": statuses[(i // users) % 2] for i in range(changes)}
    received = 0
    caught_up = sum(status is Status.ONLINE for status in final.values()) * watchers
    all_pushed = trio.Event()

    async with open_engine(settings) as engine, trio.open_nursery() as nursery:

        async def attach(user_id: str) -> SessionHandle:
            outbox = MemoryOutbox(10**6)
            handle = SessionHandle(f"s-{user_id}", user_id, "d", DeviceType.WEB, outbox)
            await engine.attach(handle)
            assert isinstance(await outbox.receive.receive(), Welcome)
            return handle

        async def drain(outbox: MemoryOutbox, counts: bool) -> None:
            # Like a session writer: wake once, then take everything already queued.
            nonlocal received, caught_up
            # Every user connected online before the count starts.
            shown = dict.fromkeys(final, Status.ONLINE)
            async for item in outbox.receive:
                batch = [item]
                while True:
                    try:
                        batch.append(outbox.receive.receive_nowait())
                    except trio.WouldBlock:
                        break
                if not counts:
                    for _ in range(sum(isinstance(i, (StatusUpdated, Error)) for i in batch)):
                        in_flight.release()
                    continue
                if not counting:
                    continue
                for push in (push for item in batch for push in _pushes(item)):
                    user_id, status = push.view.user_id, push.view.status
                    if user_id not in final:
                        continue
                    received += 1
                    was_final = shown[user_id] == final[user_id]
                    shown[user_id] = status
                    caught_up += (status == final[user_id]) - was_final
                if caught_up == len(final) * watchers:
                    all_pushed.set()

        counting = False
        # Clients wait for their acknowledgements: at most this many changes in flight
        # (a flood of unanswered requests would only measure the actors' inboxes).
        in_flight = trio.Semaphore(window)
        user_ids = tuple(f"u{i}" for i in range(users))
        # Watchers read from the start: the users' connect pushes alone would fill an
        # outbox left unread (1 MiB), and the engine would drop the watcher as slow.
        watcher_handles = [await attach(f"w{i}") for i in range(watchers)]
        for handle in watcher_handles:
            assert isinstance(handle.outbox, MemoryOutbox)
            await engine.request(handle, Subscribe(user_ids=user_ids))
            nursery.start_soon(drain, handle.outbox, True)
        user_handles = [await attach(user_id) for user_id in user_ids]
        for handle in user_handles:
            assert isinstance(handle.outbox, MemoryOutbox)
            nursery.start_soon(drain, handle.outbox, False)
        await trio.sleep(1)  # let the connect pushes and their commits pass
        counting = True
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for i in range(changes):
            handle = user_handles[i % users]
            status = statuses[(i // users) % 2]
            await in_flight.acquire()
            await engine.request(handle, SetStatus(status=status))
        with trio.fail_after(600):  # a miscount must end the run, not hang it
            await all_pushed.wait()
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
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
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {0})
    with tempfile.TemporaryDirectory() as tmp:
        engine = trio.run(
            _engine_run, args.changes, args.users, args.watchers, args.window, Path(tmp)
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
