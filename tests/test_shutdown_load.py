"""A clean stop of a busy server with thousands of connections loses nothing.

A real ``python -m presence_actors serve`` holds a few thousand WebSocket
connections (another process, :mod:`tests.ws_crowd`) while CPU hogs take the
machine; SIGTERM must end it with exit 0, every connection closed with 1001 and
every user committed offline (reason ``shutdown``) in the SQLite file.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import trio

from .process_harness import ROOT, child_env, server_process, write_config

CONNECTIONS = 2000
HOGS = 4
CROWD_TIMEOUT = 60


async def _line(stream: trio.abc.ReceiveStream, buffer: bytearray) -> str:
    while b"\n" not in buffer:
        chunk = await stream.receive_some()
        if not chunk:
            raise AssertionError(f"the crowd ended: {bytes(buffer)!r}")
        buffer += chunk
    line, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
    return line.decode()


async def test_sigterm_with_thousands_of_connections_under_load_commits_everyone_offline(
    tmp_path: Path,
) -> None:
    database = tmp_path / "presence.db"
    config = write_config(
        tmp_path / "config.toml",
        # A short graceful timeout: the stop's bound (and the watchdog's) is
        # reached under load, as with 10,000 connections and the default 5 s.
        server={"graceful_timeout": "1s"},
        persistence={"path": str(database)},
        presence={"heartbeat_interval": "2m", "heartbeat_timeout": "5m"},
    )
    async with server_process(tmp_path, config) as server:
        crowd_command = [sys.executable, str(ROOT / "tests" / "ws_crowd.py")]
        crowd = await trio.lowlevel.open_process(
            [*crowd_command, str(server.port), str(CONNECTIONS)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=child_env(),
        )
        hogs: list[trio.Process] = []
        try:
            assert crowd.stdout is not None
            assert crowd.stdin is not None
            out = bytearray()
            with trio.fail_after(CROWD_TIMEOUT):
                assert await _line(crowd.stdout, out) == f"ready {CONNECTIONS}"
            for _ in range(HOGS):
                hogs.append(
                    await trio.lowlevel.open_process([sys.executable, "-c", "while True: pass"])
                )
            await trio.sleep(0.5)  # the hogs are running
            status = await server.stop()
            for hog in hogs:
                hog.kill()
            await crowd.stdin.aclose()  # connections the server left open are ended now
            with trio.fail_after(CROWD_TIMEOUT):
                closed = await _line(crowd.stdout, out)
                await crowd.wait()
        finally:
            for process in (*hogs, crowd):
                if process.returncode is None:
                    process.kill()
                    with trio.move_on_after(5):
                        await process.wait()
        assert status == 0, server.stderr()
        assert "lost" not in server.stderr(), server.stderr()
    assert closed == f"closed {CONNECTIONS} 1001:{CONNECTIONS}", closed
    with sqlite3.connect(database) as db:
        statuses = dict(db.execute("SELECT last_status, COUNT(*) FROM users GROUP BY 1"))
        shutdowns = db.execute(
            "SELECT COUNT(DISTINCT user_id) FROM presence_events WHERE reason = 'shutdown'"
        ).fetchone()[0]
    assert statuses == {"offline": CONNECTIONS}
    assert shutdowns == CONNECTIONS
