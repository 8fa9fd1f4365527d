"""The living-task gauge on /metrics: what the soak reads to see a task leak."""

from __future__ import annotations

import urllib.request
from contextlib import AsyncExitStack
from pathlib import Path

import trio
from prometheus_client.parser import text_string_to_metric_families

from presence_actors.gateway.server import RunningServer

from .server_harness import running_server, ws_client

CLIENTS = 5


async def _tasks(server: RunningServer) -> float:
    def scrape() -> str:
        with urllib.request.urlopen(server.base_url + "/metrics", timeout=5) as response:
            return str(response.read().decode())

    with trio.fail_after(10):
        text = await trio.to_thread.run_sync(scrape)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "presence_trio_tasks_living":
                return float(sample.value)
    raise AssertionError("no presence_trio_tasks_living on /metrics")


async def test_the_task_gauge_follows_connections_and_returns_when_they_leave(
    tmp_path: Path,
) -> None:
    # No grace period: a session that leaves is gone at once, and so are its tasks.
    async with running_server(tmp_path, presence={"grace_period": 0}) as server:
        idle = await _tasks(server)
        assert idle > 0
        async with AsyncExitStack() as clients:
            for n in range(CLIENTS):
                await clients.enter_async_context(ws_client(server, f"user{n}"))
            # At least one server task per connection (the client side has its own too).
            assert await _tasks(server) >= idle + CLIENTS
        with trio.fail_after(10):
            while await _tasks(server) > idle:
                await trio.sleep(0.05)
