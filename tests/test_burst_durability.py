"""An acknowledged change is durable within 2 x persistence.flush_interval, even in a burst.

500 users in ``everyone`` mode change their status at once: a quarter of a
million pushes. Those must not starve the persistence writer: a server killed
with SIGKILL half a second after the first acknowledgement has every change
acknowledged 2 x flush_interval before the kill in its database.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import trio

from presence_actors.persistence import open_reader

USERS = 500
FLUSH_INTERVAL = 0.1


async def start_server(tmp_path: Path) -> tuple[trio.Process, str]:
    config = tmp_path / "config.toml"
    config.write_text(
        "[server]\nport = 0\n"
        f'[persistence]\npath = "{tmp_path / "presence.db"}"\nflush_interval = "100ms"\n'
        '[presence]\nfanout = "everyone"\n'
        "[limits]\noutbound_queue = 100000\n"
        '[logging]\nfile = ""\n'
    )
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "presence_actors", "serve", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        cwd=tmp_path,
    )
    assert process.stdout is not None
    seen = b""
    with trio.fail_after(30):
        while (match := re.search(rb"page +http://(127\.0\.0\.1:\d+)/\n", seen)) is None:
            chunk = await process.stdout.receive_some()
            assert chunk, seen
            seen += chunk
    return process, match[1].decode()


def masked_text(payload: bytes) -> bytes:
    """A client's text frame (a zero mask key is as valid as any)."""
    assert len(payload) < 126
    return bytes((0x81, 0x80 | len(payload))) + b"\0\0\0\0" + payload


async def raw_user(address: str, i: int) -> trio.SocketStream:
    """A WebSocket session of ``u{i}`` on a plain socket, past its welcome."""
    host, port = address.split(":")
    stream = await trio.open_tcp_stream(host, int(port))
    await stream.send_all(
        f"GET /ws?userId=u{i}&deviceId=d HTTP/1.1\r\nHost: {address}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".encode()
    )
    seen = b""
    while b'"welcome"' not in seen:
        chunk = await stream.receive_some()
        assert chunk, seen
        seen += chunk
    return stream


async def test_acknowledged_changes_survive_a_kill_right_after_a_burst(tmp_path: Path) -> None:
    process, address = await start_server(tmp_path)
    acked: dict[str, float] = {}
    try:
        with trio.fail_after(60):
            streams = [await raw_user(address, i) for i in range(USERS)]

        async def change(i: int, stream: trio.SocketStream) -> None:
            message = {"type": "set_status", "status": "busy", "statusMessage": f"m{i}"}
            await stream.send_all(masked_text(json.dumps(message).encode()))
            # The reply is the only status_updated this socket gets; pushes are skipped
            # by a byte search, so reading keeps up with the server.
            tail = b""
            while True:
                chunk = await stream.receive_some(1 << 20)
                if not chunk:
                    return
                if b'"status_updated"' in tail + chunk:
                    acked[f"u{i}"] = trio.current_time()
                    break
                tail = chunk[-32:]
            await trio.sleep_forever()

        async with trio.open_nursery() as nursery:
            for i, stream in enumerate(streams):
                nursery.start_soon(change, i, stream)
            with trio.fail_after(30):
                while not acked:
                    await trio.sleep(0.001)
            await trio.sleep(0.5)
            process.kill()
            killed_at = trio.current_time()
            nursery.cancel_scope.cancel()
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()
    assert process.returncode == -signal.SIGKILL
    with open_reader(tmp_path / "presence.db") as reader:
        stored = {u.user_id: u.status_message for u in reader.load_users()}
    due = [u for u, at in acked.items() if at <= killed_at - 2 * FLUSH_INTERVAL]
    lost = [u for u in due if stored.get(u) != f"m{u[1:]}"]
    assert not lost, f"{len(lost)} of {len(due)} acknowledged changes lost: {lost[:5]}"
    assert len(due) >= USERS // 2, f"only {len(due)} changes acknowledged in time"
