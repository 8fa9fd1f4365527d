"""Issue 14, item 4: ``watch`` and ``status`` against real servers: ``--token`` for a
``jwt`` server, a watch that is nobody's session (no ``cli-…`` user left behind), that
stops at once on Ctrl-C, and that comes back after a server restart."""

from __future__ import annotations

import signal
import socket
import time
from contextlib import AsyncExitStack
from pathlib import Path

import jwt
import pytest
import trio

from presence_actors.persistence import open_reader

from .process_harness import http, run_cli
from .server_harness import running_server, ws_client
from .test_cli import STARTUP_TIMEOUT, cli_process, read_until

SECRET = "watch-test-secret-of-at-least-32-bytes"
JWT = {"mode": "jwt", "jwt_secret": SECRET}


def token(user: str) -> str:
    return jwt.encode({"sub": user, "exp": int(time.time()) + 600}, SECRET)


async def test_watch_ends_at_once_on_ctrl_c(tmp_path: Path) -> None:
    # Before: ~4 s (two close handshakes waited out under a cancelled scope).
    async with running_server(tmp_path) as server:
        argv = ["watch", "--url", server.base_url, "bob"]
        async with cli_process(tmp_path, *argv) as watcher:
            assert watcher.stdout is not None
            with trio.fail_after(STARTUP_TIMEOUT):
                await read_until(watcher.stdout, r"bob  offline\n", bytearray())
            start = trio.current_time()
            watcher.send_signal(signal.SIGINT)
            with trio.fail_after(5):
                code = await watcher.wait()
            elapsed = trio.current_time() - start
    assert code == 0
    assert elapsed < 1.0, f"watch took {elapsed:.2f} s to stop"


@pytest.mark.parametrize("observers", [False, True])
async def test_watching_puts_nobody_online_and_leaves_no_user(
    tmp_path: Path, observers: bool
) -> None:
    # Before, with observers off: a `cli-xxxxxx` user, online while watching and
    # listed on everyone's page ever after.
    async with (
        running_server(tmp_path, web={"observer": observers}) as server,
        ws_client(server, "bob") as bob,
        cli_process(tmp_path, "watch", "--url", server.base_url, "bob") as watcher,
    ):
        assert watcher.stdout is not None
        with trio.fail_after(STARTUP_TIMEOUT):
            await read_until(watcher.stdout, r"bob  online\n", bytearray())
        count = await bob.request({"type": "get_online_count"}, "online_count")
        status, listed = await http("GET", f"{server.base_url}/api/users")
        watcher.send_signal(signal.SIGTERM)
        with trio.fail_after(5):
            assert await watcher.wait() == 0
    assert count["count"] == 1
    assert status == 200
    assert [user["userId"] for user in listed["users"]] == ["bob"]
    with open_reader(tmp_path / "presence.db") as reader:
        assert [user.user_id for user in reader.load_users()] == ["bob"]


async def test_watch_as_a_user_sees_what_that_user_may_see_without_going_online(
    tmp_path: Path,
) -> None:
    async with running_server(tmp_path) as server:
        admin = f"{server.base_url}/api/admin/users"
        assert (await http("PUT", f"{admin}/carol/contacts", {"contacts": ["dave"]}))[0] == 200
        assert (await http("PUT", f"{admin}/carol/privacy", {"visibility": "contacts"}))[0] == 200
        async with ws_client(server, "carol"):
            for as_user, shown in ((["--as", "dave"], "online"), ([], "offline")):
                argv = ["watch", "--url", server.base_url, *as_user, "carol"]
                async with cli_process(tmp_path, *argv) as watcher:
                    assert watcher.stdout is not None
                    with trio.fail_after(STARTUP_TIMEOUT):
                        await read_until(watcher.stdout, rf"carol  {shown}\n", bytearray())
                    _, dave = await http("GET", f"{server.base_url}/api/users/dave")
                    assert dave["success"] is False  # dave was never seen: watching is not being
                    watcher.send_signal(signal.SIGTERM)
                    with trio.fail_after(5):
                        assert await watcher.wait() == 0


async def test_status_and_watch_take_a_token_for_a_jwt_server(tmp_path: Path) -> None:
    async with (
        running_server(tmp_path, auth=JWT) as server,
        ws_client(server, None, token=token("alice")) as alice,
    ):
        await alice.request({"type": "set_status", "status": "busy"}, "status_updated")
        url = server.base_url
        finished = await run_cli(tmp_path, "status", "--url", url, "--token", token("x"), "alice")
        assert finished.returncode == 0, finished.stderr
        assert finished.stdout.startswith("alice  busy     active ")
        # Before: no --token, so status and watch could not be used with jwt at all.
        refused = await run_cli(tmp_path, "status", "--url", url, "alice")
        assert (refused.returncode, refused.stdout) == (1, "")
        assert refused.stderr == (
            f"presence-actors: {url} refused the request: HTTP 401 UNAUTHORIZED: a token is"
            " required (token parameter or Authorization: Bearer) (the server signs users"
            " in with tokens: give --token)\n"
        )
        argv = ["watch", "--url", url, "--token", token("x"), "alice"]
        async with cli_process(tmp_path, *argv) as watcher:
            assert watcher.stdout is not None
            with trio.fail_after(STARTUP_TIMEOUT):
                await read_until(watcher.stdout, r"alice  busy\n", bytearray())
            watcher.send_signal(signal.SIGTERM)
            with trio.fail_after(5):
                assert await watcher.wait() == 0
        refused = await run_cli(tmp_path, "watch", "--url", url, "alice")
        assert (refused.returncode, refused.stdout) == (1, "")
        assert refused.stderr.startswith(
            f"presence-actors: {url} refused to stream: UNAUTHENTICATED: UNAUTHORIZED: "
        )
        assert refused.stderr.count("\n") == 1
        assert refused.stderr.endswith("(the server signs users in with tokens: give --token)\n")


async def test_watch_comes_back_after_the_server_restarts(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with AsyncExitStack() as stack:
        async with running_server(tmp_path, server={"port": port}) as first:
            argv = ["watch", "--url", first.base_url, "bob"]
            watcher = await stack.enter_async_context(cli_process(tmp_path, *argv))
            assert watcher.stdout is not None
            seen = bytearray()
            with trio.fail_after(STARTUP_TIMEOUT):
                await read_until(watcher.stdout, r"bob  offline\n", seen)
        # The first server has stopped; another takes the same port.
        async with running_server(tmp_path, server={"port": port}) as second:
            async with ws_client(second, "bob"):
                with trio.fail_after(15):
                    await read_until(watcher.stdout, r"bob  online\n", seen)
            watcher.send_signal(signal.SIGTERM)
            with trio.fail_after(5):
                assert await watcher.wait() == 0
    stderr = (tmp_path / "stderr.txt").read_text().splitlines()
    assert stderr[0].startswith("presence-actors: connection lost (UNAVAILABLE: ")
    assert stderr[0].endswith("; reconnecting")
    assert stderr[1:] == ["presence-actors: reconnected"]
