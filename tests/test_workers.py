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
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import pytest
import trio
from attrs import define

from presence_actors.__main__ import main
from presence_actors.config import Settings
from presence_actors.workers import worker_settings

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
        assert status == 200, stats
        nodes.append(stats["node"])
    return nodes


async def test_two_workers_serve_one_port_each_as_a_node(tmp_path: Path) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with (
            open_redis(tmp_path / "redis") as redis,
            supervised(tmp_path, _config(tmp_path, redis), "--workers", "2") as server,
        ):
            assert server.stdout.count("is listening") == 1  # one banner, not one per worker
            assert set(await _nodes(server.base_url)) == {"box-1", "box-2"}
            pids = server.worker_pids()
            assert sorted(pids) == [1, 2]
            assert server.process.pid not in pids.values()


async def test_the_workers_setting_in_the_file_is_the_flag(tmp_path: Path) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with open_redis(tmp_path / "redis") as redis:
            config = _config(tmp_path, redis, server={"workers": 2})
            async with supervised(tmp_path, config) as server:
                assert set(await _nodes(server.base_url)) == {"box-1", "box-2"}


async def test_a_killed_worker_is_restarted_and_the_port_keeps_answering(tmp_path: Path) -> None:
    with trio.fail_after(TEST_TIMEOUT):
        async with (
            open_redis(tmp_path / "redis") as redis,
            supervised(tmp_path, _config(tmp_path, redis), "--workers", "2") as server,
        ):
            killed = server.worker_pids()[1]
            os.kill(killed, signal.SIGKILL)
            while _alive(killed):
                await trio.sleep(0.01)
            # Every connection is answered meanwhile: by the other worker, or the new one.
            assert set(await _nodes(server.base_url)) <= {"box-1", "box-2"}
            while server.worker_pids()[1] == killed:
                await trio.sleep(0.05)
            assert set(await _nodes(server.base_url)) == {"box-1", "box-2"}
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
            assert await server.stop() == 0


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
    assert done.stderr == "presence-actors: [Errno 98] Address already in use\n"


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


def test_each_worker_is_a_node_with_its_own_files() -> None:
    defaults = Settings()
    settings = worker_settings(
        attrs.evolve(
            defaults,
            server=attrs.evolve(defaults.server, node="box"),
            logging=attrs.evolve(defaults.logging, file="logs/presence.log"),
            persistence=attrs.evolve(defaults.persistence, path="data/presence.db"),
        ),
        3,
    )
    assert settings.server.node == "box-3"
    assert settings.logging.file == "logs/presence-3.log"
    assert settings.persistence.path == "data/presence-3.db"
    unnamed = worker_settings(Settings(), 1)
    assert unnamed.server.node == f"{socket.gethostname()}-1"


@pytest.mark.parametrize("value", ["0", "257", "two", "-1"])
def test_workers_flag_takes_1_to_256(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--workers", value]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"presence-actors: argument --workers: {value!r} is not a number")
    assert err.count("\n") == 1
