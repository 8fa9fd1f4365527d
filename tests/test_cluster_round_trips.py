"""What a change costs in round trips to Redis (issue 12: one round trip per change at
most), and that a Redis which lost the merge script still merges.

Real node processes and a real redis-server; Redis's own ``INFO commandstats``
counts what the nodes sent.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from .cluster_harness import open_nodes, request, until_pushed
from .process_harness import ws_client
from .redis_harness import REDIS_SERVER, open_redis, redis_cli

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")

CHANGES = 6


def calls(commandstats: str, command: str) -> int:
    """Calls of ``command`` in ``INFO commandstats`` output (0 if it never ran)."""
    for line in commandstats.splitlines():
        if line.startswith(f"cmdstat_{command}:"):
            fields = dict(item.split("=", 1) for item in line.split(":", 1)[1].split(","))
            return int(fields["calls"])
    return 0


async def test_a_change_asks_redis_nothing_before_its_merge(tmp_path: Path) -> None:
    """No SCRIPT EXISTS before each batch of merges (coredis's script object asks
    before every pipeline it runs in: a round trip per change at this pace); and after
    SCRIPT FLUSH, a change is still merged and pushed."""
    async with (
        open_redis(tmp_path / "redis") as redis,
        open_nodes(tmp_path, redis.url, presence={"fanout": "contacts"}) as (a, b),
    ):
        # Through the watcher's node, which then follows alice from its first connect.
        status, _ = await request(
            f"{b.base_url}/api/admin/users/alice/contacts", "PUT", {"contacts": ["watcher"]}
        )
        assert status == 200
        async with ws_client(b, "watcher") as watcher, ws_client(a, "alice") as alice:
            await watcher.expect("presence_state")
            await alice.expect("presence_state")
            await until_pushed(watcher, "alice", "online")
            await redis_cli(redis.port, "config", "resetstat")
            for number in range(CHANGES):
                shown = "busy" if number % 2 == 0 else "online"
                await alice.request({"type": "set_status", "status": shown}, "status_updated")
                await until_pushed(watcher, "alice", shown)
                # Apart, so that each change is a batch of its own.
                await trio.sleep(0.05)
            stats = await redis_cli(redis.port, "info", "commandstats")
            assert calls(stats, "evalsha") >= CHANGES
            assert calls(stats, "script|exists") == 0
            # Redis forgets its scripts (a restart, a failover, SCRIPT FLUSH).
            await redis_cli(redis.port, "script", "flush")
            await alice.request({"type": "set_status", "status": "busy"}, "status_updated")
            pushed = await until_pushed(watcher, "alice", "busy")
            assert pushed["userId"] == "alice"
            stats = await redis_cli(redis.port, "info", "commandstats")
            assert calls(stats, "script|load") >= 1
