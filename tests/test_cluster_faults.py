"""Faults of a cluster, each with real processes: a node killed, restarted or cut off,
Redis stopped, frozen or restarted empty. No ghost, no missed offline, watchers end
with the truth, nothing crashes."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
import trio

from .cluster_harness import (
    GRACE,
    NODE_TTL,
    open_node,
    open_nodes,
    pushes_within,
    request,
    until_all_pushed,
    until_pushed,
)
from .process_harness import ws_client
from .redis_harness import REDIS_SERVER, open_redis, open_tcp_proxy

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")

EVERYONE = {"presence": {"fanout": "everyone"}}


async def ready(node_url: str) -> tuple[int, dict[str, object]]:
    return await request(f"{node_url}/readyz")


async def test_a_killed_nodes_users_go_offline_elsewhere_with_their_last_heartbeat(
    tmp_path: Path,
) -> None:
    async with (
        open_redis(tmp_path / "redis") as redis,
        open_node(tmp_path, "a", redis.url, **EVERYONE) as a,
        open_node(tmp_path, "b", redis.url, **EVERYONE) as b,
        ws_client(b, "watcher") as watcher,
        ws_client(b, "both", deviceId="laptop"),
    ):
        async with ws_client(a, "alone") as alone, ws_client(a, "both", deviceId="phone"):
            await until_pushed(watcher, "alone", "online")
            await alone.send({"type": "heartbeat"})
            heard = time.time()
            await trio.sleep(1.5)  # the node's stamp of that heartbeat reaches Redis
            await a.stop(signal.SIGKILL)
            killed = trio.current_time()
            gone = await until_pushed(watcher, "alone", "offline", seconds=NODE_TTL + GRACE + 10)
        # Within node_ttl + grace (+ the cleanup's own second and a busy machine's slack).
        assert trio.current_time() - killed <= NODE_TTL + GRACE + 3
        # lastSeen is the last heartbeat (stamped each second), not the death.
        last_seen = _unix(gone["lastSeen"])
        assert heard - 1.5 <= last_seen <= heard + 1.2, (last_seen, heard)
        # "both" keeps its laptop on b: still online, never shown offline.
        _, seen = await request(f"{b.base_url}/api/presence?ids=both")
        assert seen["users"][0]["status"] == "online"
        offline = [
            m
            for m in watcher.received
            if m.get("userId") == "both" and m.get("status") == "offline"
        ]
        assert not offline


async def test_a_restarted_node_rejoins_and_a_reconnect_within_grace_does_not_flap(
    tmp_path: Path,
) -> None:
    async with (
        open_redis(tmp_path / "redis") as redis,
        open_node(tmp_path, "b", redis.url, **EVERYONE) as b,
        ws_client(b, "watcher") as watcher,
    ):
        async with open_node(tmp_path, "a", redis.url, **EVERYONE) as a:
            async with ws_client(a, "alice", deviceId="phone"):
                await until_pushed(watcher, "alice", "online")
            # a stops (SIGTERM) right after alice's connection dropped; alice comes
            # back through b within the grace period: watchers see nothing.
            async with ws_client(b, "alice", deviceId="phone"):
                assert await pushes_within(watcher, GRACE + NODE_TTL + 1, about="alice") == []
        async with open_node(tmp_path, "a", redis.url, **EVERYONE) as a2, ws_client(a2, "carol"):
            await until_pushed(watcher, "carol", "online")


async def test_a_node_restarted_under_its_name_before_its_liveness_expired_leaves_no_ghost(
    tmp_path: Path,
) -> None:
    """kill -9 and an immediate restart under the same server.node: the new process
    renews the liveness the others would have watched expire, so it cleans up after
    its predecessor itself; a user back within grace does not flap."""
    slow = {"presence": {"fanout": "everyone", "grace_period": "6s"}}
    async with (
        open_redis(tmp_path / "redis") as redis,
        open_node(tmp_path, "b", redis.url, **slow) as b,
        ws_client(b, "watcher") as watcher,
    ):
        long_lived = {"cluster": {"node_ttl": "30s"}, **slow}
        async with (
            open_node(tmp_path, "a", redis.url, **long_lived) as a,
            ws_client(a, "gone"),
            ws_client(a, "back", deviceId="phone"),
        ):
            await until_all_pushed(watcher, ["gone", "back"], "online")
            await a.stop(signal.SIGKILL)
        killed = trio.current_time()
        async with (
            open_node(tmp_path, "a", redis.url, **long_lived) as a2,
            ws_client(a2, "back", deviceId="phone"),
        ):
            assert trio.current_time() - killed < 6, "restarted too slowly for this test"
            await until_pushed(watcher, "gone", "offline", seconds=20)
            _, seen = await request(f"{b.base_url}/api/presence?ids=gone,back")
            assert [u["status"] for u in seen["users"]] == ["offline", "online"]
            assert not [
                m
                for m in watcher.received
                if m.get("userId") == "back" and m.get("status") == "offline"
            ]


async def test_redis_away_and_back_empty_nodes_serve_locally_then_reconcile(tmp_path: Path) -> None:
    async with (
        open_redis(tmp_path / "redis") as redis,
        open_nodes(tmp_path, redis.url, **EVERYONE) as (a, b),
        ws_client(b, "watcher") as watcher,
        ws_client(a, "stays") as stays,
        ws_client(a, "local-watcher") as local_watcher,
    ):
        async with ws_client(a, "leaves"):
            await until_pushed(watcher, "leaves", "online")
            await redis.stop()
            for node in (a, b):
                with trio.fail_after(20):
                    while (await ready(node.base_url))[0] != 503:
                        await trio.sleep(0.1)
                status, body = await ready(node.base_url)
                assert status == 503
                assert "Redis" in str(body.get("reason")), body
            # Local presence goes on: a change on a reaches a's own watchers.
            await stays.request({"type": "set_status", "status": "busy"}, "status_updated")
            await until_pushed(local_watcher, "stays", "busy")
        # "leaves" went while Redis was away.
        await trio.sleep(GRACE + 0.5)
        await redis.restart()  # empty: Redis lost everything
        for node in (a, b):
            with trio.fail_after(20):
                while (await ready(node.base_url))[0] != 200:
                    await trio.sleep(0.1)
        # The watcher on b ends with the truth: "stays" busy, "leaves" not online.
        with trio.fail_after(20):
            while True:
                _, seen = await request(f"{b.base_url}/api/presence?ids=stays,leaves")
                shown = {u["userId"]: u["status"] for u in seen["users"]}
                if shown == {"stays": "busy", "leaves": "offline"}:
                    break
                await trio.sleep(0.2)
        await until_pushed(watcher, "stays", "busy")


async def test_a_frozen_redis_stalls_nothing_and_heals(tmp_path: Path) -> None:
    async with (
        open_redis(tmp_path / "redis") as redis,
        open_nodes(tmp_path, redis.url, **EVERYONE) as (a, b),
        ws_client(b, "watcher") as watcher,
        ws_client(a, "alice") as alice,
    ):
        await until_pushed(watcher, "alice", "online")
        redis.freeze()
        try:
            with trio.fail_after(15):
                while (await ready(a.base_url))[0] != 503:
                    await trio.sleep(0.2)
            # The node answers its clients meanwhile.
            with trio.fail_after(3):
                await alice.request({"type": "heartbeat"}, "heartbeat_ack")
                await alice.request({"type": "set_status", "status": "away"}, "status_updated")
        finally:
            redis.thaw()
        await until_pushed(watcher, "alice", "away", seconds=15)


async def test_a_partitioned_node_is_not_believed_and_heals_without_duplicates(
    tmp_path: Path,
) -> None:
    async with (
        open_redis(tmp_path / "redis") as redis,
        open_tcp_proxy(redis.port) as proxy,
        open_node(tmp_path, "a", f"redis://127.0.0.1:{proxy.port}", **EVERYONE) as a,
        open_node(tmp_path, "b", redis.url, **EVERYONE) as b,
        ws_client(b, "watcher") as watcher,
        ws_client(a, "alice") as alice,
    ):
        await until_pushed(watcher, "alice", "online")
        proxy.blackhole()
        # Past a's liveness and the grace period, b no longer believes alice is there.
        await until_pushed(watcher, "alice", "offline", seconds=NODE_TTL + GRACE + 10)
        await alice.request({"type": "heartbeat"}, "heartbeat_ack")  # a still serves her
        proxy.heal()
        await until_pushed(watcher, "alice", "online", seconds=20)
        # Healed once: no second offline/online, and b shows her online.
        later = await pushes_within(watcher, 2.0, about="alice")
        assert [p["status"] for p in later] in ([], ["online"])
        _, seen = await request(f"{b.base_url}/api/presence?ids=alice")
        assert seen["users"][0]["status"] == "online"


def _unix(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


async def test_the_node_cleaning_up_after_a_dead_one_is_not_taken_for_dead(tmp_path: Path) -> None:
    """Three nodes, one killed: the cleanup waits a grace period longer than the node
    TTL, and the node doing it must go on renewing its liveness meanwhile — else the
    third takes it for dead and its users go offline while connected."""
    long_grace = {"presence": {"fanout": "everyone", "grace_period": f"{NODE_TTL * 2.5}s"}}
    async with (
        open_redis(tmp_path / "redis") as redis,
        open_node(tmp_path, "a", redis.url, **long_grace) as a,
        open_node(tmp_path, "b", redis.url, **long_grace) as b,
        open_node(tmp_path, "c", redis.url, **long_grace) as c,
        ws_client(a, "on-a") as on_a,
        ws_client(b, "on-b") as on_b,
    ):
        async with ws_client(c, "on-c"):
            # (Who connected earlier is in a later watcher's state, not pushed.)
            await until_pushed(on_a, "on-c", "online")
            await until_pushed(on_b, "on-c", "online")
            await c.stop(signal.SIGKILL)
        grace = NODE_TTL * 2.5
        with trio.fail_after(NODE_TTL + grace + 10):
            await until_pushed(on_a, "on-c", "offline", seconds=NODE_TTL + grace + 10)
        # Past the cleanup, and a grace period more in which a wrong one would show.
        seen_by_a = await pushes_within(on_a, NODE_TTL + grace + 2, about="on-b")
        seen_by_b = [m for m in on_b.received if m.get("userId") == "on-a"]
        seen_by_b += await pushes_within(on_b, 0.5, about="on-a")
        assert [m["status"] for m in seen_by_a if m["status"] == "offline"] == []
        assert [m["status"] for m in seen_by_b if m["status"] == "offline"] == []
        for node, user in ((a, "on-b"), (b, "on-a")):
            _, seen = await request(f"{node.base_url}/api/presence?ids={user}")
            assert seen["users"][0]["status"] == "online", (node.base_url, seen)
