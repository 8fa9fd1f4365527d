"""One port, two doors: direct WebSocket sessions and hypercorn's, side by side."""

from __future__ import annotations

import json
import socket
import ssl
from pathlib import Path

import pytest
import trio
import trio.testing
from trio_websocket import open_websocket_url

from presence_actors.gateway.admission import (
    ThrottledLog,
    connection_cap,
    default_max_connections,
)
from presence_actors.gateway.listener import is_direct_upgrade
from presence_actors.gateway.websocket import WebSocketGateway

from .server_harness import RawClient, running_server, self_signed_certificate, ws_client
from .test_websocket import closed_with

UPGRADE = (
    b"GET /ws?userId=carol HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
)


@pytest.mark.parametrize(
    ("head", "direct"),
    [
        (UPGRADE, True),
        (UPGRADE.replace(b"Upgrade: websocket", b"UPGRADE:WebSocket"), True),
        (UPGRADE.replace(b"/ws?userId=carol", b"/ws"), True),
        (UPGRADE.replace(b"/ws?", b"http://x:8080/ws?"), True),  # absolute-form
        (UPGRADE.replace(b"/ws?", b"http://x:8080/wsx?"), False),
        (UPGRADE.replace(b"/ws?", b"/wsx?"), False),
        (UPGRADE.replace(b"GET", b"POST"), False),
        (UPGRADE.replace(b"HTTP/1.1", b"HTTP/1.0"), False),
        (UPGRADE.replace(b"Upgrade: websocket\r\n", b""), False),
        (UPGRADE[:40], False),  # the head is not complete
        (b"GET /api/users HTTP/1.1\r\nHost: x\r\n\r\n", False),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", False),
    ],
)
def test_which_connections_take_the_direct_path(head: bytes, direct: bool) -> None:
    assert is_direct_upgrade(head) is direct


async def test_websockets_over_tls_go_through_hypercorn(tmp_path: Path) -> None:
    cert, key = self_signed_certificate(tmp_path)
    tls = {"tls_cert_file": str(cert), "tls_key_file": str(key)}
    context = ssl.create_default_context(cafile=str(cert))
    async with running_server(tmp_path, server=tls, limits={"max_message_bytes": 1024}) as server:
        url = f"wss://localhost:{server.port}/ws"
        async with (
            open_websocket_url(url + "?userId=watcher", ssl_context=context) as watcher_ws,
            open_websocket_url(url + "?userId=alice", ssl_context=context) as alice_ws,
        ):
            watcher, alice = RawClient(watcher_ws), RawClient(alice_ws)
            await watcher.expect("welcome")
            await alice.expect("welcome")
            await alice.request({"type": "set_status", "status": "busy"}, "status_updated")
            change = await watcher.expect("user_status_change")
            while change["status"] != "busy":
                change = await watcher.expect("user_status_change")
            await alice.send({"type": "identify", "username": "x" * 2000})
            assert (await alice.expect("error"))["code"] == "TOO_LARGE"
            assert await closed_with(alice) == 1009
            await watcher.send({"type": "logout"})
            assert await closed_with(watcher) == 1000


async def test_an_upgrade_after_a_kept_alive_request_goes_through_hypercorn(
    tmp_path: Path,
) -> None:
    async with running_server(tmp_path) as server, ws_client(server, "bob") as bob:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
            raw.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            first = await trio.to_thread.run_sync(raw.recv, 4096)
            assert first.startswith(b"HTTP/1.1 200")
            raw.sendall(UPGRADE)
            received = b""
            while b'"welcome"' not in received:
                received += await trio.to_thread.run_sync(raw.recv, 4096)
            assert b" 101 " in received
        # carol arrived through hypercorn and is pushed to bob like anyone else.
        push = await bob.expect("user_status_change")
        assert (push["userId"], push["status"]) == ("carol", "online")


async def test_a_failing_connection_never_takes_the_server_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real = WebSocketGateway.serve_direct

    async def faulty(self: WebSocketGateway, stream: trio.SocketStream, head: bytes) -> None:
        if b"userId=boom" in head:
            raise RuntimeError("injected fault")
        await real(self, stream, head)

    monkeypatch.setattr(WebSocketGateway, "serve_direct", faulty)
    async with running_server(tmp_path) as server, ws_client(server, "bob") as bob:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
            raw.sendall(UPGRADE.replace(b"carol", b"boom"))
            assert await trio.to_thread.run_sync(raw.recv, 4096) == b""  # dropped
        assert "injected fault" in caplog.text
        reply = await bob.request({"type": "get_online_count"}, "online_count")
        assert reply["count"] == 1
        async with ws_client(server, "carol") as carol:
            assert json.dumps(carol.received[0]).count("carol") == 1


# --- admission (issue 11, item 9) ---------------------------------------------------------


@pytest.mark.parametrize(
    ("nofile", "cap"), [(1024, 864), (20_000, 19_840), (200, 100), (100, 50), (1, 1)]
)
def test_the_default_cap_leaves_descriptors_for_the_rest_of_the_process(
    nofile: int, cap: int
) -> None:
    assert default_max_connections(nofile) == cap
    assert connection_cap(0, nofile) == cap
    assert connection_cap(7, nofile) == 7  # a configured cap is kept


async def test_a_throttled_warning_comes_once_per_interval_with_a_count(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    warning = ThrottledLog("accepting a connection failed", interval=10.0)
    for _ in range(25):
        warning.note("EMFILE")
        await trio.sleep(1)
    lines = [r.getMessage() for r in caplog.records if r.name == "presence_actors.admission"]
    assert lines == [
        "accepting a connection failed: EMFILE (1 time(s) since the last report)",
        "accepting a connection failed: EMFILE (10 time(s) since the last report)",
        "accepting a connection failed: EMFILE (10 time(s) since the last report)",
    ]


CONN = b"Connection: Upgrade"
VERSION = b"Sec-WebSocket-Version: 13"
KEY = b"Sec-WebSocket-Key: "


@pytest.mark.parametrize(
    ("change", "answer"),
    [
        # RFC 7230 5.3.2: absolute-form, on the direct path (hypercorn answered 403).
        ((b"GET /ws?", b"GET http://127.0.0.1/ws?"), b"HTTP/1.1 101 "),
        # RFC 7230 3.2.2: one list over two lines.
        ((b"Connection: Upgrade", b"Connection: keep-alive\r\n" + CONN), b"HTTP/1.1 101 "),
        ((b"Connection: Upgrade", CONN + b"\r\nConnection: keep-alive"), b"HTTP/1.1 101 "),
        # RFC 6455 4.2.1, 11.3: one key, one version.
        ((VERSION, VERSION + b"\r\nSec-WebSocket-Version: 8"), b"HTTP/1.1 400 "),
        ((VERSION, VERSION + b"\r\n" + VERSION), b"HTTP/1.1 400 "),
        ((KEY, KEY + b"AQIDBAUGBwgJCgsMDQ4PEA==\r\n" + KEY), b"HTTP/1.1 400 "),
    ],
)  # fmt: skip
async def test_the_handshake_follows_the_rfcs_on_a_real_server(
    tmp_path: Path, change: tuple[bytes, bytes], answer: bytes
) -> None:
    async with running_server(tmp_path) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
            raw.sendall(UPGRADE.replace(*change))
            received = b""
            with trio.fail_after(5):
                while b"\r\n\r\n" not in received:
                    chunk = await trio.to_thread.run_sync(raw.recv, 4096)
                    if not chunk:
                        break
                    received += chunk
                if answer == b"HTTP/1.1 101 ":
                    while b'"welcome"' not in received:
                        received += await trio.to_thread.run_sync(raw.recv, 4096)
        assert received.startswith(answer), received[:200]
        if answer == b"HTTP/1.1 101 ":
            assert b'"userId":"carol"' in received
