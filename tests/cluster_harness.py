"""Nodes of a cluster: real ``python -m presence_actors`` processes sharing one Redis.

Each node has its own working directory and name (``n0``, ``n1``, ...) and the
same settings otherwise; timers are short so that grace periods and liveness
expire within a test.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from .process_harness import HTTP_TIMEOUT, ServerProcess, server_process, write_config
from .server_harness import RawClient

# Short enough for tests, long enough for a busy machine.
GRACE = 1.0
HEARTBEAT_TIMEOUT = 30.0  # tests of timeouts set a short one
NODE_TTL = 2.0


def node_config(workdir: Path, name: str, redis_url: str, **sections: Mapping[str, Any]) -> Path:
    merged: dict[str, dict[str, Any]] = {
        "server": {"node": name},
        "cluster": {"redis_url": redis_url, "node_ttl": f"{NODE_TTL}s"},
        "presence": {
            "grace_period": f"{GRACE}s",
            "heartbeat_timeout": f"{HEARTBEAT_TIMEOUT}s",
            "heartbeat_interval": "1s",
        },
    }
    for section, values in sections.items():
        merged.setdefault(section, {}).update(values)
    workdir.mkdir(parents=True, exist_ok=True)
    return write_config(workdir / "config.toml", **merged)


@asynccontextmanager
async def open_node(
    tmp_path: Path, name: str, redis_url: str, **sections: Mapping[str, Any]
) -> AsyncIterator[ServerProcess]:
    workdir = tmp_path / name
    config = node_config(workdir, name, redis_url, **sections)
    async with server_process(workdir, config) as node:
        yield node


@asynccontextmanager
async def open_nodes(
    tmp_path: Path, redis_url: str, count: int = 2, **sections: Mapping[str, Any]
) -> AsyncIterator[list[ServerProcess]]:
    async with AsyncExitStack() as stack:
        nodes = [
            await stack.enter_async_context(open_node(tmp_path, f"n{i}", redis_url, **sections))
            for i in range(count)
        ]
        yield nodes


async def request(
    url: str, method: str = "GET", body: object = None, token: str | None = None
) -> tuple[int, Any]:
    """(status, JSON) of one HTTP request, in a thread."""
    import urllib.error
    import urllib.request

    def call() -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    return await trio.to_thread.run_sync(call)


async def pushes_within(
    client: RawClient, seconds: float, about: str | None = None
) -> list[dict[str, Any]]:
    """The pushes ``client`` gets within ``seconds`` (about one user, if given)."""
    got: list[dict[str, Any]] = []
    with trio.move_on_after(seconds):
        while True:
            message = await client.next_any()
            if message["type"] == "user_status_change" and (
                about is None or message["userId"] == about
            ):
                got.append(message)
    return got


async def until_pushed(
    client: RawClient, user_id: str, status: str, seconds: float = 10.0
) -> dict[str, Any]:
    """The first push showing ``user_id`` in ``status`` (other messages are skipped)."""
    with trio.fail_after(seconds):
        while True:
            message = await client.next_any()
            if (
                message["type"] == "user_status_change"
                and message["userId"] == user_id
                and message["status"] == status
            ):
                return message


async def until_all_pushed(
    client: RawClient, user_ids: list[str], status: str, seconds: float = 10.0
) -> None:
    """Until each of ``user_ids`` was pushed in ``status`` (in any order)."""
    waiting = set(user_ids)
    with trio.fail_after(seconds):
        while waiting:
            message = await client.next_any()
            if message["type"] == "user_status_change" and message["status"] == status:
                waiting.discard(message["userId"])
