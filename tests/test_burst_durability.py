"""An acknowledged change is durable within 2 x persistence.flush_interval, even in a burst.

500 users in ``everyone`` mode change their status at once: a quarter of a
million pushes. Those must not starve the persistence writer: a server killed
with SIGKILL half a second after the first acknowledgement has every change
acknowledged 2 x flush_interval before the kill in its database.
"""

from __future__ import annotations

import signal
from pathlib import Path

import trio

from presence_actors.persistence import open_reader

from .process_harness import server_process, write_config
from .raw_ws import text, upgrade_head

USERS = 500
FLUSH_INTERVAL = 0.1


async def raw_user(port: int, i: int) -> trio.SocketStream:
    """A WebSocket session of ``u{i}`` on a plain socket, past its welcome."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(upgrade_head(f"/ws?userId=u{i}&deviceId=d"))
    seen = b""
    while b'"welcome"' not in seen:
        chunk = await stream.receive_some()
        assert chunk, seen
        seen += chunk
    return stream


async def test_acknowledged_changes_survive_a_kill_right_after_a_burst(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "config.toml",
        persistence={"path": str(tmp_path / "presence.db"), "flush_interval": "100ms"},
        presence={"fanout": "everyone"},
        limits={"outbound_queue": 100_000},
    )
    acked: dict[str, float] = {}
    async with server_process(tmp_path, config) as server:
        with trio.fail_after(60):
            streams = [await raw_user(server.port, i) for i in range(USERS)]

        async def change(i: int, stream: trio.SocketStream) -> None:
            message = {"type": "set_status", "status": "busy", "statusMessage": f"m{i}"}
            await stream.send_all(text(message))
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
            killed_at = trio.current_time()
            returncode = await server.stop(signal.SIGKILL)
            nursery.cancel_scope.cancel()
    assert returncode == -signal.SIGKILL
    with open_reader(tmp_path / "presence.db") as reader:
        stored = {u.user_id: u.status_message for u in reader.load_users()}
    due = [u for u, at in acked.items() if at <= killed_at - 2 * FLUSH_INTERVAL]
    lost = [u for u in due if stored.get(u) != f"m{u[1:]}"]
    assert not lost, f"{len(lost)} of {len(due)} acknowledged changes lost: {lost[:5]}"
    assert len(due) >= USERS // 2, f"only {len(due)} changes acknowledged in time"
