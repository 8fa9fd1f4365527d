"""What a change costs in round trips to Redis (issue 12: one round trip per change at
most), and that a Redis which lost the merge script still merges.

Real node processes and a real redis-server; Redis's own ``INFO commandstats``
counts what the nodes sent.
"""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from .cluster_harness import open_nodes, request, until_pushed
from .process_harness import RawClient, ServerProcess, ws_client
from .redis_harness import REDIS_CLI, REDIS_SERVER, open_redis, redis_cli

pytestmark = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed")

CHANGES = 6
# The longest a MONITOR line is kept (a merge's line carries the whole report).
_MONITOR_LINE = 64 * 1024


def calls(commandstats: str, command: str) -> int:
    """Calls of ``command`` in ``INFO commandstats`` output (0 if it never ran)."""
    for line in commandstats.splitlines():
        if line.startswith(f"cmdstat_{command}:"):
            fields = dict(item.split("=", 1) for item in line.split(":", 1)[1].split(","))
            return int(fields["calls"])
    return 0


async def shown_online(watcher: RawClient, state: dict[str, Any], user_id: str) -> None:
    """Until the watcher sees ``user_id`` online: in its ``presence_state`` already (its
    node read the user's merged view when it began to follow it), or pushed later."""
    if any(u["userId"] == user_id and u["status"] == "online" for u in state["users"]):
        return
    await until_pushed(watcher, user_id, "online")


@asynccontextmanager
async def alice_watched_across_nodes(
    tmp_path: Path,
) -> AsyncIterator[tuple[Any, ServerProcess, RawClient, RawClient]]:
    """Redis, two nodes (a, b), a watcher on b following its contact alice on a, both
    connected and the watcher shown alice online: (redis, b, watcher, alice)."""
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
            state = await watcher.expect("presence_state")
            await alice.expect("presence_state")
            await shown_online(watcher, state, "alice")
            yield redis, b, watcher, alice


async def test_a_change_asks_redis_nothing_before_its_merge(tmp_path: Path) -> None:
    """No SCRIPT EXISTS before each batch of merges (coredis's script object asks
    before every pipeline it runs in: a round trip per change at this pace); and after
    SCRIPT FLUSH, a change is still merged and pushed."""
    async with alice_watched_across_nodes(tmp_path) as (redis, _, watcher, alice):
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


@asynccontextmanager
async def monitoring(port: int) -> AsyncIterator[list[str]]:
    """Every command Redis runs while the block runs (``redis-cli monitor``: the
    official client), as MONITOR prints them: ``<time> [<db> <client>] "cmd" ...``,
    with ``lua`` for the client of a command a script ran. Killed by its pid."""
    lines: list[str] = []
    process = await trio.lowlevel.open_process(
        [REDIS_CLI, "-p", str(port), "monitor"], stdout=subprocess.PIPE
    )
    try:
        async with trio.open_nursery() as nursery:

            async def read() -> None:
                assert process.stdout is not None
                buffered = b""
                async for chunk in process.stdout:
                    buffered += chunk
                    *done, buffered = buffered.split(b"\n")
                    lines.extend(line.decode(errors="replace") for line in done)
                    buffered = buffered[-_MONITOR_LINE:]

            nursery.start_soon(read)
            with trio.fail_after(10):
                while not lines:  # MONITOR's own "OK": it is listening
                    await trio.sleep(0.01)
            yield lines
            await trio.sleep(0.2)  # what Redis ran last reaches the output
            nursery.cancel_scope.cancel()
    finally:
        process.kill()
        with trio.move_on_after(5):
            await process.wait()


def run_by_clients(lines: list[str], command: str) -> int:
    """Lines of a command a client sent (not one a script ran)."""
    return sum(
        1
        for line in lines
        if "[" in line
        and " lua]" not in line
        and line.split("] ", 1)[-1].lower().startswith(f'"{command}"')
    )


def run_by_scripts(lines: list[str], command: str) -> int:
    return sum(
        1
        for line in lines
        if " lua]" in line and line.split("] ", 1)[-1].lower().startswith(f'"{command}"')
    )


async def test_on_a_single_redis_a_change_is_one_round_trip(tmp_path: Path) -> None:
    """The read model (list order, stored views, audit stream) is written by the merge
    itself, not by commands the node sends after it; and what it writes is read back:
    get_all_users, the online count and the audit log on the other node."""
    async with alice_watched_across_nodes(tmp_path) as (redis, b, watcher, alice):
        async with monitoring(redis.port) as lines:
            for number in range(CHANGES):
                shown = "busy" if number % 2 == 0 else "online"
                await alice.request({"type": "set_status", "status": shown}, "status_updated")
                await until_pushed(watcher, "alice", shown)
                await trio.sleep(0.05)  # apart: each change a batch of its own
        assert run_by_clients(lines, "evalsha") >= CHANGES
        for command in ("zadd", "xadd", "srem"):
            assert run_by_clients(lines, command) == 0, command
        assert run_by_scripts(lines, "zadd") >= CHANGES
        assert run_by_scripts(lines, "xadd") >= 2 * CHANGES  # the user's history, the audit
        listed = await watcher.request({"type": "get_all_users", "limit": 10}, "all_users")
        shown_as = {u["userId"]: u["status"] for u in listed["users"]}
        assert shown_as["alice"] == "online"
        count = await watcher.request({"type": "get_online_count"}, "online_count")
        assert count["count"] == 2
        status, events = await request(f"{b.base_url}/api/admin/events?limit=3")
        assert status == 200
        assert [(e["userId"], e["status"]) for e in events["events"]][:2] == [
            ("alice", "online"),
            ("alice", "busy"),
        ]
