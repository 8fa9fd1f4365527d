"""The commands that ask a server read a bounded amount from it: a "server" that answers
without end is cut off at the bound, in one line, at once. Hand-written servers on
loopback play the hostile part; the commands are real processes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import trio

from .process_harness import run_cli

# What each fake server offers at most: far past every bound the commands keep.
OFFERED = 256 << 20
CHUNK = 64 << 10


async def read_head(stream: trio.SocketStream) -> bytes:
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = await stream.receive_some(4096)
        if not chunk:
            break
        head += chunk
    return head


@asynccontextmanager
async def fake_server(
    answer: Callable[[trio.SocketStream, bytes], Awaitable[None]],
) -> AsyncIterator[str]:
    """An HTTP/1.1 "server" on a free loopback port, answering each request with
    ``answer``; its base URL."""

    async def handle(stream: trio.SocketStream) -> None:
        with trio.move_on_after(60):
            try:
                while head := await read_head(stream):
                    await answer(stream, head)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        yield f"http://127.0.0.1:{port}"
        nursery.cancel_scope.cancel()


async def endless(stream: trio.SocketStream, sent: list[int], prefix: bytes) -> None:
    """``prefix``, then filler, until OFFERED or the peer hangs up (counted in ``sent``)."""
    total = 0
    try:
        await stream.send_all(prefix)
        while total < OFFERED:
            await stream.send_all(b"[" * CHUNK)
            total += CHUNK
    finally:
        sent.append(total)


async def test_status_stops_reading_an_endless_answer(tmp_path: Path) -> None:
    # Before: the whole answer was read into memory, however large.
    sent: list[int] = []

    async def answer(stream: trio.SocketStream, head: bytes) -> None:
        headers = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        await endless(stream, sent, headers + f"Content-Length: {OFFERED}\r\n\r\n".encode())

    async with fake_server(answer) as url:
        with trio.fail_after(60):
            finished = await run_cli(tmp_path, "status", "--url", url, "alice")
        await trio.sleep(0.5)  # the server sees the hang-up
    assert (finished.returncode, finished.stdout) == (1, "")
    assert finished.stderr == (
        f"presence-actors: {url} is not a presence server (its answer is over 8 MiB)\n"
    )
    [offered] = sent
    assert offered < 32 << 20  # it hung up near the bound, not at the end


async def test_watch_refuses_an_event_over_its_bound_before_reading_it(tmp_path: Path) -> None:
    sent: list[int] = []

    async def answer(stream: trio.SocketStream, head: bytes) -> None:
        if head.startswith(b"GET /healthz"):
            body = b'{"status":"ok"}'
            await stream.send_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            return
        # A Connect stream whose first envelope claims 200 MiB.
        envelope = b"\x00" + (200 << 20).to_bytes(4, "big")
        headers = (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/connect+proto\r\n"
            b"Connection: close\r\n\r\n"
        )
        await endless(stream, sent, headers + envelope)

    async with fake_server(answer) as url:
        with trio.fail_after(60):
            finished = await run_cli(tmp_path, "watch", "--url", url, "alice")
    assert (finished.returncode, finished.stdout) == (1, "")
    assert finished.stderr == (
        f"presence-actors: {url} refused to stream: RESOURCE_EXHAUSTED:"
        " message is larger than configured max 65536\n"
    )
