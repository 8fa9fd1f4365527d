"""``serve --workers N``: a supervising process and N worker processes on one port,
each a node; real processes, a real Redis, real sockets."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from attrs import define

from presence_actors.__main__ import main
from presence_actors.client import Disconnected, PresenceClient, open_presence_client
from presence_actors.config import Settings
from presence_actors.workers import Supervisor, worker_settings

from .process_harness import child_env, http, run_cli, write_config
from .redis_harness import RedisServer, open_redis

# Three Python processes start on a machine shared with other tests.
TEST_TIMEOUT = 90
STARTUP_TIMEOUT = 45
# Connections spread over the workers by the kernel's hash: with 2 workers, all of
# 40 landing on one has a chance of 2^-39.
PROBES = 40
_COMMAND = (sys.executable, "-m", "presence_actors")
_SERVES = re.compile(r"worker (\d+) \(pid (\d+)\) serves")


@define
class Supervised:
    """A ``serve --workers`` parent, once it printed its URLs."""

    process: trio.Process
    base_url: str
    stdout: str
    stderr_path: Path

    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def worker_pids(self) -> dict[int, int]:
        """Each worker's latest process, from the parent's log."""
        return {int(index): int(pid) for index, pid in _SERVES.findall(self.stderr())}

    def node_names(self) -> dict[int, str]:
        """Each worker's node name: ``server.node``-index-pid."""
        return {index: f"box-{index}-{pid}" for index, pid in self.worker_pids().items()}

    async def stop(self, signum: int = signal.SIGTERM) -> int:
        self.process.send_signal(signum)
        with trio.fail_after(STARTUP_TIMEOUT):
            return await self.process.wait()


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie (a zombie has closed its sockets)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _kill_worker(pid: int) -> None:
    """SIGKILL ``pid`` if it is still one of our workers (not a reused pid)."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return
    if b"--worker" in command:
        os.kill(pid, signal.SIGKILL)


def _config(tmp_path: Path, redis: RedisServer | None, **sections: Mapping[str, object]) -> Path:
    merged: dict[str, dict[str, object]] = {
        "server": {"node": "box", "graceful_timeout": "2s"},
        "persistence": {"path": str(tmp_path / "presence.db")},
        "cluster": {"redis_url": redis.url if redis else ""},
    }
    for name, values in sections.items():
        merged.setdefault(name, {}).update(values)
    return write_config(tmp_path / "config.toml", **merged)


@asynccontextmanager
async def supervised(tmp_path: Path, config: Path, *args: str) -> AsyncIterator[Supervised]:
    """``python -m presence_actors serve --config CONFIG --port 0 ARGS`` in its own
    process group (as a shell runs it), once it printed its URLs; the parent and any
    worker still there are killed at the end."""
    stderr_path = tmp_path / "supervisor.stderr"
    with stderr_path.open("wb") as stderr:
        process = await trio.lowlevel.open_process(
            [*_COMMAND, "serve", "--config", str(config), "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=stderr,
            cwd=tmp_path,
            env=child_env(),
            process_group=0,
        )
        server = None
        try:
            assert process.stdout is not None
            seen = bytearray()
            with trio.fail_after(STARTUP_TIMEOUT):
                while not re.search(rb"api +\S+\n", seen):
                    chunk = await process.stdout.receive_some()
                    assert chunk, f"it exited: {stderr_path.read_text(errors='replace')}"
                    seen += chunk
            match = re.search(rb"page +(http://127\.0\.0\.1:\d+)/\n", seen)
            assert match is not None, seen
            server = Supervised(process, match[1].decode(), seen.decode(), stderr_path)
            yield server
        finally:
            if process.returncode is None:
                process.kill()
            with trio.move_on_after(5, shield=True):
                await process.wait()
            for pid in server.worker_pids().values() if server else ():
                _kill_worker(pid)


async def _nodes(base_url: str, probes: int = PROBES) -> list[str]:
    """The node that answered each of ``probes`` requests, each on a new connection."""
    nodes = []
    for _ in range(probes):
        status, stats = await http("GET", f"{base_url}/api/stats")
        assert status == 200, (status, stats)
        nodes.append(stats["node"])
    return nodes


async def test_two_workers_serve_one_port_each_as_a_node(tmp_path: Path) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with (
            open_redis(tmp_path / "redis") as redis,
            supervised(tmp_path, _config(tmp_path, redis), "--workers", "2") as server,
        ):
            assert server.stdout.count("is listening") == 1  # one banner, not one per worker
            nodes = server.node_names()
            assert set(await _nodes(server.base_url)) == {nodes[1], nodes[2]}
            pids = server.worker_pids()
            assert sorted(pids) == [1, 2]
            assert server.process.pid not in pids.values()


async def test_the_workers_setting_in_the_file_is_the_flag(tmp_path: Path) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with open_redis(tmp_path / "redis") as redis:
            config = _config(tmp_path, redis, server={"workers": 2})
            async with supervised(tmp_path, config) as server:
                assert set(await _nodes(server.base_url)) == set(server.node_names().values())


async def test_a_killed_worker_is_restarted_and_the_port_keeps_answering(tmp_path: Path) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with (
            open_redis(tmp_path / "redis") as redis,
            supervised(tmp_path, _config(tmp_path, redis), "--workers", "2") as server,
        ):
            killed, survivor = server.worker_pids()[1], server.node_names()[2]
            os.kill(killed, signal.SIGKILL)
            # Once the supervisor has reaped it, its listening socket is closed. (Its
            # main thread turns zombie before its last thread lets go of the sockets;
            # connections that reach the socket until then are reset.)
            while f"(pid {killed}) exited" not in server.stderr():
                await trio.sleep(0.01)
            # Every connection is answered meanwhile: by the other worker, or the new one.
            answered = set(await _nodes(server.base_url))
            assert survivor in answered
            assert answered <= {survivor, f"box-1-{server.worker_pids()[1]}"}
            while server.worker_pids()[1] == killed:
                await trio.sleep(0.05)
            # The new worker 1 is a new node (a node is a process and its sessions).
            nodes = server.node_names()
            assert nodes[1] != f"box-1-{killed}"
            assert set(await _nodes(server.base_url)) == {nodes[1], survivor}
            # Dying again soon after its start, it waits twice as long: one line each time.
            again = server.worker_pids()[1]
            os.kill(again, signal.SIGKILL)
            while server.worker_pids()[1] == again:
                await trio.sleep(0.05)
            restarts = [line for line in server.stderr().splitlines() if "restarting" in line]
            assert len(restarts) == 2, server.stderr()
            assert restarts[0].endswith(
                f"worker 1 (pid {killed}) exited with signal SIGKILL; restarting it in 0.5 s"
            )
            assert restarts[1].endswith(
                f"worker 1 (pid {again}) exited with signal SIGKILL; restarting it in 1.0 s"
            )
            assert await server.stop() == 0, server.stderr()


@pytest.mark.parametrize("how", ["sigterm", "ctrl-c"])
async def test_a_signal_stops_every_worker_and_the_parent_exits_0(tmp_path: Path, how: str) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with (
            open_redis(tmp_path / "redis") as redis,
            supervised(tmp_path, _config(tmp_path, redis), "--workers", "2") as server,
        ):
            pids = server.worker_pids().values()
            # Workers have process groups of their own: a terminal's Ctrl-C reaches
            # only the parent, which tells each worker once.
            assert all(os.getpgid(pid) != server.process.pid for pid in pids)
            if how == "sigterm":
                server.process.send_signal(signal.SIGTERM)
            else:  # a terminal signals its foreground process group
                os.killpg(server.process.pid, signal.SIGINT)
            with trio.fail_after(STARTUP_TIMEOUT):
                status = await server.process.wait()
            stderr = server.stderr()
            assert status == 0, stderr
            assert not any(_alive(pid) for pid in pids)
            name = "SIGTERM" if how == "sigterm" else "SIGINT"
            # Each worker stopped the way serve stops.
            assert stderr.count(f"received {name}; shutting down") == 2, stderr
            assert "Traceback" not in stderr


async def test_workers_without_redis_are_refused_in_one_line(tmp_path: Path) -> None:
    config = _config(tmp_path, None)
    with trio.fail_after(TEST_TIMEOUT):
        done = await run_cli(tmp_path, "serve", "--config", str(config), "--workers", "2")
    assert done.returncode == 1
    assert done.stderr == (
        "presence-actors: server.workers = 2: expected cluster.redis_url (or REDIS_URL) to be"
        " set: workers are nodes of a cluster, and a cluster needs Redis\n"
    )


async def test_a_worker_that_cannot_start_stops_them_all(tmp_path: Path) -> None:
    # Worker 2's log file cannot be opened: it exits at once, saying why.
    (tmp_path / "logs" / "presence-2.log").mkdir(parents=True)
    with trio.fail_after(TEST_TIMEOUT):
        async with open_redis(tmp_path / "redis") as redis:
            config = _config(tmp_path, redis, logging={"file": "logs/presence.log"})
            done = await run_cli(tmp_path, "serve", "--config", str(config), "--workers", "2")
    assert done.returncode == 1
    assert "presence-2.log" in done.stderr
    assert "a worker did not start; stopping the others" in done.stderr


async def test_a_port_in_use_is_refused_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken, trio.fail_after(TEST_TIMEOUT):
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        async with open_redis(tmp_path / "redis") as redis:
            config = _config(tmp_path, redis)
            done = await run_cli(
                tmp_path, "serve", "--config", str(config), "--workers", "2", "--port", port
            )
    assert done.returncode == 1
    assert done.stderr == (
        f"presence-actors: cannot listen on 127.0.0.1:{port} (server.host, server.port): the"
        " port is in use by another process (stop it, or choose another server.port or --port)\n"
    )


async def test_workers_stop_when_their_supervisor_is_killed(tmp_path: Path) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with (
            open_redis(tmp_path / "redis") as redis,
            supervised(tmp_path, _config(tmp_path, redis), "--workers", "2") as server,
        ):
            pids = server.worker_pids().values()
            server.process.kill()
            await server.process.wait()
            while any(_alive(pid) for pid in pids):
                await trio.sleep(0.05)
            stderr = server.stderr()
            assert stderr.count("the supervising process is gone; stopping") == 2, stderr
            assert "Traceback" not in stderr


def test_each_worker_is_a_node_with_its_own_log() -> None:
    defaults = Settings()
    settings = worker_settings(
        attrs.evolve(
            defaults,
            server=attrs.evolve(defaults.server, node="box"),
            logging=attrs.evolve(defaults.logging, file="logs/presence.log"),
        ),
        3,
        4242,
    )
    assert settings.server.node == "box-3-4242"
    assert settings.logging.file == "logs/presence-3.log"
    assert settings.persistence == defaults.persistence
    unnamed = worker_settings(Settings(), 1, 4242)
    assert unnamed.server.node == f"{socket.gethostname()}-1-4242"


@pytest.mark.parametrize("value", ["0", "257", "two", "-1"])
def test_workers_flag_takes_1_to_256(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--workers", value]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"presence-actors: argument --workers: {value!r} is not a number")
    assert err.count("\n") == 1


# --- the workers as nodes of one cluster ------------------------------------------------

USERS = [f"user-{n:02d}" for n in range(16)]
# A node's liveness outlasts a worker's restart (a second or two, four on a busy
# machine): the restarted worker joins while its predecessor still counts as alive.
HEARTBEAT_TIMEOUT = 10
GRACE_PERIOD = 1
SLOW_NODE_TTL: dict[str, Mapping[str, object]] = {
    "presence": {
        "heartbeat_interval": "1s",
        "heartbeat_timeout": HEARTBEAT_TIMEOUT,
        "grace_period": GRACE_PERIOD,
    },
    "cluster": {"node_ttl": HEARTBEAT_TIMEOUT - 1},
}
# Polling over HTTP, on a 2-core machine shared with other tests.
BUSY_MACHINE_SLACK = 2.0


async def _presence(base_url: str, users: list[str]) -> dict[str, bool]:
    status, answer = await http("GET", f"{base_url}/api/presence?ids={','.join(users)}")
    assert status == 200, answer
    return {view["userId"]: view["online"] for view in answer["users"]}


async def _stats_by_node(base_url: str) -> dict[str, dict[str, Any]]:
    """/api/stats of every worker (admin routes are open in this test's config)."""
    seen: dict[str, dict[str, Any]] = {}
    for _ in range(PROBES):
        status, stats = await http("GET", f"{base_url}/api/stats")
        assert status == 200, stats
        seen[stats["node"]] = stats
    return seen


async def test_users_connected_to_either_worker_are_one_cluster(tmp_path: Path) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with (
            open_redis(tmp_path / "redis") as redis,
            supervised(tmp_path, _config(tmp_path, redis), "--workers", "2") as server,
            AsyncExitStack() as clients,
        ):
            for user in USERS:
                await clients.enter_async_context(
                    open_presence_client(server.base_url, user, reconnect=False)
                )
            with trio.fail_after(10):
                while not all((await _presence(server.base_url, USERS)).values()):
                    await trio.sleep(0.1)
            stats = await _stats_by_node(server.base_url)
            assert set(stats) == set(server.node_names().values())
            # The sessions are spread over both; each node counts everyone online.
            assert all(node["connections"] > 0 for node in stats.values()), stats
            assert sum(node["connections"] for node in stats.values()) == len(USERS)
            assert [node["onlineUsers"] for node in stats.values()] == [len(USERS)] * 2


async def test_a_killed_workers_users_go_offline_and_the_others_stay(tmp_path: Path) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with (
            open_redis(tmp_path / "redis") as redis,
            supervised(
                tmp_path, _config(tmp_path, redis, **SLOW_NODE_TTL), "--workers", "2"
            ) as server,
            AsyncExitStack() as stack,
        ):
            clients = {
                user: await stack.enter_async_context(
                    open_presence_client(server.base_url, user, reconnect=False)
                )
                for user in USERS
            }
            with trio.fail_after(10):
                while not all((await _presence(server.base_url, USERS)).values()):
                    await trio.sleep(0.1)
            stats = await _stats_by_node(server.base_url)
            on_killed = stats[server.node_names()[1]]["connections"]
            assert 0 < on_killed < len(USERS)
            lost: list[str] = []

            async def notice(user: str, client: PresenceClient) -> None:
                async for event in client.events():
                    if isinstance(event, Disconnected):
                        lost.append(user)

            async with trio.open_nursery() as nursery:
                for user, client in clients.items():
                    nursery.start_soon(notice, user, client)
                os.kill(server.worker_pids()[1], signal.SIGKILL)
                killed_at = trio.current_time()
                with trio.fail_after(10):
                    while len(lost) < on_killed:
                        await trio.sleep(0.05)
                # heartbeat_timeout + grace_period + 1 s, as the issue asks of a dead node.
                bound = HEARTBEAT_TIMEOUT + GRACE_PERIOD + 1 + BUSY_MACHINE_SLACK
                with trio.fail_after(bound - (trio.current_time() - killed_at)):
                    expected = {user: user not in lost for user in USERS}
                    while await _presence(server.base_url, USERS) != expected:
                        await trio.sleep(0.1)
                nursery.cancel_scope.cancel()
            # ... and it stays so once the restarted worker has joined: no ghost.
            with trio.fail_after(STARTUP_TIMEOUT):
                while len(set(await _nodes(server.base_url, 10))) < 2:
                    await trio.sleep(0.1)
            for _ in range(10):
                assert await _presence(server.base_url, USERS) == expected
            assert await server.stop() == 0, server.stderr()


# --- the supervisor against workers that misbehave ----------------------------------------


def _supervisor(program: str, **options: float) -> Supervisor:
    """A supervisor of 2 workers that each run ``python -c PROGRAM``."""
    defaults = Settings()
    settings = attrs.evolve(
        defaults,
        server=attrs.evolve(defaults.server, port=0, workers=2, graceful_timeout=1.0),
        cluster=attrs.evolve(defaults.cluster, redis_url="redis://127.0.0.1:1"),
    )
    return Supervisor(
        settings,
        lambda index, port: [sys.executable, "-c", program],
        lambda url: pytest.fail(f"announced {url}"),
        **options,
    )


async def test_a_worker_that_writes_garbage_is_killed_after_a_bounded_read(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Megabytes without a newline: read up to the line limit, then refused.
    program = "import sys, time; sys.stdout.write('x' * 10_000_000); time.sleep(60)"
    with trio.fail_after(TEST_TIMEOUT):
        assert await _supervisor(program).run() == 1
    refusals = [r.getMessage() for r in caplog.records if "instead of its ready line" in r.message]
    assert len(refusals) == 2, caplog.text
    assert all(f"wrote {b'x' * 80!r} instead" in line for line in refusals)
    assert "a worker did not start; stopping the others" in caplog.text


async def test_a_worker_that_says_nothing_is_killed_after_the_startup_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        assert await _supervisor("import time; time.sleep(60)", startup_timeout=0.5).run() == 1
    assert caplog.text.count("said nothing in 0.5 s; killing it") == 2, caplog.text
