"""A connection that ended is freed by reference counting, not by the full collector.

A long-lived connection outlives the young collections, so its objects reach the
oldest generation; if they are held in a reference cycle when it ends, they (and
their buffers) stay until a full collection, which a server with a big heap runs
rarely. Under churn that is a steady growth of RSS (issue 11's soak). Each test
ends connections of one kind with the collector off and then asks it what it
would have had to free.
"""

from __future__ import annotations

import gc
import socket
import struct
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest
import trio

from presence_actors.gateway.server import RunningServer

from .raw_ws import OP_BINARY, OP_CLOSE, OP_TEXT, client_frame, close_payload, text, upgrade_head
from .server_harness import running_server

# What a connection of each kind holds; none of these may need the collector.
_HELD = {
    "WebSocketSession",
    "DirectConnection",
    "FrameReader",
    "SessionHandle",
    "TtlSession",
    "TCPServer",
    "H11Protocol",
    "Connection",  # h11's
    "socket",
}


@contextmanager
def cyclic_garbage() -> Iterator[list[str]]:
    """The type names of what became cyclic garbage inside the block."""
    names: list[str] = []
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield names
        gc.collect()
        names.extend(type(thing).__name__ for thing in gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        if was_enabled:
            gc.enable()


def _port(server: RunningServer) -> int:
    return int(server.base_url.rsplit(":", 1)[1])


async def _read_to_end(stream: trio.SocketStream, until: bytes = b"") -> bytes:
    received = b""
    with trio.fail_after(5):
        while data := await stream.receive_some(65536):
            received += data
            if until and until in received:
                break
    return received


async def _websocket(server: RunningServer, user_id: str, end: str) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", _port(server))
    await stream.send_all(upgrade_head(f"/ws?userId={user_id}&deviceId=d-{user_id}"))
    await _read_to_end(stream, until=b"welcome")
    if end == "junk":  # every kind of refused message, then a clean close
        refused = [
            {"type": "get_presence", "userIds": ["a b"]},
            {"type": "set_status", "status": "sleeping"},
            {"type": "set_status"},
            {"type": "no_such_type"},
        ]
        await stream.send_all(b"".join(text(message) for message in refused))
        await stream.send_all(client_frame(OP_TEXT, b"{not json") + client_frame(OP_BINARY, b"x"))
        await stream.send_all(client_frame(OP_CLOSE, close_payload(1000)))
        await _read_to_end(stream)
    elif end == "close":
        await stream.send_all(text({"type": "subscribe", "userIds": ["someone"]}))
        await stream.send_all(client_frame(OP_CLOSE, close_payload(1000)))
        await _read_to_end(stream)
    elif end == "reset":
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    elif end == "silence":  # the server ends it (heartbeat timeout)
        await _read_to_end(stream)
    await stream.aclose()


async def _rest(server: RunningServer, user_id: str, end: str) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", _port(server))
    await stream.send_all(b"GET /api/stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert (await _read_to_end(stream)).startswith(b"HTTP/1.1 200")
    await stream.aclose()


async def _grpc_ttl(server: RunningServer, user_id: str, end: str) -> None:
    """A Connect SetUserStatus opens a TTL session; it ends when its TTL runs out."""
    stream = await trio.open_tcp_stream("127.0.0.1", _port(server))
    body = b'{"userId": "%s", "status": "ONLINE"}' % user_id.encode()
    await stream.send_all(
        b"POST /presence.v1.PresenceService/SetUserStatus HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/json\r\nConnection: close\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body) + body
    )
    assert (await _read_to_end(stream)).startswith(b"HTTP/1.1 200")
    await stream.aclose()


Ending = Callable[[RunningServer, str, str], Awaitable[None]]


@pytest.mark.parametrize(
    ("connect", "end"),
    [
        (_websocket, "close"),
        (_websocket, "reset"),
        (_websocket, "silence"),
        (_websocket, "junk"),
        (_rest, ""),
        (_grpc_ttl, ""),
    ],
    ids=[
        "websocket-close",
        "websocket-reset",
        "websocket-heartbeat-timeout",
        "websocket-refused-messages",
        "rest",
        "grpc-ttl",
    ],
)
async def test_an_ended_connection_needs_no_garbage_collector(
    tmp_path: Path, connect: Ending, end: str
) -> None:
    # A short timeout (the TTL of gRPC sessions too) and grace: everything ends soon.
    presence = {"grace_period": 0.05, "heartbeat_timeout": 0.3, "heartbeat_interval": 0.1}
    async with running_server(tmp_path, presence=presence) as server:
        await connect(server, "warm", end)  # first-use caches are not garbage
        await trio.sleep(0.6)
        with cyclic_garbage() as garbage:
            for n in range(5):
                await connect(server, f"user{n}", end)
            await trio.sleep(0.6)  # every session past its timeout and grace
        held = sorted(name for name in garbage if name in _HELD)
        assert held == [], f"freed only by the full collector: {held}"


async def test_a_cancelled_grpc_stream_needs_no_garbage_collector(
    tmp_path: Path, stubs: SimpleNamespace
) -> None:
    def watch(port: int, user_id: str) -> None:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = stubs.rpc.PresenceServiceStub(channel)
            request = stubs.pb.SubscribeStatusUpdatesRequest(user_id=user_id, watch_user_ids=["x"])
            call = stub.SubscribeStatusUpdates(request, timeout=10)
            next(call)  # the state of "x"
            call.cancel()

    async with running_server(tmp_path) as server:
        await trio.to_thread.run_sync(watch, server.port, "warm")
        await trio.sleep(0.3)
        with cyclic_garbage() as garbage:
            for n in range(3):
                await trio.to_thread.run_sync(watch, server.port, f"user{n}")
            await trio.sleep(0.5)  # the server saw every reset
        held = sorted(name for name in garbage if name in _HELD | _HELD_BY_STREAMS)
        assert held == [], f"freed only by the full collector: {held}"


_HELD_BY_STREAMS = {"Watcher", "MemoryOutbox", "H2Protocol", "HTTPStream"}
