"""Persistence throughput: batched commits vs one transaction per row.

    python bench/persistence.py [--rows N] [--json]

(also ``python -m presence_actors bench persistence``, which runs this pinned
to the server's core)

(a) ``batched``: N presence events told (``submit_nowait``, waiting only when the
intake is full) to a real PersistenceActor with the default settings (batch 500,
100 ms, queue 10,000), timed until ``flush()`` says all are durable.
(b) ``unbatched``: the same N events, each committed in its own transaction
through the same Store (batches of one). Both write fresh files in a temp dir.
Also reports the database size per million events, extrapolated from the
batched file after N events.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import trio

from presence_actors.config import PersistenceSettings
from presence_actors.model import Status
from presence_actors.persistence import Batch, PersistenceActor, PresenceEvent, Store

# Enough rows for stable rates; the unbatched half dominates and stays a few seconds.
DEFAULT_ROWS = 20_000
_STATUSES = (Status.ONLINE, Status.AWAY, Status.BUSY, Status.OFFLINE)
_REASONS = ("connect", "idle", "set_status", "grace_expired")


def _events(rows: int) -> list[PresenceEvent]:
    """Realistic-looking events: 1000 users, a device id on most of them."""
    start = 1_800_000_000_000
    return [
        PresenceEvent(
            user_id=f"user-{i % 1000:04d}",
            status=_STATUSES[i % 4],
            at=start + i * 7,
            reason=_REASONS[i % 4],
            device_id=f"device-{i % 3000:05d}" if i % 5 else None,
        )
        for i in range(rows)
    ]


async def _write_batched(store: Store, events: list[PresenceEvent]) -> float:
    writer = PersistenceActor(
        store, PersistenceSettings(), now_ms=lambda: time.time_ns() // 1_000_000
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        started = time.perf_counter()
        for intent in events:
            # The engine's "tell": no scheduler round trip unless the intake is full.
            try:
                writer.submit_nowait(intent)
            except trio.WouldBlock:
                await writer.submit(intent)
        await writer.flush()
        elapsed = time.perf_counter() - started
        nursery.cancel_scope.cancel()
    return elapsed


def _write_unbatched(store: Store, events: list[PresenceEvent]) -> float:
    started = time.perf_counter()
    for intent in events:
        batch = Batch()
        batch.add(intent)
        store.commit(batch)
    return time.perf_counter() - started


def run(rows: int, path: Path) -> dict[str, float]:
    """Measure both modes on fresh files under the directory ``path``."""
    events = _events(rows)
    batched_file, unbatched_file = path / "batched.db", path / "unbatched.db"
    with Store.open(batched_file) as store:
        batched = trio.run(_write_batched, store, events)
    with Store.open(unbatched_file) as store:
        unbatched = _write_unbatched(store, events)
    # Closing the last connection checkpoints the WAL into the main file.
    size = batched_file.stat().st_size
    return {
        "rows": rows,
        "batched_rows_per_s": rows / batched,
        "unbatched_rows_per_s": rows / unbatched,
        "ratio": unbatched / batched,
        "mb_per_million_events": size / rows * 1_000_000 / 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS)
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="presence-bench-") as tmp:
        result = run(args.rows, Path(tmp))
    if args.json:
        print(json.dumps(result))
        return
    print(f"rows                     {result['rows']:>12,.0f}")
    print(f"batched (actor) rows/s   {result['batched_rows_per_s']:>12,.0f}")
    print(f"unbatched rows/s         {result['unbatched_rows_per_s']:>12,.0f}")
    print(f"ratio batched/unbatched  {result['ratio']:>12.1f}x")
    print(f"size per 1M events       {result['mb_per_million_events']:>12.1f} MB")


if __name__ == "__main__":
    main()
