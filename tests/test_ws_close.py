"""No data frame ever follows the server's Close frame (RFC 6455 5.5.1; issue 11, item 14).

A raw client reads every frame up to the end of the stream while pushes flow to
it and replies are on their way: whoever starts the close (the client, the
engine, the session, the server shutting down), the close frame is the last
frame and there is exactly one.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from trio_websocket import ConnectionClosed

from presence_actors.gateway.server import RunningServer

from .raw_ws import OP_CLOSE, Frame, RawSocket, client_frame, close_payload, text
from .server_harness import running_server, ws_client

LIMITS = {
    "messages_per_second": 100000.0,
    "burst": 100000,
    "status_changes_per_10s": 100000,
}


@asynccontextmanager
async def pushes_flowing(server: RunningServer) -> AsyncIterator[None]:
    """A user changing status as fast as the server answers, pushed to every session."""
    async with ws_client(server, "changer") as changer, trio.open_nursery() as nursery:

        async def change() -> None:
            n = 0
            while True:
                status = ("busy", "away")[n % 2]
                await changer.request({"type": "set_status", "status": status}, "status_updated")
                n += 1

        nursery.start_soon(change)
        yield
        nursery.cancel_scope.cancel()


def assert_ends_with_one_close(frames: list[Frame], code: int) -> None:
    closes = [index for index, found in enumerate(frames) if found.opcode == OP_CLOSE]
    assert closes == [len(frames) - 1], [f.opcode for f in frames[-5:]]
    assert frames[-1].close_code == code


async def read_to_end(client: RawSocket) -> list[Frame]:
    return await trio.to_thread.run_sync(client.frames_to_end)


def flood(count: int) -> bytes:
    return b"".join(
        text({"type": "get_online_count"})
        if n % 2
        else text({"type": "set_status", "status": ("busy", "away")[n % 4 // 2]})
        for n in range(count)
    )


async def test_replies_queued_before_a_clients_close_come_before_the_echo(tmp_path: Path) -> None:
    async with running_server(tmp_path, limits=LIMITS) as server, pushes_flowing(server):
        for attempt in range(5):
            with RawSocket(server.port) as client:
                await trio.to_thread.run_sync(client.open, f"/ws?userId=closer{attempt}")
                client.send(flood(300) + client_frame(OP_CLOSE, close_payload(1000, "bye")))
                assert_ends_with_one_close(await read_to_end(client), 1000)


async def test_pushes_racing_a_clients_close_never_follow_the_echo(tmp_path: Path) -> None:
    async with running_server(tmp_path, limits=LIMITS) as server, pushes_flowing(server):
        for attempt in range(10):
            with RawSocket(server.port) as client:
                await trio.to_thread.run_sync(client.open, f"/ws?userId=watcher{attempt}")
                await trio.sleep(0.02 * (attempt % 3))
                client.send(client_frame(OP_CLOSE, close_payload(4100)))
                assert_ends_with_one_close(await read_to_end(client), 4100)


def _supersede(server: RunningServer, client: RawSocket) -> None:
    client.send(flood(300))
    with RawSocket(server.port) as other:
        other.open("/ws?userId=victim&deviceId=phone")


def _abuse_rate(server: RunningServer, client: RawSocket) -> None:
    with contextlib.suppress(OSError):  # closed under it
        for _ in range(20):  # over the rate for a second, the abuse window five times over
            client.send(flood(20))
            time.sleep(0.05)


def _too_large(server: RunningServer, client: RawSocket) -> None:
    # Requests first: their replies are still in the engine when the session closes.
    client.send(flood(300) + text({"type": "identify", "username": "x", "padding": "p" * 5000}))


def _nothing(server: RunningServer, client: RawSocket) -> None:
    pass


@pytest.mark.parametrize(
    ("trigger", "code", "sections"),
    [
        pytest.param(_supersede, 4000, {}, id="4000-superseded"),
        pytest.param(
            _abuse_rate,
            1008,
            {"limits": {"messages_per_second": 10.0, "burst": 10, "abuse_window": 0.2}},
            id="1008-rate-abuse",
        ),
        pytest.param(
            _too_large, 1009, {"limits": {"max_message_bytes": 4096}}, id="1009-too-large"
        ),
        pytest.param(
            _nothing,
            4002,
            {"presence": {"heartbeat_timeout": 1.0, "grace_period": 0.1}},
            id="4002-heartbeat-timeout",
        ),
    ],
)
async def test_the_servers_own_close_is_the_last_frame(
    tmp_path: Path,
    trigger: Callable[[RunningServer, RawSocket], None],
    code: int,
    sections: dict[str, dict[str, object]],
) -> None:
    limits = {**LIMITS, **sections.get("limits", {})}
    presence = sections.get("presence", {})
    # The changer is rate limited like anyone: under a low limit it keeps its pace.
    pushes = _paced_pushes if code == 1008 else pushes_flowing
    async with (
        running_server(tmp_path, limits=limits, presence=presence) as server,
        pushes(server),
    ):
        with RawSocket(server.port) as client:
            await trio.to_thread.run_sync(client.open, "/ws?userId=victim&deviceId=phone")
            await trio.sleep(0.05)
            await trio.to_thread.run_sync(trigger, server, client)
            assert_ends_with_one_close(await read_to_end(client), code)


@asynccontextmanager
async def _paced_pushes(server: RunningServer) -> AsyncIterator[None]:
    async with ws_client(server, "changer") as changer, trio.open_nursery() as nursery:

        async def change() -> None:
            n = 0
            while True:
                await changer.send({"type": "set_status", "status": ("busy", "away")[n % 2]})
                n += 1
                await trio.sleep(0.11)

        nursery.start_soon(change)
        yield
        nursery.cancel_scope.cancel()


async def test_the_shutdown_close_is_the_last_frame(tmp_path: Path) -> None:
    frames: list[Frame] = []
    client: RawSocket | None = None

    async def read(client: RawSocket) -> None:
        frames.extend(await read_to_end(client))

    async def change_until_closed(server: RunningServer) -> None:
        with contextlib.suppress(ConnectionClosed):
            async with ws_client(server, "changer") as changer:
                n = 0
                while True:
                    status = ("busy", "away")[n % 2]
                    await changer.request(
                        {"type": "set_status", "status": status}, "status_updated"
                    )
                    n += 1

    # The reader outlives the server: leaving the block shuts the server down (1001)
    # with pushes in flight.
    async with (
        trio.open_nursery() as nursery,
        running_server(tmp_path, limits=LIMITS) as server,
    ):
        client = RawSocket(server.port)
        await trio.to_thread.run_sync(client.open, "/ws?userId=watcher")
        nursery.start_soon(read, client)
        nursery.start_soon(change_until_closed, server)
        await trio.sleep(0.3)
    assert client is not None
    client.sock.close()
    assert_ends_with_one_close(frames, 1001)
