"""Outboxes are bounded in bytes as well as messages (issue 11, item 7), on every path.

The memory outbox (gRPC streams, WebSockets through hypercorn) on its own and
behind a gRPC watcher; a WebSocket through hypercorn (TLS) whose client never
reads. The direct path is held by tests/test_ws_memory.py against a process.
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import pytest
import trio
import trio.testing
from trio.testing import MockClock
from trio_websocket import open_websocket_url

from presence_actors.actors import MemoryOutbox
from presence_actors.codec import encode_bytes, make_push
from presence_actors.gateway.grpc_sessions import open_watcher
from presence_actors.model import Status, unknown_user
from presence_actors.protocol import HeartbeatAck, SetStatus, StatusUpdated

from .engine_harness import connect, make_settings, running_engine, settle
from .raw_ws import OP_CLOSE, parse_frame, upgrade_head
from .server_harness import RawClient, running_server, self_signed_certificate


async def test_a_memory_outbox_counts_bytes_offered_and_taken() -> None:
    from presence_actors.protocol import PushBatch  # (not in 8215680, the revision before)

    ack = HeartbeatAck(timestamp=0, request_id="r", next_heartbeat_in_seconds=15)
    first = make_push(unknown_user("alice"), 0)
    size = len(first.payload)
    outbox = MemoryOutbox(capacity=100, max_bytes=3 * size)
    assert outbox.offer(first)
    batch = PushBatch.of((first, first))
    assert outbox.offer(batch)
    assert outbox.queued_bytes == 3 * size
    assert not outbox.offer(first)  # one byte-bound over: full
    assert outbox.receive.receive_nowait() is first
    assert outbox.queued_bytes == 2 * size
    assert outbox.offer(ack)
    assert outbox.queued_bytes == 2 * size + len(encode_bytes(ack))
    assert outbox.receive.receive_nowait() is batch
    # A message that is not a push was encoded once, to be measured: its JSON comes along.
    assert outbox.receive.receive_entry_nowait() == (ack, encode_bytes(ack))
    assert outbox.queued_bytes == 0


async def test_one_answer_bigger_than_the_bound_goes_out_when_nothing_waits() -> None:
    small = make_push(unknown_user("a"), 0)
    outbox = MemoryOutbox(capacity=10, max_bytes=10)
    assert outbox.offer(small)  # alone: taken whatever its size
    assert not outbox.offer(small)  # behind it: over the bound
    await outbox.receive.receive()
    assert outbox.offer(small)
    outbox.close()
    assert outbox.offer(small)  # dropped: the session is ending
    assert outbox.queued_bytes == len(small.payload)
    outbox.clear()
    assert outbox.queued_bytes == 0
    with pytest.raises(trio.EndOfChannel):
        outbox.receive.receive_nowait()


async def test_a_waiting_receiver_is_woken_by_an_offer_or_a_close_and_only_one_may_wait() -> None:
    outbox = MemoryOutbox(capacity=10)
    got: list[object] = []

    async def receive_all() -> None:
        async for item in outbox.receive:
            got.append(item)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive_all)
            await trio.testing.wait_all_tasks_blocked()
            # A second consumer is refused rather than left waiting for ever.
            with pytest.raises(trio.BusyResourceError):
                await outbox.receive.receive()
            push = make_push(unknown_user("alice"), 0)
            assert outbox.offer(push)
            await trio.testing.wait_all_tasks_blocked()
            assert got == [push]
            outbox.close()  # the waiting consumer ends: nothing is left queued
    # A cancelled wait leaves the outbox usable by the next receiver.
    outbox = MemoryOutbox(capacity=10)
    with trio.move_on_after(0.01):
        await outbox.receive.receive()
    assert outbox.offer(push)
    with trio.fail_after(5):
        assert await outbox.receive.receive() is push


async def test_a_grpc_stream_that_falls_behind_in_bytes_is_closed_1013(
    autojump_clock: MockClock, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, limits={"status_changes_per_10s": 1000})
    async with running_engine(settings) as engine:
        alice = await connect(engine, "alice")
        # 1000 messages may wait, but only 4 KiB: ~20 of these pushes.
        async with open_watcher(engine, "bob", capacity=1000, max_bytes=4096) as watcher:
            await watcher.subscribe(("alice",))
            for n in range(60):
                status = (Status.BUSY, Status.AWAY)[n % 2]
                await alice.send(SetStatus(status=status, status_message=f"{n:03d}" + "m" * 137))
                await alice.expect(StatusUpdated)
                await settle()
            assert watcher.handle.close_code == 1013
            assert await watcher.next_push() is None  # what waited was dropped


async def test_a_tls_websocket_that_never_reads_is_closed_1013_within_the_byte_bound(
    tmp_path: Path,
) -> None:
    """Through hypercorn: pushes of ~300 bytes to a client that does not read, with a
    64 KiB bound; the message bound (1000) is far away."""
    cert, key = self_signed_certificate(tmp_path)
    context = ssl.create_default_context(cafile=str(cert))
    tls = {"tls_cert_file": str(cert), "tls_key_file": str(key)}
    limits = {
        "outbound_bytes": 65536,
        "messages_per_second": 1000.0,
        "burst": 1000,
        "status_changes_per_10s": 100_000,
    }
    async with running_server(tmp_path, server=tls, limits=limits) as server:
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.settimeout(10)
        await trio.to_thread.run_sync(raw.connect, ("127.0.0.1", server.port))
        stuck = await trio.to_thread.run_sync(
            lambda: context.wrap_socket(raw, server_hostname="localhost")
        )
        try:
            await trio.to_thread.run_sync(
                stuck.sendall, upgrade_head("/ws?userId=stuck", host="localhost")
            )
            data = bytearray()
            with trio.fail_after(10):
                while b"\r\n\r\n" not in data:
                    data += await trio.to_thread.run_sync(_recv, stuck)
            assert data.startswith(b"HTTP/1.1 101 ")
            del data[: data.index(b"\r\n\r\n") + 4]
            url = f"wss://localhost:{server.port}/ws?userId=changer"
            async with open_websocket_url(url, ssl_context=context) as changer_ws:
                changer = RawClient(changer_ws)
                await changer.expect("welcome")
                changes = 0
                with trio.fail_after(20):
                    # The engine let it go as a slow consumer (its transport, stuck in
                    # hypercorn's shielded write, ends when the peer reads).
                    while server.engine.registry.stats.push_drops == 0:
                        message = f"{changes:05d}" + "m" * 135
                        status = ("busy", "away")[changes % 2]
                        await changer.request(
                            {"type": "set_status", "status": status, "statusMessage": message},
                            "status_updated",
                        )
                        changes += 1
            # Well before limits.outbound_queue (1000) pushes piled up.
            assert changes < 600, changes
            assert server.engine.registry.stats.push_drops == 1
            # It reads now: whole frames, ending with the close frame (1013).
            with trio.fail_after(10):
                while chunk := await trio.to_thread.run_sync(_recv, stuck):
                    data += chunk
            last = None
            while (parsed := parse_frame(data)) is not None:
                last, used = parsed
                del data[:used]
            assert last is not None
            assert (last.opcode, last.close_code) == (OP_CLOSE, 1013)
        finally:
            stuck.close()


def _recv(sock: ssl.SSLSocket) -> bytes:
    try:
        return sock.recv(65536)
    except (ConnectionResetError, ssl.SSLError, TimeoutError):
        return b""
