"""A full disk (issue 11, item 5), on a real 2 MiB tmpfs volume with real server processes.

While the volume is full, presence goes on in memory (replies, pushes, queries), admin
changes are refused with STORE_ERROR at once, /readyz says why it is 503, and the WAL
stays small; when space returns everything held is committed; a stop that cannot commit
exits 1 naming what it lost; a restart on the full disk serves, not ready, until it can.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from presence_actors.persistence import open_reader

from .process_harness import (
    ServerProcess,
    history,
    http,
    one_line,
    run_cli,
    server_process,
    wait_for,
    write_config,
    ws_client,
)

# SQLite's default auto-checkpoint (1000 pages, 4 MB) is twice this volume.
VOLUME = "2m"
FULL = "database or disk is full"


@pytest.fixture
def volume(tmp_path: Path) -> Iterator[Path]:
    """A fresh 2 MiB tmpfs, unmounted at the end."""
    mount = tmp_path / "volume"
    mount.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={VOLUME}", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {mounted.stderr.strip()}")
    try:
        yield mount
    finally:
        if subprocess.run(["umount", str(mount)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(volume: Path) -> Path:
    """Take every free byte of ``volume`` with one file; delete it to free them."""
    filler = volume / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for size in (1 << 16, 4096, 1):
            with contextlib.suppress(_NoSpace):
                _write_until_full(fd, b"\0" * size)
    finally:
        os.close(fd)
    assert shutil.disk_usage(volume).free == 0
    return filler


class _NoSpace(Exception):
    pass


def _write_until_full(fd: int, chunk: bytes) -> None:
    while True:
        try:
            os.write(fd, chunk)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            raise _NoSpace from None


def wal_size(database: Path) -> int:
    try:
        return Path(f"{database}-wal").stat().st_size
    except FileNotFoundError:
        return 0


def config(tmp_path: Path, volume: Path, **persistence: object) -> Path:
    # Only settings that 8215680 knows too, so the old code fails on behaviour.
    return write_config(
        tmp_path / "config.toml",
        server={"graceful_timeout": "2s"},
        persistence={"path": str(volume / "presence.db"), "flush_interval": "50ms", **persistence},
        logging={"file": "", "level": "info"},
    )


async def readiness(server: ServerProcess) -> tuple[int, dict[str, object]]:
    return await http("GET", f"{server.base_url}/readyz")


async def ready(server: ServerProcess) -> bool:
    return (await readiness(server))[0] == 200


async def not_ready(server: ServerProcess) -> bool:
    return not await ready(server)


async def committed(server: ServerProcess, user_id: str, reason: str) -> bool:
    return any(e["reason"] == reason for e in await history(server, user_id))


async def test_a_full_disk_keeps_presence_going_refuses_admin_changes_and_catches_up(
    tmp_path: Path, volume: Path
) -> None:
    database = volume / "presence.db"
    users = [f"u{i}" for i in range(8)]
    rounds = 6
    async with server_process(tmp_path, config(tmp_path, volume, queue_size=20)) as server:
        async with ws_client(server, "watcher") as watcher, contextlib.AsyncExitStack() as stack:
            clients = {u: await stack.enter_async_context(ws_client(server, u)) for u in users}
            with trio.fail_after(10):
                await wait_for(lambda: committed(server, users[-1], "connect"))
            filler = fill(volume)

            # Presence goes on in memory: every change answered and pushed, more of
            # them than the writer may hold (queue_size = 20 events).
            for round_ in range(rounds):
                status = ("busy", "away")[round_ % 2]
                for user_id in users:
                    change = {"type": "set_status", "status": status, "statusMessage": f"m{round_}"}
                    reply = await clients[user_id].request(change, "status_updated")
                    assert (reply["status"], reply["statusMessage"]) == (status, f"m{round_}")
            seen: dict[str, tuple[str, str]] = {}
            final = ("away" if rounds % 2 == 0 else "busy", f"m{rounds - 1}")
            with trio.fail_after(10):
                while any(seen.get(u) != final for u in users):
                    push = await watcher.next()
                    if push["type"] == "user_status_change":
                        seen[push["userId"]] = (push["status"], push["statusMessage"])
            count = await clients["u0"].request({"type": "get_online_count"}, "online_count")
            assert count["count"] == len(users) + 1

            with trio.fail_after(15):
                await wait_for(lambda: not_ready(server))
            status_code, body = await readiness(server)
            assert (status_code, body["status"], body["storeWritable"]) == (
                503,
                "unavailable",
                False,
            )
            assert FULL in str(body["reason"])
            with trio.fail_after(15):  # refused up front: no hanging on the full disk
                code, answer = await http(
                    "PUT", f"{server.base_url}/api/admin/users/u0/privacy", {"visibility": "nobody"}
                )
            assert (code, answer["error"]["code"]) == (503, "STORE_ERROR")
            assert wal_size(database) < 1 << 20

            filler.unlink()
            with trio.fail_after(20):
                await wait_for(lambda: ready(server))
            code, answer = await http(
                "PUT", f"{server.base_url}/api/admin/users/u0/privacy", {"visibility": "nobody"}
            )
            assert code == 200, answer
        assert await server.stop() == 0

    stderr = server.stderr()
    caught_up = one_line(stderr, "the store caught up")
    match = re.search(r"; (\d+) presence events were dropped while it was behind$", caught_up)
    assert match is not None, caught_up
    with open_reader(database) as reader:
        messages = {u.user_id: u.status_message for u in reader.load_users()}
        kept = [e for u in users for e in reader.history(u) if e.reason == "set_status"]
    # Rows are never dropped: every user's last change is in the database.
    assert all(messages[u] == f"m{rounds - 1}" for u in users)
    # Events: the first 20 were held and committed, the rest counted exactly.
    assert (len(kept), int(match[1])) == (20, len(users) * rounds - 20)
    assert "lost" not in stderr


async def test_a_stop_that_cannot_commit_exits_1_naming_the_loss_and_a_restart_serves_degraded(
    tmp_path: Path, volume: Path
) -> None:
    settings = config(tmp_path, volume)
    async with (
        server_process(tmp_path, settings) as first,
        ws_client(first, "alice") as alice,
        ws_client(first, "carol") as carol,
    ):
        busy = {"type": "set_status", "status": "busy", "statusMessage": "kept"}
        await alice.request(busy, "status_updated")
        with trio.fail_after(10):
            await wait_for(lambda: committed(first, "alice", "set_status"))
        filler = fill(volume)
        away = {"type": "set_status", "status": "away", "statusMessage": "lost"}
        await alice.request(away, "status_updated")
        await carol.request(away, "status_updated")
        code = await first.stop()
    stderr = first.stderr()
    assert code == 1, stderr
    assert "Traceback" not in stderr
    loss = one_line(stderr, "lost")
    assert loss.endswith(
        f"ERROR    presence_actors.persistence: the store could not be written before the stop"
        f" ({FULL}): 2 users' presence rows and 4 presence events were not committed and"
        " are lost"
    )
    assert "everything was committed" not in stderr

    # The disk is still full: the server starts from what it can read and serves.
    async with server_process(tmp_path, settings) as second:
        status_code, body = await readiness(second)
        assert (status_code, body["storeWritable"]) == (503, False)
        assert FULL in str(body["reason"])
        async with ws_client(second, "alice") as alice, ws_client(second, "bob") as bob:
            # Everyone starts offline, with what the store last committed.
            carol = await alice.request(
                {"type": "check_user_status", "targetUserId": "carol"}, "user_status"
            )
            assert (carol["status"], carol["online"]) == ("offline", False)
            await alice.request(busy | {"statusMessage": "again"}, "status_updated")
            with trio.fail_after(5):
                push = await bob.expect("user_status_change")
            assert (push["userId"], push["status"]) == ("alice", "busy")
            before = [e["reason"] for e in await history(second, "alice")]
            assert before == ["connect", "set_status"]

            filler.unlink()
            with trio.fail_after(20):
                await wait_for(lambda: ready(second))
            after = [e["reason"] for e in await history(second, "alice")]
            assert after == ["connect", "set_status", "restart", "connect", "set_status"]
        assert await second.stop() == 0
    warning = one_line(second.stderr(), "the store cannot be written")
    assert warning.endswith(
        f"the store cannot be written ({FULL}): serving from memory, not ready; 2 users left"
        " online by an unclean stop are recorded offline once it can"
    )


async def test_a_database_sqlite_cannot_open_on_a_full_disk_fails_the_start_in_one_line(
    tmp_path: Path, volume: Path
) -> None:
    settings = config(tmp_path, volume)
    async with server_process(tmp_path, settings) as server:
        assert await server.stop() == 0  # a clean stop removes the -wal and -shm files
    fill(volume)
    refused = await run_cli(tmp_path, "serve", "--config", str(settings), "--port", "0")
    assert refused.returncode == 1
    assert refused.stderr.splitlines() == [
        f"presence-actors: cannot open the database {volume / 'presence.db'}: disk I/O error"
        " (its file system is full: 0 bytes free)"
    ]
