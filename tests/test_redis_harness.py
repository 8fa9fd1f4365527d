"""The Redis harness itself: servers start and stop by pid, a cluster forms, a restart
keeps or loses data as asked, a frozen server answers nothing until thawed, and the
proxy blackholes and heals a connection."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import coredis
import trio
from coredis.typing import Node

from .redis_harness import (
    free_port,
    open_redis,
    open_redis_cluster,
    open_tcp_proxy,
    redis_cli,
)

# Every test here is real processes and sockets: bounded, never a hang.
TEST_TIMEOUT = 60
# Long enough for a loopback round trip on a busy machine; short enough to wait for
# an answer that must not come.
SILENCE = 0.5


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _client(port: int) -> coredis.Redis[str]:
    return coredis.Redis(
        "127.0.0.1", port, decode_responses=True, stream_timeout=10, connect_timeout=5
    )


async def test_a_server_answers_and_is_gone_after_its_block(tmp_path: Path) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with open_redis(tmp_path) as redis:
            pid = redis.pid
            async with _client(redis.port) as client:
                await client.set("greeting", "hello")
                assert await client.get("greeting") == "hello"
            # Nothing written to disk unless a test asks for it.
            assert await redis_cli(redis.port, "config", "get", "appendonly") == "appendonly\nno\n"
            assert await redis_cli(redis.port, "config", "get", "save") == "save\n\n"
        assert _gone(pid)


async def test_a_taken_port_is_skipped(tmp_path: Path) -> None:
    with socket.socket() as taken, trio.fail_after(TEST_TIMEOUT):
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        fallback = free_port()
        async with open_redis(tmp_path, ports=iter([busy, fallback])) as redis:
            assert redis.port == fallback
            assert "PONG" in await redis_cli(redis.port, "ping")


async def test_stop_is_clean_and_kill_is_a_crash(tmp_path: Path) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with open_redis(tmp_path / "a") as first, open_redis(tmp_path / "b") as second:
            assert await first.stop() == 0
            assert await second.kill() == -signal.SIGKILL
            assert not first.running
            assert not second.running


async def test_a_restart_without_aof_is_empty_on_the_same_port(tmp_path: Path) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with open_redis(tmp_path) as redis:
            port, old_pid = redis.port, redis.pid
            async with _client(port) as client:
                await client.set("kept", "no")
            await redis.restart()
            assert (redis.port, redis.pid != old_pid) == (port, True)
            async with _client(port) as client:
                assert await client.get("kept") is None
                assert await client.dbsize() == 0


async def test_a_restart_from_aof_keeps_what_was_written_before_kill_9(tmp_path: Path) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with open_redis(tmp_path, appendonly=True) as redis:
            async with _client(redis.port) as client:
                await client.set("kept", "yes")
            assert await redis.kill() == -signal.SIGKILL
            await redis.restart(from_aof=True)
            async with _client(redis.port) as client:
                assert await client.get("kept") == "yes"
            # ... and asked to come back empty, it forgets even with its AOF.
            await redis.restart()
            async with _client(redis.port) as client:
                assert await client.get("kept") is None


async def test_a_frozen_server_answers_nothing_until_thawed(tmp_path: Path) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with open_redis(tmp_path) as redis, _client(redis.port) as client:
            await client.set("k", "before")
            redis.freeze()
            answers: list[str | None] = []

            async def ask() -> None:
                answers.append(await client.get("k"))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(ask)
                await trio.sleep(SILENCE)
                assert answers == []  # held, not refused: the connection stays open
                redis.thaw()
            assert answers == ["before"]
            assert redis.running


async def test_a_frozen_server_still_stops(tmp_path: Path) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with open_redis(tmp_path) as redis:
            redis.freeze()
            assert await redis.stop() == 0


async def test_a_cluster_forms_with_three_masters_sharing_the_keys(tmp_path: Path) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with open_redis_cluster(tmp_path) as cluster:
            assert len(cluster.nodes) == 3
            nodes = await redis_cli(cluster.nodes[0].port, "cluster", "nodes")
            assert nodes.count("master") == 3, nodes
            assert cluster.url.count("redis://") == 3
            seeds = [Node(host="127.0.0.1", port=node.port) for node in cluster.nodes]
            async with coredis.RedisCluster(startup_nodes=seeds, decode_responses=True) as client:
                for number in range(30):
                    await client.set(f"user:{number}", str(number))
                assert await client.get("user:7") == "7"
            sizes = [int(await redis_cli(node.port, "dbsize")) for node in cluster.nodes]
            assert sum(sizes) == 30
            assert all(sizes), sizes  # every master holds some of them
            pids = [node.pid for node in cluster.nodes]
        assert all(_gone(pid) for pid in pids)


async def test_a_restarted_cluster_node_rejoins_owning_its_slots(tmp_path: Path) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with open_redis_cluster(tmp_path, appendonly=True) as cluster:
            # Only the key's owner takes it (the others answer MOVED).
            [owner] = [
                node
                for node in cluster.nodes
                if "OK" in await redis_cli(node.port, "set", "{n1}k", "v")
            ]
            identity = await redis_cli(owner.port, "cluster", "myid")
            await owner.restart(from_aof=True)
            await cluster.wait_ok()
            assert await redis_cli(owner.port, "cluster", "myid") == identity
            assert (await redis_cli(owner.port, "get", "{n1}k")).strip() == "v"
            await owner.restart()  # empty: the slots stay, the key does not
            await cluster.wait_ok()
            assert (await redis_cli(owner.port, "get", "{n1}k")).strip() == ""


async def test_the_proxy_blackholes_and_heals(tmp_path: Path) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with (
            open_redis(tmp_path) as redis,
            open_tcp_proxy(redis.port) as proxy,
            _client(proxy.port) as client,
        ):
            await client.set("k", "v")
            proxy.blackhole()
            answers: list[str | None] = []

            async def ask() -> None:
                answers.append(await client.get("k"))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(ask)
                await trio.sleep(SILENCE)
                assert answers == []  # no answer, and no error: a partition
                # A new connection during the partition hears nothing either.
                with trio.move_on_after(SILENCE) as silent:
                    stream = await trio.open_tcp_stream("127.0.0.1", proxy.port)
                    await stream.send_all(b"PING\r\n")
                    await stream.receive_some(100)
                assert silent.cancelled_caught
                proxy.heal()
            assert answers == ["v"]
            assert await stream.receive_some(100) == b"+PONG\r\n"
            await stream.aclose()
            assert await client.get("k") == "v"


async def test_dropped_connections_end_and_new_ones_are_served(tmp_path: Path) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with open_redis(tmp_path) as redis, open_tcp_proxy(redis.port) as proxy:
            stream = await trio.open_tcp_stream("127.0.0.1", proxy.port)
            await stream.send_all(b"PING\r\n")
            assert await stream.receive_some(100) == b"+PONG\r\n"
            proxy.drop_connections()
            assert await stream.receive_some(100) == b""
            await stream.aclose()
            async with _client(proxy.port) as client:
                assert await client.ping() == "PONG"
