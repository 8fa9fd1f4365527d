"""Slow and numerous clients against a real server process (issue 11, item 9).

A request body trickling in a byte at a time used to hold its connection
forever; ~1,000 of them used up the process's descriptors, after which the log
filled with EMFILE tracebacks ten times a second. These tests attack with raw
sockets and check what a client and an operator would notice: a 408 and a
close in bounded time, a prompt 503 past the connection cap, a quiet log, and
a server that serves again once the flood ends.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import trio
from trio_websocket import WebSocketConnection, open_websocket_url

from .process_harness import ServerProcess, server_process, write_config

# Long enough that held connections stay held for the length of a test.
HOLDING = {"body_timeout": "60s", "body_idle_timeout": "60s"}


def request_head(
    method: str, path: str, length: int, content_type: str = "application/json"
) -> bytes:
    return (
        f"{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-type: {content_type}\r\n"
        f"content-length: {length}\r\n\r\n"
    ).encode()


async def read_to_end(stream: trio.SocketStream) -> bytes:
    """Everything up to the server's close (a reset, when it closed on unread bytes,
    ends it too: what arrived before is kept)."""
    received = b""
    try:
        while chunk := await stream.receive_some():
            received += chunk
    except trio.BrokenResourceError:
        pass
    return received


async def trickle(stream: trio.SocketStream, every: float) -> None:
    """A body byte every ``every`` seconds until the server stops taking them."""
    try:
        while True:
            await stream.send_all(b"1")
            await trio.sleep(every)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def answer_to_slow_body(server: ServerProcess, head: bytes, every: float | None) -> bytes:
    """What the server answers (up to its close) to ``head`` and a body sent a byte
    every ``every`` seconds, or a few bytes and then silence when None."""
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    async with stream, trio.open_nursery() as nursery:
        await stream.send_all(head)
        if every is None:
            await stream.send_all(b"[1,")
        else:
            nursery.start_soon(trickle, stream, every)
        answer = await read_to_end(stream)
        nursery.cancel_scope.cancel()
    return answer


def status_and_json(answer: bytes) -> tuple[int, dict[str, object]]:
    """The status and the JSON body of a whole HTTP/1.1 answer (chunked or not)."""
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), json.loads(body[body.index(b"{") : body.rindex(b"}") + 1])


async def test_a_slow_or_stalled_body_gets_408_and_its_connection_closed(tmp_path: Path) -> None:
    """Defaults: a body must arrive within 10 s, with no silence over 5 s."""
    admin = request_head("PUT", "/api/admin/users/alice/privacy", 100)
    rpc = request_head("POST", "/presence.v1.PresenceService/GetUserStatus", 100)
    cases = {"trickling": (admin, 1.0), "stalled": (admin, None), "rpc": (rpc, 1.0)}
    answers: dict[str, bytes] = {}
    async with server_process(tmp_path, write_config(tmp_path / "config.toml")) as server:

        async def attack(name: str) -> None:
            answers[name] = await answer_to_slow_body(server, *cases[name])

        with trio.fail_after(16):
            async with trio.open_nursery() as nursery:
                for name in cases:
                    nursery.start_soon(attack, name)
        assert server.alive
    status, body = status_and_json(answers["trickling"])
    assert (status, body["error"]["code"]) == (408, "INVALID_MESSAGE")  # type: ignore[index]
    status, body = status_and_json(answers["stalled"])
    assert (status, body["error"]["code"]) == (408, "INVALID_MESSAGE")  # type: ignore[index]
    status, body = status_and_json(answers["rpc"])
    assert body["code"] == "deadline_exceeded"
    assert str(body["message"]).startswith("INVALID_MESSAGE: the request body did not arrive")


@asynccontextmanager
async def held_connections(server: ServerProcess, count: int) -> AsyncIterator[list[bytes]]:
    """``count`` connections, each sent a request head and part of its body (so the
    server holds them until the body timeout); yields what each received within
    a second of opening (b"" while it is held) and closes them on exit."""
    async with AsyncExitStack() as stack:
        streams = []
        for _ in range(count):
            stream = await trio.open_tcp_stream("127.0.0.1", server.port)
            await stack.enter_async_context(stream)
            await stream.send_all(request_head("PUT", "/api/admin/users/a/privacy", 100) + b"{")
            streams.append(stream)
        received = [b""] * count

        async def first_second(index: int) -> None:
            with trio.move_on_after(1.0):
                received[index] = await read_to_end(streams[index])

        async with trio.open_nursery() as nursery:
            for index in range(count):
                nursery.start_soon(first_second, index)
        yield received


async def get(server: ServerProcess, path: str) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    async with stream:
        await stream.send_all(
            f"GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".encode()
        )
        return await read_to_end(stream)


async def test_past_the_connection_cap_a_client_reads_503_at_once(tmp_path: Path) -> None:
    server_settings = {**HOLDING, "max_connections": 20}
    config = write_config(tmp_path / "config.toml", server=server_settings)
    async with server_process(tmp_path, config) as server:
        with trio.fail_after(60):
            async with held_connections(server, 20) as answers:
                assert answers == [b""] * 20  # all admitted, all waiting for their bodies
                with trio.fail_after(2):
                    refused = await get(server, "/healthz")
                status, body = status_and_json(refused)
                assert (status, body["error"]["code"]) == (503, "LIMIT_EXCEEDED")  # type: ignore[index]
            # The held ones are gone: the server serves again.
            while not (await get(server, "/healthz")).startswith(b"HTTP/1.1 200"):
                await trio.sleep(0.05)
        assert "Traceback" not in server.stderr()


async def online_count(ws: WebSocketConnection) -> int:
    await ws.send_message('{"type": "get_online_count"}')
    while (message := json.loads(await ws.get_message()))["type"] != "online_count":
        pass
    return int(message["count"])


async def test_a_descriptor_flood_is_refused_cleanly_without_a_log_flood(tmp_path: Path) -> None:
    """With 200 descriptors and no cap configured, 150 held connections: those past
    the derived cap read a 503, a client connected before keeps being served,
    nothing floods the log, and the server recovers when the flood ends."""
    config = write_config(tmp_path / "config.toml")
    async with server_process(tmp_path, config, nofile=200) as server:
        url = server.base_url.replace("http", "ws", 1) + "/ws?userId=alice"
        with trio.fail_after(90):
            async with open_websocket_url(url) as alice:
                assert await online_count(alice) == 1
                async with held_connections(server, 150) as answers:
                    refused = [a for a in answers if a]
                    assert len(refused) >= 40, f"{len(refused)} refused"
                    assert all(a.startswith(b"HTTP/1.1 503") for a in refused)
                    assert await online_count(alice) == 1
                    await trio.sleep(1.0)
                while not (await get(server, "/healthz")).startswith(b"HTTP/1.1 200"):
                    await trio.sleep(0.05)
        log = server.stderr()
        assert "Traceback" not in log
        assert log.count("connection limit reached") <= 2, log


async def test_accept_errors_are_logged_once_per_interval_with_a_count(tmp_path: Path) -> None:
    """A cap configured above what the descriptor limit allows: accept fails with
    EMFILE, which is logged once (not ten tracebacks a second), and the server
    accepts again once descriptors are free."""
    server_settings = {**HOLDING, "max_connections": 1000}
    config = write_config(tmp_path / "config.toml", server=server_settings)
    async with server_process(tmp_path, config, nofile=100) as server:
        assert "server.max_connections = 1000 leaves less than" in server.stderr()
        with trio.fail_after(90):
            async with held_connections(server, 150) as answers:
                assert answers == [b""] * 150  # past the descriptors: waiting in the backlog
                await trio.sleep(2.5)
                log = server.stderr()
            while not (await get(server, "/healthz")).startswith(b"HTTP/1.1 200"):
                await trio.sleep(0.05)
        assert "Traceback" not in log
        lines = [line for line in log.splitlines() if "accepting a connection failed" in line]
        assert len(lines) == 1, log
        assert "EMFILE" in lines[0]
