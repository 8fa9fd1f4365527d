"""A Redis Cluster (three masters, keys hash-tagged per user, sharded pub/sub) serves
the nodes as one Redis does."""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path

import pytest
import trio

from .cluster_harness import GRACE, open_nodes, request, until_all_pushed, until_pushed
from .process_harness import ws_client
from .redis_harness import REDIS_SERVER, open_redis_cluster, redis_cli

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")


@pytest.mark.parametrize("fanout", ["everyone", "contacts"])
async def test_two_nodes_on_a_redis_cluster(tmp_path: Path, fanout: str) -> None:
    async with (
        open_redis_cluster(tmp_path / "redis") as redis,
        open_nodes(tmp_path, redis.url, presence={"fanout": fanout}) as (a, b),
    ):
        users = [f"user-{i}" for i in range(12)]  # spread over the three masters' slots
        for user in users:
            status, _ = await request(
                f"{a.base_url}/api/admin/users/{user}/contacts", "PUT", {"contacts": ["watcher"]}
            )
            assert status == 200
        async with ws_client(b, "watcher") as watcher:
            if fanout == "contacts":
                await watcher.expect("presence_state")
            async with AsyncExitStack() as stack:
                clients = [await stack.enter_async_context(ws_client(a, u)) for u in users]
                await until_all_pushed(watcher, users, "online")
                await clients[0].send({"type": "set_status", "status": "busy"})
                await until_pushed(watcher, users[0], "busy")
                with trio.fail_after(5):
                    while (await watcher.request({"type": "get_online_count"}, "online_count"))[
                        "count"
                    ] != len(users) + 1:
                        await trio.sleep(0.05)
                listed = await watcher.request({"type": "get_all_users", "limit": 5}, "all_users")
                assert len(listed["users"]) == 5
                assert listed["nextCursor"] is not None
            await until_all_pushed(watcher, users, "offline", seconds=GRACE + 10)
        # The users' keys really are spread over the masters.
        owners = set()
        for node in redis.nodes:
            keys = await redis_cli(node.port, "--scan", "--pattern", "pa:{user-*}:v")
            if keys.strip():
                owners.add(node.port)
        assert len(owners) >= 2
